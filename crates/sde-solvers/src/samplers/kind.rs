//! Config-driven choice of a fast sampler ([`SamplerKind`]), the enum counterpart of a
//! `--sampler` flag.

use std::str::FromStr;

use candle_core::Tensor;
use sde_core::noise::NoiseSource;
use sde_core::{ScoreFn, Sde};

use super::unipc::UniPcState;
use super::{
    Ddim, DpmSolverPp2M, DpmSolverPp2S, DpmSolverPp3M, EdmHeun, History, SdeDpmSolverPp2M, UniPc,
};
use crate::error::{Error, Result};
use crate::predictor::Update;
use crate::step::{Step, StepCtx, StepIo};

/// One of the fast samplers with its default options, chosen at run time.
///
/// Parses from `ddim`, `ddim-eta1` (η = 1), `dpm++2m`, `dpm++3m`, `dpm++2s`, `sde-dpm++2m`,
/// `unipc` and `heun` ([`FromStr`]).
/// ```
/// use sde_solvers::samplers::SamplerKind;
/// let k: SamplerKind = "dpm++2m".parse()?;
/// assert_eq!(k, SamplerKind::DpmSolverPp2M(Default::default()));
/// assert!("euler-a".parse::<SamplerKind>().is_err());
/// # Ok::<(), sde_solvers::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerKind {
    /// [`Ddim`].
    Ddim(Ddim),
    /// [`DpmSolverPp2M`].
    DpmSolverPp2M(DpmSolverPp2M),
    /// [`DpmSolverPp3M`].
    DpmSolverPp3M(DpmSolverPp3M),
    /// [`DpmSolverPp2S`].
    DpmSolverPp2S(DpmSolverPp2S),
    /// [`SdeDpmSolverPp2M`].
    SdeDpmSolverPp2M(SdeDpmSolverPp2M),
    /// [`UniPc`].
    UniPc(UniPc),
    /// [`EdmHeun`].
    EdmHeun(EdmHeun),
}

impl SamplerKind {
    /// The names [`FromStr`] accepts.
    pub const NAMES: [&'static str; 8] = [
        "ddim",
        "ddim-eta1",
        "dpm++2m",
        "dpm++3m",
        "dpm++2s",
        "sde-dpm++2m",
        "unipc",
        "heun",
    ];

    /// Score evaluations per step (the final denoising step adds one, and DPM-Solver++(3M)'s
    /// warm-up one more).
    pub fn nfe_per_step(&self) -> usize {
        match self {
            SamplerKind::DpmSolverPp2S(_) | SamplerKind::EdmHeun(_) => 2,
            _ => 1,
        }
    }
}

impl FromStr for SamplerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "ddim" => SamplerKind::Ddim(Ddim::default()),
            "ddim-eta1" => SamplerKind::Ddim(Ddim::new(1.0)?),
            "dpm++2m" => SamplerKind::DpmSolverPp2M(Default::default()),
            "dpm++3m" => SamplerKind::DpmSolverPp3M(Default::default()),
            "dpm++2s" => SamplerKind::DpmSolverPp2S(Default::default()),
            "sde-dpm++2m" => SamplerKind::SdeDpmSolverPp2M(Default::default()),
            "unipc" => SamplerKind::UniPc(Default::default()),
            "heun" => SamplerKind::EdmHeun(Default::default()),
            other => {
                return Err(Error::Unsupported(format!(
                    "unknown sampler `{other}` (one of {})",
                    Self::NAMES.join(", ")
                )))
            }
        })
    }
}

/// The per-run state of any [`SamplerKind`].
#[derive(Debug, Default, Clone)]
pub struct KindState {
    hist: History,
    unipc: UniPcState,
}

impl<S: Sde + ?Sized> Step<S> for SamplerKind {
    type State = KindState;

    fn step<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        x: &Tensor,
        state: &mut KindState,
        io: &mut StepIo<'_, N>,
    ) -> Result<Update> {
        match self {
            SamplerKind::Ddim(s) => s.step(ctx, sde, score, x, &mut (), io),
            SamplerKind::DpmSolverPp2M(s) => s.step(ctx, sde, score, x, &mut state.hist, io),
            SamplerKind::DpmSolverPp3M(s) => s.step(ctx, sde, score, x, &mut state.hist, io),
            SamplerKind::DpmSolverPp2S(s) => s.step(ctx, sde, score, x, &mut (), io),
            SamplerKind::SdeDpmSolverPp2M(s) => s.step(ctx, sde, score, x, &mut state.hist, io),
            SamplerKind::UniPc(s) => s.step(ctx, sde, score, x, &mut state.unipc, io),
            SamplerKind::EdmHeun(s) => s.step(ctx, sde, score, x, &mut (), io),
        }
    }

    /// Tweedie's x̂₀ at the last time (one evaluation), as every fast sampler.
    fn denoise<F: ScoreFn + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        last: Update,
        _state: &mut KindState,
    ) -> Result<Tensor> {
        super::tweedie(sde, score, &last.x, ctx.t_next)
    }
}
