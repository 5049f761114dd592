//! Training data: seedable 2-D toy distributions, the [`BatchSource`] the trainer pulls from,
//! and a seeded shuffling batcher over an in-memory dataset.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, RngCore, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::error::{check_param, Result};

fn normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    StandardNormal.sample(rng)
}

/// The 2-D toy distributions of the FFJORD / score-SDE literature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Toy2d {
    /// Eight isotropic Gaussians of std 0.5/√2 evenly spaced on a circle of radius 2√2
    /// (exactly [`Toy2d::mixture`]).
    EightGaussians,
    /// Uniform on the black squares of a 4 × 4 checkerboard on [−4, 4]².
    Checkerboard,
    /// Swiss roll: t = 1.5π(1 + 2u), (t cos t, t sin t)/5 + N(0, 0.2²) per coordinate.
    SwissRoll,
    /// Two interleaved half circles (scikit-learn's `make_moons`, noise 0.1) scaled by 2 and
    /// shifted by (−1, −0.2).
    TwoMoons,
    /// Four concentric rings of radii 0.75, 1.5, 2.25, 3 (equal mass) with N(0, 0.08²) noise.
    Rings,
}

impl Toy2d {
    /// Every toy distribution.
    pub const ALL: [Toy2d; 5] = [
        Toy2d::EightGaussians,
        Toy2d::Checkerboard,
        Toy2d::SwissRoll,
        Toy2d::TwoMoons,
        Toy2d::Rings,
    ];

    /// The exact mixture of [`Toy2d::EightGaussians`] (for analytic scores and mode checks);
    /// `None` for the others.
    pub fn mixture(&self) -> Option<sde_core::analytic::GaussianMixture> {
        match self {
            Toy2d::EightGaussians => sde_core::analytic::GaussianMixture::ring(
                8,
                2.0 * std::f64::consts::SQRT_2,
                0.5 / std::f64::consts::SQRT_2,
            )
            .ok(),
            _ => None,
        }
    }

    /// One point.
    pub fn sample_point<R: Rng + ?Sized>(&self, rng: &mut R) -> [f64; 2] {
        use std::f64::consts::{PI, SQRT_2};
        match self {
            Toy2d::EightGaussians => {
                // Same draw order as the mixture: component, then noise.
                let k = (rng.random::<f64>() * 8.0) as usize % 8;
                let a = 2.0 * PI * k as f64 / 8.0;
                let r = 2.0 * SQRT_2;
                let s = 0.5 / SQRT_2;
                let (z0, z1): (f64, f64) = (
                    StandardNormal.sample(&mut *rng),
                    StandardNormal.sample(&mut *rng),
                );
                [r * a.cos() + s * z0, r * a.sin() + s * z1]
            }
            Toy2d::Checkerboard => {
                let x1: f64 = rng.random::<f64>() * 4.0 - 2.0;
                let row = if rng.random::<bool>() { 2.0 } else { 0.0 };
                let x2_ = rng.random::<f64>() - row;
                let x2 = x2_ + (x1.floor().rem_euclid(2.0));
                [x1 * 2.0, x2 * 2.0]
            }
            Toy2d::SwissRoll => {
                let t = 1.5 * PI * (1.0 + 2.0 * rng.random::<f64>());
                let (a, b) = (normal(rng), normal(rng));
                [t * t.cos() / 5.0 + 0.2 * a, t * t.sin() / 5.0 + 0.2 * b]
            }
            Toy2d::TwoMoons => {
                let outer = rng.random::<bool>();
                let th = PI * rng.random::<f64>();
                let (x, y) = if outer {
                    (th.cos(), th.sin())
                } else {
                    (1.0 - th.cos(), 0.5 - th.sin())
                };
                let (a, b) = (normal(rng), normal(rng));
                [2.0 * (x + 0.1 * a) - 1.0, 2.0 * (y + 0.1 * b) - 0.2]
            }
            Toy2d::Rings => {
                let k = (rng.random::<f64>() * 4.0) as usize % 4;
                let r = 0.75 * (k + 1) as f64;
                let th = 2.0 * PI * rng.random::<f64>();
                let (a, b) = (normal(rng), normal(rng));
                [r * th.cos() + 0.08 * a, r * th.sin() + 0.08 * b]
            }
        }
    }

    /// `n` points as a `[n, 2]` tensor on `device` in `dtype`.
    ///
    /// ```
    /// use candle_core::{DType, Device};
    /// use rand::SeedableRng;
    /// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    /// let x = sde_train::Toy2d::EightGaussians.sample(512, &Device::Cpu, DType::F32, &mut rng)?;
    /// assert_eq!(x.dims(), &[512, 2]);
    /// # Ok::<(), sde_train::Error>(())
    /// ```
    pub fn sample<R: Rng + ?Sized>(
        &self,
        n: usize,
        device: &Device,
        dtype: DType,
        rng: &mut R,
    ) -> Result<Tensor> {
        let v: Vec<f64> = (0..n).flat_map(|_| self.sample_point(rng)).collect();
        Ok(Tensor::from_vec(v, (n, 2), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)?)
    }
}

/// Where the trainer's batches come from. `step` is the global optimisation step and `rng`
/// the trainer's checkpointed generator, so a source that derives its batches from
/// `(step, rng)` only resumes exactly.
pub trait BatchSource {
    /// The training batch for step `step`.
    fn batch(&mut self, step: u64, rng: &mut dyn RngCore) -> Result<Tensor>;

    /// `Some((rank, world))` if the batches are rank `rank`'s shard of `world` (see
    /// [`crate::ShardedBatches`]); `None` for a whole batch. A data-parallel trainer with more
    /// than one rank refuses a source that is not sharded for its rank.
    fn shard(&self) -> Option<(usize, usize)> {
        None
    }
}

impl<F: FnMut(u64, &mut dyn RngCore) -> Result<Tensor>> BatchSource for F {
    fn batch(&mut self, step: u64, rng: &mut dyn RngCore) -> Result<Tensor> {
        self(step, rng)
    }
}

/// Fresh draws of a [`Toy2d`] distribution for every step.
#[derive(Debug, Clone)]
pub struct ToyBatches {
    /// The distribution.
    pub dist: Toy2d,
    /// Points per batch.
    pub batch_size: usize,
    /// Device of the batches.
    pub device: Device,
    /// Dtype of the batches.
    pub dtype: DType,
}

impl ToyBatches {
    /// `batch_size` points of `dist` per step, f32 on the CPU.
    pub fn new(dist: Toy2d, batch_size: usize) -> Self {
        Self {
            dist,
            batch_size,
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

impl BatchSource for ToyBatches {
    fn batch(&mut self, _step: u64, rng: &mut dyn RngCore) -> Result<Tensor> {
        self.dist
            .sample(self.batch_size, &self.device, self.dtype, rng)
    }
}

/// Seeded shuffling over an in-memory dataset `[N, ...]`: the batch of step k is slice
/// k mod (N / B) of the permutation of epoch ⌊k / (N / B)⌋, a Fisher–Yates shuffle with a ChaCha
/// generator keyed by `(seed, epoch)`. Batches depend on `(seed, k)` only, so training resumes
/// exactly; the last incomplete batch of an epoch is dropped. With `random_flip`, each image
/// `[C, H, W]` is mirrored horizontally with probability ½ (drawn from the trainer's RNG).
///
/// Also an [`Iterator`] over the batches of successive epochs.
#[derive(Debug, Clone)]
pub struct ShuffledBatches {
    data: Tensor,
    batch_size: usize,
    seed: u64,
    random_flip: bool,
    next: u64,
    cached_epoch: Option<(u64, Vec<u32>)>,
}

impl ShuffledBatches {
    /// Batches of `batch_size` (≤ N) from `data: [N, ...]`.
    pub fn new(data: Tensor, batch_size: usize, seed: u64) -> Result<Self> {
        let n = data.dim(0)?;
        check_param(
            "batch_size",
            batch_size as f64,
            batch_size >= 1 && batch_size <= n,
            "must be in [1, dataset size]",
        )?;
        Ok(Self {
            data,
            batch_size,
            seed,
            random_flip: false,
            next: 0,
            cached_epoch: None,
        })
    }

    /// Mirror images `[B, C, H, W]` horizontally with probability ½ (`random_flip`).
    pub fn with_random_flip(mut self, on: bool) -> Self {
        self.random_flip = on;
        self
    }

    /// Batches per epoch, ⌊N / B⌋.
    pub fn batches_per_epoch(&self) -> u64 {
        (self.data.dims()[0] / self.batch_size) as u64
    }

    /// The permutation of epoch `epoch`.
    pub fn permutation(&self, epoch: u64) -> Vec<u32> {
        let n = self.data.dims()[0];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch);
        let mut p: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            let j = rng.random_range(0..=i);
            p.swap(i, j);
        }
        p
    }

    /// The (unflipped) batch of global step `k`.
    pub fn batch_at(&mut self, k: u64) -> Result<Tensor> {
        let per = self.batches_per_epoch().max(1);
        let (epoch, j) = (k / per, (k % per) as usize);
        let perm = match self.cached_epoch.take() {
            Some((e, p)) if e == epoch => p,
            _ => self.permutation(epoch),
        };
        let idx = perm[j * self.batch_size..(j + 1) * self.batch_size].to_vec();
        self.cached_epoch = Some((epoch, perm));
        let idx = Tensor::from_vec(idx, self.batch_size, self.data.device())?;
        Ok(self.data.index_select(&idx, 0)?)
    }
}

impl BatchSource for ShuffledBatches {
    fn batch(&mut self, step: u64, rng: &mut dyn RngCore) -> Result<Tensor> {
        let b = self.batch_at(step)?;
        if self.random_flip {
            crate::transforms::random_flip(&b, rng)
        } else {
            Ok(b)
        }
    }
}

impl Iterator for ShuffledBatches {
    type Item = Result<Tensor>;
    fn next(&mut self) -> Option<Result<Tensor>> {
        let k = self.next;
        self.next += 1;
        Some(self.batch_at(k))
    }
}
