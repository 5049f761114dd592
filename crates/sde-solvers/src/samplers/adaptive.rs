//! The adaptive-step reverse-SDE solver of Jolicoeur-Martineau et al. 2021, "Gotta Go Fast when
//! generating data with score-based models" (arXiv 2105.14080): per-sample step sizes from an
//! Euler–Maruyama / improved-Euler pair, on each sample's own Brownian path.

use std::cmp::Ordering;

use candle_core::{DType, Device, Shape, Tensor};
use sde_core::noise::{BrownianTree, NoiseSource};
use sde_core::{from_host_f64, mul_batch, sample_numel, sum_non_batch, to_host_f64};
use sde_core::{ReverseSde, ScoreFn, Sde};

use crate::driver::{check_x_init, CheckedScore};
use crate::error::{Error, Result};
use crate::pc::check_finite;

/// The adaptive reverse-SDE sampler of Jolicoeur-Martineau et al. 2021 ("Gotta Go Fast",
/// Algorithm 1; the reference code's `AdaptivePredictor` and `pc_sampler_adaptive`), for any
/// [`Sde`]: every sample k has its own time t_k and step size h_k, from t_k = T down to ε.
///
/// One iteration, for every sample with t > ε, with ΔW = W(t − h) − W(t) the increment of that
/// sample's Brownian path (so ΔW ~ √h z) and the reverse drift f − g² s:
///
/// - x′ = x − h [f(x, t) − g(t)² s(x, t)] + g(t) ΔW (Euler–Maruyama),
/// - x̃ = x′ − h [f(x′, t − h) − g(t − h)² s(x′, t − h)] + g(t − h) ΔW,
///   x″ = ½ (x + x̃) (improved Euler, Heun's method for SDEs, with the same ΔW),
/// - δ = max(ε_abs, ε_rel · max(|x′|, |x′_prev|)) element-wise (x′_prev: the x′ of the sample's
///   last accepted step; only |x′| without `error_use_prev`),
/// - E₂ = ‖(x′ − x″)/δ‖₂ / √D (the ℓ2 norm over the sample's D values, divided by √D),
/// - accept if E₂ ≤ 1: x ← x″ (x′ without `extrapolation`), x′_prev ← x′, t ← t − h;
/// - either way h ← min(t − ε, θ h E₂^{−r}) (θ = `safety`, r = `exp`).
///
/// Two score evaluations per iteration (batched over the samples still running; each batched
/// call counts once in [`AdaptiveOutput::nfe`]), then the final denoising step at ε, Tweedie's
/// x̂₀ = (x + σ(ε)² s(x, ε))/α(ε) (the reference code's x + σ² s, which omits 1/α(ε) = 1 for VE
/// and 1 + O(ε) for VP).
///
/// The noise is each sample's path of a [`BrownianTree`], queried on the step's interval: a
/// rejected step retried with a smaller h sees the Brownian bridge between the values already
/// drawn (the same path), and sample k depends only on its prior draw and its path, not on the
/// batch it is drawn in (use [`PerSampleNoise`](sde_core::noise::PerSampleNoise) for the prior).
///
/// Defaults are the paper's code's: ε_abs = 0.0078 (≈ 2/256, in data units of [−1, 1] images),
/// ε_rel = 0.01, θ = 0.9, r = 0.9, h_init = 0.01, extrapolation and x′_prev on; `sampling_eps`
/// 1e-3 (use 1e-5 for VE, as the paper's PC sampler). `max_steps` (iterations, default 10 000)
/// ends a run that does not finish with [`Error::MaxSteps`].
/// ```
/// use candle_core::{DType, Device};
/// use sde_core::{analytic::GaussianScore, noise::{BrownianTree, PerSampleNoise}, Sde, VpSde};
/// use sde_solvers::samplers::AdaptiveSampler;
///
/// let sde = VpSde::default();
/// let score = GaussianScore::isotropic(&sde, 0.3, 0.6)?;
/// let tree = BrownianTree::new(1, 0.0, sde.t_end())?;
/// let out = AdaptiveSampler::default().rel_tol(0.05).sample(
///     &sde, &score, (1000, 2), &Device::Cpu, DType::F32, &mut PerSampleNoise::new(0), &tree)?;
/// let mean = out.x.mean_all()?.to_scalar::<f32>()?;
/// assert!((mean - 0.3).abs() < 0.05, "{mean}");
/// // step counts are per sample
/// assert!(out.accepted.iter().min() < out.accepted.iter().max());
/// # Ok::<(), sde_solvers::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[doc(alias = "GottaGoFast")]
#[doc(alias = "AdaptivePredictor")]
#[doc(alias = "pc_sampler_adaptive")]
pub struct AdaptiveSampler {
    abs_tol: f64,
    rel_tol: f64,
    safety: f64,
    exp: f64,
    h_init: f64,
    sampling_eps: f64,
    extrapolation: bool,
    error_use_prev: bool,
    max_steps: usize,
    denoise: bool,
}

impl Default for AdaptiveSampler {
    fn default() -> Self {
        Self {
            abs_tol: 0.0078,
            rel_tol: 0.01,
            safety: 0.9,
            exp: 0.9,
            h_init: 0.01,
            sampling_eps: 1e-3,
            extrapolation: true,
            error_use_prev: true,
            max_steps: 10_000,
            denoise: true,
        }
    }
}

/// What [`AdaptiveSampler`] returns.
#[derive(Debug, Clone)]
pub struct AdaptiveOutput {
    /// The samples `[B, ...]`: denoised when denoising is on, else x at ε.
    pub x: Tensor,
    /// Batched score evaluations (each call on the running samples counts once): two per
    /// iteration, plus the final denoising evaluation.
    pub nfe: usize,
    /// Iterations of the loop (until the slowest sample reached ε).
    pub iterations: usize,
    /// Accepted steps of each sample.
    pub accepted: Vec<usize>,
    /// Rejected steps of each sample.
    pub rejected: Vec<usize>,
}

impl AdaptiveOutput {
    /// Score evaluations spent on each sample: 2 · (accepted + rejected), plus the denoising one.
    pub fn nfe_per_sample(&self) -> Vec<usize> {
        let extra = self.nfe - 2 * self.iterations;
        self.accepted
            .iter()
            .zip(&self.rejected)
            .map(|(a, r)| 2 * (a + r) + extra)
            .collect()
    }

    /// The mean of [`nfe_per_sample`](Self::nfe_per_sample): the paper's NFE.
    pub fn mean_nfe(&self) -> f64 {
        let v = self.nfe_per_sample();
        v.iter().sum::<usize>() as f64 / v.len().max(1) as f64
    }
}

impl AdaptiveSampler {
    /// Absolute tolerance ε_abs (> 0; `abstol`, `sampling_abstol`).
    #[doc(alias = "eps_abs")]
    #[doc(alias = "abstol")]
    pub fn abs_tol(mut self, abs_tol: f64) -> Self {
        self.abs_tol = abs_tol;
        self
    }
    /// Relative tolerance ε_rel (≥ 0; `reltol`, `sampling_reltol`).
    #[doc(alias = "eps_rel")]
    #[doc(alias = "reltol")]
    pub fn rel_tol(mut self, rel_tol: f64) -> Self {
        self.rel_tol = rel_tol;
        self
    }
    /// Safety factor θ ∈ (0, 1] of the step-size update (`sampling_safety`).
    pub fn safety(mut self, safety: f64) -> Self {
        self.safety = safety;
        self
    }
    /// Exponent r > 0 of the step-size update h ← θ h E₂^{−r} (`sampling_exp`).
    pub fn exp(mut self, exp: f64) -> Self {
        self.exp = exp;
        self
    }
    /// First step size h_init > 0 (`sampling_h_init`; clamped to T − ε).
    pub fn h_init(mut self, h_init: f64) -> Self {
        self.h_init = h_init;
        self
    }
    /// Last time ε, 0 < ε < T (`eps`).
    #[doc(alias = "eps")]
    pub fn sampling_eps(mut self, sampling_eps: f64) -> Self {
        self.sampling_eps = sampling_eps;
        self
    }
    /// Keep the improved-Euler x″ of an accepted step (default) or the Euler–Maruyama x′.
    pub fn extrapolation(mut self, on: bool) -> Self {
        self.extrapolation = on;
        self
    }
    /// Scale the relative tolerance by max(|x′|, |x′_prev|) (default) or by |x′| alone.
    pub fn error_use_prev(mut self, on: bool) -> Self {
        self.error_use_prev = on;
        self
    }
    /// Most iterations before [`Error::MaxSteps`] (≥ 1).
    pub fn max_steps(mut self, max_steps: usize) -> Self {
        self.max_steps = max_steps;
        self
    }
    /// Final denoising step on (default) or off (`denoise` / `noise_removal`).
    #[doc(alias = "noise_removal")]
    pub fn denoise(mut self, denoise: bool) -> Self {
        self.denoise = denoise;
        self
    }
    /// The last time ε.
    pub fn eps(&self) -> f64 {
        self.sampling_eps
    }

    /// Checks every option, and that `tree` spans [ε, T], before anything is drawn.
    pub fn check<S: Sde + ?Sized>(&self, sde: &S, tree: &BrownianTree) -> Result<()> {
        let bad = |name, value, reason| {
            Err(Error::InvalidParameter {
                name,
                value,
                reason,
            })
        };
        let t_end = sde.t_end();
        if !(self.abs_tol.is_finite() && self.abs_tol > 0.0) {
            return bad("abs_tol", self.abs_tol, "must be finite and > 0");
        }
        if !(self.rel_tol.is_finite() && self.rel_tol >= 0.0) {
            return bad("rel_tol", self.rel_tol, "must be finite and >= 0");
        }
        if !(self.safety > 0.0 && self.safety <= 1.0) {
            return bad("safety", self.safety, "must lie in (0, 1]");
        }
        if !(self.exp.is_finite() && self.exp > 0.0) {
            return bad("exp", self.exp, "must be finite and > 0");
        }
        if !(self.h_init.is_finite() && self.h_init > 0.0) {
            return bad("h_init", self.h_init, "must be finite and > 0");
        }
        let eps = self.sampling_eps;
        if !(eps.is_finite() && eps > 0.0 && eps < t_end) {
            return bad("sampling_eps", eps, "must satisfy 0 < sampling_eps < T");
        }
        if self.max_steps == 0 {
            return bad("max_steps", 0.0, "must be at least 1");
        }
        let (t_min, t_max) = tree.interval();
        if t_min > eps {
            return bad(
                "tree",
                t_min,
                "the Brownian tree must start at or before sampling_eps",
            );
        }
        if t_max < t_end {
            return bad("tree", t_max, "the Brownian tree must end at or after T");
        }
        Ok(())
    }

    /// Draws x_T ~ p_T of shape `shape` through `noise` and runs the sampler on `tree`'s paths.
    #[allow(clippy::too_many_arguments)]
    pub fn sample<S, F, N>(
        &self,
        sde: &S,
        score: &F,
        shape: impl Into<Shape>,
        device: &Device,
        dtype: DType,
        noise: &mut N,
        tree: &BrownianTree,
    ) -> Result<AdaptiveOutput>
    where
        S: Sde + ?Sized,
        F: ScoreFn + ?Sized,
        N: NoiseSource + ?Sized,
    {
        let shape = shape.into();
        self.check(sde, tree)?;
        let x = sde.prior_sampling(&shape, device, dtype, noise)?;
        self.run(sde, score, &x, tree, |_, _, _| {})
    }

    /// Runs the sampler from a given x_T, calling `observer(iteration, t, &x)` after every
    /// iteration with every sample's current time t_k and the whole batch x.
    pub fn run<S, F>(
        &self,
        sde: &S,
        score: &F,
        x_init: &Tensor,
        tree: &BrownianTree,
        mut observer: impl FnMut(usize, &[f64], &Tensor),
    ) -> Result<AdaptiveOutput>
    where
        S: Sde + ?Sized,
        F: ScoreFn + ?Sized,
    {
        check_x_init(x_init)?;
        self.check(sde, tree)?;
        if sample_numel(x_init)? == 0 {
            return Err(Error::ShapeMismatch {
                what: "x_init",
                expected: "[B, ...] with at least one value per sample".into(),
                got: format!("{:?}", x_init.dims()),
            });
        }
        let score = CheckedScore::new(score);
        let rsde = ReverseSde::new(sde, &score, false);
        let (dev, dtype) = (x_init.device(), x_init.dtype());
        let b = x_init.dim(0)?;
        let eps = self.sampling_eps;
        let t_end = sde.t_end();
        let mut t = vec![t_end; b];
        let mut h = vec![self.h_init.min(t_end - eps); b];
        let mut accepted = vec![0usize; b];
        let mut rejected = vec![0usize; b];
        let mut x = x_init.clone();
        let mut x_prev = x_init.clone();
        let mut iterations = 0;
        loop {
            let active: Vec<usize> = (0..b).filter(|&k| t[k] > eps).collect();
            let Some(&first) = active.first() else {
                break;
            };
            if iterations == self.max_steps {
                return Err(Error::MaxSteps {
                    max_steps: self.max_steps,
                    t: t[first],
                });
            }
            let ta: Vec<f64> = active.iter().map(|&k| t[k]).collect();
            // the step ends at ε exactly when it was clamped to the remaining time
            let tn: Vec<f64> = active
                .iter()
                .map(|&k| if h[k] >= t[k] - eps { eps } else { t[k] - h[k] })
                .collect();
            for (j, &k) in active.iter().enumerate() {
                if tn[j].partial_cmp(&ta[j]) != Some(Ordering::Less) {
                    return Err(Error::StepSizeTooSmall { h: h[k], t: t[k] });
                }
            }
            let hs: Vec<f64> = ta.iter().zip(&tn).map(|(a, c)| a - c).collect();
            let all = active.len() == b;
            let idx = if all {
                None
            } else {
                let rows: Vec<u32> = active.iter().map(|&k| k as u32).collect();
                Some(Tensor::from_vec(rows, active.len(), dev)?)
            };
            let gather = |v: &Tensor| -> Result<Tensor> {
                Ok(match &idx {
                    Some(i) => v.index_select(i, 0)?,
                    None => v.clone(),
                })
            };
            let (xa, xpa) = (gather(&x)?, gather(&x_prev)?);
            score.at(iterations, ta[0]);
            let rows: Vec<u64> = active.iter().map(|&k| k as u64).collect();
            let dw = tree.increment_rows(&rows, &ta, &tn, xa.shape(), dev, dtype)?;
            let t1 = from_host_f64(ta.clone(), dev, dtype)?;
            let t2 = from_host_f64(tn.clone(), dev, dtype)?;
            let neg_h = from_host_f64(hs.iter().map(|v| -v).collect(), dev, dtype)?;
            // K = −h (f − g² s) + g ΔW at (x, t) and at (x′, t − h)
            let incr = |x: &Tensor, t: &Tensor| -> Result<Tensor> {
                let (drift, g) = rsde.sde(x, t).map_err(|e| score.explain(e.into()))?;
                Ok((mul_batch(&neg_h, &drift)? + mul_batch(&g, &dw)?)?)
            };
            let k1 = incr(&xa, &t1)?;
            let x1 = (&xa + &k1)?;
            let k2 = incr(&x1, &t2)?;
            let x2 = (&xa + ((&k1 + &k2)? * 0.5)?)?;
            let scale = if self.error_use_prev {
                x1.abs()?.maximum(&xpa.abs()?)?
            } else {
                x1.abs()?
            };
            let delta = scale.affine(self.rel_tol, 0.0)?.maximum(self.abs_tol)?;
            let ratio = ((&x1 - &x2)? / delta)?.sqr()?;
            let d = sample_numel(&ratio)? as f64;
            let e2: Vec<f64> = to_host_f64(&sum_non_batch(&ratio)?)?
                .iter()
                .map(|s| (s / d).sqrt())
                .collect();
            let accept: Vec<bool> = e2.iter().map(|&e| e <= 1.0).collect();
            for (j, &k) in active.iter().enumerate() {
                if !e2[j].is_finite() {
                    return Err(Error::NonFinite {
                        what: format!("the adaptive step's proposal for sample {k}"),
                        step: iterations,
                        t: ta[j],
                    });
                }
            }
            let proposal = if self.extrapolation { &x2 } else { &x1 };
            let (x_new, xp_new) = if accept.iter().all(|&a| a) {
                (proposal.clone(), x1)
            } else if accept.iter().any(|&a| a) {
                let mask: Vec<u8> = accept.iter().map(|&a| a as u8).collect();
                let mask = Tensor::from_vec(mask, active.len(), dev)?;
                let mut dims = vec![1usize; xa.rank()];
                dims[0] = active.len();
                let mask = mask.reshape(dims)?.broadcast_as(xa.shape())?;
                (mask.where_cond(proposal, &xa)?, mask.where_cond(&x1, &xpa)?)
            } else {
                (xa, xpa)
            };
            (x, x_prev) = match &idx {
                None => (x_new, xp_new),
                Some(i) => {
                    let mut dims = vec![1usize; x_new.rank()];
                    dims[0] = active.len();
                    let i = i.reshape(dims)?.broadcast_as(x_new.shape())?.contiguous()?;
                    (x.scatter(&i, &x_new, 0)?, x_prev.scatter(&i, &xp_new, 0)?)
                }
            };
            for (j, &k) in active.iter().enumerate() {
                if accept[j] {
                    t[k] = tn[j];
                    accepted[k] += 1;
                } else {
                    rejected[k] += 1;
                }
                // h ← min(t − ε, θ h E₂^{−r}); E₂ = 0 gives the rest of the interval
                let grow = self.safety * hs[j] * e2[j].powf(-self.exp);
                h[k] = (t[k] - eps).min(grow);
                if t[k] > eps && (t[k] - h[k]).partial_cmp(&t[k]) != Some(Ordering::Less) {
                    return Err(Error::StepSizeTooSmall { h: h[k], t: t[k] });
                }
            }
            observer(iterations, &t, &x);
            iterations += 1;
        }
        let x = if self.denoise {
            score.at(iterations, eps);
            let x = super::tweedie(sde, &score, &x, eps).map_err(|e| score.explain(e))?;
            check_finite(&x, "the denoised sample", iterations, eps)?;
            x
        } else {
            x
        };
        Ok(AdaptiveOutput {
            x,
            nfe: score.calls(),
            iterations,
            accepted,
            rejected,
        })
    }
}
