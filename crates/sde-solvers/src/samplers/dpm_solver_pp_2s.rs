//! DPM-Solver++(2S), the second-order singlestep exponential integrator.

use candle_core::Tensor;
use sde_core::noise::NoiseSource;
use sde_core::{ScoreFn, Sde};

use super::{
    deterministic, expo, lin, model_output, points, to_clean, to_data, tweedie, Point, Prediction,
};
use crate::error::Result;
use crate::predictor::Update;
use crate::step::{Step, StepCtx, StepIo};

/// DPM-Solver++(2S) (Lu et al. 2022, Algorithm 1 with r₁ = ½; `singlestep_dpm_solver_second_update`),
/// two evaluations per step: with h = λ_t − λ_s, the intermediate time s₁ = λ⁻¹(λ_s + r₁ h) and
/// data prediction,
///
/// u = (σ_{s₁}/σ_s) x − α_{s₁} (e^{−r₁h} − 1) m₀,  m₁ = x̂₀(u, s₁),
/// x_t = (σ_t/σ_s) x − α_t (e^{−h} − 1) m₀ − (1/(2r₁)) α_t (e^{−h} − 1)(m₁ − m₀).
///
/// Global order 2. [`Prediction::Noise`] gives DPM-Solver-2 (same form on ε̂ with α ↔ σ, h ↔ −h).
/// s₁ comes from [`Sde::t_of_log_snr`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpmSolverPp2S {
    /// Data (DPM-Solver++) or noise (DPM-Solver) prediction.
    pub prediction: Prediction,
}

impl Default for DpmSolverPp2S {
    fn default() -> Self {
        Self {
            prediction: Prediction::Data,
        }
    }
}

const R1: f64 = 0.5;

/// One DPM-Solver++(2S) step from s to t given the model output m₀ at s (also the warm-up step
/// of [`super::DpmSolverPp3M`]).
pub(crate) fn singlestep_2s<S: Sde + ?Sized, F: ScoreFn + ?Sized>(
    pred: Prediction,
    sde: &S,
    score: &F,
    x: &Tensor,
    s: &Point,
    t: &Point,
    m0: &Tensor,
) -> Result<Tensor> {
    if to_clean(t) {
        return Ok(to_data(pred, x, m0, s)?.affine(t.alpha, 0.0)?);
    }
    let h = t.lambda - s.lambda;
    let mid = Point::at(sde, sde.t_of_log_snr(s.lambda + R1 * h)?)?;
    let (r_1, c_1, hh_1) = expo(pred, s, &mid);
    let u = lin(&[(x, r_1), (m0, -c_1 * hh_1.exp_m1())])?;
    let m1 = model_output(pred, score, &u, &mid)?;
    let (r, c, hh) = expo(pred, s, t);
    let phi1 = hh.exp_m1();
    let k = 0.5 / R1;
    lin(&[(x, r), (m0, -c * phi1 * (1.0 - k)), (&m1, -c * phi1 * k)])
}

impl<S: Sde + ?Sized> Step<S> for DpmSolverPp2S {
    type State = ();

    fn step<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        x: &Tensor,
        _state: &mut (),
        _io: &mut StepIo<'_, N>,
    ) -> Result<Update> {
        let (s, t) = points(sde, ctx)?;
        let m0 = model_output(self.prediction, score, x, &s)?;
        Ok(deterministic(singlestep_2s(
            self.prediction,
            sde,
            score,
            x,
            &s,
            &t,
            &m0,
        )?))
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
