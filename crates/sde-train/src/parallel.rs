//! The data-parallel seam: a gradient all-reduce between backward and the optimiser step.
//! See `docs/training.md` for the NCCL plan.

use candle_core::Tensor;

use crate::error::Result;

/// Combines the gradients of data-parallel replicas before the optimiser step.
///
/// With R replicas, each computing the loss on its own shard of the global batch, an
/// implementation replaces every local gradient g_r by the mean (1/R) Σ_r g_r (an NCCL
/// all-reduce with sum, then a scale by 1/R), so every replica takes the same Adam step and the
/// weights stay identical. The trainer calls [`all_reduce`](Self::all_reduce) once per step with
/// the gradients in [`crate::named_vars`] order; clipping and Adam then see the reduced
/// gradients, as with `torch.nn.parallel.DistributedDataParallel`.
pub trait GradientReducer {
    /// Replaces `grads` (one per variable, in a fixed order) by their mean over replicas.
    fn all_reduce(&mut self, grads: &mut [Tensor]) -> Result<()>;

    /// Number of replicas R (1 for single-device training).
    fn world_size(&self) -> usize {
        1
    }
}

impl<F: FnMut(&mut [Tensor]) -> Result<()>> GradientReducer for F {
    fn all_reduce(&mut self, grads: &mut [Tensor]) -> Result<()> {
        self(grads)
    }
}
