//! Fast samplers as [`Step`](crate::step::Step)s, written through α(t) and σ(t) of the kernel
//! ([`Sde::marginal_coeffs`]) and λ(t) = log(α/σ) ([`Sde::log_snr`]), so they run on VE, VP,
//! sub-VP and any user [`Sde`]:
//!
//! | type | method | order | NFE per step |
//! |---|---|---|---|
//! | [`Ddim`] | DDIM (Song et al. 2021), η ∈ [0, 1]; η = 0 is DPM-Solver-1 | 1 | 1 |
//! | [`DpmSolverPp2M`] | DPM-Solver++(2M) (Lu et al. 2022), multistep | 2 | 1 |
//! | [`DpmSolverPp3M`] | DPM-Solver++(3M), multistep (2S warm-up: one extra evaluation) | 3 | 1 |
//! | [`DpmSolverPp2S`] | DPM-Solver++(2S), singlestep, r₁ = ½ | 2 | 2 |
//! | [`SdeDpmSolverPp2M`] | SDE-DPM-Solver++(2M), stochastic | – | 1 |
//! | [`UniPc`] | UniPC-p with B(h) = e^h − 1 (bh2) and its corrector UniC (Zhao et al. 2023) | p + 1 | 1 |
//! | [`EdmHeun`] | EDM's Heun (Karras et al. 2022, Alg. 2), with optional churn | 2 | 2 |
//! | [`AdaptiveSampler`] | adaptive-step reverse SDE, Euler–Maruyama / improved Euler (Jolicoeur-Martineau et al. 2021) | – | 2 per attempt |
//!
//! The multistep solvers have data-prediction (x̂₀, DPM-Solver++) and noise-prediction
//! (ε̂, DPM-Solver) forms ([`Prediction`]); both are exponential integrators of the
//! probability-flow ODE, x_t = r x_s − c (φ₁ m₀ + φ₂ D₁ + φ₃ D₂) with, for data prediction,
//! r = σ_t/σ_s, c = α_t and φ's of ĥ = −h, and for noise prediction r = α_t/α_s, c = σ_t and
//! ĥ = h, where h = λ_t − λ_s, φ₁ = e^ĥ − 1, φ₂ = φ₁/ĥ − 1, φ₃ = φ₂/ĥ − ½.
//! The model outputs come from the score s: x̂₀ = (x + σ² s)/α and ε̂ = −σ s.
//!
//! Warm-up and final steps: a multistep method of order k uses order min(k, steps so far + 1);
//! with `lower_order_final` (default on, as DPM-Solver and diffusers) the last steps of runs
//! shorter than 15 steps drop to order n − i; a step to σ = 0 (the reference grid's last step
//! to t = 0 on VP / sub-VP) is the exact first-order step x = α x̂₀. The final denoising step of
//! the driver is Tweedie's x̂₀ = (x + σ² s)/α at the last time (one evaluation; DPM-Solver's
//! `denoise_to_zero`).
//!
//! [`AdaptiveSampler`] has per-sample step sizes, which no shared grid holds: it is its own loop
//! with the driver's services (evaluation counting, score-output and non-finite checks naming
//! the iteration, observers, the same final denoising step), on a per-sample Brownian tree.

mod adaptive;
mod ddim;
mod dpm_solver_pp_2m;
mod dpm_solver_pp_2s;
mod dpm_solver_pp_3m;
mod edm_heun;
mod kind;
mod sde_dpm_solver_pp_2m;
mod unipc;

pub use adaptive::{AdaptiveOutput, AdaptiveSampler};
pub use ddim::Ddim;
pub use dpm_solver_pp_2m::DpmSolverPp2M;
pub use dpm_solver_pp_2s::DpmSolverPp2S;
pub use dpm_solver_pp_3m::DpmSolverPp3M;
pub use edm_heun::EdmHeun;
pub use kind::{KindState, SamplerKind};
pub use sde_dpm_solver_pp_2m::SdeDpmSolverPp2M;
pub use unipc::{UniPc, UniPcState};

use candle_core::{Device, Tensor};
use sde_core::{ScoreFn, Sde};

use crate::error::Result;
use crate::pc::time_vec;
use crate::step::StepCtx;

/// What the network is taken to predict in the solver's update (DPM-Solver++ vs DPM-Solver).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Prediction {
    /// x̂₀ = (x + σ² s)/α (DPM-Solver++, UniPC's `predict_x0`); the robust choice, default.
    #[default]
    Data,
    /// ε̂ = −σ s (the original DPM-Solver).
    Noise,
}

/// α(t), σ(t) and λ(t) at one host time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Point {
    pub t: f64,
    pub alpha: f64,
    pub sigma: f64,
    pub lambda: f64,
}

impl Point {
    pub(crate) fn at<S: Sde + ?Sized>(sde: &S, t: f64) -> Result<Self> {
        let tt = Tensor::from_vec(vec![t], 1, &Device::Cpu)?;
        let (a, s) = sde.marginal_coeffs(&tt)?;
        let (alpha, sigma) = (sde_core::to_host_f64(&a)?[0], sde_core::to_host_f64(&s)?[0]);
        Ok(Self {
            t,
            alpha,
            sigma,
            lambda: sde.log_snr(t)?,
        })
    }
    /// EDM's σ̃ = σ/α = e^{−λ}.
    pub(crate) fn sigma_tilde(&self) -> f64 {
        self.sigma / self.alpha
    }
}

/// The current and next points of a step.
pub(crate) fn points<S: Sde + ?Sized>(sde: &S, ctx: &StepCtx) -> Result<(Point, Point)> {
    Ok((Point::at(sde, ctx.t)?, Point::at(sde, ctx.t_next)?))
}

/// Σ c_k v_k.
pub(crate) fn lin(terms: &[(&Tensor, f64)]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (v, c) in terms {
        if *c == 0.0 {
            continue;
        }
        let term = if *c == 1.0 {
            (*v).clone()
        } else {
            v.affine(*c, 0.0)?
        };
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    match acc {
        Some(a) => Ok(a),
        None => Ok(terms
            .first()
            .map(|(v, _)| v.zeros_like())
            .transpose()?
            .ok_or_else(|| crate::Error::Unsupported("empty linear combination".into()))?),
    }
}

/// The score at `(x, p.t)` and the data prediction x̂₀ = (x + σ² s)/α.
pub(crate) fn data_pred<F: ScoreFn + ?Sized>(score: &F, x: &Tensor, p: &Point) -> Result<Tensor> {
    let t = time_vec(p.t, x.dim(0)?, x)?;
    let s = score.score(x, &t)?;
    lin(&[(x, 1.0 / p.alpha), (&s, p.sigma * p.sigma / p.alpha)])
}

/// The model output m in the chosen form at `(x, p)`.
pub(crate) fn model_output<F: ScoreFn + ?Sized>(
    pred: Prediction,
    score: &F,
    x: &Tensor,
    p: &Point,
) -> Result<Tensor> {
    match pred {
        Prediction::Data => data_pred(score, x, p),
        Prediction::Noise => {
            let t = time_vec(p.t, x.dim(0)?, x)?;
            Ok(score.score(x, &t)?.affine(-p.sigma, 0.0)?)
        }
    }
}

/// x̂₀ from a model output m at (x, p).
pub(crate) fn to_data(pred: Prediction, x: &Tensor, m: &Tensor, p: &Point) -> Result<Tensor> {
    match pred {
        Prediction::Data => Ok(m.clone()),
        Prediction::Noise => lin(&[(x, 1.0 / p.alpha), (m, -p.sigma / p.alpha)]),
    }
}

/// The exponential-integrator coefficients from s to t (see the module doc): (r, c, ĥ).
pub(crate) fn expo(pred: Prediction, s: &Point, t: &Point) -> (f64, f64, f64) {
    let h = t.lambda - s.lambda;
    match pred {
        Prediction::Data => (t.sigma / s.sigma, t.alpha, -h),
        Prediction::Noise => (t.alpha / s.alpha, t.sigma, h),
    }
}

/// Whether the step from s to t is the exact step to σ = 0 (λ_t = +∞).
pub(crate) fn to_clean(t: &Point) -> bool {
    !t.lambda.is_finite() || t.sigma == 0.0
}

/// The order a multistep method of order `order` uses at this step, with `available` model
/// outputs (the current one included).
pub(crate) fn step_order(
    order: usize,
    available: usize,
    ctx: &StepCtx,
    lower_order_final: bool,
) -> usize {
    let mut k = order.min(available).max(1);
    if lower_order_final && ctx.n < 15 {
        k = k.min(ctx.n - ctx.i).max(1);
    }
    k
}

/// Tweedie's x̂₀ = (x + σ² s)/α at `t` (the fast samplers' final denoising step); `x` itself
/// where σ(t) = 0.
pub(crate) fn tweedie<S: Sde + ?Sized, F: ScoreFn + ?Sized>(
    sde: &S,
    score: &F,
    x: &Tensor,
    t: f64,
) -> Result<Tensor> {
    let p = Point::at(sde, t)?;
    if p.sigma == 0.0 {
        return Ok(x.clone());
    }
    data_pred(score, x, &p)
}

/// Per-run history of a multistep method: the last few (point, model output) pairs, oldest
/// first.
#[derive(Debug, Default, Clone)]
pub struct History {
    pub(crate) entries: Vec<(Point, Tensor)>,
}

impl History {
    pub(crate) fn push(&mut self, p: Point, m: Tensor, keep: usize) {
        self.entries.push((p, m));
        if self.entries.len() > keep {
            self.entries.remove(0);
        }
    }
    /// The k-th latest entry (0 = newest).
    pub(crate) fn back(&self, k: usize) -> Option<&(Point, Tensor)> {
        self.entries
            .len()
            .checked_sub(k + 1)
            .map(|i| &self.entries[i])
    }
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Builds an [`crate::Update`] with no separate noise-free mean.
pub(crate) fn deterministic(x: Tensor) -> crate::predictor::Update {
    crate::predictor::Update {
        x_mean: x.clone(),
        x,
    }
}

/// The multistep update of order `k` ≤ 3 from the newest history entry (at s) to `t`:
/// x_t = r x − c (φ₁ m₀ + φ₂ D₁ + φ₃ D₂), with the 2nd-order "midpoint" form of DPM-Solver for
/// k = 2 (x_t = r x − c φ₁ (m₀ + ½ D₁₀)); `reference_d2` takes the DPM-Solver code's D₂.
pub(crate) fn multistep_update(
    pred: Prediction,
    hist: &History,
    x: &Tensor,
    t: &Point,
    k: usize,
    reference_d2: bool,
) -> Result<Tensor> {
    let (s, m0) = hist.back(0).ok_or_else(|| {
        crate::Error::Unsupported("multistep update without a model output".into())
    })?;
    if to_clean(t) {
        let x0 = to_data(pred, x, m0, s)?;
        return Ok(x0.affine(t.alpha, 0.0)?);
    }
    let (r, c, hh) = expo(pred, s, t);
    let h = t.lambda - s.lambda;
    let phi1 = hh.exp_m1();
    match (k, hist.back(1), hist.back(2)) {
        (2, Some((p1, m1)), _) | (3, Some((p1, m1)), None) => {
            let r0 = (s.lambda - p1.lambda) / h;
            // m0 + ½ D1_0 with D1_0 = (m0 − m1)/r0
            let half = 0.5 / r0;
            lin(&[
                (x, r),
                (m0, -c * phi1 * (1.0 + half)),
                (m1, c * phi1 * half),
            ])
        }
        (3, Some((p1, m1)), Some((p2, m2))) => {
            let r0 = (s.lambda - p1.lambda) / h;
            let r1 = (p1.lambda - p2.lambda) / h;
            let phi2 = phi1 / hh - 1.0;
            let phi3 = phi2 / hh - 0.5;
            // D1_0 = (m0 − m1)/r0, D1_1 = (m1 − m2)/r1,
            // D1 = D1_0 + r0/(r0+r1) (D1_0 − D1_1), D2 = (D1_0 − D1_1)/(r0 + r1)
            let (a0, a1) = (1.0 / r0, 1.0 / r1);
            let w = r0 / (r0 + r1);
            // D2 ≈ h² m'' needs 2 (D1_0 − D1_1)/(r0 + r1): the DPM-Solver code's
            // (D1_0 − D1_1)/(r0 + r1) is h² m''/2, which halves the third-order term
            // (see `DpmSolverPp3M`).
            let q = if reference_d2 { 1.0 } else { 2.0 } / (r0 + r1);
            // coefficients of m0, m1, m2 in D1_0 − D1_1: (a0, −a0 − a1, a1)
            let diff = [a0, -a0 - a1, a1];
            let d10 = [a0, -a0, 0.0];
            let d1: Vec<f64> = (0..3).map(|j| d10[j] + w * diff[j]).collect();
            let d2: Vec<f64> = diff.iter().map(|v| q * v).collect();
            let coef =
                |j: usize| -c * ((if j == 0 { phi1 } else { 0.0 }) + phi2 * d1[j] + phi3 * d2[j]);
            lin(&[(x, r), (m0, coef(0)), (m1, coef(1)), (m2, coef(2))])
        }
        _ => lin(&[(x, r), (m0, -c * phi1)]),
    }
}
