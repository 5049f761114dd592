//! The [`Sde`] trait: a forward SDE dx = f(x, t) dt + g(t) dw with a Gaussian transition kernel.

use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};

use crate::error::Result;
use crate::noise::NoiseSource;
use crate::reverse::ReverseSde;
use crate::score::ScoreFn;
use crate::tensor::{to_host_f64, PerSample};

/// A forward-time SDE  dx = f(x, t) dt + g(t) dw  on t ∈ [0, T], mirroring the reference's
/// `sde_lib.SDE`.
///
/// Tensors are batched on the first dimension with any trailing shape (2-D points `[B, 2]` and
/// images `[B, C, H, W]` alike); time is a per-sample tensor `t: [B]` (see [`crate::time_tensor`]).
///
/// A new SDE implements [`n`](Sde::n), [`sde`](Sde::sde), [`marginal_prob`](Sde::marginal_prob),
/// [`prior_sampling`](Sde::prior_sampling) and [`prior_logp`](Sde::prior_logp); everything else
/// (Euler–Maruyama [`discretize`](Sde::discretize), the reverse-time SDE and the probability-flow
/// ODE through [`reverse`](Sde::reverse), score adapters, analytic oracles, every sampler and the
/// likelihood of `sde-solvers`) comes from defaults.
///
/// A cosine-schedule VP SDE (Nichol & Dhariwal 2021) in a few lines: ᾱ(t) = cos²(π/2 · (t+s)/(1+s)) / cos²(π/2 · s/(1+s)),
/// β(t) = −d log ᾱ / dt = π/(1+s) · tan(π/2 · (t+s)/(1+s)), mean coefficient √ᾱ, std √(1−ᾱ).
/// ```
/// use candle_core::{DType, Device, Shape, Tensor};
/// use sde_core::{mul_batch, noise::NoiseSource, Result, Sde};
///
/// struct CosineVp { s: f64, n: usize }
/// impl CosineVp {
///     fn phase(&self, t: &Tensor) -> Result<Tensor> {
///         Ok(t.affine(std::f64::consts::FRAC_PI_2 / (1.0 + self.s), std::f64::consts::FRAC_PI_2 * self.s / (1.0 + self.s))?)
///     }
/// }
/// impl Sde for CosineVp {
///     fn n(&self) -> usize { self.n }
///     fn sde(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
///         let phase = self.phase(t)?;
///         let beta = (phase.sin()? / phase.cos()?)?.affine(std::f64::consts::PI / (1.0 + self.s), 0.0)?;
///         Ok((mul_batch(&beta.affine(-0.5, 0.0)?, x)?, beta.sqrt()?))
///     }
///     fn marginal_prob(&self, x0: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
///         let c0 = (std::f64::consts::FRAC_PI_2 * self.s / (1.0 + self.s)).cos();
///         let mean_coeff = self.phase(t)?.cos()?.affine(1.0 / c0, 0.0)?;
///         let std = (1.0 - mean_coeff.sqr()?)?.sqrt()?;
///         Ok((mul_batch(&mean_coeff, x0)?, std))
///     }
///     fn prior_sampling<N: NoiseSource + ?Sized>(&self, shape: &Shape, dev: &Device, dtype: DType, noise: &mut N) -> Result<Tensor> {
///         noise.randn(shape, dev, dtype)
///     }
///     fn prior_logp(&self, z: &Tensor) -> Result<Tensor> {
///         sde_core::standard_normal_logp(z, 1.0)
///     }
/// }
///
/// let sde = CosineVp { s: 0.008, n: 1000 };
/// let dev = Device::Cpu;
/// let x0 = Tensor::ones((1, 3), DType::F64, &dev)?;
/// let at = |t: f64| -> Result<(f64, f64, f64)> {
///     let tt = sde_core::time_tensor(t, 1, &dev, DType::F64)?;
///     let (mean, std) = sde.marginal_prob(&x0, &tt)?;
///     let (_, g) = sde.sde(&x0, &tt)?;
///     Ok((mean.to_vec2::<f64>()?[0][0], std.to_vec1::<f64>()?[0], g.to_vec1::<f64>()?[0]))
/// };
/// let (m, s, g) = at(0.5)?;
/// assert!((m * m + s * s - 1.0).abs() < 1e-12); // variance preserving
/// // the mean coefficient solves dm/dt = −½ β(t) m, with β = g²
/// let h = 1e-5;
/// let dm = (at(0.5 + h)?.0 - at(0.5 - h)?.0) / (2.0 * h);
/// assert!((dm + 0.5 * g * g * m).abs() < 1e-6);
/// // Euler–Maruyama discretisation, reverse SDE, samplers and likelihood come for free
/// let (f, big_g) = sde.discretize(&x0, &sde_core::time_tensor(0.5, 1, &dev, DType::F64)?)?;
/// assert_eq!(f.dims(), &[1, 3]);
/// # Ok::<(), sde_core::Error>(())
/// ```
pub trait Sde {
    /// End time T of the SDE (`sde.T`); 1 for VE, VP and sub-VP.
    #[doc(alias = "T")]
    fn t_end(&self) -> f64 {
        1.0
    }

    /// Number N of discretisation steps the discrete samplers use (`sde.N`).
    #[doc(alias = "N")]
    fn n(&self) -> usize;

    /// Drift and diffusion `(f(x, t), g(t))` of dx = f(x, t) dt + g(t) dw.
    /// `x: [B, ...]`, `t: [B]`; returns `f: [B, ...]` and `g: [B]`.
    fn sde(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)>;

    /// Mean and std of the Gaussian transition kernel
    /// p_0t(x(t) | x(0)) = N(mean, std² I): returns `mean: [B, ...]` and `std: [B]`.
    fn marginal_prob(&self, x0: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)>;

    /// One draw from the prior p_T, of the given shape, on `device`, in `dtype`.
    fn prior_sampling<N: NoiseSource + ?Sized>(
        &self,
        shape: &Shape,
        device: &Device,
        dtype: DType,
        noise: &mut N,
    ) -> Result<Tensor>;

    /// log p_T(z) per sample (summed over every non-batch dim): `z: [B, ...] -> [B]`.
    fn prior_logp(&self, z: &Tensor) -> Result<Tensor>;

    /// Discretisation x_{i+1} = x_i + f_i(x_i) + G_i z_i, returning `(f_i, G_i)`.
    ///
    /// Default: Euler–Maruyama with Δt = T/N, f_i = f(x, t) Δt and G_i = g(t) √Δt.
    /// [`crate::VeSde`] overrides it with the SMLD chain and [`crate::VpSde`] with the DDPM chain.
    fn discretize(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let dt = self.t_end() / self.n() as f64;
        let (drift, diffusion) = self.sde(x, t)?;
        Ok((drift.affine(dt, 0.0)?, diffusion.affine(dt.sqrt(), 0.0)?))
    }

    /// Mean coefficient a(t) and std σ(t) of the kernel, when its mean is a(t)·x(0): both `[B]`.
    ///
    /// The default reads them off [`marginal_prob`](Sde::marginal_prob) at x(0) = 1; the built-in
    /// SDEs compute them directly. The analytic oracles in [`crate::analytic`] rely on this form.
    fn marginal_coeffs(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let b = crate::tensor::batch_size("Sde::marginal_coeffs", "t", t)?;
        crate::tensor::check_float("Sde::marginal_coeffs", "t", t)?;
        let ones = Tensor::ones((b, 1), t.dtype(), t.device())?;
        let (mean, std) = self.marginal_prob(&ones, t)?;
        Ok((mean.flatten_all()?, std))
    }

    /// The α that scales the Langevin corrector's step (`alpha` in `LangevinCorrector`):
    /// 1 by default (VE), `alphas[timestep]` = 1 − β_i for VP (and sub-VP, which shares its β).
    fn langevin_alpha(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.ones_like()?)
    }

    /// How a network's time label and output relate to the score (`get_score_fn`), for models
    /// trained with continuous or discrete time. Default: [`LabelConvention::ScaledTime`] with
    /// scale 999 (the VP convention), valid for any SDE with a marginal std.
    fn label_convention(&self, continuous: bool) -> LabelConvention {
        let _ = continuous;
        LabelConvention::ScaledTime { scale: 999.0 }
    }

    /// Log signal-to-noise ratio λ(t) = log(α(t)/σ(t)) of the kernel (α the mean coefficient,
    /// σ the std of [`marginal_coeffs`](Sde::marginal_coeffs)) at a host time `t ∈ [0, T]`: the
    /// time variable of DPM-Solver, UniPC and DDIM. +∞ where σ(t) = 0 (VP and sub-VP at t = 0).
    ///
    /// The default evaluates [`marginal_coeffs`](Sde::marginal_coeffs) in f64; VE, VP and sub-VP
    /// have closed forms. λ must decrease in t for the samplers built on it.
    #[doc(alias = "marginal_lambda")]
    fn log_snr(&self, t: f64) -> Result<f64> {
        let tt = Tensor::from_vec(vec![t], 1, &Device::Cpu)?;
        let (a, s) = self.marginal_coeffs(&tt)?;
        let (a, s) = (to_host_f64(&a)?, to_host_f64(&s)?);
        Ok(a[0].ln() - s[0].ln())
    }

    /// The inverse of [`log_snr`](Sde::log_snr): the t ∈ [0, T] with λ(t) = `lambda`
    /// (`inverse_lambda`).
    ///
    /// The default bisects λ on [0, T] (λ decreasing, checked at the ends) to an interval of
    /// width ≤ 4 ulp of T or 200 halvings; VE, VP and sub-VP invert in closed form. Errors with
    /// [`Error::InvalidParameter`](crate::Error::InvalidParameter) when `lambda` lies outside
    /// [λ(T), λ(0)] or is NaN.
    #[doc(alias = "inverse_lambda")]
    fn t_of_log_snr(&self, lambda: f64) -> Result<f64> {
        bisect_log_snr(self, lambda)
    }

    /// The reverse-time SDE  dx = [f − g² ∇ₓlog p_t] dt + g dw̄, or with `probability_flow` the
    /// probability-flow ODE  dx = [f − ½ g² ∇ₓlog p_t] dt (`sde.reverse(score_fn, probability_flow)`).
    fn reverse<'a, F: ScoreFn + ?Sized>(
        &'a self,
        score: &'a F,
        probability_flow: bool,
    ) -> ReverseSde<'a, Self, F>
    where
        Self: Sized,
    {
        ReverseSde::new(self, score, probability_flow)
    }
}

impl<S: Sde + ?Sized> Sde for &S {
    fn t_end(&self) -> f64 {
        (**self).t_end()
    }
    fn n(&self) -> usize {
        (**self).n()
    }
    fn sde(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        (**self).sde(x, t)
    }
    fn marginal_prob(&self, x0: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        (**self).marginal_prob(x0, t)
    }
    fn prior_sampling<N: NoiseSource + ?Sized>(
        &self,
        shape: &Shape,
        device: &Device,
        dtype: DType,
        noise: &mut N,
    ) -> Result<Tensor> {
        (**self).prior_sampling(shape, device, dtype, noise)
    }
    fn prior_logp(&self, z: &Tensor) -> Result<Tensor> {
        (**self).prior_logp(z)
    }
    fn discretize(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        (**self).discretize(x, t)
    }
    fn marginal_coeffs(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        (**self).marginal_coeffs(t)
    }
    fn langevin_alpha(&self, t: &Tensor) -> Result<Tensor> {
        (**self).langevin_alpha(t)
    }
    fn label_convention(&self, continuous: bool) -> LabelConvention {
        (**self).label_convention(continuous)
    }
    fn log_snr(&self, t: f64) -> Result<f64> {
        (**self).log_snr(t)
    }
    fn t_of_log_snr(&self, lambda: f64) -> Result<f64> {
        (**self).t_of_log_snr(lambda)
    }
}

/// Bisection for the t with λ(t) = `lambda` on [0, T], λ decreasing (the default of
/// [`Sde::t_of_log_snr`]).
pub(crate) fn bisect_log_snr<S: Sde + ?Sized>(sde: &S, lambda: f64) -> Result<f64> {
    let t_end = sde.t_end();
    let (l_lo, l_hi) = (sde.log_snr(0.0)?, sde.log_snr(t_end)?);
    // the ends within rounding (λ computed another way, e.g. by a closed form) are the ends
    let tol = 64.0 * f64::EPSILON * (1.0 + lambda.abs());
    if (lambda - l_hi).abs() <= tol {
        return Ok(t_end);
    }
    if (lambda - l_lo).abs() <= tol {
        return Ok(0.0);
    }
    if lambda.is_nan() || !(l_hi <= lambda && lambda <= l_lo) {
        return Err(crate::Error::InvalidParameter {
            name: "lambda",
            value: lambda,
            reason: "log-SNR outside [log_snr(T), log_snr(0)] of the SDE (or the SDE's log-SNR is not decreasing)",
        });
    }
    let (mut lo, mut hi) = (0.0f64, t_end);
    for _ in 0..200 {
        if hi - lo <= 4.0 * f64::EPSILON * t_end {
            break;
        }
        let mid = 0.5 * (lo + hi);
        if sde.log_snr(mid)? > lambda {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(0.5 * (lo + hi))
}

/// SDEs with an ancestral-sampling rule (`AncestralSamplingPredictor`): VE (SMLD) and VP (DDPM).
///
/// sub-VP has none (the reference raises `NotImplementedError`), so it does not implement this
/// trait and pairing it with ancestral sampling does not compile.
pub trait AncestralSde: Sde {
    /// One ancestral step from time `t` (discrete index i = ⌊t (N−1)/T⌋) given the score there:
    /// returns `(x_mean, noise_std)` with x_{i−1} = x_mean + noise_std · z.
    ///
    /// VE: x_mean = x + (σ_i² − σ_{i−1}²) s,  noise_std = √(σ_{i−1}² (σ_i² − σ_{i−1}²) / σ_i²).
    /// VP: x_mean = (x + β_i s) / √(1 − β_i),  noise_std = √β_i.
    fn ancestral_step(&self, x: &Tensor, t: &Tensor, score: &Tensor) -> Result<(Tensor, Tensor)>;
}

impl<S: AncestralSde + ?Sized> AncestralSde for &S {
    fn ancestral_step(&self, x: &Tensor, t: &Tensor, score: &Tensor) -> Result<(Tensor, Tensor)> {
        (**self).ancestral_step(x, t, score)
    }
}

/// How a network's time label and raw output map to a score (`models/utils.get_score_fn`).
///
/// | variant | label fed to the network | score |
/// |---|---|---|
/// | `Sigma` (VE continuous) | σ(t), the marginal std | output |
/// | `SigmaIndex` (VE discrete, SMLD) | round((T − t)(N − 1)) as `i64`; 0 = σ_max | output |
/// | `ScaledTime` (VP / sub-VP continuous) | t · scale (999) | −output / std(t) |
/// | `DdpmTimestep` (VP discrete, DDPM) | t (N − 1), not rounded | −output / √(1 − ᾱ_⌊label⌋) |
#[derive(Debug, Clone, PartialEq)]
pub enum LabelConvention {
    /// Label σ(t) (the kernel std); the network outputs the score.
    Sigma,
    /// Label round((T − t)(N − 1)) (`i64`) into the descending σ list; output is the score.
    SigmaIndex {
        /// N of the SDE.
        n: usize,
        /// T of the SDE.
        t_end: f64,
    },
    /// Label t · `scale`; the network predicts the noise, score = −output / std(t).
    ScaledTime {
        /// 999 in the reference, whatever N is.
        scale: f64,
    },
    /// Label t (N − 1); score = −output / √(1 − ᾱ_⌊label⌋) from the discrete DDPM table.
    DdpmTimestep {
        /// √(1 − ᾱ_i), i = 0..N.
        sqrt_1m_alphas_cumprod: Arc<[f64]>,
        /// T of the SDE.
        t_end: f64,
    },
}

/// Discrete timestep index ⌊t (N − 1) / T⌋ (`(t * (N - 1) / T).long()`), computed in the
/// precision of `t` so that float32 time grids give the reference's indices exactly.
pub fn timestep_index(t: &Tensor, n: usize, t_end: f64) -> Result<Vec<usize>> {
    let dtype = t.dtype();
    Ok(to_host_f64(t)?
        .iter()
        .map(|&ti| step_index(ti, n, t_end, dtype))
        .collect())
}

/// [`timestep_index`] of one time `ti` held in `dtype`.
pub(crate) fn step_index(ti: f64, n: usize, t_end: f64, dtype: DType) -> usize {
    let scale = (n.saturating_sub(1)) as f64;
    let v = if dtype == DType::F32 {
        ((ti as f32) * (scale as f32) / (t_end as f32)) as f64
    } else {
        ti * scale / t_end
    };
    (v.max(0.0) as usize).min(n.saturating_sub(1))
}

/// The discrete indices of validated times `t` (held in `dtype`), per sample.
pub(crate) fn step_indices(
    t: &PerSample<f64>,
    n: usize,
    t_end: f64,
    dtype: DType,
) -> PerSample<usize> {
    t.map(|ti| step_index(ti, n, t_end, dtype))
}

/// log N(z; 0, σ² I) per sample, summed over all non-batch dims:
/// −D/2 · log(2π σ²) − ‖z‖² / (2σ²).
///
/// `z` must be a float tensor of rank ≥ 1 and `sigma` finite and > 0.
pub fn standard_normal_logp(z: &Tensor, sigma: f64) -> Result<Tensor> {
    crate::error::check_param("sigma", sigma, sigma > 0.0, "must be finite and > 0")?;
    crate::tensor::batch_size("prior_logp", "z", z)?;
    crate::tensor::check_float("prior_logp", "z", z)?;
    let d = crate::tensor::sample_numel(z)? as f64;
    let sq = crate::tensor::sum_non_batch(&z.sqr()?)?;
    let c = -0.5 * d * (2.0 * std::f64::consts::PI * sigma * sigma).ln();
    Ok(sq.affine(-0.5 / (sigma * sigma), c)?)
}

/// Per-sample coefficients computed on the host in f64 from validated times: `[B]` tensors on
/// `t`'s device in `t`'s dtype. Used by the built-in SDEs for numerically careful formulas
/// (`expm1`, `ln_1p`) that candle has no op for. `f` runs once per run of equal times (once per
/// call for a sampler's shared time). Errors name the calling function `func`.
pub(crate) fn host_coeff_in(
    func: &'static str,
    sde_t_end: f64,
    x: &Tensor,
    t: &Tensor,
    f: impl Fn(f64) -> f64,
) -> Result<Tensor> {
    PerSample::times_in(func, x, t, sde_t_end)?
        .map(f)
        .tensor(t.device(), t.dtype())
}

/// Two coefficients at once (one pass over the times), as [`host_coeff_in`].
pub(crate) fn host_coeff2_in(
    func: &'static str,
    sde_t_end: f64,
    x: &Tensor,
    t: &Tensor,
    f: impl Fn(f64) -> (f64, f64),
) -> Result<(Tensor, Tensor)> {
    let (a, b) = PerSample::times_in(func, x, t, sde_t_end)?.map(f).unzip();
    Ok((
        a.tensor(t.device(), t.dtype())?,
        b.tensor(t.device(), t.dtype())?,
    ))
}
