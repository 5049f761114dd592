//! The one step abstraction every sampler implements: [`Step`], the context it sees
//! ([`StepCtx`]) and the services the driver lends it ([`StepIo`]).

use candle_core::{DType, Device, Shape, Tensor};
use sde_core::noise::{BrownianNoise, NoiseSource};
use sde_core::{ScoreFn, Sde};

use crate::error::Result;
use crate::predictor::Update;

/// Whether the grid is the SDE's own discrete chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GridKind {
    /// [`Schedule::Reference`](crate::schedule::Schedule::Reference) with n = [`Sde::n`]: the
    /// grid of the reference, on which [`Sde::discretize`] (SMLD / DDPM chains) and the
    /// ancestral rules are defined.
    SdeChain,
    /// Any other grid: only grid-free rules (Euler–Maruyama with Δt = t − t_next, the
    /// exponential integrators, EDM) apply.
    Free,
}

/// What a step sees: its index, the step count and the times it goes between.
///
/// `dt` is the step length Euler–Maruyama uses: T/n on the reference schedule (the reference's
/// Δt = T/N, kept bit-exact although its grid spacing is (T − ε)/(N − 1)), t − t_next on every
/// other schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCtx {
    /// Step index i = 0..n.
    pub i: usize,
    /// Number of steps n.
    pub n: usize,
    /// Current time t_i.
    pub t: f64,
    /// Next (smaller) time t_{i+1}; 0 for the last step of the reference grid.
    pub t_next: f64,
    /// Euler–Maruyama's Δt (see the type's doc).
    pub dt: f64,
    /// Whether the grid is the SDE's discrete chain.
    pub grid: GridKind,
}

impl StepCtx {
    /// Whether this is the last step (i = n − 1).
    pub fn is_last(&self) -> bool {
        self.i + 1 == self.n
    }
}

/// The driver's services inside a step: the noise sources (the caller's, and the step noise,
/// [`step_noise`](Self::step_noise), which is Brownian when the sampler was given a
/// [`BrownianTree`](sde_core::noise::BrownianTree)) and the constraint hook with its finiteness
/// check, for steps made of stages (the PC step projects after its corrector too).
pub struct StepIo<'a, N: ?Sized> {
    pub(crate) noise: &'a mut N,
    pub(crate) brownian: Option<&'a mut BrownianNoise>,
    #[allow(clippy::type_complexity)]
    pub(crate) constraint: &'a mut dyn FnMut(Update, &Tensor, &mut N) -> Result<Update>,
    pub(crate) step: usize,
    pub(crate) t: f64,
}

impl<N: NoiseSource + ?Sized> StepIo<'_, N> {
    /// The caller's noise source (the prior's, the constraint hook's and the PC corrector's
    /// Langevin noise, which is no Brownian increment).
    pub fn noise(&mut self) -> &mut N {
        self.noise
    }

    /// The source of the step's Brownian noise z (x = x̄ + c z), one draw per step: the caller's
    /// source by default, or, when the sampler runs on a Brownian tree
    /// ([`Sampler::brownian`](crate::driver::Sampler::brownian)), the normalised increment
    /// z_k = (W_k(t_next) − W_k(t)) / √|t_next − t| of each sample's Brownian path over the step
    /// ([`BrownianNoise`]), which makes samples independent of the batch size and a finer grid
    /// see a refinement of the same path.
    pub fn step_noise(&mut self) -> StepNoise<'_, N> {
        match self.brownian.as_deref_mut() {
            Some(b) => StepNoise::Brownian(b),
            None => StepNoise::Caller(self.noise),
        }
    }

    /// Applies the constraint hook (inpainting's projection; the identity when sampling) to the
    /// result of an intermediate stage at time `t`, then fails with
    /// [`Error::NonFinite`](crate::Error::NonFinite) naming `what` and the step if it holds a
    /// NaN or infinity.
    pub fn intermediate(&mut self, up: Update, t: &Tensor, what: &str) -> Result<Update> {
        let up = (self.constraint)(up, t, self.noise)?;
        crate::pc::check_finite(&up.x, what, self.step, self.t)?;
        Ok(up)
    }
}

/// The noise a step draws its z from ([`StepIo::step_noise`]): the caller's source, or the
/// Brownian increments of the step's interval. Every call is forwarded unchanged to the
/// caller's source in the first case, so the default path draws exactly what it drew before.
pub enum StepNoise<'a, N: ?Sized> {
    /// The caller's source.
    Caller(&'a mut N),
    /// Brownian increments over the step's interval (normals only).
    Brownian(&'a mut BrownianNoise),
}

impl<N: NoiseSource + ?Sized> NoiseSource for StepNoise<'_, N> {
    fn randn(&mut self, shape: &Shape, device: &Device, dtype: DType) -> sde_core::Result<Tensor> {
        match self {
            StepNoise::Caller(n) => n.randn(shape, device, dtype),
            StepNoise::Brownian(b) => b.randn(shape, device, dtype),
        }
    }
    fn rand_uniform(
        &mut self,
        shape: &Shape,
        device: &Device,
        dtype: DType,
    ) -> sde_core::Result<Tensor> {
        match self {
            StepNoise::Caller(n) => n.rand_uniform(shape, device, dtype),
            StepNoise::Brownian(b) => b.rand_uniform(shape, device, dtype),
        }
    }
    fn rademacher(
        &mut self,
        shape: &Shape,
        device: &Device,
        dtype: DType,
    ) -> sde_core::Result<Tensor> {
        match self {
            StepNoise::Caller(n) => n.rademacher(shape, device, dtype),
            StepNoise::Brownian(b) => b.rademacher(shape, device, dtype),
        }
    }
}

/// One step of a sampler from t_i to t_{i+1}, with per-run state (multistep history).
///
/// The predictors and correctors of the paper compose into one ([`crate::pc::PcStep`]); DDIM,
/// DPM-Solver++, UniPC and EDM implement it directly ([`crate::samplers`]). The driver
/// ([`crate::driver::Sampler`]) calls [`step`](Step::step) for i = 0..n with a fresh
/// `State::default()` per run, applies the constraint hook to the result, checks it, calls the
/// observers, and at the end [`denoise`](Step::denoise) when denoising is on.
pub trait Step<S: Sde + ?Sized> {
    /// Per-run state: previous model outputs and their log-SNRs, for instance.
    type State: Default;

    /// Checks the step's options against `sde` before anything is drawn. Default: nothing to
    /// check.
    fn check(&self, sde: &S) -> Result<()> {
        let _ = sde;
        Ok(())
    }

    /// One step from `x` at `ctx.t` to `ctx.t_next`: the new state and its noise-free mean.
    #[allow(clippy::too_many_arguments)]
    fn step<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        x: &Tensor,
        state: &mut Self::State,
        io: &mut StepIo<'_, N>,
    ) -> Result<Update>;

    /// The final denoising step after the last one (`ctx` is the last step's). Default: the last
    /// update's noise-free mean x̄ (the reference's `noise_removal`).
    fn denoise<F: ScoreFn + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        last: Update,
        state: &mut Self::State,
    ) -> Result<Tensor> {
        let _ = (ctx, sde, score, state);
        Ok(last.x_mean)
    }

    /// The time the result of a step is at, where the driver applies the constraint hook.
    /// Default: `ctx.t_next`. The PC step returns `ctx.t`, as the reference projects there.
    fn result_time(&self, ctx: &StepCtx) -> f64 {
        ctx.t_next
    }

    /// What the driver calls the result of a step in a [`Error::NonFinite`](crate::Error::NonFinite).
    fn result_name(&self) -> &'static str {
        "x after the step"
    }

    /// The reference's nominal evaluation count for n steps, where it has one (the PC sampler's
    /// N · (`n_steps_each` + 1)). Default: none.
    fn nfe_nominal(&self, n: usize) -> Option<usize> {
        let _ = n;
        None
    }
}

impl<S: Sde + ?Sized, T: Step<S> + ?Sized> Step<S> for &T {
    type State = T::State;
    fn check(&self, sde: &S) -> Result<()> {
        (**self).check(sde)
    }
    fn step<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        x: &Tensor,
        state: &mut Self::State,
        io: &mut StepIo<'_, N>,
    ) -> Result<Update> {
        (**self).step(ctx, sde, score, x, state, io)
    }
    fn denoise<F: ScoreFn + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        last: Update,
        state: &mut Self::State,
    ) -> Result<Tensor> {
        (**self).denoise(ctx, sde, score, last, state)
    }
    fn result_name(&self) -> &'static str {
        (**self).result_name()
    }
    fn result_time(&self, ctx: &StepCtx) -> f64 {
        (**self).result_time(ctx)
    }
    fn nfe_nominal(&self, n: usize) -> Option<usize> {
        (**self).nfe_nominal(n)
    }
}
