//! Predictors: one step of a discretised reverse-time SDE, from t to t − Δt (`sampling.Predictor`).
//!
//! A predictor maps the state x_i at time t_i to x_{i+1} at the next (smaller) time of the grid.
//! Built in, with the reference's update rules:
//!
//! | type | rule | SDEs |
//! |---|---|---|
//! | [`EulerMaruyamaPredictor`] | x̄ = x − f̃(x,t) Δt,  x = x̄ + g̃(t) √Δt z (Δt = T/N on the reference grid, t − t_next on others) | any |
//! | [`ReverseDiffusionPredictor`] | x̄ = x − (f_i − G_i² s),  x = x̄ + G_i z | any |
//! | [`AncestralSamplingPredictor`] | SMLD / DDPM ancestral step | [`sde_core::AncestralSde`] (VE, VP) |
//! | [`NoPredictor`] | x̄ = x | any |
//!
//! Users add their own by implementing [`Predictor`] for the SDEs it supports.

mod ancestral;
mod euler_maruyama;
pub(crate) mod fused;
mod reverse_diffusion;

pub use ancestral::AncestralSamplingPredictor;
pub use euler_maruyama::EulerMaruyamaPredictor;
pub use reverse_diffusion::ReverseDiffusionPredictor;

use candle_core::Tensor;
use sde_core::noise::NoiseSource;
use sde_core::{AncestralSde, ScoreFn, Sde};

use crate::error::{Error, Result};
use crate::step::{GridKind, StepCtx};

/// The result of one predictor or corrector step (Python: `return x, x_mean`).
///
/// `x` is the new state, `x_mean` the same step without its final noise term (the sampler
/// returns the last `x_mean` when `denoise` / `noise_removal` is on).
#[derive(Debug, Clone)]
pub struct Update {
    /// The next state, noise included.
    pub x: Tensor,
    /// The next state without the noise of this step.
    pub x_mean: Tensor,
}

/// One step of a reverse-time sampler (`sampling.Predictor.update_fn`).
///
/// Generic over the SDE so that a predictor can be restricted to the SDEs it supports:
/// [`AncestralSamplingPredictor`] implements `Predictor<S>` only for `S:`
/// [`AncestralSde`], so sub-VP + ancestral sampling does not compile.
///
/// `x: [B, ...]`, `t: [B]` (every sample at the current grid time); every random draw goes
/// through `noise`.
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use rand::SeedableRng;
/// use sde_core::{analytic::GaussianScore, time_tensor, VpSde};
/// use sde_solvers::predictor::{Predictor, ReverseDiffusionPredictor};
///
/// let sde = VpSde::default();
/// let score = GaussianScore::isotropic(&sde, 0.3, 0.6)?;
/// let x = Tensor::zeros((4, 2), DType::F32, &Device::Cpu)?;
/// let t = time_tensor(0.5, 4, &Device::Cpu, DType::F32)?;
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let up = ReverseDiffusionPredictor::new(false).update(&sde, &score, &x, &t, &mut rng)?;
/// assert_eq!(up.x.dims(), &[4, 2]);
/// # Ok::<(), sde_solvers::Error>(())
/// ```
pub trait Predictor<S: Sde + ?Sized> {
    /// One step from `(x, t)`: returns the next state and its noise-free mean.
    #[doc(alias = "update_fn")]
    fn update<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Update>;

    /// One step inside the driver, seeing the step context (`t = ctx.t` as a tensor). Default:
    /// [`update`](Predictor::update), which assumes the reference grid.
    /// [`EulerMaruyamaPredictor`] takes its Δt from `ctx.dt`; [`ReverseDiffusionPredictor`] and
    /// [`AncestralSamplingPredictor`] follow the SDE's discrete chain and refuse other grids.
    fn update_step<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Update> {
        let _ = ctx;
        self.update(sde, score, x, t, noise)
    }
}

impl<S: Sde + ?Sized, P: Predictor<S> + ?Sized> Predictor<S> for &P {
    fn update<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Update> {
        (**self).update(sde, score, x, t, noise)
    }
    fn update_step<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Update> {
        (**self).update_step(ctx, sde, score, x, t, noise)
    }
}

/// [`Error::Unsupported`] unless the grid is the SDE's own chain (for the predictors built on
/// [`Sde::discretize`] or an ancestral rule, defined on that grid only).
pub(crate) fn require_chain(ctx: &StepCtx, what: &str) -> Result<()> {
    match ctx.grid {
        GridKind::SdeChain => Ok(()),
        GridKind::Free => Err(Error::Unsupported(format!(
            "{what} follows the SDE's N-step discrete chain: use Schedule::Reference with \
             n_steps = sde.n(), or Euler–Maruyama / the samplers of `samplers` on other grids \
             (step {} of {}, t = {})",
            ctx.i, ctx.n, ctx.t
        ))),
    }
}

/// The empty predictor (`NonePredictor`): x = x̄ = x_in; evaluates nothing and draws nothing.
/// Use it for corrector-only sampling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[doc(alias = "NonePredictor")]
pub struct NoPredictor;

impl<S: Sde + ?Sized> Predictor<S> for NoPredictor {
    fn update<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        _sde: &S,
        _score: &F,
        x: &Tensor,
        _t: &Tensor,
        _noise: &mut N,
    ) -> Result<Update> {
        Ok(Update {
            x: x.clone(),
            x_mean: x.clone(),
        })
    }
}

/// Config-driven choice of a predictor (`config.sampling.predictor`), the enum counterpart of
/// the reference's string registry.
///
/// `PredictorKind` implements [`Predictor<S>`] for every `S:` [`AncestralSde`] (VE, VP).
/// For other SDEs (sub-VP, your own), convert it with [`PredictorKind::for_any_sde`], which
/// returns [`Error::Unsupported`] for [`PredictorKind::AncestralSampling`] (the reference
/// crashes there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictorKind {
    /// [`EulerMaruyamaPredictor`] (`euler_maruyama`).
    EulerMaruyama {
        /// Integrate the probability-flow ODE instead of the reverse SDE.
        probability_flow: bool,
    },
    /// [`ReverseDiffusionPredictor`] (`reverse_diffusion`).
    ReverseDiffusion {
        /// Integrate the probability-flow ODE instead of the reverse SDE.
        probability_flow: bool,
    },
    /// [`AncestralSamplingPredictor`] (`ancestral_sampling`); VE and VP only.
    AncestralSampling,
    /// [`NoPredictor`] (`none`).
    None,
}

impl PredictorKind {
    /// A predictor usable with any [`Sde`]: fails for `AncestralSampling`, which needs an
    /// [`AncestralSde`].
    pub fn for_any_sde(self) -> Result<AnySdePredictor> {
        match self {
            PredictorKind::AncestralSampling => Err(Error::Unsupported(
                "ancestral sampling needs an SDE with an ancestral rule (VE or VP, \
                 sde_core::AncestralSde); sub-VP has none"
                    .into(),
            )),
            kind => Ok(AnySdePredictor(kind)),
        }
    }

    fn update_common<S: Sde + ?Sized, F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        self,
        ctx: Option<&StepCtx>,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Option<Update>> {
        Ok(match self {
            PredictorKind::EulerMaruyama { probability_flow } => {
                let p = EulerMaruyamaPredictor::new(probability_flow);
                Some(match ctx {
                    Some(ctx) => p.update_step(ctx, sde, score, x, t, noise)?,
                    None => p.update(sde, score, x, t, noise)?,
                })
            }
            PredictorKind::ReverseDiffusion { probability_flow } => {
                let p = ReverseDiffusionPredictor::new(probability_flow);
                Some(match ctx {
                    Some(ctx) => p.update_step(ctx, sde, score, x, t, noise)?,
                    None => p.update(sde, score, x, t, noise)?,
                })
            }
            PredictorKind::None => Some(NoPredictor.update(sde, score, x, t, noise)?),
            PredictorKind::AncestralSampling => None,
        })
    }
}

impl<S: AncestralSde + ?Sized> Predictor<S> for PredictorKind {
    fn update<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Update> {
        match self.update_common(None, sde, score, x, t, noise)? {
            Some(u) => Ok(u),
            None => AncestralSamplingPredictor.update(sde, score, x, t, noise),
        }
    }
    fn update_step<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Update> {
        match self.update_common(Some(ctx), sde, score, x, t, noise)? {
            Some(u) => Ok(u),
            None => AncestralSamplingPredictor.update_step(ctx, sde, score, x, t, noise),
        }
    }
}

/// A [`PredictorKind`] checked to run on any [`Sde`] (built by [`PredictorKind::for_any_sde`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnySdePredictor(PredictorKind);

impl AnySdePredictor {
    /// The wrapped choice.
    pub fn kind(&self) -> PredictorKind {
        self.0
    }
}

impl<S: Sde + ?Sized> Predictor<S> for AnySdePredictor {
    fn update<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Update> {
        self.0
            .update_common(None, sde, score, x, t, noise)?
            .ok_or_else(|| Error::Unsupported("ancestral sampling needs an AncestralSde".into()))
    }
    fn update_step<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Update> {
        self.0
            .update_common(Some(ctx), sde, score, x, t, noise)?
            .ok_or_else(|| Error::Unsupported("ancestral sampling needs an AncestralSde".into()))
    }
}
