//! Sub-VP SDE (Song et al. 2021, the SDE that excels at likelihoods).

use candle_core::{DType, Device, Shape, Tensor};

use crate::error::Result;
use crate::noise::NoiseSource;
use crate::sde::{host_coeff2_in, standard_normal_logp, LabelConvention, Sde};
use crate::tensor::mul_batch;
use crate::vp::BetaSchedule;

/// Sub-VP SDE, mirrors `sde_lib.subVPSDE`:
/// dx = −½ β(t) x dt + √(β(t) (1 − e^{−2 β_min t − (β_max − β_min) t²})) dw.
///
/// Kernel: mean e^{L(t)} x(0), std 1 − e^{2L(t)} (L as for [`crate::VpSde`]; both computed with
/// `expm1`). Prior N(0, I). Discretisation: Euler–Maruyama (the default). Its Langevin α uses the
/// VP table α_i = 1 − β_i of the same β schedule (the reference has none and raises there).
/// Models are always addressed with the continuous label 999 t, as in the reference.
/// Defaults: `beta_min = 0.1`, `beta_max = 20`, `N = 1000`.
/// ```
/// let sde = sde_core::SubVpSde::new(0.1, 20.0, 1000)?;
/// # Ok::<(), sde_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SubVpSde {
    schedule: BetaSchedule,
}

impl SubVpSde {
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
    fn coeffs(&self, func: &'static str, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        host_coeff2_in(func, 1.0, x, t, |t| {
            let l = self.schedule.log_mean_coeff(t);
            (l.exp(), -(2.0 * l).exp_m1())
        })
    }
}

impl Default for SubVpSde {
    fn default() -> Self {
        Self::new(0.1, 20.0, 1000).expect("paper defaults are valid")
    }
}

impl Sde for SubVpSde {
    fn n(&self) -> usize {
        self.schedule.n
    }

    /// f = −½ β(t) x, g = √(β(t) · (−expm1(−2 β_min t − (β_max − β_min) t²))).
    fn sde(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let s = &self.schedule;
        let (half_beta, g) = host_coeff2_in("SubVpSde::sde", 1.0, x, t, |t| {
            let b = s.beta(t);
            let discount = -(-2.0 * s.beta_0 * t - (s.beta_1 - s.beta_0) * t * t).exp_m1();
            (-0.5 * b, (b * discount).sqrt())
        })?;
        Ok((mul_batch(&half_beta, x)?, g))
    }

    /// mean = e^{L(t)} x(0), std = −expm1(2 L(t)).
    fn marginal_prob(&self, x0: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let (m, std) = self.coeffs("SubVpSde::marginal_prob", x0, t)?;
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

    fn marginal_coeffs(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let func = "SubVpSde::marginal_coeffs";
        let probe = Tensor::zeros((crate::batch_size(func, "t", t)?, 1), t.dtype(), t.device())?;
        self.coeffs(func, &probe, t)
    }

    fn langevin_alpha(&self, t: &Tensor) -> Result<Tensor> {
        self.schedule.alphas_at("SubVpSde::langevin_alpha", t)
    }

    fn label_convention(&self, _continuous: bool) -> LabelConvention {
        LabelConvention::ScaledTime { scale: 999.0 }
    }
    /// λ(t) = L − log(−expm1(2L)), L = log m(t) (α = e^L, σ = 1 − e^{2L}).
    fn log_snr(&self, t: f64) -> Result<f64> {
        let l = self.schedule.log_mean_coeff(t);
        Ok(l - (-(2.0 * l).exp_m1()).ln())
    }

    /// u = e^L solves e^λ u² + u − e^λ = 0: u = 2 / (e^{−λ} + √(e^{−2λ} + 4)), then t from
    /// L = log u in closed form (u ≈ e^λ below λ = −300, where e^{−2λ} overflows).
    fn t_of_log_snr(&self, lambda: f64) -> Result<f64> {
        let l = if lambda.is_nan() {
            f64::NAN
        } else if lambda < -300.0 {
            lambda
        } else {
            let e = (-lambda).exp();
            (2.0 / (e + (e * e + 4.0).sqrt())).ln()
        };
        self.schedule.t_of_log_mean_coeff(l, lambda)
    }
}
