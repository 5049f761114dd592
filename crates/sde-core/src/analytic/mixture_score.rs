//! [`GaussianMixtureScore`]: the exact score of Gaussian-mixture data under an SDE, in f64.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::score::ScoreFn;
use crate::sde::Sde;
use crate::tensor::to_host_f64;

use super::mixture::{GaussianMixture, TimeConstants};

/// Rows per block of the task layout of [`GaussianMixtureScore`]'s loop.
const ROWS_PER_BLOCK: usize = 64;
/// At most this many tasks per call (a constant: the layout depends on the batch size only).
const MAX_TASKS: usize = 64;

/// Exact score of Gaussian-mixture data under an SDE: for
/// $p_t = \sum_k w_k \mathcal N(a\mu_k, \operatorname{diag}(v_k))$, $v_k = a^2 s_k^2 + \sigma^2$,
///
/// $\nabla_x \log p_t(x) = \sum_k r_k(x)\,\big(-(x - a\mu_k)/v_k\big)$ with responsibilities
/// $r_k \propto w_k \mathcal N(x; a\mu_k, v_k)$.
///
/// The ground truth, slow and plain: a per-point loop on the host in **f64** (the coefficients
/// $(a, \sigma)$ too, from `t` widened to f64), whatever the dtype of `x`, with results returned
/// in `x`'s dtype on `x`'s device. Large batches are split over the kernels' thread pool by
/// size only, so results do not depend on the thread count. [`log_prob`](Self::log_prob) is
/// also available as differentiable tensor ops ([`log_prob_tensor`](Self::log_prob_tensor)).
/// For speed on float32 CPU batches (samplers of the 2-D toys), use
/// [`FastMixtureScore`](super::FastMixtureScore), which is tested against this type.
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

    /// The batch size and the host f64 coefficients (a, σ) at the times `t` (checked).
    fn coeffs(
        &self,
        func: &'static str,
        x: &Tensor,
        t: &Tensor,
    ) -> Result<(usize, Vec<f64>, Vec<f64>)> {
        let b = self.mixture.check_x(func, x)?;
        let times = crate::tensor::check_time_in(func, x, t, self.sde.t_end())?;
        let t64 = Tensor::from_vec(times, b, &Device::Cpu)?;
        let (a, s) = self.sde.marginal_coeffs(&t64)?;
        Ok((b, to_host_f64(&a)?, to_host_f64(&s)?))
    }

    /// Log densities, scores and (with a probe `v`) vjps of every point, in f64.
    pub(super) fn eval(
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
        // Tasks of whole rows laid out by the batch size only (the points are independent).
        struct Task<'a> {
            rows: Range<usize>,
            score: &'a mut [f64],
            vjp: Option<&'a mut [f64]>,
            logp: &'a mut [f64],
        }
        let mut tasks = Vec::new();
        let (mut s_rest, mut v_rest, mut l_rest) =
            (&mut score[..], vjp.as_deref_mut(), &mut logp[..]);
        for rows in sde_kernels::parallel::row_groups(b, ROWS_PER_BLOCK, MAX_TASKS) {
            let n = rows.len();
            let (s_now, s_next) = std::mem::take(&mut s_rest).split_at_mut(n * d);
            let (l_now, l_next) = std::mem::take(&mut l_rest).split_at_mut(n);
            let (v_now, v_next) = match v_rest.take() {
                Some(v) => {
                    let (a, b) = v.split_at_mut(n * d);
                    (Some(a), Some(b))
                }
                None => (None, None),
            };
            tasks.push(Task {
                rows,
                score: s_now,
                vjp: v_now,
                logp: l_now,
            });
            (s_rest, v_rest, l_rest) = (s_next, v_next, l_next);
        }
        // About eight floating-point operations per point, component and dimension.
        let work = 8usize
            .saturating_mul(b * d)
            .saturating_mul(mix.n_components());
        sde_kernels::parallel::for_each_mut(&mut tasks, work, |_, task| {
            let mut scratch = TimeConstants::default();
            let base = task.rows.start;
            for i in task.rows.clone() {
                let li = i - base;
                task.logp[li] = mix.eval_one(
                    &xs[i * d..(i + 1) * d],
                    a[i],
                    s[i],
                    vs.as_ref().map(|v| &v[i * d..(i + 1) * d]),
                    &mut task.score[li * d..(li + 1) * d],
                    task.vjp
                        .as_deref_mut()
                        .map(|o| &mut o[li * d..(li + 1) * d]),
                    &mut scratch,
                );
            }
        });
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

    /// log p_t(x) per sample (host f64 values).
    pub fn log_prob(&self, x: &Tensor, t: &Tensor) -> Result<Vec<f64>> {
        Ok(self.eval(x, t, None)?.0)
    }

    /// log p_t(x) per sample as differentiable candle ops, computed in f64 (on the CPU for a
    /// Metal `x`): `[B]` in `x`'s dtype (for autograd checks and for users who need gradients
    /// of the density).
    pub fn log_prob_tensor(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let x_in = x;
        let func = "GaussianMixtureScore::log_prob_tensor";
        let b = self.mixture.check_x(func, x)?;
        crate::tensor::check_time_in(func, x, t, self.sde.t_end())?;
        if b == 0 {
            // an empty batch: candle's max has nothing to reduce
            return Ok(Tensor::zeros(0, x.dtype(), x.device())?);
        }
        let dev = &super::compute_device(x);
        let dt = DType::F64;
        let (a, s) = self.sde.marginal_coeffs(&t.to_device(dev)?.to_dtype(dt)?)?;
        let (k, d) = (self.mixture.n_components(), self.mixture.dim);
        let x = &x.to_device(dev)?.to_dtype(dt)?;
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
        Ok(lse
            .squeeze(1)?
            .to_dtype(x_in.dtype())?
            .to_device(x_in.device())?)
    }
}

impl<S: Sde> ScoreFn for GaussianMixtureScore<S> {
    /// The per-point f64 loop (f64 whatever `x`'s dtype; the result in `x`'s dtype).
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        Ok(self.eval(x, t, None)?.1)
    }

    /// J v = Σ_k r_k (−v/v_k + s_k (s_k·v)) − s̄ (s̄·v), with s_k the component scores and s̄
    /// the score; the same f64 loop as [`score`](ScoreFn::score).
    fn score_with_vjp(&self, x: &Tensor, t: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, s, vjp) = self.eval(x, t, Some(v))?;
        let vjp = vjp.ok_or_else(|| Error::Unsupported("vjp was not computed".into()))?;
        Ok((s, vjp))
    }
}
