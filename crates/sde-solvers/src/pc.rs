//! The predictor–corrector sampler (`sampling.get_pc_sampler`).

use candle_core::{DType, Device, Shape, Tensor};
use sde_core::noise::NoiseSource;
use sde_core::{ScoreFn, ScoreModel, ScoreModelFn, Sde};

use crate::corrector::Corrector;
use crate::driver::drive;
use crate::error::{Error, Result};
use crate::predictor::{Predictor, Update};
use crate::schedule::Schedule;
use crate::step::{Step, StepCtx, StepIo};

/// The sampler's time grid t_i = linspace(T, ε, N)_i, i = 0..N (`torch.linspace(sde.T, eps, sde.N)`).
///
/// For `DType::F32` (and the half types) it is computed as torch computes it in float32:
/// step = (ε − T)/(N − 1) rounded to f32, t_i = fma(step, i, T) for i < N/2 and
/// t_i = fma(−step, N − 1 − i, ε) otherwise (one rounding each, as torch's FMA-contracted
/// kernel); so the discrete indices ⌊t_i (N−1)/T⌋ match the
/// reference exactly. For `DType::F64` the same formula runs in f64.
/// ```
/// let grid = sde_solvers::pc::time_grid(1.0, 1e-3, 1000, candle_core::DType::F32)?;
/// assert_eq!(grid.len(), 1000);
/// assert_eq!((grid[0], grid[999]), (1.0, 1e-3f32 as f64));
/// # Ok::<(), sde_solvers::Error>(())
/// ```
#[doc(alias = "timesteps")]
pub fn time_grid(t_end: f64, sampling_eps: f64, n: usize, dtype: DType) -> Result<Vec<f64>> {
    if !(sampling_eps.is_finite() && sampling_eps > 0.0 && sampling_eps < t_end) {
        return Err(Error::InvalidParameter {
            name: "sampling_eps",
            value: sampling_eps,
            reason: "must satisfy 0 < sampling_eps < T",
        });
    }
    if n == 0 {
        return Err(Error::InvalidParameter {
            name: "N",
            value: 0.0,
            reason: "the SDE needs at least one step",
        });
    }
    if n == 1 {
        return Ok(vec![t_end]);
    }
    let half = n / 2;
    Ok(if dtype == DType::F64 {
        let step = (sampling_eps - t_end) / (n - 1) as f64;
        (0..n)
            .map(|i| {
                if i < half {
                    t_end + step * i as f64
                } else {
                    sampling_eps - step * (n - 1 - i) as f64
                }
            })
            .collect()
    } else {
        let (a, b) = (t_end as f32, sampling_eps as f32);
        let step = (b - a) / (n - 1) as f32;
        (0..n)
            .map(|i| {
                // torch's kernel is compiled with FMA contraction: one rounding per element.
                let v = if i < half {
                    step.mul_add(i as f32, a)
                } else {
                    (-step).mul_add((n - 1 - i) as f32, b)
                };
                v as f64
            })
            .collect()
    })
}

/// What [`PcSampler`] returns: the samples and the number of score evaluations.
#[derive(Debug, Clone)]
pub struct PcOutput {
    /// The samples, `[B, ...]`: the last x̄ with `denoise`, else the last x.
    pub x: Tensor,
    /// NFE: score evaluations actually made (each batched call counts once), the one meaning of
    /// `nfe` in this crate ([`SampleOutput::nfe`](crate::driver::SampleOutput::nfe), the ODE
    /// sampler, the likelihood).
    pub nfe: usize,
    /// The reference's nominal count N · (`n_steps_each` + 1), whatever the parts evaluate (what
    /// `get_pc_sampler` returns as its `n`): compare this one with the reference's figures.
    pub nfe_nominal: usize,
}

/// The predictor–corrector composition as one [`Step`]: at t_i the corrector (its update passed
/// through the driver's constraint hook and checked, [`StepIo::intermediate`]), then the
/// predictor ([`Predictor::update_step`]). The predictor draws the step's noise
/// ([`StepIo::step_noise`], Brownian with [`Sampler::brownian`](crate::driver::Sampler::brownian)),
/// the corrector its Langevin noise from the caller's source. The PC sampler is the driver over this step on the
/// reference schedule; any predictor and corrector run on any schedule through
/// [`Sampler`](crate::driver::Sampler)`<PcStep<P, C>>` (the reverse-diffusion and ancestral
/// predictors need the SDE's own chain, [`GridKind::SdeChain`](crate::step::GridKind)).
#[derive(Debug, Clone, Copy, Default)]
pub struct PcStep<P, C> {
    /// The predictor.
    pub predictor: P,
    /// The corrector.
    pub corrector: C,
}

impl<S: Sde + ?Sized, P: Predictor<S>, C: Corrector<S>> Step<S> for PcStep<P, C> {
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
        let t = time_vec(ctx.t, x.dim(0)?, x)?;
        let up = self.corrector.update(sde, score, x, &t, io.noise())?;
        let up = io.intermediate(up, &t, "x after the corrector")?;
        self.predictor
            .update_step(ctx, sde, score, &up.x, &t, &mut io.step_noise())
    }

    fn result_time(&self, ctx: &StepCtx) -> f64 {
        ctx.t
    }

    fn result_name(&self) -> &'static str {
        "x after the predictor"
    }

    fn nfe_nominal(&self, n: usize) -> Option<usize> {
        Some(n * (self.corrector.n_steps_each() + 1))
    }
}

/// Predictor–corrector sampler (Algorithm 1 of the paper, `sampling.get_pc_sampler`):
///
/// x_0 ~ p_T (`prior_sampling`); for i = 0..N with t_i = linspace(T, ε, N)_i:
/// x ← corrector(x, t_i); x, x̄ ← predictor(x, t_i). Returns x̄ of the last step when
/// `denoise` (`noise_removal`, default) is on, else x.
///
/// Options, as the reference's: the predictor and its `probability_flow`, the corrector and its
/// `snr` and `n_steps_each`, `denoise`, `sampling_eps` (the `eps` end time, default 1e-3; use
/// 1e-5 for VE). The reference's `continuous` flag only changes how a network is turned into a
/// score ([`ScoreModelFn`]): pass it to [`PcSampler::sample_model`], or build the score
/// yourself. Every draw (prior first, then at each step the corrector's, then the predictor's)
/// goes through the caller's [`NoiseSource`], so a seeded source gives reproducible samples
/// ([`sde_core::noise::PerSampleNoise`] also makes them independent of the batch size).
///
/// A NaN or infinity stops the run with [`Error::NonFinite`] naming the step and t.
/// ```
/// use candle_core::{DType, Device};
/// use rand::SeedableRng;
/// use sde_core::{analytic::GaussianScore, VpSde};
/// use sde_solvers::corrector::LangevinCorrector;
/// use sde_solvers::pc::PcSampler;
/// use sde_solvers::predictor::ReverseDiffusionPredictor;
///
/// // Data N(0.3, 0.6²) with its exact score; 200 steps of reverse diffusion + Langevin.
/// let sde = VpSde::new(0.1, 20.0, 200)?;
/// let score = GaussianScore::isotropic(&sde, 0.3, 0.6)?;
/// let sampler = PcSampler::new(
///     ReverseDiffusionPredictor::new(false),
///     LangevinCorrector::new(0.16, 1)?,
/// );
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let out = sampler.sample(&sde, &score, (2000, 2), &Device::Cpu, DType::F32, &mut rng)?;
/// assert_eq!((out.nfe_nominal, out.nfe), (400, 400));
/// let mean = out.x.mean_all()?.to_scalar::<f32>()?;
/// assert!((mean - 0.3).abs() < 0.05, "{mean}");
/// # Ok::<(), sde_solvers::Error>(())
/// ```
#[derive(Debug, Clone)]
#[doc(alias = "get_pc_sampler")]
pub struct PcSampler<P, C> {
    pub(crate) predictor: P,
    pub(crate) corrector: C,
    pub(crate) denoise: bool,
    pub(crate) sampling_eps: f64,
}

impl<P, C> PcSampler<P, C> {
    /// A sampler with `denoise = true` and `sampling_eps = 1e-3` (the reference's defaults).
    pub fn new(predictor: P, corrector: C) -> Self {
        Self {
            predictor,
            corrector,
            denoise: true,
            sampling_eps: 1e-3,
        }
    }

    /// Returns the last noise-free mean x̄ (`denoise` / `noise_removal`, default `true`).
    #[doc(alias = "noise_removal")]
    pub fn denoise(mut self, denoise: bool) -> Self {
        self.denoise = denoise;
        self
    }

    /// End time ε of the grid (`eps`); must satisfy 0 < ε < T (checked when sampling).
    #[doc(alias = "eps")]
    pub fn sampling_eps(mut self, sampling_eps: f64) -> Self {
        self.sampling_eps = sampling_eps;
        self
    }

    /// The predictor.
    pub fn predictor(&self) -> &P {
        &self.predictor
    }
    /// The corrector.
    pub fn corrector(&self) -> &C {
        &self.corrector
    }

    /// Draws x_T ~ p_T of shape `shape` and runs the sampler (see the type's doc).
    pub fn sample<S, F, N>(
        &self,
        sde: &S,
        score: &F,
        shape: impl Into<Shape>,
        device: &Device,
        dtype: DType,
        noise: &mut N,
    ) -> Result<PcOutput>
    where
        S: Sde + ?Sized,
        P: Predictor<S>,
        C: Corrector<S>,
        F: ScoreFn + ?Sized,
        N: NoiseSource + ?Sized,
    {
        self.sample_observed(sde, score, shape, device, dtype, noise, |_, _, _| {})
    }

    /// [`sample`](Self::sample) with an observer called after every step with
    /// `(step index i, t_i, x after the step)`: progress bars, trajectory plots.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_observed<S, F, N>(
        &self,
        sde: &S,
        score: &F,
        shape: impl Into<Shape>,
        device: &Device,
        dtype: DType,
        noise: &mut N,
        observer: impl FnMut(usize, f64, &Tensor),
    ) -> Result<PcOutput>
    where
        S: Sde + ?Sized,
        P: Predictor<S>,
        C: Corrector<S>,
        F: ScoreFn + ?Sized,
        N: NoiseSource + ?Sized,
    {
        let shape = shape.into();
        // Check the options before drawing anything.
        time_grid(sde.t_end(), self.sampling_eps, sde.n(), dtype)?;
        let x = sde.prior_sampling(&shape, device, dtype, noise)?;
        self.run(sde, score, &x, noise, observer)
    }

    /// A network as the score, through the reference's label convention
    /// (`get_score_fn(sde, model, train=False, continuous)`), then [`sample`](Self::sample).
    #[allow(clippy::too_many_arguments)]
    pub fn sample_model<S, M, N>(
        &self,
        sde: &S,
        model: &M,
        continuous: bool,
        shape: impl Into<Shape>,
        device: &Device,
        dtype: DType,
        noise: &mut N,
    ) -> Result<PcOutput>
    where
        S: Sde + ?Sized,
        M: ScoreModel + ?Sized,
        P: Predictor<S>,
        C: Corrector<S>,
        N: NoiseSource + ?Sized,
    {
        let score = ScoreModelFn::new(sde, model, continuous);
        self.sample(sde, &score, shape, device, dtype, noise)
    }

    /// Runs the N steps from a given x_T (e.g. a prior draw made elsewhere), calling
    /// `observer(i, t_i, &x)` after every step.
    pub fn run<S, F, N>(
        &self,
        sde: &S,
        score: &F,
        x_init: &Tensor,
        noise: &mut N,
        observer: impl FnMut(usize, f64, &Tensor),
    ) -> Result<PcOutput>
    where
        S: Sde + ?Sized,
        P: Predictor<S>,
        C: Corrector<S>,
        F: ScoreFn + ?Sized,
        N: NoiseSource + ?Sized,
    {
        self.run_with(sde, score, x_init, noise, |up, _, _| Ok(up), observer)
    }

    /// The sampling loop: at each of the N times, corrector then predictor, each update passed
    /// through `project(update, t, noise)` (the identity for plain sampling; inpainting and
    /// colorization put the known part back there), then `observer(i, t_i, &x)`: the driver
    /// ([`crate::driver`]) over a [`PcStep`] on [`Schedule::Reference`] with N = [`Sde::n`].
    pub(crate) fn run_with<S, F, N>(
        &self,
        sde: &S,
        score: &F,
        x_init: &Tensor,
        noise: &mut N,
        mut project: impl FnMut(Update, &Tensor, &mut N) -> Result<Update>,
        observer: impl FnMut(usize, f64, &Tensor),
    ) -> Result<PcOutput>
    where
        S: Sde + ?Sized,
        P: Predictor<S>,
        C: Corrector<S>,
        F: ScoreFn + ?Sized,
        N: NoiseSource + ?Sized,
    {
        let step = PcStep {
            predictor: &self.predictor,
            corrector: &self.corrector,
        };
        let out = drive(
            &step,
            &Schedule::Reference {
                sampling_eps: self.sampling_eps,
            },
            sde.n(),
            self.denoise,
            None,
            sde,
            score,
            x_init,
            noise,
            &mut project,
            observer,
        )?;
        let nominal = out.nfe_nominal.unwrap_or(out.nfe);
        Ok(PcOutput {
            x: out.x,
            nfe: out.nfe,
            nfe_nominal: nominal,
        })
    }

    /// This sampler as the general driver ([`Sampler`](crate::driver::Sampler) over a
    /// [`PcStep`]) on the reference schedule, to change its schedule or step count.
    pub fn into_sampler(self) -> crate::driver::Sampler<PcStep<P, C>> {
        crate::driver::Sampler::with_sde_steps(
            PcStep {
                predictor: self.predictor,
                corrector: self.corrector,
            },
            Schedule::Reference {
                sampling_eps: self.sampling_eps,
            },
        )
        .denoise(self.denoise)
    }
}

/// The time tensor `[t; B]` in `x`'s dtype and device (one allocation for f32 / f64).
pub(crate) fn time_vec(t: f64, batch: usize, x: &Tensor) -> Result<Tensor> {
    Ok(match x.dtype() {
        DType::F32 => Tensor::full(t as f32, batch, x.device())?,
        DType::F64 => Tensor::full(t, batch, x.device())?,
        dt => Tensor::full(t, batch, x.device())?.to_dtype(dt)?,
    })
}

/// [`Error::NonFinite`] if `x` holds a NaN or an infinity.
pub(crate) fn check_finite(x: &Tensor, what: &str, step: usize, t: f64) -> Result<()> {
    if crate::predictor::fused::all_finite(x)? {
        Ok(())
    } else {
        Err(Error::NonFinite {
            what: what.to_string(),
            step,
            t,
        })
    }
}
