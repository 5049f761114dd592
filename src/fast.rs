//! The examples' `--sampler NAME`: a fast sampler of `sde_solvers::samplers` by name, or
//! `adaptive`, the adaptive-step reverse-SDE solver.

use candle_core::{DType, Device, Shape, Tensor};
use rand::RngCore;
use sde_core::noise::{BrownianTree, PerSampleNoise};
use sde_core::{ScoreFn, Sde};
use sde_solvers::driver::Sampler;
use sde_solvers::samplers::{AdaptiveSampler, SamplerKind};
use sde_solvers::schedule::Schedule;

/// Names `--sampler` accepts.
pub const SAMPLER_NAMES: &str =
    "ddim, ddim-eta1, dpm++2m, dpm++3m, dpm++2s, sde-dpm++2m, unipc, heun, adaptive";

fn parse_kind(name: &str) -> Result<SamplerKind, String> {
    name.parse()
        .map_err(|e| format!("--sampler {name}: {e}, or `adaptive`"))
}

/// Checks a `--sampler` name before any work is done: a [`SamplerKind`] name or `adaptive`.
pub fn check_sampler_name(name: &str) -> Result<(), String> {
    if name == "adaptive" {
        return Ok(());
    }
    parse_kind(name).map(|_| ())
}

/// Samples `shape` with the sampler `name`: a [`SamplerKind`] with `steps` steps on `schedule`,
/// or `adaptive` ([`AdaptiveSampler`] with its default tolerances, abs 0.0078 / rel 0.01, whose
/// step count follows from the tolerance; its noise comes from per-sample streams and a Brownian
/// tree seeded from `rng`). Returns the samples, the score evaluations and a label.
pub fn sample_by_name<S, F>(
    name: &str,
    steps: usize,
    schedule: Schedule,
    sde: &S,
    score: &F,
    shape: Shape,
    rng: &mut (impl RngCore + ?Sized),
) -> Result<(Tensor, usize, String), Box<dyn std::error::Error + Send + Sync>>
where
    S: Sde + ?Sized,
    F: ScoreFn + ?Sized,
{
    if name == "adaptive" {
        let seed = rng.next_u64();
        let tree = BrownianTree::new(seed, 0.0, sde.t_end())?;
        let out = AdaptiveSampler::default().sample(
            sde,
            score,
            shape,
            &Device::Cpu,
            DType::F32,
            &mut PerSampleNoise::new(seed),
            &tree,
        )?;
        return Ok((out.x, out.nfe, "adaptive (tolerance)".into()));
    }
    let kind = parse_kind(name)?;
    let out = Sampler::new(kind, schedule, steps).sample(
        sde,
        score,
        shape,
        &Device::Cpu,
        DType::F32,
        rng,
    )?;
    Ok((out.x, out.nfe, format!("{name} ({steps} steps)")))
}
