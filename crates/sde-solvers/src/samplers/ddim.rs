//! DDIM with stochasticity η.

use candle_core::Tensor;
use sde_core::noise::{randn_like, NoiseSource};
use sde_core::{ScoreFn, Sde};

use super::{data_pred, lin, points, tweedie};
use crate::error::{Error, Result};
use crate::predictor::Update;
use crate::step::{Step, StepCtx, StepIo};

/// DDIM (Song, Meng & Ermon 2021, eq. 12) written through α, σ of any SDE: with
/// x̂₀ = (x + σ_s² s)/α_s, ε̂ = (x − α_s x̂₀)/σ_s and h = λ_t − λ_s,
///
/// c = η σ_t √(1 − e^{−2h}),  x̄ = α_t x̂₀ + √(σ_t² − c²) ε̂,  x = x̄ + c z,
///
/// which for VP is DDIM's σ_t(η) = η √((1 − ᾱ_{t−1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}).
/// η = 0 is deterministic (first order, = DPM-Solver-1), η = 1 is ancestral sampling
/// (DDPM's posterior). One evaluation per step; for η > 0 one noise draw per step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ddim {
    eta: f64,
}

impl Ddim {
    /// Validates η ∈ [0, 1].
    pub fn new(eta: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&eta) {
            return Err(Error::InvalidParameter {
                name: "eta",
                value: eta,
                reason: "DDIM's eta must lie in [0, 1]",
            });
        }
        Ok(Self { eta })
    }
    /// η.
    pub fn eta(&self) -> f64 {
        self.eta
    }
}

impl Default for Ddim {
    /// η = 0 (deterministic DDIM).
    fn default() -> Self {
        Self { eta: 0.0 }
    }
}

impl<S: Sde + ?Sized> Step<S> for Ddim {
    type State = ();

    fn step<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        x: &Tensor,
        _state: &mut (),
        io: &mut StepIo<'_, N>,
    ) -> Result<Update> {
        let (s, t) = points(sde, ctx)?;
        let x0 = data_pred(score, x, &s)?;
        if t.sigma == 0.0 || !t.lambda.is_finite() {
            let x = x0.affine(t.alpha, 0.0)?;
            return Ok(Update {
                x_mean: x.clone(),
                x,
            });
        }
        let e2h = (-2.0 * (t.lambda - s.lambda)).exp();
        let c = self.eta * t.sigma * (1.0 - e2h).max(0.0).sqrt();
        let d = (t.sigma * t.sigma - c * c).max(0.0).sqrt();
        // ε̂ = (x − α_s x̂₀)/σ_s
        let x_mean = lin(&[(&x0, t.alpha - d * s.alpha / s.sigma), (x, d / s.sigma)])?;
        if c == 0.0 {
            return Ok(Update {
                x: x_mean.clone(),
                x_mean,
            });
        }
        let z = randn_like(x, &mut io.step_noise())?;
        Ok(Update {
            x: lin(&[(&x_mean, 1.0), (&z, c)])?,
            x_mean,
        })
    }

    /// Tweedie's x̂₀ at the last time (one evaluation).
    fn denoise<F: ScoreFn + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        last: Update,
        _state: &mut (),
    ) -> Result<Tensor> {
        tweedie(sde, score, &last.x, ctx.t_next)
    }
}
