//! Variance-preserving SDE (DDPM) and the linear β schedule it shares with sub-VP.

use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};

use crate::error::{check_param, Result};
use crate::noise::NoiseSource;
use crate::sde::{
    host_coeff2_in, standard_normal_logp, step_indices, AncestralSde, LabelConvention, Sde,
};
use crate::tensor::{mul_batch, PerSample};

/// The linear schedule β(t) = β_min + t (β_max − β_min) on [0, 1] and its DDPM discretisation
/// β_i = linspace(β_min/N, β_max/N, N)_i, shared by [`VpSde`] and [`crate::SubVpSde`].
#[derive(Debug, Clone)]
pub(crate) struct BetaSchedule {
    pub beta_0: f64,
    pub beta_1: f64,
    pub n: usize,
    pub discrete_betas: Arc<[f64]>,
}

impl BetaSchedule {
    pub fn new(beta_min: f64, beta_max: f64, n: usize) -> Result<Self> {
        check_param("beta_min", beta_min, beta_min > 0.0, "must be > 0")?;
        check_param(
            "beta_max",
            beta_max,
            beta_max >= beta_min,
            "must be >= beta_min",
        )?;
        check_param("N", n as f64, n >= 1, "must be at least 1")?;
        let nf = n as f64;
        check_param(
            "beta_max",
            beta_max,
            beta_max < nf,
            "beta_max / N must be < 1 (the discrete DDPM betas must lie in (0, 1))",
        )?;
        let discrete_betas: Arc<[f64]> = (0..n)
            .map(|i| {
                let frac = if n == 1 {
                    0.0
                } else {
                    i as f64 / (n - 1) as f64
                };
                beta_min / nf + frac * (beta_max - beta_min) / nf
            })
            .collect();
        Ok(Self {
            beta_0: beta_min,
            beta_1: beta_max,
            n,
            discrete_betas,
        })
    }

    /// β(t).
    pub fn beta(&self, t: f64) -> f64 {
        self.beta_0 + t * (self.beta_1 - self.beta_0)
    }

    /// log m(t) = −¼ t² (β_1 − β_0) − ½ t β_0, the log mean coefficient.
    pub fn log_mean_coeff(&self, t: f64) -> f64 {
        -0.25 * t * t * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
    }

    /// The t ≥ 0 with log m(t) = `l` (≤ 0): the positive root of ¼Δβ t² + ½β_0 t + l = 0 in
    /// the cancellation-free form t = −2l / (½β_0 + √(¼β_0² − Δβ l)) (DPM-Solver's
    /// `inverse_lambda`), checked to lie in [0, 1].
    pub fn t_of_log_mean_coeff(&self, l: f64, lambda: f64) -> Result<f64> {
        let (b0, db) = (self.beta_0, self.beta_1 - self.beta_0);
        let t = -2.0 * l / (0.5 * b0 + (0.25 * b0 * b0 - db * l).sqrt());
        if !(-1e-12..=1.0 + 1e-12).contains(&t) {
            return Err(crate::Error::InvalidParameter {
                name: "lambda",
                value: lambda,
                reason: "log-SNR outside [log_snr(1), log_snr(0)] of the SDE",
            });
        }
        // the ends within rounding are the ends
        Ok(t.clamp(0.0, 1.0))
    }

    /// 1 − ᾱ_i for every i, as −expm1(Σ log1p(−β_j)) (no cancellation near i = 0).
    pub fn one_minus_alphas_cumprod(&self) -> Vec<f64> {
        let mut acc = 0.0;
        self.discrete_betas
            .iter()
            .map(|b| {
                acc += (-b).ln_1p();
                -acc.exp_m1()
            })
            .collect()
    }

    /// α_i = 1 − β_i at the discrete index of each time.
    pub fn alphas_at(&self, func: &'static str, t: &Tensor) -> Result<Tensor> {
        let probe = Tensor::zeros((crate::batch_size(func, "t", t)?, 1), t.dtype(), t.device())?;
        step_indices(
            &PerSample::times_in(func, &probe, t, 1.0)?,
            self.n,
            1.0,
            t.dtype(),
        )
        .map(|i| 1.0 - self.discrete_betas[i])
        .tensor(t.device(), t.dtype())
    }
}

/// Variance-preserving SDE, mirrors `sde_lib.VPSDE`:
/// dx = −½ β(t) x dt + √β(t) dw,  β(t) = β_min + t (β_max − β_min).
///
/// Kernel: mean e^{L(t)} x(0), std √(1 − e^{2L(t)}) with L(t) = −¼ t² (β_max − β_min) − ½ t β_min
/// (computed with `expm1`, so accurate near t = 0 where the float32 reference loses ~0.5% at
/// t = 1e-5). Prior N(0, I). DDPM tables: β_i = linspace(β_min/N, β_max/N, N), α_i = 1 − β_i,
/// ᾱ_i = Π_{j≤i} α_j.
/// Defaults (`VpSde::default()`): `beta_min = 0.1`, `beta_max = 20`, `N = 1000`.
/// ```
/// let sde = sde_core::VpSde::new(0.1, 20.0, 1000)?;
/// assert!((sde.alphas_cumprod()[999] - 4.0358e-5).abs() < 1e-7);
/// # Ok::<(), sde_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct VpSde {
    schedule: BetaSchedule,
}

impl VpSde {
    /// Validates `0 < beta_min ≤ beta_max < N` (finite) and `N ≥ 1`.
    pub fn new(beta_min: f64, beta_max: f64, n: usize) -> Result<Self> {
        Ok(Self {
            schedule: BetaSchedule::new(beta_min, beta_max, n)?,
        })
    }
    /// β_min = β(0).
    pub fn beta_min(&self) -> f64 {
        self.schedule.beta_0
    }
    /// β_max = β(1).
    pub fn beta_max(&self) -> f64 {
        self.schedule.beta_1
    }
    /// The DDPM β_i (`discrete_betas`).
    pub fn discrete_betas(&self) -> &[f64] {
        &self.schedule.discrete_betas
    }
    /// α_i = 1 − β_i (`alphas`).
    pub fn alphas(&self) -> Vec<f64> {
        self.schedule
            .discrete_betas
            .iter()
            .map(|b| 1.0 - b)
            .collect()
    }
    /// ᾱ_i = Π_{j≤i} α_j (`alphas_cumprod`).
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        self.schedule
            .one_minus_alphas_cumprod()
            .iter()
            .map(|v| 1.0 - v)
            .collect()
    }
    /// √ᾱ_i (`sqrt_alphas_cumprod`).
    pub fn sqrt_alphas_cumprod(&self) -> Vec<f64> {
        self.alphas_cumprod().iter().map(|a| a.sqrt()).collect()
    }
    /// √(1 − ᾱ_i) (`sqrt_1m_alphas_cumprod`), without cancellation.
    pub fn sqrt_1m_alphas_cumprod(&self) -> Vec<f64> {
        self.schedule
            .one_minus_alphas_cumprod()
            .iter()
            .map(|a| a.sqrt())
            .collect()
    }
    fn betas_at(&self, func: &'static str, x: &Tensor, t: &Tensor) -> Result<PerSample<f64>> {
        let times = PerSample::times_in(func, x, t, 1.0)?;
        Ok(step_indices(&times, self.schedule.n, 1.0, t.dtype())
            .map(|i| self.schedule.discrete_betas[i]))
    }
}

impl Default for VpSde {
    fn default() -> Self {
        Self::new(0.1, 20.0, 1000).expect("paper defaults are valid")
    }
}

impl Sde for VpSde {
    fn n(&self) -> usize {
        self.schedule.n
    }

    /// f = −½ β(t) x, g = √β(t).
    fn sde(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let (half_beta, g) = host_coeff2_in("VpSde::sde", 1.0, x, t, |t| {
            let b = self.schedule.beta(t);
            (-0.5 * b, b.sqrt())
        })?;
        Ok((mul_batch(&half_beta, x)?, g))
    }

    /// mean = e^{L(t)} x(0), std = √(−expm1(2 L(t))).
    fn marginal_prob(&self, x0: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let (m, std) = self.marginal_coeffs_checked("VpSde::marginal_prob", x0, t)?;
        Ok((mul_batch(&m, x0)?, std))
    }

    /// z ~ N(0, I).
    fn prior_sampling<N: NoiseSource + ?Sized>(
        &self,
        shape: &Shape,
        device: &Device,
        dtype: DType,
        noise: &mut N,
    ) -> Result<Tensor> {
        noise.randn(shape, device, dtype)
    }

    /// log N(z; 0, I).
    fn prior_logp(&self, z: &Tensor) -> Result<Tensor> {
        standard_normal_logp(z, 1.0)
    }

    /// DDPM chain: f_i = (√(1 − β_i) − 1) x, G_i = √β_i.
    fn discretize(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let (coef, g) = self
            .betas_at("VpSde::discretize", x, t)?
            .map(|b| ((0.5 * (-b).ln_1p()).exp_m1(), b.sqrt()))
            .unzip();
        Ok((
            mul_batch(&coef.tensor(t.device(), t.dtype())?, x)?,
            g.tensor(t.device(), t.dtype())?,
        ))
    }

    fn marginal_coeffs(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let func = "VpSde::marginal_coeffs";
        let probe = Tensor::zeros((crate::batch_size(func, "t", t)?, 1), t.dtype(), t.device())?;
        self.marginal_coeffs_checked(func, &probe, t)
    }

    fn langevin_alpha(&self, t: &Tensor) -> Result<Tensor> {
        self.schedule.alphas_at("VpSde::langevin_alpha", t)
    }

    fn label_convention(&self, continuous: bool) -> LabelConvention {
        if continuous {
            LabelConvention::ScaledTime { scale: 999.0 }
        } else {
            LabelConvention::DdpmTimestep {
                sqrt_1m_alphas_cumprod: self.sqrt_1m_alphas_cumprod().into(),
                t_end: 1.0,
            }
        }
    }
    /// λ(t) = L − ½ log(−expm1(2L)), L = log m(t) (α = e^L, σ = √(1 − e^{2L})).
    fn log_snr(&self, t: f64) -> Result<f64> {
        let l = self.schedule.log_mean_coeff(t);
        Ok(l - 0.5 * (-(2.0 * l).exp_m1()).ln())
    }

    /// L = −½ log(1 + e^{−2λ}) (from e^{2λ} = e^{2L}/(1 − e^{2L})), then t from L in closed form.
    fn t_of_log_snr(&self, lambda: f64) -> Result<f64> {
        let l = -0.5 * softplus(-2.0 * lambda);
        self.schedule.t_of_log_mean_coeff(l, lambda)
    }
}

/// log(1 + e^x) without overflow.
pub(crate) fn softplus(x: f64) -> f64 {
    if x > 30.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

impl VpSde {
    fn marginal_coeffs_checked(
        &self,
        func: &'static str,
        x: &Tensor,
        t: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        host_coeff2_in(func, 1.0, x, t, |t| {
            let l = self.schedule.log_mean_coeff(t);
            (l.exp(), (-(2.0 * l).exp_m1()).sqrt())
        })
    }
}

impl AncestralSde for VpSde {
    fn ancestral_step(&self, x: &Tensor, t: &Tensor, score: &Tensor) -> Result<(Tensor, Tensor)> {
        let betas = self.betas_at("VpSde::ancestral_step", x, t)?;
        let inv = betas
            .map(|b| 1.0 / (1.0 - b).sqrt())
            .tensor(t.device(), x.dtype())?;
        let beta = betas.tensor(t.device(), x.dtype())?;
        let x_mean = mul_batch(&inv, &(x + mul_batch(&beta, score)?)?)?;
        let std = betas.map(f64::sqrt).tensor(t.device(), t.dtype())?;
        Ok((x_mean, std))
    }
}
