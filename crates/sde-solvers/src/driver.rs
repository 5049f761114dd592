//! The one public sampling driver: any [`Step`] over any [`Schedule`], with the loop's services
//! (score-evaluation counting, score-output checks, non-finite checks naming the step, the
//! constraint hook, observers, the final denoising step).

use std::cell::{Cell, RefCell};

use candle_core::{DType, Device, Shape, Tensor};
use sde_core::noise::{BrownianNoise, BrownianTree, NoiseSource};
use sde_core::{ScoreFn, Sde};

use crate::error::{Error, Result};
use crate::pc::{check_finite, time_vec};
use crate::predictor::Update;
use crate::schedule::Schedule;
use crate::step::{GridKind, Step, StepCtx, StepIo};

/// What [`Sampler`] returns.
#[derive(Debug, Clone)]
pub struct SampleOutput {
    /// The samples `[B, ...]`: the denoised result when denoising is on, else the last x.
    pub x: Tensor,
    /// NFE: score evaluations actually made (each batched call counts once), the final
    /// denoising step's included.
    pub nfe: usize,
    /// The reference's nominal count where the step has one (PC: N · (`n_steps_each` + 1),
    /// whatever the parts evaluate); `None` for the other samplers.
    pub nfe_nominal: Option<usize>,
    /// Number of steps taken.
    pub n_steps: usize,
}

/// The score wrapper of the driver: counts evaluations and checks every output has the shape
/// and dtype of its input (as argmin's `Problem` counts cost evaluations).
pub(crate) struct CheckedScore<'a, F: ?Sized> {
    inner: &'a F,
    calls: Cell<usize>,
    at: Cell<(usize, f64)>,
    bad: RefCell<Option<Error>>,
}

impl<'a, F: ScoreFn + ?Sized> CheckedScore<'a, F> {
    pub(crate) fn new(inner: &'a F) -> Self {
        Self {
            inner,
            calls: Cell::new(0),
            at: Cell::new((0, 0.0)),
            bad: RefCell::new(None),
        }
    }
    pub(crate) fn calls(&self) -> usize {
        self.calls.get()
    }
    /// Sets the step the next evaluations belong to (for error messages).
    pub(crate) fn at(&self, step: usize, t: f64) {
        self.at.set((step, t));
    }
    /// Replaces an error caused by a wrong score output with the typed one that names it.
    pub(crate) fn explain(&self, e: Error) -> Error {
        self.bad.borrow_mut().take().unwrap_or(e)
    }
    fn check(&self, x: &Tensor, s: &Tensor) -> sde_core::Result<()> {
        if s.dims() == x.dims() && s.dtype() == x.dtype() {
            return Ok(());
        }
        let (step, t) = self.at.get();
        *self.bad.borrow_mut() = Some(Error::ScoreOutput {
            score_fn: std::any::type_name::<F>(),
            expected_shape: x.dims().to_vec(),
            got_shape: s.dims().to_vec(),
            expected_dtype: x.dtype(),
            got_dtype: s.dtype(),
            step,
            t,
        });
        Err(sde_core::Error::ShapeMismatch {
            what: "score function output",
            expected: format!("{:?} {:?}", x.dims(), x.dtype()),
            got: format!("{:?} {:?}", s.dims(), s.dtype()),
        })
    }
}

impl<F: ScoreFn + ?Sized> ScoreFn for CheckedScore<'_, F> {
    fn score(&self, x: &Tensor, t: &Tensor) -> sde_core::Result<Tensor> {
        self.calls.set(self.calls.get() + 1);
        let s = self.inner.score(x, t)?;
        self.check(x, &s)?;
        // Sampling never differentiates: a network with trainable variables returns its output
        // with the whole forward graph attached, which a multistep history would keep alive
        // (gigabytes for an image network). Detached, only the values stay.
        Ok(s.detach())
    }
    fn score_with_vjp(
        &self,
        x: &Tensor,
        t: &Tensor,
        v: &Tensor,
    ) -> sde_core::Result<(Tensor, Tensor)> {
        self.calls.set(self.calls.get() + 1);
        let (s, vjp) = self.inner.score_with_vjp(x, t, v)?;
        self.check(x, &s)?;
        Ok((s, vjp))
    }
}

/// The sampling driver: x_T ~ p_T, then for i = 0..n the [`Step`] from t_i to t_{i+1} of the
/// [`Schedule`], then (when `denoise` is on, the default) the step's final denoising.
///
/// The driver owns what every sampler needs: it counts score evaluations (NFE, the final
/// denoising included), checks each score output has the shape and dtype of x
/// ([`Error::ScoreOutput`] naming the score function and the step), checks every step's result
/// is finite ([`Error::NonFinite`] naming the step and t), applies a constraint hook after every
/// step ([`run_constrained`](Self::run_constrained); inpainting and colorization are built on
/// it, [`crate::controllable`]), and calls an observer `(i, t_i, &x)` after every step.
///
/// The step count is the sampler's (`n_steps`; by default the SDE's N, the reference's
/// behaviour), except for [`Schedule::Times`], which fixes it.
///
/// The steps' noise z comes from the caller's source by default; with
/// [`brownian`](Self::brownian) it is each sample's Brownian path over the step instead
/// ([`StepIo::step_noise`]), so that, with a per-sample prior draw
/// ([`PerSampleNoise`](sde_core::noise::PerSampleNoise)), sample k does not depend on the batch
/// it is drawn in, and a run on a finer grid sees a refinement of the same Brownian path.
///
/// `denoise` is on by default here, in the PC sampler and in the ODE sampler alike: the
/// reference's configs set `noise_removal = True`, and `get_sampling_fn` passes that one flag to
/// both its samplers; without it samples keep noise of std σ(ε) (visible for VE, whose σ(ε) is
/// σ_min).
/// ```
/// use candle_core::{DType, Device};
/// use rand::SeedableRng;
/// use sde_core::{analytic::GaussianScore, VpSde};
/// use sde_solvers::{driver::Sampler, samplers::DpmSolverPp2M, schedule::Schedule};
///
/// let sde = VpSde::default();
/// let score = GaussianScore::isotropic(&sde, 0.3, 0.6)?;
/// let sampler = Sampler::new(DpmSolverPp2M::default(), Schedule::UniformLogSnr { sampling_eps: 1e-3 }, 10);
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let out = sampler.sample(&sde, &score, (2000, 2), &Device::Cpu, DType::F32, &mut rng)?;
/// assert_eq!(out.nfe, 11); // 10 steps + the final denoising evaluation
/// let mean = out.x.mean_all()?.to_scalar::<f32>()?;
/// assert!((mean - 0.3).abs() < 0.05, "{mean}");
/// # Ok::<(), sde_solvers::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Sampler<St> {
    step: St,
    schedule: Schedule,
    n_steps: Option<usize>,
    denoise: bool,
    brownian: Option<BrownianTree>,
}

impl<St> Sampler<St> {
    /// `step` over `n_steps` steps of `schedule`, denoising on.
    pub fn new(step: St, schedule: Schedule, n_steps: usize) -> Self {
        Self {
            step,
            schedule,
            n_steps: Some(n_steps),
            denoise: true,
            brownian: None,
        }
    }

    /// `step` over the SDE's own N steps ([`Sde::n`]) of `schedule` (the reference's choice).
    pub fn with_sde_steps(step: St, schedule: Schedule) -> Self {
        Self {
            step,
            schedule,
            n_steps: None,
            denoise: true,
            brownian: None,
        }
    }

    /// Final denoising on or off (`denoise` / `noise_removal`, default on).
    #[doc(alias = "noise_removal")]
    pub fn denoise(mut self, denoise: bool) -> Self {
        self.denoise = denoise;
        self
    }

    /// Draws the steps' noise from `tree` (k-diffusion's `BrownianTreeNoiseSampler`): step i's
    /// z_k = (W_k(t_{i+1}) − W_k(t_i)) / √|t_{i+1} − t_i| for sample k, one draw per step
    /// ([`BrownianNoise`]; the PC corrector's Langevin noise, the prior and the constraint hook
    /// keep the caller's source). The tree must span the grid, [t_n, T] (checked before
    /// sampling, [`sde_core::Error::BrownianTime`]); `BrownianTree::new(seed, 0.0, sde.t_end())`
    /// spans every schedule. Sampling with the caller's source is the default.
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use sde_core::{analytic::GaussianScore, noise::{BrownianTree, PerSampleNoise}, Sde, VpSde};
    /// use sde_solvers::{driver::Sampler, samplers::SdeDpmSolverPp2M, schedule::Schedule};
    /// let sde = VpSde::default();
    /// let score = GaussianScore::isotropic(&sde, 0.3, 0.6)?;
    /// let sampler = Sampler::new(SdeDpmSolverPp2M::default(), Schedule::UniformLogSnr { sampling_eps: 1e-3 }, 20)
    ///     .brownian(BrownianTree::new(7, 0.0, sde.t_end())?);
    /// // sample 2 of a batch of 8 is sample 0 of the batch that starts at global sample 2
    /// let big = sampler.sample(&sde, &score, (8, 2), &Device::Cpu, DType::F32, &mut PerSampleNoise::new(1))?;
    /// let shifted = Sampler::new(SdeDpmSolverPp2M::default(), Schedule::UniformLogSnr { sampling_eps: 1e-3 }, 20)
    ///     .brownian(BrownianTree::new(7, 0.0, sde.t_end())?.with_offset(2));
    /// let small = shifted.sample(&sde, &score, (3, 2), &Device::Cpu, DType::F32, &mut PerSampleNoise::new(1).with_offset(2))?;
    /// assert_eq!(big.x.narrow(0, 2, 3)?.to_vec2::<f32>()?, small.x.to_vec2::<f32>()?);
    /// # Ok::<(), sde_solvers::Error>(())
    /// ```
    #[doc(alias = "BrownianTreeNoiseSampler")]
    pub fn brownian(mut self, tree: BrownianTree) -> Self {
        self.brownian = Some(tree);
        self
    }

    /// The Brownian tree the steps draw from, if any ([`brownian`](Self::brownian)).
    pub fn brownian_tree(&self) -> Option<&BrownianTree> {
        self.brownian.as_ref()
    }

    /// The step count.
    pub fn n_steps(mut self, n_steps: usize) -> Self {
        self.n_steps = Some(n_steps);
        self
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The step.
    pub fn step(&self) -> &St {
        &self.step
    }

    /// The number of steps this sampler takes on `sde`.
    pub fn steps_for<S: Sde + ?Sized>(&self, sde: &S) -> usize {
        match (self.schedule.fixed_steps(), self.n_steps) {
            (_, Some(n)) => n,
            (Some(n), None) => n,
            (None, None) => sde.n(),
        }
    }

    /// Draws x_T ~ p_T of shape `shape` and runs the sampler.
    pub fn sample<S, F, N>(
        &self,
        sde: &S,
        score: &F,
        shape: impl Into<Shape>,
        device: &Device,
        dtype: DType,
        noise: &mut N,
    ) -> Result<SampleOutput>
    where
        S: Sde + ?Sized,
        St: Step<S>,
        F: ScoreFn + ?Sized,
        N: NoiseSource + ?Sized,
    {
        let shape = shape.into();
        // Check the options before drawing anything.
        self.schedule.times(sde, self.steps_for(sde), dtype)?;
        self.step.check(sde)?;
        let x = sde.prior_sampling(&shape, device, dtype, noise)?;
        self.run(sde, score, &x, noise, |_, _, _| {})
    }

    /// Runs the steps from a given x_T, calling `observer(i, t_i, &x)` after every step.
    pub fn run<S, F, N>(
        &self,
        sde: &S,
        score: &F,
        x_init: &Tensor,
        noise: &mut N,
        observer: impl FnMut(usize, f64, &Tensor),
    ) -> Result<SampleOutput>
    where
        S: Sde + ?Sized,
        St: Step<S>,
        F: ScoreFn + ?Sized,
        N: NoiseSource + ?Sized,
    {
        self.run_constrained(sde, score, x_init, noise, |up, _, _| Ok(up), observer)
    }

    /// [`run`](Self::run) with a constraint hook: every step's update (and every intermediate
    /// stage a step exposes, [`StepIo::intermediate`]) passes through
    /// `constraint(update, t, noise)` before it is checked and observed.
    pub fn run_constrained<S, F, N>(
        &self,
        sde: &S,
        score: &F,
        x_init: &Tensor,
        noise: &mut N,
        mut constraint: impl FnMut(Update, &Tensor, &mut N) -> Result<Update>,
        observer: impl FnMut(usize, f64, &Tensor),
    ) -> Result<SampleOutput>
    where
        S: Sde + ?Sized,
        St: Step<S>,
        F: ScoreFn + ?Sized,
        N: NoiseSource + ?Sized,
    {
        drive(
            &self.step,
            &self.schedule,
            self.steps_for(sde),
            self.denoise,
            self.brownian.as_ref(),
            sde,
            score,
            x_init,
            noise,
            &mut constraint,
            observer,
        )
    }
}

/// Refuses an initial state that is not float data of shape `[B, ...]` with B ≥ 1.
pub(crate) fn check_x_init(x_init: &Tensor) -> Result<()> {
    let dtype = x_init.dtype();
    if !dtype.is_float() {
        return Err(Error::Unsupported(format!(
            "sampling needs float data, got x_init of dtype {dtype:?}"
        )));
    }
    if x_init.rank() < 1 || x_init.dim(0)? == 0 {
        return Err(Error::ShapeMismatch {
            what: "x_init",
            expected: "[B, ...] with B >= 1".into(),
            got: format!("{:?}", x_init.dims()),
        });
    }
    Ok(())
}

/// The loop shared by [`Sampler`] and [`crate::pc::PcSampler`].
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(crate) fn drive<S, St, F, N>(
    step: &St,
    schedule: &Schedule,
    n: usize,
    denoise: bool,
    brownian: Option<&BrownianTree>,
    sde: &S,
    score: &F,
    x_init: &Tensor,
    noise: &mut N,
    constraint: &mut dyn FnMut(Update, &Tensor, &mut N) -> Result<Update>,
    mut observer: impl FnMut(usize, f64, &Tensor),
) -> Result<SampleOutput>
where
    S: Sde + ?Sized,
    St: Step<S> + ?Sized,
    F: ScoreFn + ?Sized,
    N: NoiseSource + ?Sized,
{
    check_x_init(x_init)?;
    let dtype = x_init.dtype();
    step.check(sde)?;
    let grid = schedule.times(sde, n, dtype)?;
    let mut brownian = match brownian {
        Some(tree) => Some(brownian_for(tree, &grid)?),
        None => None,
    };
    let reference = matches!(schedule, Schedule::Reference { .. });
    let kind = if reference && n == sde.n() {
        GridKind::SdeChain
    } else {
        GridKind::Free
    };
    let score = CheckedScore::new(score);
    let batch = x_init.dim(0)?;
    let mut state = St::State::default();
    let mut last = Update {
        x: x_init.clone(),
        x_mean: x_init.clone(),
    };
    let mut ctx = StepCtx {
        i: 0,
        n,
        t: grid[0],
        t_next: grid[1],
        dt: 0.0,
        grid: kind,
    };
    for i in 0..n {
        ctx = StepCtx {
            i,
            n,
            t: grid[i],
            t_next: grid[i + 1],
            dt: if reference {
                sde.t_end() / n as f64
            } else {
                grid[i] - grid[i + 1]
            },
            grid: kind,
        };
        score.at(i, ctx.t);
        if let Some(b) = brownian.as_mut() {
            b.set_interval(ctx.t, ctx.t_next)?;
        }
        let up = {
            let mut io = StepIo {
                noise: &mut *noise,
                brownian: brownian.as_mut(),
                constraint: &mut *constraint,
                step: i,
                t: ctx.t,
            };
            step.step(&ctx, sde, &score, &last.x, &mut state, &mut io)
                .map_err(|e| score.explain(e))?
        };
        let t = time_vec(step.result_time(&ctx), batch, &up.x)?;
        let up = constraint(up, &t, noise)?;
        check_finite(&up.x, step.result_name(), i, ctx.t)?;
        observer(i, ctx.t, &up.x);
        last = up;
    }
    let x = if denoise {
        score.at(n.saturating_sub(1), ctx.t_next);
        let x = step
            .denoise(&ctx, sde, &score, last, &mut state)
            .map_err(|e| score.explain(e))?;
        // Put the known part back (noise-free) where a constraint holds it.
        let t = time_vec(step.result_time(&ctx), batch, &x)?;
        let x = constraint(
            Update {
                x: x.clone(),
                x_mean: x,
            },
            &t,
            noise,
        )?
        .x_mean;
        check_finite(&x, "the denoised sample", n.saturating_sub(1), ctx.t_next)?;
        x
    } else {
        last.x
    };
    Ok(SampleOutput {
        x,
        nfe: score.calls(),
        nfe_nominal: step.nfe_nominal(n),
        n_steps: n,
    })
}

/// The Brownian noise of a run on `grid`, after checking the tree spans it.
fn brownian_for(tree: &BrownianTree, grid: &[f64]) -> Result<BrownianNoise> {
    let (t_min, t_max) = tree.interval();
    for (index, &t) in grid.iter().enumerate() {
        if !(t >= t_min && t <= t_max) {
            return Err(sde_core::Error::BrownianTime {
                which: "t",
                index,
                t,
                t_min,
                t_max,
            }
            .into());
        }
    }
    Ok(BrownianNoise::new(tree.clone()))
}
