//! The Langevin corrector of the paper (Algorithms 4 and 5).

use candle_core::Tensor;
use sde_core::noise::{randn_like, NoiseSource};
use sde_core::{ScoreFn, Sde};

use super::{check_corrector_params, Corrector};
use crate::error::Result;
use crate::predictor::fused::{mean_norm, Coeff, Terms};
use crate::predictor::Update;

/// Langevin corrector (`LangevinCorrector`, Algorithms 4–5 of the paper): `n_steps_each` times,
///
/// s = s(x, t),  z ~ N(0, I),  ε = 2 α (r ‖z‖‾ / ‖s‖‾)²,  x̄ = x + ε s,  x = x̄ + √(2ε) z,
///
/// where ‖·‖‾ is the batch mean of the per-sample L2 norms (so samples of a batch are coupled,
/// as in the reference), r = `snr` and α = [`Sde::langevin_alpha`] (1 for VE, α_i for VP and
/// sub-VP). The paper uses `snr = 0.16` for VE (CIFAR-10) and `n_steps_each = 1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LangevinCorrector {
    snr: f64,
    n_steps_each: usize,
}

impl LangevinCorrector {
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

impl<S: Sde + ?Sized> Corrector<S> for LangevinCorrector {
    fn update<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Update> {
        let alpha = Coeff::of(&sde.langevin_alpha(t)?)?;
        let mut up = Update {
            x: x.clone(),
            x_mean: x.clone(),
        };
        for _ in 0..self.n_steps_each {
            let grad = score.score(&up.x, t)?;
            let z = randn_like(&up.x, noise)?;
            let ratio = self.snr * mean_norm(&z)? / mean_norm(&grad)?;
            let step = alpha.map(|a| 2.0 * ratio * ratio * a);
            let noise_scale = step.map(|e| (2.0 * e).sqrt());
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
