//! [`FastMixtureScore`]: the Gaussian-mixture score in float32 through the vectorised kernel of
//! `sde_kernels::mixture`, for samplers and likelihoods of low-dimensional toy data on the CPU.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::score::ScoreFn;
use crate::sde::Sde;
use crate::tensor::{to_host_f64, PerSample};

use super::mixture::{GaussianMixture, TimeConstants};
use super::GaussianMixtureScore;

/// The score of Gaussian-mixture data under an SDE, fast: the same function as
/// [`GaussianMixtureScore`] (the f64 truth),
///
/// $s(x) = \sum_k r_k(x)\,(a\mu_k - x)/v_k$, $v_k = a^2 s_k^2 + \sigma^2$,
/// $r_k = \operatorname{softmax}_k\big(\log w_k - \tfrac12\sum_j \log(2\pi v_{kj})
/// - \tfrac12 \sum_j (x_j - a\mu_{kj})^2 / v_{kj}\big)$,
///
/// and its vector–Jacobian product, evaluated in **float32** by a vectorised kernel
/// (`sde_kernels::mixture`: AVX2 or portable, bit-identical) on the kernels' thread pool. The
/// per-time constants ($a\mu_k$, $1/v_k$ and the log-normalisers, from f64 coefficients) are
/// computed in f64 once per run of equal times (once per batch in a sampler step) and rounded
/// to float32.
///
/// It applies to float32 CPU tensors of data with $D \le 4$ dimensions per sample (the 2-D
/// toys); any other input (another dtype, an accelerator, more dimensions) is evaluated by the
/// f64 truth instead, so the type can stand wherever a mixture score is needed.
///
/// **Accuracy** against [`GaussianMixtureScore`] at points of $p_t$ (tested for VE, VP and
/// sub-VP from $t = 10^{-5}$ to 1): relative error below $10^{-4}$ of
/// $|s| + 10^{-3} \max|s|$ on the score and below $10^{-3}$ on the vjp. Float32 rounding of
/// $x - a\mu_k$ and of the sums is a few ulp; it is amplified where two components have
/// similar responsibility (the softmax difference) and, for the vjp, by the centred products.
/// Results do not depend on the thread count, nor on the batch a point is evaluated in.
/// ```
/// use candle_core::{DType, Device, Shape};
/// use rand::SeedableRng;
/// use sde_core::analytic::{FastMixtureScore, GaussianMixture};
/// use sde_core::{ScoreFn, VeSde};
/// let gmm = GaussianMixture::ring(8, 4.0, 0.2)?;
/// let fast = FastMixtureScore::new(VeSde::default(), gmm.clone());
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let x = gmm.sample(&Shape::from((16, 2)), &Device::Cpu, DType::F32, &mut rng)?;
/// let t = sde_core::time_tensor(0.3, 16, &Device::Cpu, DType::F32)?;
/// let s = fast.score(&x, &t)?;
/// let truth = fast.exact().score(&x, &t)?;
/// let err = (s - &truth)?.abs()?.max_all()?.to_scalar::<f32>()?;
/// assert!(err <= 1e-4 * truth.abs()?.max_all()?.to_scalar::<f32>()?);
/// # Ok::<(), sde_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FastMixtureScore<S> {
    exact: GaussianMixtureScore<S>,
}

impl<S: Sde> FastMixtureScore<S> {
    /// The fast score of `mixture` data under `sde`.
    pub fn new(sde: S, mixture: GaussianMixture) -> Self {
        Self {
            exact: GaussianMixtureScore::new(sde, mixture),
        }
    }

    /// The f64 truth this type approximates (and falls back to).
    pub fn exact(&self) -> &GaussianMixtureScore<S> {
        &self.exact
    }

    /// The data distribution.
    pub fn mixture(&self) -> &GaussianMixture {
        self.exact.mixture()
    }

    /// The SDE.
    pub fn sde(&self) -> &S {
        self.exact.sde()
    }

    /// log p_t(x) per sample, from the f64 truth ([`GaussianMixtureScore::log_prob`]).
    pub fn log_prob(&self, x: &Tensor, t: &Tensor) -> Result<Vec<f64>> {
        self.exact.log_prob(x, t)
    }

    /// The float32 kernel's score and (with a probe `v`) vjp; `None` when `x` is not a float32
    /// CPU tensor or the data have more than `sde_kernels::mixture::MAX_DIM` dimensions.
    /// Points are grouped in runs of equal time, (a, σ) computed for all runs in one call, the
    /// per-time constants once per run (and task).
    fn eval_f32(
        &self,
        x: &Tensor,
        t: &Tensor,
        v: Option<&Tensor>,
    ) -> Result<Option<(Tensor, Option<Tensor>)>> {
        let mix = self.exact.mixture();
        let d = mix.dim();
        if x.dtype() != DType::F32 || !x.device().is_cpu() || d > sde_kernels::mixture::MAX_DIM {
            return Ok(None);
        }
        let func = if v.is_some() {
            "FastMixtureScore::score_with_vjp"
        } else {
            "FastMixtureScore::score"
        };
        let b = mix.check_x(func, x)?;
        let times = PerSample::times_in(func, x, t, self.sde().t_end())?;
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
        let (runs, run_t): (Vec<Range<usize>>, Vec<f64>) = match &times {
            PerSample::Same(t0, _) if b > 0 => (vec![0..b], vec![*t0]),
            PerSample::Same(..) => (Vec::new(), Vec::new()),
            PerSample::Each(ts) => {
                let mut runs = Vec::new();
                let mut start = 0;
                while start < b {
                    let mut end = start + 1;
                    while end < b && ts[end] == ts[start] {
                        end += 1;
                    }
                    runs.push(start..end);
                    start = end;
                }
                let run_t = runs.iter().map(|r| ts[r.start]).collect();
                (runs, run_t)
            }
        };
        let (a, sigma) = if run_t.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let n_runs = run_t.len();
            let (a, sigma) =
                self.sde()
                    .marginal_coeffs(&Tensor::from_vec(run_t, n_runs, &Device::Cpu)?)?;
            (to_host_f64(&a)?, to_host_f64(&sigma)?)
        };
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; b * d];
        let mut out_v = probe.as_ref().map(|_| vec![0f32; b * d]);
        let vjp = match (&probe, &mut out_v) {
            (Some(pv), Some(ov)) => Some((&pv[..], &mut ov[..])),
            _ => None,
        };
        // The constants of run `r` in f64, rounded to float32 by the kernel's type.
        let consts = |r: usize, c32: &mut sde_kernels::mixture::MixtureConsts| {
            let mut c = TimeConstants::default();
            mix.time_constants(a[r], sigma[r], &mut c);
            c32.set(d, &c.amu, &c.inv_v, &c.log_norm);
        };
        sde_kernels::mixture::score_runs(mix.n_components(), d, &xs, &mut out, vjp, &runs, consts);
        let to_t = |v: Vec<f32>| Tensor::from_vec(v, x.shape(), &Device::Cpu);
        let out_v = match out_v {
            Some(v) => Some(to_t(v)?),
            None => None,
        };
        Ok(Some((to_t(out)?, out_v)))
    }
}

impl<S: Sde> ScoreFn for FastMixtureScore<S> {
    /// The float32 kernel on float32 CPU batches with D ≤ 4; the f64 truth otherwise.
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        if let Some((s, _)) = self.eval_f32(x, t, None)? {
            return Ok(s);
        }
        self.exact.score(x, t)
    }

    /// vᵀJ = Σ_k r_k (−v/v_k + (s_k − s̄)((s_k − s̄)·v)) on the same path as
    /// [`score`](ScoreFn::score).
    fn score_with_vjp(&self, x: &Tensor, t: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        if let Some((s, Some(vjp))) = self.eval_f32(x, t, Some(v))? {
            return Ok((s, vjp));
        }
        self.exact.score_with_vjp(x, t, v)
    }
}
