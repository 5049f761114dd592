//! Correctors: Markov-chain Monte Carlo steps that move x towards p_t at a fixed time t
//! (`sampling.Corrector`).
//!
//! | type | step size ε | SDEs |
//! |---|---|---|
//! | [`LangevinCorrector`] | ε = 2 α (r ‖z‖‾ / ‖s‖‾)², batch means of per-sample norms | any |
//! | [`AnnealedLangevinDynamics`] | ε = 2 α (r σ(t))² | any |
//! | [`NoCorrector`] | no step | any |
//!
//! Each Langevin step is x̄ = x + ε s(x, t), x = x̄ + √(2ε) z with r = `snr`, z ~ N(0, I) and
//! α = [`Sde::langevin_alpha`] (1 for VE, α_i = 1 − β_i for VP and sub-VP).
//! Users add their own by implementing [`Corrector`].

mod ald;
mod langevin;

pub use ald::AnnealedLangevinDynamics;
pub use langevin::LangevinCorrector;

use candle_core::Tensor;
use sde_core::noise::NoiseSource;
use sde_core::{ScoreFn, Sde};

use crate::error::{Error, Result};
use crate::predictor::Update;

/// One corrector application at time t (`sampling.Corrector.update_fn`): `n_steps_each` MCMC
/// steps targeting p_t.
///
/// `x: [B, ...]`, `t: [B]`; every random draw goes through `noise` (one draw per inner step).
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use rand::SeedableRng;
/// use sde_core::{analytic::GaussianScore, time_tensor, VeSde};
/// use sde_solvers::corrector::{Corrector, LangevinCorrector};
///
/// let sde = VeSde::default();
/// let score = GaussianScore::isotropic(&sde, 0.3, 0.6)?;
/// let x = Tensor::ones((4, 2), DType::F32, &Device::Cpu)?;
/// let t = time_tensor(0.5, 4, &Device::Cpu, DType::F32)?;
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let up = LangevinCorrector::new(0.16, 1)?.update(&sde, &score, &x, &t, &mut rng)?;
/// assert_eq!(up.x_mean.dims(), &[4, 2]);
/// # Ok::<(), sde_solvers::Error>(())
/// ```
pub trait Corrector<S: Sde + ?Sized> {
    /// Runs the corrector from `(x, t)`: returns the state after the last inner step and that
    /// step's noise-free mean.
    #[doc(alias = "update_fn")]
    fn update<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Update>;

    /// Inner steps per call (`n_steps`): the reference's NFE count is N · (`n_steps_each` + 1).
    /// Default 1.
    #[doc(alias = "n_steps")]
    fn n_steps_each(&self) -> usize {
        1
    }
}

impl<S: Sde + ?Sized, C: Corrector<S> + ?Sized> Corrector<S> for &C {
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
    fn n_steps_each(&self) -> usize {
        (**self).n_steps_each()
    }
}

/// The empty corrector (`NoneCorrector`): x = x̄ = x_in, no evaluation, no draw. Use it for
/// predictor-only sampling. Its [`n_steps_each`](Corrector::n_steps_each) is 1, so the
/// reported NFE is the reference's N · 2.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[doc(alias = "NoneCorrector")]
pub struct NoCorrector;

impl<S: Sde + ?Sized> Corrector<S> for NoCorrector {
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

/// Config-driven choice of a corrector (`config.sampling.corrector`, `snr`, `n_steps_each`).
/// Parameters are validated when the corrector runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CorrectorKind {
    /// [`LangevinCorrector`] (`langevin`).
    Langevin {
        /// Target signal-to-noise ratio r.
        snr: f64,
        /// Inner steps per time.
        n_steps_each: usize,
    },
    /// [`AnnealedLangevinDynamics`] (`ald`).
    AnnealedLangevin {
        /// Target signal-to-noise ratio r.
        snr: f64,
        /// Inner steps per time.
        n_steps_each: usize,
    },
    /// [`NoCorrector`] (`none`).
    None,
}

impl<S: Sde + ?Sized> Corrector<S> for CorrectorKind {
    fn update<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Update> {
        match *self {
            CorrectorKind::Langevin { snr, n_steps_each } => {
                LangevinCorrector::new(snr, n_steps_each)?.update(sde, score, x, t, noise)
            }
            CorrectorKind::AnnealedLangevin { snr, n_steps_each } => {
                AnnealedLangevinDynamics::new(snr, n_steps_each)?.update(sde, score, x, t, noise)
            }
            CorrectorKind::None => NoCorrector.update(sde, score, x, t, noise),
        }
    }
    fn n_steps_each(&self) -> usize {
        match *self {
            CorrectorKind::Langevin { n_steps_each, .. }
            | CorrectorKind::AnnealedLangevin { n_steps_each, .. } => n_steps_each,
            CorrectorKind::None => 1,
        }
    }
}

/// Validates the shared corrector parameters: `snr > 0` (finite) and `n_steps_each ≥ 1`.
pub(crate) fn check_corrector_params(snr: f64, n_steps_each: usize) -> Result<()> {
    if !(snr.is_finite() && snr > 0.0) {
        return Err(Error::InvalidParameter {
            name: "snr",
            value: snr,
            reason: "must be finite and > 0",
        });
    }
    if n_steps_each == 0 {
        return Err(Error::InvalidParameter {
            name: "n_steps_each",
            value: 0.0,
            reason: "must be at least 1",
        });
    }
    Ok(())
}
