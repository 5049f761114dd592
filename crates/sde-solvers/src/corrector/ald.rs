//! Annealed Langevin dynamics (NCSN / NCSNv2).

use candle_core::Tensor;
use sde_core::noise::{randn_like, NoiseSource};
use sde_core::{mul_batch, ScoreFn, Sde};

use super::{check_corrector_params, Corrector};
use crate::error::Result;
use crate::predictor::Update;

/// Annealed Langevin dynamics (`AnnealedLangevinDynamics`, the sampler of NCSN/NCSNv2):
/// `n_steps_each` times,
///
/// ε = 2 α (r σ(t))²,  x̄ = x + ε s(x, t),  x = x̄ + √(2ε) z,  z ~ N(0, I),
///
/// with σ(t) the marginal std ([`Sde::marginal_prob`]), r = `snr` and α =
/// [`Sde::langevin_alpha`]. Unlike [`super::LangevinCorrector`] the step does not depend on the
/// batch, so samples are independent.
#[derive(Debug, Clone, Copy, PartialEq)]
#[doc(alias = "ald")]
pub struct AnnealedLangevinDynamics {
    snr: f64,
    n_steps_each: usize,
}

impl AnnealedLangevinDynamics {
    /// Validates `snr > 0` and `n_steps_each ≥ 1`.
    pub fn new(snr: f64, n_steps_each: usize) -> Result<Self> {
        check_corrector_params(snr, n_steps_each)?;
        Ok(Self { snr, n_steps_each })
    }
    /// Target signal-to-noise ratio r.
    pub fn snr(&self) -> f64 {
        self.snr
    }
}

impl<S: Sde + ?Sized> Corrector<S> for AnnealedLangevinDynamics {
    fn update<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Update> {
        let alpha = sde.langevin_alpha(t)?;
        let (_, std) = sde.marginal_prob(x, t)?;
        let r2 = self.snr * self.snr;
        // ε = 2 α r² σ²
        let step = (std.sqr()?.affine(2.0 * r2, 0.0)? * alpha.to_dtype(std.dtype())?)?;
        let noise_scale = step.affine(2.0, 0.0)?.sqrt()?;
        let mut x = x.clone();
        let mut x_mean = x.clone();
        for _ in 0..self.n_steps_each {
            let grad = score.score(&x, t)?;
            let z = randn_like(&x, noise)?;
            x_mean = (&x + mul_batch(&step, &grad)?)?;
            x = (&x_mean + mul_batch(&noise_scale, &z)?)?;
        }
        Ok(Update { x, x_mean })
    }
    fn n_steps_each(&self) -> usize {
        self.n_steps_each
    }
}
