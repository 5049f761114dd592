//! Data-parallel training: the gradient all-reduce between backward and the optimiser step
//! ([`GradientReducer`]), the rank's shard of every global batch ([`ShardedBatches`]), the
//! per-sample noise that makes R ranks draw what one process draws ([`step_noise`]), and the
//! launcher's rank and world size ([`LaunchEnv`]). The engines are [`crate::MpiReducer`]
//! (feature `mpi`) and `NcclReducer` (feature `nccl`); see `docs/training.md`.

use candle_core::{DType, Tensor};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sde_core::noise::{splitmix64, PerSampleNoise};

use crate::data::BatchSource;
use crate::error::{Error, Result};

/// Combines the gradients of data-parallel replicas before the optimiser step.
///
/// With R replicas, each computing the loss on its own shard of the global batch, an
/// implementation replaces every local gradient g_r by the mean ḡ = (1/R) Σ_r g_r, so every
/// replica takes the same Adam step and the weights stay identical
/// (`torch.nn.parallel.DistributedDataParallel`'s contract). The trainer calls
/// [`all_reduce_step`](Self::all_reduce_step) once per step with the gradients in
/// [`crate::named_vars`] order; clipping and Adam then see the reduced gradients.
///
/// A closure `FnMut(&mut [Tensor]) -> Result<()>` is a reducer of world size 1 (a test seam).
pub trait GradientReducer {
    /// Replaces `grads` (one per variable, in a fixed order) by their mean over replicas.
    fn all_reduce(&mut self, grads: &mut [Tensor]) -> Result<()>;

    /// [`all_reduce`](Self::all_reduce) and the mean ℓ̄ = (1/R) Σ_r ℓ_r of the ranks' local
    /// losses, returned (engines send both in one collective). The default reduces the
    /// gradients and returns `local_loss` (right for R = 1).
    fn all_reduce_step(&mut self, grads: &mut [Tensor], local_loss: f64) -> Result<f64> {
        self.all_reduce(grads)?;
        Ok(local_loss)
    }

    /// Number of replicas R (1 for single-process training).
    fn world_size(&self) -> usize {
        1
    }

    /// This replica's rank r in 0..R (0 for single-process training).
    fn rank(&self) -> usize {
        0
    }

    /// Blocks until every rank has called it (after rank 0 writes a checkpoint).
    fn barrier(&mut self) -> Result<()> {
        Ok(())
    }
}

impl<F: FnMut(&mut [Tensor]) -> Result<()>> GradientReducer for F {
    fn all_reduce(&mut self, grads: &mut [Tensor]) -> Result<()> {
        self(grads)
    }
}

/// The reducer of a one-process data-parallel run (R = 1, the identity): with
/// [`crate::Trainer::with_data_parallel`] it trains exactly as R ranks do on the same global
/// batch, up to the summation order of the gradients, because the data and noise are keyed by
/// global sample index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SingleProcess;

impl GradientReducer for SingleProcess {
    fn all_reduce(&mut self, _grads: &mut [Tensor]) -> Result<()> {
        Ok(())
    }
}

/// The dtype of a flat buffer that holds every gradient without loss: f64 if any gradient is
/// f64, else f32 (f16 / bf16 gradients are summed in f32).
pub fn buffer_dtype(grads: &[Tensor]) -> DType {
    if grads.iter().any(|g| g.dtype() == DType::F64) {
        DType::F64
    } else {
        DType::F32
    }
}

/// The key of stream `b` under seed `a`: SplitMix64 of SplitMix64(a) ⊕ b.
fn key(a: u64, b: u64) -> u64 {
    let mut z = splitmix64(&mut { a }) ^ b;
    splitmix64(&mut z)
}

/// Seed offsets of the derived streams (training noise, evaluation noise, data).
const STEP_NOISE_XOR: u64 = 0xD15C_0DE0_0000_0001;
const EVAL_NOISE_XOR: u64 = 0xD15C_0DE0_0000_0002;
const DATA_SEED_XOR: u64 = 0xD15C_0DE0_0000_0003;

/// The training noise of step `step` (0-based) for the rank whose first sample is global sample
/// `first_sample` (r·B/R): a [`PerSampleNoise`] whose draws for global sample i are a function
/// of `(seed, step, i, draw number)` only. Every rank draws for its samples exactly what one
/// process draws for them in the whole batch, whatever R.
pub fn step_noise(seed: u64, step: u64, first_sample: u64) -> PerSampleNoise {
    PerSampleNoise::new(key(seed ^ STEP_NOISE_XOR, step)).with_offset(first_sample)
}

/// The evaluation-loss noise of step `step`, like [`step_noise`] on an independent key.
pub fn eval_noise(seed: u64, step: u64, first_sample: u64) -> PerSampleNoise {
    PerSampleNoise::new(key(seed ^ EVAL_NOISE_XOR, step)).with_offset(first_sample)
}

/// The generator a data-parallel trainer hands its [`BatchSource`] at step `step`: ChaCha8 keyed
/// by `(seed, step)`, the same on every rank, so that every rank draws the same global batch
/// (fresh toy points, flips) and [`ShardedBatches`] keeps its rows.
pub fn data_rng(seed: u64, step: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(splitmix64(&mut (seed ^ DATA_SEED_XOR)));
    rng.set_stream(step);
    rng
}

/// Rank `rank` of `world`'s rows of every global batch of an inner [`BatchSource`]: rows
/// [r·B/R, (r+1)·B/R) of the batch the source gives for the step, so the union of the ranks'
/// batches is the one-process batch. B must be a multiple of R.
///
/// Each rank builds the whole global batch and keeps its rows: exact for any source (shuffled
/// datasets, fresh toy draws, random flips), at the cost of R× the batch assembly, which is
/// small beside a forward and backward pass. A source that loads from disk per step should
/// shard itself and report it through [`BatchSource::shard`].
#[derive(Debug, Clone)]
pub struct ShardedBatches<S> {
    inner: S,
    rank: usize,
    world: usize,
}

impl<S: BatchSource> ShardedBatches<S> {
    /// Checks `world ≥ 1` and `rank < world`.
    pub fn new(inner: S, rank: usize, world: usize) -> Result<Self> {
        if world == 0 {
            return Err(Error::InvalidParameter {
                name: "world",
                value: 0.0,
                reason: "must be at least 1",
            });
        }
        if rank >= world {
            return Err(Error::InvalidParameter {
                name: "rank",
                value: rank as f64,
                reason: "must be below the world size",
            });
        }
        Ok(Self { inner, rank, world })
    }

    /// The inner source.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: BatchSource> BatchSource for ShardedBatches<S> {
    fn batch(&mut self, step: u64, rng: &mut dyn RngCore) -> Result<Tensor> {
        let b = self.inner.batch(step, rng)?;
        let n = b.dim(0)?;
        if n % self.world != 0 {
            return Err(Error::ShapeMismatch {
                what: "global batch of a data-parallel step (ShardedBatches)",
                expected: format!("a multiple of the world size {}", self.world),
                got: format!("{n} rows at step {step}"),
            });
        }
        let per = n / self.world;
        Ok(b.narrow(0, self.rank * per, per)?)
    }

    fn shard(&self) -> Option<(usize, usize)> {
        Some((self.rank, self.world))
    }
}

/// Rank and world size as a launcher sets them in the environment, for engines without their
/// own communicator (NCCL) and for sharded sampling: Open MPI (`OMPI_COMM_WORLD_RANK`,
/// `OMPI_COMM_WORLD_SIZE`, `OMPI_COMM_WORLD_LOCAL_RANK`), MPICH / Hydra and Intel MPI
/// (`PMI_RANK`, `PMI_SIZE`, `MPI_LOCALRANKID`), SLURM (`SLURM_PROCID`, `SLURM_NTASKS`,
/// `SLURM_LOCALID`) and `torchrun` (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`), in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchEnv {
    /// Global rank r.
    pub rank: usize,
    /// World size R.
    pub world_size: usize,
    /// Rank within the node (the GPU to use).
    pub local_rank: usize,
}

impl LaunchEnv {
    /// Reads the process environment; rank 0 of 1 when no launcher variables are set.
    pub fn detect() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`detect`](Self::detect), from any variable lookup (tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        const SCHEMES: [[&str; 3]; 4] = [
            [
                "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_SIZE",
                "OMPI_COMM_WORLD_LOCAL_RANK",
            ],
            ["PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"],
            ["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"],
            ["RANK", "WORLD_SIZE", "LOCAL_RANK"],
        ];
        for [r, w, l] in SCHEMES {
            let (Some(rs), Some(ws)) = (get(r), get(w)) else {
                continue;
            };
            let parse = |name: &'static str, s: &str| {
                s.trim()
                    .parse::<usize>()
                    .map_err(|_| Error::InvalidParameter {
                        name,
                        value: f64::NAN,
                        reason: "launcher variable is not a non-negative integer",
                    })
            };
            let rank = parse(r, &rs)?;
            let world_size = parse(w, &ws)?;
            let local_rank = match get(l) {
                Some(s) => parse(l, &s)?,
                None => 0,
            };
            if world_size == 0 || rank >= world_size {
                return Err(Error::InvalidParameter {
                    name: r,
                    value: rank as f64,
                    reason: "launcher rank must be below its world size (and the size ≥ 1)",
                });
            }
            return Ok(Self {
                rank,
                world_size,
                local_rank,
            });
        }
        Ok(Self {
            rank: 0,
            world_size: 1,
            local_rank: 0,
        })
    }
}
