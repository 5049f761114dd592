//! Per-sample Brownian motion that can be queried on any interval, in any order: a Brownian
//! tree (bridge sampling on a binary subdivision of the time interval), and a [`NoiseSource`]
//! adapter that turns its increments into the standard normals of a fixed-grid sampler.

use candle_core::{DType, Device, Shape, Tensor};
use rand_distr::{Distribution, StandardNormal};

use super::{fill_chunks, NoiseSource, Xoshiro256PlusPlus};
use crate::error::{Error, Result};

/// Deepest subdivision a tree may use: below this the dyadic midpoints of an interval of
/// width 1 stop being distinct doubles long before, and a query costs `depth` draws per value.
const MAX_DEPTH: u32 = 48;

/// One Brownian motion W_k(t) per sample k on [t_min, t_max], W_k(t_min) = 0, generated
/// lazily by bridge sampling on a binary tree (torchsde's `BrownianTree`, the per-sample
/// seeds of k-diffusion's `BrownianTreeNoiseSampler`).
///
/// W_k(t_max) = √(t_max − t_min) · z₀; the value at the midpoint m of a tree interval [a, b]
/// whose end values are known is the Brownian bridge draw
/// W(m) = ½ (W(a) + W(b)) + √((b − a)/4) · z_node, and a query W(t) descends from the root to
/// the interval that holds t, `depth` = ⌈log₂((t_max − t_min)/tol)⌉ levels deep. Inside that
/// leaf [a, b] (width ≤ `tol`), W(t) = W(a) + (t − a)/(b − a) · (W(b) − W(a)) + √((t − a)(b − t)/(b − a)) · z_leaf.
/// Every z is a vector of D standard normals from its own stream keyed by
/// (seed, offset + k, node), so:
///
/// - the path is a fixed function of t: `increment(t0, t1)` = W(t1) − W(t0) for any order of
///   queries, and increments add up over subdivisions (W(a, c) = W(a, b) + W(b, c) up to f64
///   rounding): a rejected adaptive step that is retried on a sub-interval sees the same path;
/// - the values at any set of times that lie in distinct leaves have exactly the joint law of
///   Brownian motion (the tree values are exact bridge draws, and the leaf draws are
///   conditionally independent as for a Markov process); only two query times closer than
///   `tol`, in the same leaf, are approximated (their increment has the right mean and is
///   correlated with the rest as it should, with a variance off by at most `tol`);
/// - sample k depends on (seed, offset + k) only, not on the batch it is queried in.
///
/// Values are computed on the host in f64, then converted to the requested dtype and device.
/// A sample of D values uses the first D values of each node's stream, so the path of a
/// sample does not depend on how its D values are shaped.
///
/// ```
/// use candle_core::{DType, Device, Shape};
/// use sde_core::noise::BrownianTree;
/// let tree = BrownianTree::new(7, 0.0, 1.0)?;
/// let shape = Shape::from((4, 2));
/// let whole = tree.increment(0.2, 0.9, &shape, &Device::Cpu, DType::F64)?;
/// // queried in another order, on a subdivision: the same path
/// let right = tree.increment(0.5, 0.9, &shape, &Device::Cpu, DType::F64)?;
/// let left = tree.increment(0.2, 0.5, &shape, &Device::Cpu, DType::F64)?;
/// let sum = (left + right)?;
/// let err = (whole - sum)?.abs()?.max_all()?.to_scalar::<f64>()?;
/// assert!(err < 1e-12);
/// # Ok::<(), sde_core::Error>(())
/// ```
#[doc(alias = "BrownianTreeNoiseSampler")]
#[doc(alias = "BrownianInterval")]
#[derive(Debug, Clone, PartialEq)]
pub struct BrownianTree {
    seed: u64,
    offset: u64,
    t_min: f64,
    t_max: f64,
    tol: f64,
    depth: u32,
}

/// The `[B, ...]` layout of a request: batch size and values per sample.
fn batch_layout(shape: &Shape) -> Result<(usize, usize)> {
    match shape.dims().split_first() {
        Some((&b, rest)) if b > 0 => Ok((b, rest.iter().product())),
        _ => Err(Error::ShapeMismatch {
            what: "Brownian increment shape",
            expected: "[B, ...] with B >= 1".into(),
            got: format!("{:?}", shape.dims()),
        }),
    }
}

/// Scratch buffers of one descent (D values each).
struct Scratch {
    wa: Vec<f64>,
    wb: Vec<f64>,
    z: Vec<f64>,
    w0: Vec<f64>,
}

impl Scratch {
    fn new(d: usize) -> Self {
        Self {
            wa: vec![0.0; d],
            wb: vec![0.0; d],
            z: vec![0.0; d],
            w0: vec![0.0; d],
        }
    }
}

impl BrownianTree {
    /// Default resolution of the tree, as torchsde's `BrownianTree`: 20 levels on [0, 1].
    pub const DEFAULT_TOL: f64 = 1e-6;

    /// Brownian motions on [t_min, t_max] for samples 0, 1, … under `seed`, with the default
    /// tolerance [`DEFAULT_TOL`](Self::DEFAULT_TOL). Errors unless t_min < t_max, both finite.
    pub fn new(seed: u64, t_min: f64, t_max: f64) -> Result<Self> {
        if !(t_min.is_finite() && t_max.is_finite() && t_min < t_max) {
            return Err(Error::InvalidParameter {
                name: "t_max",
                value: t_max,
                reason: "the tree's interval needs finite t_min < t_max",
            });
        }
        let mut tree = Self {
            seed,
            offset: 0,
            t_min,
            t_max,
            tol: Self::DEFAULT_TOL,
            depth: 0,
        };
        tree.depth = tree.depth_for(Self::DEFAULT_TOL)?;
        Ok(tree)
    }

    /// Leaves of width at most `tol` (> 0): depth ⌈log₂((t_max − t_min)/tol)⌉, at most 48.
    pub fn with_tol(mut self, tol: f64) -> Result<Self> {
        self.depth = self.depth_for(tol)?;
        self.tol = tol;
        Ok(self)
    }

    /// The first sample of the batches queried is global sample `offset` (as
    /// [`PerSampleNoise::with_offset`](super::PerSampleNoise::with_offset)).
    pub fn with_offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }

    fn depth_for(&self, tol: f64) -> Result<u32> {
        let ratio = (self.t_max - self.t_min) / tol;
        if !(tol.is_finite() && tol > 0.0 && ratio.is_finite()) {
            return Err(Error::InvalidParameter {
                name: "tol",
                value: tol,
                reason: "must be finite and > 0",
            });
        }
        let depth = ratio.log2().ceil().max(0.0);
        if depth > MAX_DEPTH as f64 {
            return Err(Error::InvalidParameter {
                name: "tol",
                value: tol,
                reason: "at most 48 levels: tol >= (t_max - t_min) / 2^48",
            });
        }
        Ok(depth as u32)
    }

    /// The interval [t_min, t_max].
    pub fn interval(&self) -> (f64, f64) {
        (self.t_min, self.t_max)
    }
    /// Leaf width bound `tol`.
    pub fn tol(&self) -> f64 {
        self.tol
    }
    /// Number of levels a query descends.
    pub fn depth(&self) -> u32 {
        self.depth
    }
    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// The global index of the batch's first sample.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// W_k(t1) − W_k(t0) for every sample k of a batch of shape `[B, ...]`, one interval for
    /// all (either order; t0 == t1 gives zeros). Errors for a NaN or a time outside the tree's
    /// interval ([`Error::BrownianTime`]), a shape without a batch, or a non-float dtype.
    pub fn increment(
        &self,
        t0: f64,
        t1: f64,
        shape: &Shape,
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor> {
        let (b, _) = batch_layout(shape)?;
        self.increment_each(&vec![t0; b], &vec![t1; b], shape, device, dtype)
    }

    /// W_k(t1\[k\]) − W_k(t0\[k\]): one interval per sample (an adaptive solver's per-sample step).
    pub fn increment_each(
        &self,
        t0: &[f64],
        t1: &[f64],
        shape: &Shape,
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor> {
        let (b, _) = batch_layout(shape)?;
        let rows: Vec<u64> = (0..b as u64).collect();
        self.increment_rows(&rows, t0, t1, shape, device, dtype)
    }

    /// Row j of the result is W_k(t1\[j\]) − W_k(t0\[j\]) of sample k = `rows[j]` (a batch index,
    /// global sample `offset + rows[j]`): the increments of a subset of a batch, e.g. the
    /// samples an adaptive solver still advances. `shape` is the result's `[rows.len(), ...]`.
    pub fn increment_rows(
        &self,
        rows: &[u64],
        t0: &[f64],
        t1: &[f64],
        shape: &Shape,
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor> {
        if !matches!(dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64) {
            return Err(Error::Unsupported(format!(
                "Brownian increments need a float dtype, got {dtype:?}"
            )));
        }
        let v = self.increment_host(rows, t0, t1, shape, false)?;
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)?)
    }

    /// The increments on the host in f64, each sample's divided by √|t1 − t0| when
    /// `normalise`.
    fn increment_host(
        &self,
        rows: &[u64],
        t0: &[f64],
        t1: &[f64],
        shape: &Shape,
        normalise: bool,
    ) -> Result<Vec<f64>> {
        let (b, per) = batch_layout(shape)?;
        for (what, len) in [("rows", rows.len()), ("t0", t0.len()), ("t1", t1.len())] {
            if len != b {
                return Err(Error::ShapeMismatch {
                    what: "Brownian per-sample query",
                    expected: format!("{b} values of {what} (one per sample of {shape:?})"),
                    got: format!("{len}"),
                });
            }
        }
        for (which, ts) in [("t0", t0), ("t1", t1)] {
            for (index, &t) in ts.iter().enumerate() {
                if !(t.is_finite() && t >= self.t_min && t <= self.t_max) {
                    return Err(Error::BrownianTime {
                        which,
                        index,
                        t,
                        t_min: self.t_min,
                        t_max: self.t_max,
                    });
                }
            }
        }
        let mut out = vec![0f64; b * per];
        if per == 0 {
            return Ok(out);
        }
        fill_chunks(&mut out, per, false, |first, chunk| {
            let mut s = Scratch::new(per);
            for (i, w) in chunk.chunks_mut(per).enumerate() {
                let j = first + i;
                let (a, c) = (t0[j], t1[j]);
                if a == c {
                    w.fill(0.0);
                    continue;
                }
                let sample = self.offset.wrapping_add(rows[j]);
                let mut w0 = std::mem::take(&mut s.w0);
                self.point(sample, a, &mut w0, &mut s);
                self.point(sample, c, w, &mut s);
                let scale = if normalise {
                    1.0 / (c - a).abs().sqrt()
                } else {
                    1.0
                };
                for (wi, &w0i) in w.iter_mut().zip(&w0) {
                    *wi = (*wi - w0i) * scale;
                }
                s.w0 = w0;
            }
        });
        Ok(out)
    }

    /// The stream key of `node` of global sample `sample`: SplitMix64 mixing of seed, sample
    /// and node in turn (the seed is mixed before the sample is added, so that (seed, sample)
    /// and (seed + 1, sample − 1) do not share a key), with its own domain constant.
    fn node_key(&self, sample: u64, node: u64) -> u64 {
        let mut z = 0x6A09_E667_F3BC_C909u64;
        for w in [self.seed, sample, node] {
            z = z.wrapping_add(w).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
        }
        z
    }

    /// D standard normals of `node` (node 0: W(t_max); node n ≥ 1: the midpoint of heap
    /// interval n, or the leaf draw of a leaf interval) into `z`.
    fn normals(&self, sample: u64, node: u64, z: &mut [f64]) {
        let mut r = Xoshiro256PlusPlus::new(self.node_key(sample, node));
        for v in z.iter_mut() {
            *v = StandardNormal.sample(&mut r);
        }
    }

    /// W(t) of global sample `sample` into `w` (t already validated).
    fn point(&self, sample: u64, t: f64, w: &mut [f64], s: &mut Scratch) {
        if t == self.t_min {
            w.fill(0.0);
            return;
        }
        let (mut a, mut b) = (self.t_min, self.t_max);
        self.normals(sample, 0, &mut s.wb);
        let root = (b - a).sqrt();
        s.wb.iter_mut().for_each(|v| *v *= root);
        if t == b {
            w.copy_from_slice(&s.wb);
            return;
        }
        s.wa.fill(0.0);
        // Heap numbering: interval 1 is [t_min, t_max], the halves of n are 2n and 2n + 1.
        let mut node = 1u64;
        for _ in 0..self.depth {
            let m = a + 0.5 * (b - a);
            self.normals(sample, node, &mut s.z);
            let sd = (0.25 * (b - a)).sqrt();
            for ((z, &wa), &wb) in s.z.iter_mut().zip(&s.wa).zip(&s.wb) {
                *z = 0.5 * (wa + wb) + sd * *z;
            }
            if t == m {
                w.copy_from_slice(&s.z);
                return;
            }
            if t < m {
                b = m;
                std::mem::swap(&mut s.wb, &mut s.z);
                node *= 2;
            } else {
                a = m;
                std::mem::swap(&mut s.wa, &mut s.z);
                node = 2 * node + 1;
            }
        }
        // Leaf [a, b] with a < t < b: one bridge draw at t (leaf nodes never hold midpoints).
        self.normals(sample, node, &mut s.z);
        let width = b - a;
        let lambda = (t - a) / width;
        let sd = ((t - a) * (b - t) / width).sqrt();
        for (((wi, &z), &wa), &wb) in w.iter_mut().zip(&s.z).zip(&s.wa).zip(&s.wb) {
            *wi = wa + lambda * (wb - wa) + sd * z;
        }
    }
}

/// A [`NoiseSource`] that gives a fixed-grid stochastic sampler Brownian noise: after
/// [`set_interval(t, t_next)`](Self::set_interval), a draw returns the standard normals
/// z_k = (W_k(t_next) − W_k(t)) / √|t_next − t| of a [`BrownianTree`] (k-diffusion's
/// `BrownianTreeNoiseSampler`), so the samples do not depend on the batch size, and a run on
/// a finer grid sees a refinement of the same Brownian path.
///
/// With `draws_per_interval = n` (default 1; e.g. 2 for a predictor–corrector step that draws
/// twice), draw j of the interval uses its j-th of n equal sub-intervals; one more draw before
/// the next `set_interval` is an error, as is a draw before the first, and uniform draws.
/// ```
/// use candle_core::{DType, Device, Shape};
/// use sde_core::noise::{BrownianNoise, BrownianTree, NoiseSource};
/// let tree = BrownianTree::new(3, 0.0, 1.0)?;
/// let mut noise = BrownianNoise::new(tree.clone());
/// let shape = Shape::from((5, 2));
/// noise.set_interval(1.0, 0.75)?;
/// let z = noise.randn(&shape, &Device::Cpu, DType::F64)?;
/// let dw = tree.increment(1.0, 0.75, &shape, &Device::Cpu, DType::F64)?;
/// let err = (z.affine(0.5, 0.0)? - dw)?.abs()?.max_all()?.to_scalar::<f64>()?;
/// assert!(err < 1e-12); // √0.25 · z = ΔW
/// # Ok::<(), sde_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct BrownianNoise {
    tree: BrownianTree,
    interval: Option<(f64, f64)>,
    draws_per_interval: usize,
    drawn: usize,
}

impl BrownianNoise {
    /// Normals from `tree`, one draw per interval.
    pub fn new(tree: BrownianTree) -> Self {
        Self {
            tree,
            interval: None,
            draws_per_interval: 1,
            drawn: 0,
        }
    }

    /// `n ≥ 1` draws per interval, each on its own of n equal sub-intervals.
    pub fn with_draws_per_interval(mut self, n: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::InvalidParameter {
                name: "draws_per_interval",
                value: 0.0,
                reason: "must be at least 1",
            });
        }
        self.draws_per_interval = n;
        Ok(self)
    }

    /// The next draws are the normalised increments over (t, t_next): both inside the tree's
    /// interval, t ≠ t_next.
    pub fn set_interval(&mut self, t: f64, t_next: f64) -> Result<()> {
        let (t_min, t_max) = self.tree.interval();
        for (which, v) in [("t", t), ("t_next", t_next)] {
            if !(v.is_finite() && v >= t_min && v <= t_max) {
                return Err(Error::BrownianTime {
                    which,
                    index: 0,
                    t: v,
                    t_min,
                    t_max,
                });
            }
        }
        if t == t_next {
            return Err(Error::InvalidParameter {
                name: "t_next",
                value: t_next,
                reason: "the step interval must not be empty (t_next != t)",
            });
        }
        self.interval = Some((t, t_next));
        self.drawn = 0;
        Ok(())
    }

    /// The tree.
    pub fn tree(&self) -> &BrownianTree {
        &self.tree
    }
}

impl NoiseSource for BrownianNoise {
    fn randn(&mut self, shape: &Shape, device: &Device, dtype: DType) -> Result<Tensor> {
        let Some((t, t_next)) = self.interval else {
            return Err(Error::Unsupported(
                "BrownianNoise: call set_interval(t, t_next) before drawing".into(),
            ));
        };
        if self.drawn >= self.draws_per_interval {
            return Err(Error::Unsupported(format!(
                "BrownianNoise: draw {} in the interval ({t}, {t_next}) of {} allowed; \
                 call set_interval for the next step or raise draws_per_interval",
                self.drawn + 1,
                self.draws_per_interval
            )));
        }
        if !matches!(dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64) {
            return Err(Error::Unsupported(format!(
                "Brownian increments need a float dtype, got {dtype:?}"
            )));
        }
        let n = self.draws_per_interval as f64;
        let j = self.drawn as f64;
        let a = t + (t_next - t) * (j / n);
        let c = if self.drawn + 1 == self.draws_per_interval {
            t_next
        } else {
            t + (t_next - t) * ((j + 1.0) / n)
        };
        let (b, _) = batch_layout(shape)?;
        let rows: Vec<u64> = (0..b as u64).collect();
        let v = self
            .tree
            .increment_host(&rows, &vec![a; b], &vec![c; b], shape, true)?;
        self.drawn += 1;
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)?)
    }

    fn rand_uniform(&mut self, _: &Shape, _: &Device, _: DType) -> Result<Tensor> {
        Err(Error::Unsupported(
            "BrownianNoise gives normal increments only; draw uniforms from a seeded Rng".into(),
        ))
    }
}
