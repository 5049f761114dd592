//! Annealed Langevin dynamics (NCSN / NCSNv2).

use candle_core::Tensor;
use sde_core::noise::{randn_like, NoiseSource};
use sde_core::{ScoreFn, Sde};

use super::{check_corrector_params, Corrector};
use crate::error::Result;
use crate::predictor::fused::{per_sample, Coeff, Terms};
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
        let alpha = per_sample(&sde.langevin_alpha(t)?)?;
        let (_, std) = sde.marginal_prob(x, t)?;
        let std = per_sample(&std)?;
        let r2 = self.snr * self.snr;
        // ε = 2 α r² σ²
        let step = Coeff::from_vec(
            alpha
                .iter()
                .zip(&std)
                .map(|(a, s)| 2.0 * r2 * s * s * a)
                .collect(),
        );
        let noise_scale = step.map(|e| (2.0 * e).sqrt());
        let mut up = Update {
            x: x.clone(),
            x_mean: x.clone(),
        };
        for _ in 0..self.n_steps_each {
            let grad = score.score(&up.x, t)?;
            let z = randn_like(&up.x, noise)?;
            up = Terms {
                x: &up.x,
                f: None,
                s: Some((&grad, &step)),
                z: Some((&z, &noise_scale)),
            }
            .apply()?;
        }
        Ok(up)
    }
    fn n_steps_each(&self) -> usize {
        self.n_steps_each
    }
}
