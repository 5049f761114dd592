//! [`GaussianMixture`]: Gaussian-mixture data, its exact log density and the per-point f64
//! evaluation of the score of $p_t$ that [`GaussianMixtureScore`](super::GaussianMixtureScore)
//! runs.

use candle_core::{DType, Device, Shape, Tensor};

use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::tensor::to_host_f64;

/// A mixture of Gaussians with diagonal covariances, Σ_k w_k N(μ_k, diag(s_k²)), over samples of
/// D = product of the non-batch dims (data of any shape is flattened).
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianMixture {
    pub(super) log_weights: Vec<f64>,
    weights: Vec<f64>,
    pub(super) means: Vec<Vec<f64>>,
    pub(super) vars: Vec<Vec<f64>>,
    pub(super) dim: usize,
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

    pub(super) fn check_x(&self, func: &'static str, x: &Tensor) -> Result<usize> {
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
    pub(super) fn time_constants(&self, a: f64, sigma: f64, c: &mut TimeConstants) {
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
    pub(super) fn eval_one(
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
pub(super) struct TimeConstants {
    key: Option<(f64, f64)>,
    /// a μ_k, `[K·D]`.
    pub(super) amu: Vec<f64>,
    /// 1 / v_k, `[K·D]`.
    pub(super) inv_v: Vec<f64>,
    /// log w_k − ½ Σ_j log(2π v_kj), `[K]`.
    pub(super) log_norm: Vec<f64>,
    resp: Vec<f64>,
}
