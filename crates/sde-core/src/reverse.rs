//! The reverse-time SDE and the probability-flow ODE of a forward SDE.

use candle_core::Tensor;

use crate::error::Result;
use crate::score::ScoreFn;
use crate::sde::Sde;
use crate::tensor::mul_batch;

/// Reverse-time SDE of a forward [`Sde`] given a score function s(x, t) ≈ ∇ₓ log p_t(x)
/// (the reference's `RSDE` returned by `sde.reverse(score_fn, probability_flow)`).
///
/// - `probability_flow = false`: dx = [f(x, t) − g(t)² s(x, t)] dt + g(t) dw̄;
/// - `probability_flow = true`: the probability-flow ODE dx = [f(x, t) − ½ g(t)² s(x, t)] dt,
///   whose diffusion is 0.
///
/// Both are integrated backwards in time, from T to ε.
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use sde_core::{Sde, VpSde};
/// let sde = VpSde::default();
/// let score = |x: &Tensor, _t: &Tensor| -> sde_core::Result<Tensor> { Ok(x.neg()?) }; // N(0, I) data
/// let rsde = sde.reverse(&score, true);
/// let x = Tensor::ones((2, 3), DType::F32, &Device::Cpu)?;
/// let t = sde_core::time_tensor(0.5, 2, &Device::Cpu, DType::F32)?;
/// let (drift, diffusion) = rsde.sde(&x, &t)?;
/// // f − ½ g² s = −½β x + ½β x = 0 for standard normal data under VP.
/// assert!(drift.abs()?.max_all()?.to_scalar::<f32>()? < 1e-6);
/// assert_eq!(diffusion.to_vec1::<f32>()?, vec![0.0, 0.0]);
/// # Ok::<(), sde_core::Error>(())
/// ```
#[derive(Debug)]
pub struct ReverseSde<'a, S: ?Sized, F: ?Sized> {
    /// The forward SDE.
    pub sde: &'a S,
    /// The score function.
    pub score: &'a F,
    /// Whether this is the probability-flow ODE.
    pub probability_flow: bool,
}

impl<'a, S: Sde + ?Sized, F: ScoreFn + ?Sized> ReverseSde<'a, S, F> {
    /// Wraps `sde` and `score`.
    pub fn new(sde: &'a S, score: &'a F, probability_flow: bool) -> Self {
        Self {
            sde,
            score,
            probability_flow,
        }
    }

    fn weight(&self) -> f64 {
        if self.probability_flow {
            0.5
        } else {
            1.0
        }
    }

    /// `(drift, diffusion)` of the reverse SDE: (f − g² s, g), or (f − ½ g² s, 0) for the ODE.
    pub fn sde(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let score = self.score.score(x, t)?;
        self.sde_with_score(x, t, &score)
    }

    /// As [`sde`](Self::sde) with a score already evaluated at `(x, t)`.
    pub fn sde_with_score(
        &self,
        x: &Tensor,
        t: &Tensor,
        score: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (drift, g) = self.sde.sde(x, t)?;
        let g2 = g.sqr()?.affine(-self.weight(), 0.0)?;
        let drift = (drift + mul_batch(&g2, score)?)?;
        let g = if self.probability_flow {
            g.zeros_like()?
        } else {
            g
        };
        Ok((drift, g))
    }

    /// Discretised reverse step `(rev_f, rev_G)`: rev_f = f_i − G_i² s (½ G_i² s for the ODE),
    /// rev_G = G_i (0 for the ODE), from the forward [`Sde::discretize`].
    pub fn discretize(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let (f, g) = self.sde.discretize(x, t)?;
        let score = self.score.score(x, t)?;
        let g2 = g.sqr()?.affine(-self.weight(), 0.0)?;
        let rev_f = (f + mul_batch(&g2, &score)?)?;
        let rev_g = if self.probability_flow {
            g.zeros_like()?
        } else {
            g
        };
        Ok((rev_f, rev_g))
    }
}
