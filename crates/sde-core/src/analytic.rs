//! Analytic oracles: exact scores and log densities of Gaussian and Gaussian-mixture data under
//! any SDE whose transition kernel is N(a(t) x(0), σ(t)² I).
//!
//! If p_0 = Σ_k w_k N(μ_k, diag(s_k²)), then p_t = Σ_k w_k N(a μ_k, diag(a² s_k² + σ²)) with
//! (a, σ) from [`Sde::marginal_coeffs`], so the score ∇ₓ log p_t and log p_0 are exact. Every
//! sampler and the likelihood of `sde-solvers` are validated against these.

use candle_core::{DType, Device, Shape, Tensor};

use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::score::ScoreFn;
use crate::sde::Sde;
use crate::tensor::{expand_batch, to_host_f64, PerSample};

mod fast;

/// Gaussian data p_0 = N(μ, diag(s²)) under an SDE: exact score
/// ∇ₓ log p_t(x) = −(x − a(t) μ) / (a(t)² s² + σ(t)²), computed with tensor ops on `x`'s device
/// (differentiable by autograd).
///
/// `mean` and `std` broadcast against one sample (e.g. a scalar, or the sample shape `[C, H, W]`).
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use sde_core::{analytic::GaussianScore, ScoreFn, VpSde};
/// let sde = VpSde::default();
/// let oracle = GaussianScore::isotropic(&sde, 0.3, 0.6)?;
/// let x = Tensor::zeros((4, 3, 8, 8), DType::F32, &Device::Cpu)?;
/// let t = sde_core::time_tensor(0.5, 4, &Device::Cpu, DType::F32)?;
/// let s = oracle.score(&x, &t)?;
/// assert_eq!(s.dims(), x.dims());
/// # Ok::<(), sde_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct GaussianScore<S> {
    sde: S,
    mean: Tensor,
    std: Tensor,
}

impl<S: Sde> GaussianScore<S> {
    /// Data N(`mean`, diag(`std`²)); `std` must be positive, both finite and non-empty.
    pub fn new(sde: S, mean: Tensor, std: Tensor) -> Result<Self> {
        for (arg, p) in [("mean", &mean), ("std", &std)] {
            if p.elem_count() == 0 {
                return Err(Error::ShapeMismatch {
                    what: if arg == "mean" {
                        "GaussianScore::new mean"
                    } else {
                        "GaussianScore::new std"
                    },
                    expected: "a non-empty tensor broadcasting against one sample".into(),
                    got: format!("{:?}", p.dims()),
                });
            }
        }
        let s = to_host_f64(&std)?;
        let m = to_host_f64(&mean)?;
        if m.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "GaussianScore mean".into(),
            });
        }
        if let Some(&bad) = s.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(Error::InvalidParameter {
                name: "std",
                value: bad,
                reason: "must be finite and > 0",
            });
        }
        Ok(Self { sde, mean, std })
    }

    /// Data N(`mean` · 1, `std`² I) with scalar mean and std (f32 tensors on the CPU;
    /// they follow `x` to its device and dtype).
    pub fn isotropic(sde: S, mean: f64, std: f64) -> Result<Self> {
        let dev = Device::Cpu;
        Self::new(
            sde,
            Tensor::new(mean as f32, &dev)?,
            Tensor::new(std as f32, &dev)?,
        )
    }

    fn params_for(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.mean.to_device(x.device())?.to_dtype(x.dtype())?,
            self.std.to_device(x.device())?.to_dtype(x.dtype())?,
        ))
    }

    /// Mean a μ and variance a² s² + σ² of p_t, broadcast to `x`'s shape.
    fn moments(&self, func: &'static str, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        crate::tensor::check_time_in(func, x, t, self.sde.t_end())?;
        let (a, sigma) = self.sde.marginal_coeffs(t)?;
        let (mu, s) = self.params_for(x)?;
        let a = expand_batch(&a, x)?;
        let sigma = expand_batch(&sigma, x)?;
        let mean = a.broadcast_mul(&mu)?.broadcast_as(x.shape())?;
        let var = a
            .sqr()?
            .broadcast_mul(&s.sqr()?)?
            .broadcast_add(&sigma.sqr()?)?
            .broadcast_as(x.shape())?;
        Ok((mean, var))
    }

    /// log p_t(x) per sample, `[B]`.
    pub fn log_prob(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let (mean, var) = self.moments("GaussianScore::log_prob", x, t)?;
        gaussian_logp(x, &mean, &var)
    }

    /// log p_0(x) of the data distribution itself, `[B]`.
    pub fn log_prob_data(&self, x: &Tensor) -> Result<Tensor> {
        crate::tensor::batch_size("GaussianScore::log_prob_data", "x", x)?;
        crate::tensor::check_float("GaussianScore::log_prob_data", "x", x)?;
        let (mu, s) = self.params_for(x)?;
        let mean = mu.broadcast_as(x.shape())?.contiguous()?;
        let var = s.sqr()?.broadcast_as(x.shape())?.contiguous()?;
        gaussian_logp(x, &mean, &var)
    }

    /// Draws from the data distribution p_0, of shape `shape` (`[B, ...]`).
    pub fn sample<N: NoiseSource + ?Sized>(
        &self,
        shape: &Shape,
        device: &Device,
        dtype: DType,
        noise: &mut N,
    ) -> Result<Tensor> {
        let z = noise.randn(shape, device, dtype)?;
        let (mu, s) = self.params_for(&z)?;
        Ok(z.broadcast_mul(&s)?.broadcast_add(&mu)?)
    }
}

impl<S: Sde> ScoreFn for GaussianScore<S> {
    /// −(x − a μ) / (a² s² + σ²).
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let (mean, var) = self.moments("GaussianScore::score", x, t)?;
        Ok((x - mean)?.neg()?.div(&var)?)
    }

    /// The Jacobian is −diag(1/(a² s² + σ²)), so vᵀJ = −v / var.
    fn score_with_vjp(&self, x: &Tensor, t: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (mean, var) = self.moments("GaussianScore::score_with_vjp", x, t)?;
        if v.shape() != x.shape() {
            return Err(Error::ShapeMismatch {
                what: "GaussianScore::score_with_vjp probe v",
                expected: format!("{:?} (the shape of x)", x.dims()),
                got: format!("{:?}", v.dims()),
            });
        }
        let score = (x - mean)?.neg()?.div(&var)?;
        let vjp = v.to_dtype(x.dtype())?.neg()?.div(&var)?;
        Ok((score, vjp))
    }
}

/// Per-sample log N(x; mean, diag(var)) summed over non-batch dims.
fn gaussian_logp(x: &Tensor, mean: &Tensor, var: &Tensor) -> Result<Tensor> {
    let two_pi = 2.0 * std::f64::consts::PI;
    let quad = ((x - mean)?.sqr()? / var)?;
    let logdet = var.affine(two_pi, 0.0)?.log()?;
    crate::tensor::sum_non_batch(&(quad + logdet)?.affine(-0.5, 0.0)?)
}

/// A mixture of Gaussians with diagonal covariances, Σ_k w_k N(μ_k, diag(s_k²)), over samples of
/// D = product of the non-batch dims (data of any shape is flattened).
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianMixture {
    log_weights: Vec<f64>,
    weights: Vec<f64>,
    means: Vec<Vec<f64>>,
    vars: Vec<Vec<f64>>,
    dim: usize,
}

impl GaussianMixture {
    /// Components with weights `weights` (normalised here), means `means[k]` (length D) and
    /// standard deviations `stds[k]` (length D, or 1 for an isotropic component).
    pub fn new(weights: Vec<f64>, means: Vec<Vec<f64>>, stds: Vec<Vec<f64>>) -> Result<Self> {
        let k = weights.len();
        if k == 0 || means.len() != k || stds.len() != k {
            return Err(Error::ShapeMismatch {
                what: "GaussianMixture components",
                expected: format!("{k} weights, means and stds (k ≥ 1)"),
                got: format!("{} means, {} stds", means.len(), stds.len()),
            });
        }
        let dim = means[0].len();
        if dim == 0 {
            return Err(Error::ShapeMismatch {
                what: "GaussianMixture mean",
                expected: "at least one dimension".into(),
                got: "0".into(),
            });
        }
        let total: f64 = weights.iter().sum();
        if !total.is_finite() {
            return Err(Error::InvalidParameter {
                name: "weights",
                value: total,
                reason: "the sum of the mixture weights must be finite",
            });
        }
        for &w in &weights {
            if !(w.is_finite() && w > 0.0) {
                return Err(Error::InvalidParameter {
                    name: "weights",
                    value: w,
                    reason: "mixture weights must be finite and > 0",
                });
            }
        }
        let mut vars = Vec::with_capacity(k);
        for (m, s) in means.iter().zip(&stds) {
            if m.len() != dim || !(s.len() == dim || s.len() == 1) {
                return Err(Error::ShapeMismatch {
                    what: "GaussianMixture component",
                    expected: format!("mean of length {dim}, std of length {dim} or 1"),
                    got: format!("mean {}, std {}", m.len(), s.len()),
                });
            }
            if let Some(&bad) = m.iter().find(|v| !v.is_finite()) {
                return Err(Error::InvalidParameter {
                    name: "means",
                    value: bad,
                    reason: "must be finite",
                });
            }
            if let Some(&bad) = s.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                return Err(Error::InvalidParameter {
                    name: "stds",
                    value: bad,
                    reason: "must be finite and > 0",
                });
            }
            vars.push(if s.len() == dim {
                s.iter().map(|v| v * v).collect()
            } else {
                vec![s[0] * s[0]; dim]
            });
        }
        let weights: Vec<f64> = weights.iter().map(|w| w / total).collect();
        Ok(Self {
            log_weights: weights.iter().map(|w| w.ln()).collect(),
            weights,
            means,
            vars,
            dim,
        })
    }

    /// `k` equally weighted isotropic components of std `std` on a circle of radius `radius` in
    /// 2-D: the "8 Gaussians" toy distribution for `k = 8`.
    pub fn ring(k: usize, radius: f64, std: f64) -> Result<Self> {
        let means = (0..k)
            .map(|i| {
                let a = 2.0 * std::f64::consts::PI * i as f64 / k as f64;
                vec![radius * a.cos(), radius * a.sin()]
            })
            .collect();
        Self::new(vec![1.0; k], means, vec![vec![std]; k])
    }

    /// Number of components.
    pub fn n_components(&self) -> usize {
        self.weights.len()
    }
    /// Normalised weights w_k.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }
    /// Means μ_k.
    pub fn means(&self) -> &[Vec<f64>] {
        &self.means
    }
    /// Per-dimension variances s_k².
    pub fn variances(&self) -> &[Vec<f64>] {
        &self.vars
    }
    /// D, the dimension of one sample.
    pub fn dim(&self) -> usize {
        self.dim
    }

    fn check_x(&self, func: &'static str, x: &Tensor) -> Result<usize> {
        if x.rank() < 2 {
            return Err(Error::Rank {
                func,
                arg: "x",
                expected: "≥ 2 ([B, ...])",
                got: x.shape().clone(),
            });
        }
        crate::tensor::check_float(func, "x", x)?;
        let d = crate::tensor::sample_numel(x)?;
        if d != self.dim {
            return Err(Error::ShapeMismatch {
                what: "x for GaussianMixture",
                expected: format!("[B, ...] with {} elements per sample", self.dim),
                got: format!("{:?}", x.dims()),
            });
        }
        Ok(x.dim(0)?)
    }

    /// The per-time constants of p_t for coefficients (a, σ): a μ_k, 1/v_k with
    /// v_k = a² s_k² + σ², and log w_k − ½ Σ_j log(2π v_kj). Computed once per distinct time, not
    /// per point (samplers evaluate whole batches at one t).
    fn time_constants(&self, a: f64, sigma: f64, c: &mut TimeConstants) {
        let (k, d) = (self.weights.len(), self.dim);
        c.key = Some((a, sigma));
        c.amu.resize(k * d, 0.0);
        c.inv_v.resize(k * d, 0.0);
        c.log_norm.resize(k, 0.0);
        let s2 = sigma * sigma;
        // isotropic and equal-variance components repeat v: one logarithm per distinct value
        let mut last = (f64::NAN, f64::NAN);
        for comp in 0..k {
            let mut logdet = 0.0;
            for j in 0..d {
                let v = a * a * self.vars[comp][j] + s2;
                c.amu[comp * d + j] = a * self.means[comp][j];
                c.inv_v[comp * d + j] = 1.0 / v;
                if v != last.0 {
                    last = (v, (2.0 * std::f64::consts::PI * v).ln());
                }
                logdet += last.1;
            }
            c.log_norm[comp] = self.log_weights[comp] - 0.5 * logdet;
        }
    }

    /// Log density, score and (optionally) vᵀ∂s/∂x of one sample of p_t with coefficients
    /// (a, σ), in f64. `out_score`/`out_vjp` have length D; `c` caches the per-time constants.
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    fn eval_one(
        &self,
        x: &[f64],
        a: f64,
        sigma: f64,
        v: Option<&[f64]>,
        out_score: &mut [f64],
        out_vjp: Option<&mut [f64]>,
        c: &mut TimeConstants,
    ) -> f64 {
        if c.key != Some((a, sigma)) {
            self.time_constants(a, sigma, c);
        }
        let k = self.weights.len();
        let d = self.dim;
        // log-weights of each component, then responsibilities r_k in `resp`
        let resp = &mut c.resp;
        resp.clear();
        resp.resize(k, 0.0);
        for comp in 0..k {
            let (amu, iv) = (
                &c.amu[comp * d..(comp + 1) * d],
                &c.inv_v[comp * d..(comp + 1) * d],
            );
            let mut q = 0.0;
            for j in 0..d {
                let diff = x[j] - amu[j];
                q += diff * diff * iv[j];
            }
            resp[comp] = c.log_norm[comp] - 0.5 * q;
        }
        let m = resp.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mut z = 0.0;
        for l in resp.iter_mut() {
            *l = (*l - m).exp();
            z += *l;
        }
        let logp = m + z.ln();
        for l in resp.iter_mut() {
            *l /= z;
        }
        out_score.iter_mut().for_each(|s| *s = 0.0);
        // s̄ = Σ r_k s_k with s_k = −(x − a μ_k)/v_k
        for comp in 0..k {
            let r = resp[comp];
            let (amu, iv) = (
                &c.amu[comp * d..(comp + 1) * d],
                &c.inv_v[comp * d..(comp + 1) * d],
            );
            for j in 0..d {
                out_score[j] -= r * (x[j] - amu[j]) * iv[j];
            }
        }
        if let (Some(v), Some(out)) = (v, out_vjp) {
            // J v = Σ_k r_k (−v/v_k + s_k (s_k·v)) − s̄ (s̄·v)   (J is symmetric)
            out.iter_mut().for_each(|o| *o = 0.0);
            let sbar_v: f64 = out_score.iter().zip(v).map(|(s, v)| s * v).sum();
            for comp in 0..k {
                let r = resp[comp];
                let (amu, iv) = (
                    &c.amu[comp * d..(comp + 1) * d],
                    &c.inv_v[comp * d..(comp + 1) * d],
                );
                let mut skv = 0.0;
                for j in 0..d {
                    skv += -(x[j] - amu[j]) * iv[j] * v[j];
                }
                for j in 0..d {
                    let sk = -(x[j] - amu[j]) * iv[j];
                    out[j] += r * (-v[j] * iv[j] + sk * skv);
                }
            }
            for j in 0..d {
                out[j] -= out_score[j] * sbar_v;
            }
        }
        logp
    }

    /// Log density of p_0 per sample (`x: [B, ...]` with D elements per sample) → `[B]` (f64 host values).
    pub fn log_prob(&self, x: &Tensor) -> Result<Vec<f64>> {
        let b = self.check_x("GaussianMixture::log_prob", x)?;
        let xs = to_host_f64(x)?;
        let mut sc = vec![0.0; self.dim];
        let mut scratch = TimeConstants::default();
        Ok((0..b)
            .map(|i| {
                self.eval_one(
                    &xs[i * self.dim..(i + 1) * self.dim],
                    1.0,
                    0.0,
                    None,
                    &mut sc,
                    None,
                    &mut scratch,
                )
            })
            .collect())
    }

    /// Index of the most responsible component under p_0 for each sample (mode assignment).
    #[allow(clippy::needless_range_loop)]
    pub fn classify(&self, x: &Tensor) -> Result<Vec<usize>> {
        let b = self.check_x("GaussianMixture::classify", x)?;
        let xs = to_host_f64(x)?;
        Ok((0..b)
            .map(|i| {
                let xi = &xs[i * self.dim..(i + 1) * self.dim];
                let mut best = (f64::NEG_INFINITY, 0);
                for c in 0..self.n_components() {
                    let mut l = self.log_weights[c];
                    for j in 0..self.dim {
                        let d = xi[j] - self.means[c][j];
                        l -= 0.5 * (d * d / self.vars[c][j] + self.vars[c][j].ln());
                    }
                    if l > best.0 {
                        best = (l, c);
                    }
                }
                best.1
            })
            .collect())
    }

    /// Draws `shape[0]` samples from p_0 (`shape` = `[B, ...]` with D elements per sample).
    pub fn sample<N: NoiseSource + ?Sized>(
        &self,
        shape: &Shape,
        device: &Device,
        dtype: DType,
        noise: &mut N,
    ) -> Result<Tensor> {
        let dims = shape.dims();
        let per: usize = dims.iter().skip(1).product();
        if dims.len() < 2 || per != self.dim {
            return Err(Error::ShapeMismatch {
                what: "GaussianMixture::sample shape",
                expected: format!("[B, ...] with {} elements per sample", self.dim),
                got: format!("{dims:?}"),
            });
        }
        crate::tensor::check_float_dtype("GaussianMixture::sample", "dtype", dtype)?;
        let b = dims[0];
        let u = to_host_f64(&noise.rand_uniform(&Shape::from(b), &Device::Cpu, DType::F64)?)?;
        let z = to_host_f64(&noise.randn(shape, &Device::Cpu, DType::F64)?)?;
        let mut out = vec![0.0; b * per];
        for i in 0..b {
            let mut c = 0;
            let mut acc = self.weights[0];
            while u[i] >= acc && c + 1 < self.weights.len() {
                c += 1;
                acc += self.weights[c];
            }
            for j in 0..per {
                out[i * per + j] = self.means[c][j] + self.vars[c][j].sqrt() * z[i * per + j];
            }
        }
        Ok(Tensor::from_vec(out, shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)?)
    }
}

/// Per-time constants of a mixture at one (a, σ), cached across the points of a batch.
#[derive(Debug, Default)]
struct TimeConstants {
    key: Option<(f64, f64)>,
    amu: Vec<f64>,
    inv_v: Vec<f64>,
    log_norm: Vec<f64>,
    resp: Vec<f64>,
}

/// Exact score of Gaussian-mixture data under an SDE: for p_t = Σ_k w_k N(a μ_k, a² s_k² + σ²),
/// ∇ₓ log p_t(x) = Σ_k r_k(x) · (−(x − a μ_k)/(a² s_k² + σ²)) with responsibilities
/// r_k ∝ w_k N(x; a μ_k, a² s_k² + σ²).
///
/// [`score`](ScoreFn::score) and the vector–Jacobian product are evaluated on the host in f64
/// (a fused loop: a handful of flops per element), except on float32 CPU batches of
/// low-dimensional data (D ≤ 4, e.g. the 2-D toys): those go through a vectorised float32 loop on all cores, with the per-time constants computed once per
/// run of equal times (once per batch in a sampler step), and with results that depend neither
/// on the number of cores nor on the batch a point is evaluated in; [`log_prob`](Self::log_prob) is also
/// available as differentiable tensor ops ([`log_prob_tensor`](Self::log_prob_tensor)).
/// ```
/// use candle_core::{DType, Device, Shape};
/// use rand::SeedableRng;
/// use sde_core::{analytic::{GaussianMixture, GaussianMixtureScore}, ScoreFn, VeSde};
/// let gmm = GaussianMixture::ring(8, 4.0, 0.2)?;
/// let oracle = GaussianMixtureScore::new(VeSde::default(), gmm.clone());
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let x = gmm.sample(&Shape::from((16, 2)), &Device::Cpu, DType::F32, &mut rng)?;
/// let t = sde_core::time_tensor(0.3, 16, &Device::Cpu, DType::F32)?;
/// let s = oracle.score(&x, &t)?;
/// # Ok::<(), sde_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct GaussianMixtureScore<S> {
    sde: S,
    mixture: GaussianMixture,
}

impl<S: Sde> GaussianMixtureScore<S> {
    /// The exact score of `mixture` data under `sde`.
    pub fn new(sde: S, mixture: GaussianMixture) -> Self {
        Self { sde, mixture }
    }

    /// The data distribution.
    pub fn mixture(&self) -> &GaussianMixture {
        &self.mixture
    }

    /// The SDE.
    pub fn sde(&self) -> &S {
        &self.sde
    }

    fn coeffs(
        &self,
        func: &'static str,
        x: &Tensor,
        t: &Tensor,
    ) -> Result<(usize, Vec<f64>, Vec<f64>)> {
        let b = self.mixture.check_x(func, x)?;
        crate::tensor::check_time_in(func, x, t, self.sde.t_end())?;
        let (a, s) = self.sde.marginal_coeffs(t)?;
        Ok((b, to_host_f64(&a)?, to_host_f64(&s)?))
    }

    fn eval(
        &self,
        x: &Tensor,
        t: &Tensor,
        v: Option<&Tensor>,
    ) -> Result<(Vec<f64>, Tensor, Option<Tensor>)> {
        let func = if v.is_some() {
            "GaussianMixtureScore::score_with_vjp"
        } else {
            "GaussianMixtureScore::score"
        };
        let (b, a, s) = self.coeffs(func, x, t)?;
        let d = self.mixture.dim;
        let xs = to_host_f64(x)?;
        let vs = match v {
            Some(v) => {
                if v.shape() != x.shape() {
                    return Err(Error::ShapeMismatch {
                        what: "vjp probe",
                        expected: format!("{:?}", x.dims()),
                        got: format!("{:?}", v.dims()),
                    });
                }
                Some(to_host_f64(v)?)
            }
            None => None,
        };
        let mut score = vec![0.0; b * d];
        let mut vjp = vs.as_ref().map(|_| vec![0.0; b * d]);
        let mut logp = vec![0.0; b];
        let mix = &self.mixture;
        let work = |range: std::ops::Range<usize>,
                    score: &mut [f64],
                    mut vjp: Option<&mut [f64]>,
                    logp: &mut [f64]| {
            let mut scratch = TimeConstants::default();
            let base = range.start;
            for i in range {
                let li = i - base;
                logp[li] = mix.eval_one(
                    &xs[i * d..(i + 1) * d],
                    a[i],
                    s[i],
                    vs.as_ref().map(|v| &v[i * d..(i + 1) * d]),
                    &mut score[li * d..(li + 1) * d],
                    vjp.as_mut().map(|o| &mut o[li * d..(li + 1) * d]),
                    &mut scratch,
                );
            }
        };
        // Split large batches over two threads (the work is independent per sample).
        let threads = if b * d * mix.n_components() >= 65_536 {
            crate::tensor::pool_threads()
        } else {
            1
        };
        if threads <= 1 {
            work(0..b, &mut score, vjp.as_deref_mut(), &mut logp);
        } else {
            let chunk = b.div_ceil(threads);
            std::thread::scope(|sc| {
                let mut score_rest = score.as_mut_slice();
                let mut logp_rest = logp.as_mut_slice();
                let mut vjp_rest = vjp.as_deref_mut();
                let mut start = 0;
                while start < b {
                    let n = chunk.min(b - start);
                    let (s_now, s_next) = score_rest.split_at_mut(n * d);
                    let (l_now, l_next) = logp_rest.split_at_mut(n);
                    let (v_now, v_next) = match vjp_rest {
                        Some(v) => {
                            let (a, b) = v.split_at_mut(n * d);
                            (Some(a), Some(b))
                        }
                        None => (None, None),
                    };
                    let w = &work;
                    let r = start..start + n;
                    sc.spawn(move || w(r, s_now, v_now, l_now));
                    score_rest = s_next;
                    logp_rest = l_next;
                    vjp_rest = v_next;
                    start += n;
                }
            });
        }
        let to_t = |v: Vec<f64>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, x.shape(), &Device::Cpu)?
                .to_dtype(x.dtype())?
                .to_device(x.device())?)
        };
        let vjp = match vjp {
            Some(v) => Some(to_t(v)?),
            None => None,
        };
        Ok((logp, to_t(score)?, vjp))
    }

    /// The float32 path of [`score`](ScoreFn::score) and, with a probe `v`, of
    /// [`score_with_vjp`](ScoreFn::score_with_vjp); `None` when `x` is not a float32 CPU tensor
    /// or the data have more than `fast::MAX_DIM` dimensions.
    /// Points are grouped in runs of equal time, (a, σ) are computed for all runs in one call,
    /// the per-time constants once per run.
    fn eval_f32(
        &self,
        x: &Tensor,
        t: &Tensor,
        v: Option<&Tensor>,
    ) -> Result<Option<(Tensor, Option<Tensor>)>> {
        if x.dtype() != DType::F32 || !x.device().is_cpu() || self.mixture.dim > fast::MAX_DIM {
            return Ok(None);
        }
        let func = if v.is_some() {
            "GaussianMixtureScore::score_with_vjp"
        } else {
            "GaussianMixtureScore::score"
        };
        let b = self.mixture.check_x(func, x)?;
        let times = PerSample::times_in(func, x, t, self.sde.t_end())?;
        let probe = match v {
            Some(v) if v.shape() != x.shape() => {
                return Err(Error::ShapeMismatch {
                    what: "vjp probe",
                    expected: format!("{:?}", x.dims()),
                    got: format!("{:?}", v.dims()),
                })
            }
            Some(v) => Some(v.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        let (runs, run_t) = match &times {
            PerSample::Same(t0, _) if b > 0 => (vec![(0, b)], vec![*t0]),
            PerSample::Same(..) => (Vec::new(), Vec::new()),
            PerSample::Each(ts) => {
                let mut runs = Vec::new();
                let mut start = 0;
                while start < b {
                    let mut end = start + 1;
                    while end < b && ts[end] == ts[start] {
                        end += 1;
                    }
                    runs.push((start, end));
                    start = end;
                }
                let run_t: Vec<f64> = runs.iter().map(|&(s, _)| ts[s]).collect();
                (runs, run_t)
            }
        };
        let (a, sigma) = if run_t.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let (a, sigma) =
                self.sde
                    .marginal_coeffs(&Tensor::from_vec(run_t, runs.len(), &Device::Cpu)?)?;
            (to_host_f64(&a)?, to_host_f64(&sigma)?)
        };
        let d = self.mixture.dim;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; b * d];
        let mut out_v = probe.as_ref().map(|_| vec![0f32; b * d]);
        let mix = &self.mixture;
        // The constants of a run in float32, through the f64 ones.
        let constants = |a: f64, sigma: f64, c: &mut TimeConstants, c32: &mut fast::Consts32| {
            mix.time_constants(a, sigma, c);
            let narrow = |dst: &mut Vec<f32>, src: &[f64]| {
                dst.clear();
                dst.extend(src.iter().map(|&v| v as f32));
            };
            narrow(&mut c32.amu, &c.amu);
            narrow(&mut c32.inv_v, &c.inv_v);
            narrow(&mut c32.log_norm, &c.log_norm);
        };
        let new_c32 = || fast::Consts32 {
            k: mix.n_components(),
            d,
            amu: Vec::new(),
            inv_v: Vec::new(),
            log_norm: Vec::new(),
        };
        if runs.len() == 1 {
            // One time (a sampler step): the points are split over threads.
            let (mut c, mut c32) = (TimeConstants::default(), new_c32());
            constants(a[0], sigma[0], &mut c, &mut c32);
            let vv = match (&probe, &mut out_v) {
                (Some(pv), Some(ov)) => Some((&pv[..], &mut ov[..])),
                _ => None,
            };
            fast::score_run(&xs, &mut out, vv, &c32);
        } else {
            // Several times (e.g. per-sample ODE steps): contiguous groups of runs, one per
            // thread, each run on its group's thread.
            let threads = if b * d * mix.n_components() >= 1 << 16 {
                crate::tensor::pool_threads()
            } else {
                1
            };
            let per_group = b.div_ceil(threads);
            // Each task: the runs first..last and their part of the outputs.
            type Task<'a> = (usize, usize, &'a mut [f32], Option<&'a mut [f32]>);
            let mut tasks: Vec<Task> = Vec::new();
            let (mut out_rest, mut ov_rest) = (&mut out[..], out_v.as_deref_mut());
            let mut first = 0;
            while first < runs.len() {
                let mut last = first;
                while last < runs.len() && runs[last].1 - runs[first].0 <= per_group {
                    last += 1;
                }
                let last = last.max(first + 1);
                let len = (runs[last - 1].1 - runs[first].0) * d;
                let (o_now, o_next) = std::mem::take(&mut out_rest).split_at_mut(len);
                let (v_now, v_next) = match ov_rest.take() {
                    Some(ov) => {
                        let (a, b) = ov.split_at_mut(len);
                        (Some(a), Some(b))
                    }
                    None => (None, None),
                };
                tasks.push((first, last, o_now, v_now));
                out_rest = o_next;
                ov_rest = v_next;
                first = last;
            }
            use rayon::prelude::*;
            let (xs, probe, runs) = (&xs, &probe, &runs);
            tasks.into_par_iter().for_each(|(first, last, o, mut ov)| {
                let (mut c, mut c32) = (TimeConstants::default(), new_c32());
                let offset = runs[first].0 * d;
                for i in first..last {
                    let (start, end) = runs[i];
                    constants(a[i], sigma[i], &mut c, &mut c32);
                    let r = start * d..end * d;
                    let local = r.start - offset..r.end - offset;
                    let vv = match (probe, ov.as_deref_mut()) {
                        (Some(pv), Some(ov)) => Some((&pv[r.clone()], &mut ov[local.clone()])),
                        _ => None,
                    };
                    fast::points_dispatch(&xs[r], &mut o[local], vv, &c32);
                }
            });
        }
        let to_t = |v: Vec<f32>| Tensor::from_vec(v, x.shape(), &Device::Cpu);
        let out_v = match out_v {
            Some(v) => Some(to_t(v)?),
            None => None,
        };
        Ok(Some((to_t(out)?, out_v)))
    }

    /// log p_t(x) per sample (host f64 values).
    pub fn log_prob(&self, x: &Tensor, t: &Tensor) -> Result<Vec<f64>> {
        Ok(self.eval(x, t, None)?.0)
    }

    /// log p_t(x) per sample as differentiable candle ops: `[B]` in `x`'s dtype
    /// (for autograd checks and for users who need gradients of the density).
    pub fn log_prob_tensor(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let func = "GaussianMixtureScore::log_prob_tensor";
        let b = self.mixture.check_x(func, x)?;
        crate::tensor::check_time_in(func, x, t, self.sde.t_end())?;
        if b == 0 {
            // an empty batch: candle's max has nothing to reduce
            return Ok(Tensor::zeros(0, x.dtype(), x.device())?);
        }
        let (a, s) = self.sde.marginal_coeffs(t)?;
        let (k, d) = (self.mixture.n_components(), self.mixture.dim);
        let dev = x.device();
        let dt = x.dtype();
        let flat = |v: &[Vec<f64>]| -> Result<Tensor> {
            let data: Vec<f64> = v.iter().flatten().copied().collect();
            Ok(Tensor::from_vec(data, (1, k, d), dev)?.to_dtype(dt)?)
        };
        let mu = flat(&self.mixture.means)?;
        let var0 = flat(&self.mixture.vars)?;
        let a = a.to_dtype(dt)?.reshape((b, 1, 1))?;
        let s = s.to_dtype(dt)?.reshape((b, 1, 1))?;
        let xk = x.reshape((b, 1, d))?;
        let mean = a.broadcast_mul(&mu)?;
        let var = a.sqr()?.broadcast_mul(&var0)?.broadcast_add(&s.sqr()?)?;
        let diff = xk.broadcast_sub(&mean)?;
        let quad = (diff.sqr()? / &var)?.sum(2)?;
        let logdet = var.affine(2.0 * std::f64::consts::PI, 0.0)?.log()?.sum(2)?;
        let logw = Tensor::from_vec(self.mixture.log_weights.clone(), (1, k), dev)?.to_dtype(dt)?;
        let l = (quad + logdet)?.affine(-0.5, 0.0)?.broadcast_add(&logw)?; // [B, K]
        let m = l.max_keepdim(1)?.detach();
        let lse = l.broadcast_sub(&m)?.exp()?.sum_keepdim(1)?.log()?.add(&m)?;
        Ok(lse.squeeze(1)?)
    }
}

impl<S: Sde> ScoreFn for GaussianMixtureScore<S> {
    /// Float32 CPU batches of low-dimensional data (D ≤ 4) go through a vectorised float32 loop
    /// on all cores, with the per-time constants computed once per run of equal times (once per
    /// batch in a sampler step); everything else through the per-point f64 loop.
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        if let Some((s, _)) = self.eval_f32(x, t, None)? {
            return Ok(s);
        }
        Ok(self.eval(x, t, None)?.1)
    }

    /// J v = Σ_k r_k (−v/v_k + s_k (s_k·v)) − s̄ (s̄·v), with s_k the component scores and s̄ the score.
    /// Float32 CPU batches take the same float32 path as [`score`](ScoreFn::score).
    fn score_with_vjp(&self, x: &Tensor, t: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        if let Some((s, Some(vjp))) = self.eval_f32(x, t, Some(v))? {
            return Ok((s, vjp));
        }
        let (_, s, vjp) = self.eval(x, t, Some(v))?;
        let vjp = vjp.ok_or_else(|| Error::Unsupported("vjp was not computed".into()))?;
        Ok((s, vjp))
    }
}
