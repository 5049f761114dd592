//! DPM-Solver++(2M), the second-order multistep exponential integrator.

use candle_core::Tensor;
use sde_core::noise::NoiseSource;
use sde_core::{ScoreFn, Sde};

use super::{
    deterministic, model_output, multistep_update, points, step_order, tweedie, History, Prediction,
};
use crate::error::Result;
use crate::predictor::Update;
use crate::step::{Step, StepCtx, StepIo};

/// DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2; `DPMSolverMultistepScheduler`, order 2) of
/// the probability-flow ODE, one evaluation per step. With h = λ_t − λ_s, r₀ = h_prev/h and
/// data prediction m = x̂₀:
///
/// x_t = (σ_t/σ_s) x − α_t (e^{−h} − 1) [(1 + 1/(2r₀)) m₀ − 1/(2r₀) m₁],
///
/// first order (DDIM) on the first step; [`Prediction::Noise`] gives DPM-Solver-2M
/// (x_t = (α_t/α_s) x − σ_t (e^h − 1) [...] on ε̂). Global order 2. Defaults: data prediction,
/// `lower_order_final = true` (below 15 steps the last step is first order).
/// ```
/// use candle_core::{DType, Device};
/// use rand::SeedableRng;
/// use sde_core::{analytic::GaussianScore, SubVpSde};
/// use sde_solvers::{driver::Sampler, samplers::DpmSolverPp2M, schedule::Schedule};
/// let sde = SubVpSde::default();
/// let score = GaussianScore::isotropic(&sde, -0.5, 0.3)?;
/// let s = Sampler::new(DpmSolverPp2M::default(), Schedule::UniformLogSnr { sampling_eps: 1e-3 }, 15);
/// let out = s.sample(&sde, &score, (1000, 2), &Device::Cpu, DType::F64, &mut rand::rngs::StdRng::seed_from_u64(1))?;
/// let mean = out.x.mean_all()?.to_scalar::<f64>()?;
/// assert!((mean + 0.5).abs() < 0.05, "{mean}");
/// # Ok::<(), sde_solvers::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[doc(alias = "DPMSolverMultistepScheduler")]
pub struct DpmSolverPp2M {
    /// Data (DPM-Solver++) or noise (DPM-Solver) prediction.
    pub prediction: Prediction,
    /// Lower the order of the last steps of short runs (< 15 steps).
    pub lower_order_final: bool,
}

impl Default for DpmSolverPp2M {
    fn default() -> Self {
        Self {
            prediction: Prediction::Data,
            lower_order_final: true,
        }
    }
}

impl<S: Sde + ?Sized> Step<S> for DpmSolverPp2M {
    type State = History;

    fn step<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        x: &Tensor,
        state: &mut History,
        _io: &mut StepIo<'_, N>,
    ) -> Result<Update> {
        let (s, t) = points(sde, ctx)?;
        let m0 = model_output(self.prediction, score, x, &s)?;
        state.push(s, m0, 2);
        let k = step_order(2, state.len(), ctx, self.lower_order_final);
        Ok(deterministic(multistep_update(
            self.prediction,
            state,
            x,
            &t,
            k,
            false,
        )?))
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
