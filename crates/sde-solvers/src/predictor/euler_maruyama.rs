//! Euler–Maruyama predictor for the reverse-time SDE.

use candle_core::Tensor;
use sde_core::noise::{randn_like, NoiseSource};
use sde_core::{ScoreFn, Sde};

use super::fused::{Coeff, Terms};
use super::{Predictor, Update};
use crate::error::Result;
use crate::step::StepCtx;

/// Euler–Maruyama step of the reverse-time SDE backwards in time (`EulerMaruyamaPredictor`):
///
/// x̄ = x − [f(x,t) − w g(t)² s(x,t)] Δt,  x = x̄ + (1−pf) g(t) √Δt z,  z ~ N(0, I),
///
/// with Δt = T/N (the reference's, on its grid; t − t_next on other schedules), w = 1 for the reverse SDE and w = ½ with no noise term for the
/// probability-flow ODE (`probability_flow = true`; the reference crashes there, this port
/// supports it). One score evaluation and one noise draw per step (the draw is made even for
/// the ODE, so that the noise stream has the same layout).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EulerMaruyamaPredictor {
    /// Integrate the probability-flow ODE instead of the reverse SDE.
    pub probability_flow: bool,
}

impl EulerMaruyamaPredictor {
    /// The predictor for the reverse SDE (`false`) or the probability-flow ODE (`true`).
    pub fn new(probability_flow: bool) -> Self {
        Self { probability_flow }
    }
}

impl EulerMaruyamaPredictor {
    fn step_dt<S: Sde + ?Sized, F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        dt: f64,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Update> {
        let z = randn_like(x, noise)?;
        let s = score.score(x, t)?;
        let (f, g) = sde.sde(x, t)?;
        let w = if self.probability_flow { 0.5 } else { 1.0 };
        let g = Coeff::of(&g)?;
        // x̄ = x − Δt f + w g² Δt s,  x = x̄ + g √Δt z
        let a = g.map(|g| w * g * g * dt);
        let c = g.map(|g| g * dt.sqrt());
        Terms {
            x,
            f: Some((&f, -dt)),
            s: Some((&s, &a)),
            z: (!self.probability_flow).then_some((&z, &c)),
        }
        .apply()
    }
}

impl<S: Sde + ?Sized> Predictor<S> for EulerMaruyamaPredictor {
    /// The reference's step, Δt = T/N.
    fn update<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Update> {
        self.step_dt(sde.t_end() / sde.n() as f64, sde, score, x, t, noise)
    }

    /// Δt = `ctx.dt`: T/n on the reference grid (bit-identical to [`update`](Predictor::update)
    /// when n = N), t − t_next on every other schedule.
    fn update_step<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Update> {
        self.step_dt(ctx.dt, sde, score, x, t, noise)
    }
}
