//! Variance-exploding SDE (SMLD / NCSN).

use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};

use crate::error::{check_param, Result};
use crate::noise::NoiseSource;
use crate::sde::{
    host_coeff2_in, host_coeff_in, standard_normal_logp, step_indices, AncestralSde,
    LabelConvention, Sde,
};
use crate::tensor::{mul_batch, PerSample};

/// Variance-exploding SDE, mirrors `sde_lib.VESDE`:
/// dx = σ(t) √(2 log(σ_max/σ_min)) dw,  σ(t) = σ_min (σ_max/σ_min)^t.
///
/// Kernel: mean x(0), std σ(t). Prior N(0, σ_max² I). Discrete noise levels (SMLD)
/// σ_i = exp(linspace(log σ_min, log σ_max, N))_i, ascending.
/// Defaults (`VeSde::default()`): `sigma_min = 0.01`, `sigma_max = 50`, `N = 1000`.
/// ```
/// let sde = sde_core::VeSde::new(0.01, 50.0, 1000)?;
/// assert_eq!(sde.discrete_sigmas().len(), 1000);
/// # Ok::<(), sde_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct VeSde {
    sigma_min: f64,
    sigma_max: f64,
    n: usize,
    discrete_sigmas: Arc<[f64]>,
}

impl VeSde {
    /// Validates `0 < sigma_min < sigma_max` (finite) and `n ≥ 1`.
    pub fn new(sigma_min: f64, sigma_max: f64, n: usize) -> Result<Self> {
        check_param("sigma_min", sigma_min, sigma_min > 0.0, "must be > 0")?;
        check_param(
            "sigma_max",
            sigma_max,
            sigma_max > sigma_min,
            "must be > sigma_min",
        )?;
        check_param("N", n as f64, n >= 1, "must be at least 1")?;
        let (lo, hi) = (sigma_min.ln(), sigma_max.ln());
        let discrete_sigmas: Arc<[f64]> = (0..n)
            .map(|i| {
                if n == 1 {
                    sigma_min
                } else {
                    (lo + (hi - lo) * i as f64 / (n - 1) as f64).exp()
                }
            })
            .collect();
        Ok(Self {
            sigma_min,
            sigma_max,
            n,
            discrete_sigmas,
        })
    }

    /// σ_min.
    pub fn sigma_min(&self) -> f64 {
        self.sigma_min
    }
    /// σ_max.
    pub fn sigma_max(&self) -> f64 {
        self.sigma_max
    }
    /// σ(t) = σ_min (σ_max/σ_min)^t for a host time.
    pub fn sigma(&self, t: f64) -> f64 {
        self.sigma_min * (self.sigma_max / self.sigma_min).powf(t)
    }
    /// The SMLD noise levels σ_0 < … < σ_{N−1} (`discrete_sigmas`), ascending.
    pub fn discrete_sigmas(&self) -> &[f64] {
        &self.discrete_sigmas
    }
    /// √(2 log(σ_max/σ_min)), the factor between σ(t) and g(t).
    fn g_factor(&self) -> f64 {
        (2.0 * (self.sigma_max / self.sigma_min).ln()).sqrt()
    }
    /// σ_i and σ_{i−1} (0 for i = 0) at the discrete index of each time (validated for `x`).
    fn sigma_pair(
        &self,
        func: &'static str,
        x: &Tensor,
        t: &Tensor,
    ) -> Result<PerSample<(f64, f64)>> {
        let times = PerSample::times_in(func, x, t, 1.0)?;
        Ok(step_indices(&times, self.n, 1.0, t.dtype()).map(|i| {
            let adj = if i == 0 {
                0.0
            } else {
                self.discrete_sigmas[i - 1]
            };
            (self.discrete_sigmas[i], adj)
        }))
    }
}

impl Default for VeSde {
    fn default() -> Self {
        Self::new(0.01, 50.0, 1000).expect("paper defaults are valid")
    }
}

impl Sde for VeSde {
    fn n(&self) -> usize {
        self.n
    }

    /// f = 0, g(t) = σ(t) √(2 log(σ_max/σ_min)).
    fn sde(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let k = self.g_factor();
        let g = host_coeff_in("VeSde::sde", 1.0, x, t, |t| self.sigma(t) * k)?;
        Ok((x.zeros_like()?, g))
    }

    /// mean = x(0), std = σ(t).
    fn marginal_prob(&self, x0: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let std = host_coeff_in("VeSde::marginal_prob", 1.0, x0, t, |t| self.sigma(t))?;
        Ok((x0.clone(), std))
    }

    /// z ~ N(0, σ_max² I).
    fn prior_sampling<N: NoiseSource + ?Sized>(
        &self,
        shape: &Shape,
        device: &Device,
        dtype: DType,
        noise: &mut N,
    ) -> Result<Tensor> {
        Ok(noise
            .randn(shape, device, dtype)?
            .affine(self.sigma_max, 0.0)?)
    }

    /// log N(z; 0, σ_max² I) = −D/2 log(2π σ_max²) − ‖z‖²/(2σ_max²).
    fn prior_logp(&self, z: &Tensor) -> Result<Tensor> {
        standard_normal_logp(z, self.sigma_max)
    }

    /// SMLD chain: f_i = 0, G_i = √(σ_i² − σ_{i−1}²) with σ_{−1} = 0.
    fn discretize(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let g = self
            .sigma_pair("VeSde::discretize", x, t)?
            .map(|(s, a)| (s * s - a * a).sqrt())
            .tensor(t.device(), t.dtype())?;
        Ok((x.zeros_like()?, g))
    }

    fn marginal_coeffs(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let func = "VeSde::marginal_coeffs";
        let probe = Tensor::zeros((crate::batch_size(func, "t", t)?, 1), t.dtype(), t.device())?;
        host_coeff2_in(func, 1.0, &probe, t, |t| (1.0, self.sigma(t)))
    }

    fn label_convention(&self, continuous: bool) -> LabelConvention {
        if continuous {
            LabelConvention::Sigma
        } else {
            LabelConvention::SigmaIndex {
                n: self.n,
                t_end: 1.0,
            }
        }
    }
    /// λ(t) = −log σ(t) = −log σ_min − t log(σ_max/σ_min) (α = 1).
    fn log_snr(&self, t: f64) -> Result<f64> {
        Ok(-self.sigma_min.ln() - t * (self.sigma_max / self.sigma_min).ln())
    }

    /// t = (−λ − log σ_min) / log(σ_max/σ_min), checked to lie in [0, 1].
    fn t_of_log_snr(&self, lambda: f64) -> Result<f64> {
        let t = (-lambda - self.sigma_min.ln()) / (self.sigma_max / self.sigma_min).ln();
        if !(-1e-12..=1.0 + 1e-12).contains(&t) {
            return Err(crate::Error::InvalidParameter {
                name: "lambda",
                value: lambda,
                reason: "log-SNR outside [-log sigma_max, -log sigma_min]",
            });
        }
        // the ends within rounding are the ends
        Ok(t.clamp(0.0, 1.0))
    }
}

impl AncestralSde for VeSde {
    fn ancestral_step(&self, x: &Tensor, t: &Tensor, score: &Tensor) -> Result<(Tensor, Tensor)> {
        let (dv, std) = self
            .sigma_pair("VeSde::ancestral_step", x, t)?
            .map(|(s, a)| {
                let d = s * s - a * a;
                (d, (a * a * d / (s * s)).sqrt())
            })
            .unzip();
        let x_mean = (x + mul_batch(&dv.tensor(t.device(), x.dtype())?, score)?)?;
        Ok((x_mean, std.tensor(t.device(), t.dtype())?))
    }
}
