//! EDM's Heun sampler (Karras et al. 2022, Algorithm 2), deterministic or with churn.

use candle_core::Tensor;
use sde_core::noise::{randn_like, NoiseSource};
use sde_core::{ScoreFn, Sde};

use super::{data_pred, deterministic, lin, points, tweedie, Point};
use crate::error::{Error, Result};
use crate::predictor::Update;
use crate::step::{Step, StepCtx, StepIo};

/// EDM's second-order Heun sampler (Karras et al. 2022, Algorithm 2) for any SDE, in EDM's
/// variables: y = x/α and σ̃ = σ/α = e^{−λ}, in which the probability-flow ODE of every affine
/// SDE is dy/dσ̃ = (y − D(y; σ̃))/σ̃ with D = x̂₀ = (x + σ² s)/α.
///
/// Per step, with γ = min(S_churn/n, √2 − 1) when S_tmin ≤ σ̃_i ≤ S_tmax (else 0):
/// σ̂ = σ̃_i (1 + γ) (at most σ̃(T)), ŷ = y + √(σ̂² − σ̃_i²) S_noise z (one draw per step, only
/// when γ > 0), d = (ŷ − D(ŷ; σ̂))/σ̂, y' = ŷ + (σ̃_{i+1} − σ̂) d, and if σ̃_{i+1} > 0 the
/// correction y_{i+1} = ŷ + (σ̃_{i+1} − σ̂)(d + d')/2 with d' = (y' − D(y'; σ̃_{i+1}))/σ̃_{i+1};
/// x_{i+1} = α_{i+1} y_{i+1}. Two evaluations per step (one for a step to σ̃ = 0).
/// Defaults: deterministic (S_churn = 0, S_tmin = 0, S_tmax = ∞, S_noise = 1). EDM's
/// stochastic settings for ImageNet-64 are S_churn = 40, S_tmin = 0.05, S_tmax = 50,
/// S_noise = 1.003. Use it with [`Schedule::Karras`](crate::schedule::Schedule::Karras).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdmHeun {
    s_churn: f64,
    s_tmin: f64,
    s_tmax: f64,
    s_noise: f64,
}

impl EdmHeun {
    /// The deterministic sampler (no churn).
    pub fn deterministic() -> Self {
        Self {
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
        }
    }

    /// The stochastic sampler: `s_churn ≥ 0`, `0 ≤ s_tmin ≤ s_tmax`, `s_noise > 0` (finite
    /// except `s_tmax`, which may be ∞).
    pub fn stochastic(s_churn: f64, s_tmin: f64, s_tmax: f64, s_noise: f64) -> Result<Self> {
        let bad = |name, value, reason| {
            Err(Error::InvalidParameter {
                name,
                value,
                reason,
            })
        };
        if !(s_churn.is_finite() && s_churn >= 0.0) {
            return bad("S_churn", s_churn, "must be finite and >= 0");
        }
        if !(s_tmin.is_finite() && s_tmin >= 0.0) {
            return bad("S_tmin", s_tmin, "must be finite and >= 0");
        }
        if s_tmax.is_nan() || s_tmax < s_tmin {
            return bad("S_tmax", s_tmax, "must be >= S_tmin");
        }
        if !(s_noise.is_finite() && s_noise > 0.0) {
            return bad("S_noise", s_noise, "must be finite and > 0");
        }
        Ok(Self {
            s_churn,
            s_tmin,
            s_tmax,
            s_noise,
        })
    }
}

impl Default for EdmHeun {
    fn default() -> Self {
        Self::deterministic()
    }
}

impl<S: Sde + ?Sized> Step<S> for EdmHeun {
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
        let sig = s.sigma_tilde();
        let gamma = if self.s_churn > 0.0 && self.s_tmin <= sig && sig <= self.s_tmax {
            (self.s_churn / ctx.n as f64).min(std::f64::consts::SQRT_2 - 1.0)
        } else {
            0.0
        };
        let y = x.affine(1.0 / s.alpha, 0.0)?;
        let (hat, y) = if gamma > 0.0 {
            let top = Point::at(sde, sde.t_end())?;
            let sig_hat = (sig * (1.0 + gamma)).min(top.sigma_tilde());
            let hat = if sig_hat >= top.sigma_tilde() {
                top
            } else {
                Point::at(sde, sde.t_of_log_snr(-sig_hat.ln())?)?
            };
            let z = randn_like(x, &mut io.step_noise())?;
            let amp = (hat.sigma_tilde().powi(2) - sig * sig).max(0.0).sqrt() * self.s_noise;
            (hat, lin(&[(&y, 1.0), (&z, amp)])?)
        } else {
            (s, y)
        };
        let sig_hat = hat.sigma_tilde();
        let sig_next = if t.sigma == 0.0 { 0.0 } else { t.sigma_tilde() };
        // D(ŷ; σ̂) = x̂₀(α̂ ŷ, t̂)
        let d0 = data_pred(score, &y.affine(hat.alpha, 0.0)?, &hat)?;
        let dsig = sig_next - sig_hat;
        // y' = ŷ + Δσ (ŷ − D)/σ̂
        let y1 = lin(&[(&y, 1.0 + dsig / sig_hat), (&d0, -dsig / sig_hat)])?;
        let y_next = if sig_next > 0.0 {
            let d1 = data_pred(score, &y1.affine(t.alpha, 0.0)?, &t)?;
            // ŷ + Δσ/2 [(ŷ − D)/σ̂ + (y' − D')/σ̃']
            let (a, b) = (0.5 * dsig / sig_hat, 0.5 * dsig / sig_next);
            lin(&[(&y, 1.0 + a), (&d0, -a), (&y1, b), (&d1, -b)])?
        } else {
            y1
        };
        Ok(deterministic(y_next.affine(t.alpha, 0.0)?))
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
