//! SDE-DPM-Solver++(2M), the stochastic multistep solver of the reverse SDE.

use candle_core::Tensor;
use sde_core::noise::{randn_like, NoiseSource};
use sde_core::{ScoreFn, Sde};

use super::{data_pred, lin, points, step_order, to_clean, tweedie, History};
use crate::error::Result;
use crate::predictor::Update;
use crate::step::{Step, StepCtx, StepIo};

/// SDE-DPM-Solver++(2M) (Lu et al. 2022, §5 / diffusers' `sde-dpmsolver++`, midpoint form) of
/// the reverse SDE, data prediction, one evaluation and one noise draw per step: with
/// h = λ_t − λ_s, r₀ = h_prev/h and D₁ = (m₀ − m₁)/r₀,
///
/// x̄ = (σ_t/σ_s) e^{−h} x + α_t (1 − e^{−2h}) (m₀ + ½ D₁),  x = x̄ + σ_t √(1 − e^{−2h}) z,
///
/// first order (D₁ = 0) on the first step and, with `lower_order_final`, on the last step of
/// runs shorter than 15 steps. A step to σ = 0 is x = α_t x̂₀.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdeDpmSolverPp2M {
    /// Lower the order of the last steps of short runs (< 15 steps).
    pub lower_order_final: bool,
}

impl Default for SdeDpmSolverPp2M {
    fn default() -> Self {
        Self {
            lower_order_final: true,
        }
    }
}

impl<S: Sde + ?Sized> Step<S> for SdeDpmSolverPp2M {
    type State = History;

    fn step<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        x: &Tensor,
        state: &mut History,
        io: &mut StepIo<'_, N>,
    ) -> Result<Update> {
        let (s, t) = points(sde, ctx)?;
        let m0 = data_pred(score, x, &s)?;
        state.push(s, m0.clone(), 2);
        if to_clean(&t) {
            let x = m0.affine(t.alpha, 0.0)?;
            return Ok(Update {
                x_mean: x.clone(),
                x,
            });
        }
        let h = t.lambda - s.lambda;
        let eh = (-h).exp();
        let one_m = -(-2.0 * h).exp_m1();
        let k = step_order(2, state.len(), ctx, self.lower_order_final);
        let ratio = t.sigma / s.sigma * eh;
        let x_mean = match (k, state.back(1)) {
            (2, Some((p1, m1))) => {
                let r0 = (s.lambda - p1.lambda) / h;
                let half = 0.5 / r0;
                lin(&[
                    (x, ratio),
                    (&m0, t.alpha * one_m * (1.0 + half)),
                    (m1, -t.alpha * one_m * half),
                ])?
            }
            _ => lin(&[(x, ratio), (&m0, t.alpha * one_m)])?,
        };
        let z = randn_like(x, &mut io.step_noise())?;
        Ok(Update {
            x: lin(&[(&x_mean, 1.0), (&z, t.sigma * one_m.sqrt())])?,
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
        _state: &mut History,
    ) -> Result<Tensor> {
        tweedie(sde, score, &last.x, ctx.t_next)
    }
}
