//! Bench binary for the PC sampler: prints one line per measure.
//!
//! ```text
//! cargo run --release --example bench_solvers            # full size (3 runs, a few seconds)
//! cargo run --release --example bench_solvers -- --quick # 100 steps
//! cargo run --release --example bench_solvers -- --parts # + breakdown: score, noise, sampler
//! ```
//!
//! The measure is the reference's `bench_ref.py` case (iii): `sampling.get_pc_sampler` with
//! ReverseDiffusionPredictor + LangevinCorrector (snr 0.16, n_steps_each 1), VE SDE
//! (σ_min 0.01, σ_max 50, N = 1000, ε = 1e-5), the exact score of a 2-D mixture of 8 Gaussians
//! on a circle (radius 4, std 0.2), 10 000 samples × 1000 steps, CPU, float32, denoise on.
//! Reference (same kind of 2-core machine, torch with 2 threads): 5.87 s; rerun it beside this
//! binary for a same-machine ratio (`../shared/baselines/README.md`), and pass its figure with
//! `--reference-s SECONDS`.
//!
//! Everything timed is the library as a user gets it: `sde_core::analytic::FastMixtureScore`
//! and a seeded `sde_core::noise::BlockNoise` (the main line), or a seeded `StdRng`.

use std::time::Instant;

use candle_core::{DType, Device};
use rand::SeedableRng;
use sde_core::analytic::{FastMixtureScore, GaussianMixture};
use sde_core::noise::BlockNoise;
use sde_core::VeSde;
use sde_solvers::corrector::LangevinCorrector;
use sde_solvers::pc::PcSampler;
use sde_solvers::predictor::ReverseDiffusionPredictor;

const REFERENCE_S: f64 = 5.87;

use scoresde::report::cpu_seconds;

/// Median wall time and median CPU time over `reps` runs.
fn time_it(
    reps: usize,
    mut f: impl FnMut(u64) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let mut wall = Vec::new();
    let mut cpu = Vec::new();
    for rep in 0..reps {
        let c0 = cpu_seconds().unwrap_or(f64::NAN);
        let start = Instant::now();
        f(rep as u64)?;
        wall.push(start.elapsed().as_secs_f64());
        cpu.push(cpu_seconds().unwrap_or(f64::NAN) - c0);
    }
    wall.sort_by(|a, b| a.total_cmp(b));
    cpu.sort_by(|a, b| a.total_cmp(b));
    Ok((wall[wall.len() / 2], cpu[cpu.len() / 2]))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let reference_s = args
        .iter()
        .position(|a| a == "--reference-s")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse::<f64>())
        .transpose()?
        .unwrap_or(REFERENCE_S);
    let (batch, steps) = if quick { (10_000, 100) } else { (10_000, 1000) };
    let reps = if quick { 1 } else { 3 };
    let sde = VeSde::new(0.01, 50.0, steps)?;
    let gmm = GaussianMixture::ring(8, 4.0, 0.2)?;
    let sampler = PcSampler::new(
        ReverseDiffusionPredictor::new(false),
        LangevinCorrector::new(0.16, 1)?,
    )
    .sampling_eps(1e-5);
    let report = |name: &str, runs: usize, (median, cpu): (f64, f64)| {
        let full = median * 1000.0 / steps as f64;
        println!(
            "pc_sampler_gmm2d rd+langevin ve {batch}x{steps} cpu f32 [{name}]: {median:.3} s wall, {cpu:.2} s cpu (median of {runs} run(s); {:.3e} sample-steps/s; reference {reference_s} s per 1000 steps; ratio {:.1}x)",
            (batch * steps) as f64 / median,
            reference_s / full
        );
    };
    let score = FastMixtureScore::new(&sde, gmm.clone());

    let timing = time_it(reps, |seed| {
        let mut noise = BlockNoise::new(seed);
        let out = sampler.sample(
            &sde,
            &score,
            (batch, 2),
            &Device::Cpu,
            DType::F32,
            &mut noise,
        )?;
        let _ = out.x.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    })?;
    report("FastMixtureScore, BlockNoise", reps, timing);

    if args.iter().any(|a| a == "--parts") {
        use sde_core::noise::NoiseSource;
        use sde_core::ScoreFn;
        let x = gmm.sample(
            &(batch, 2).into(),
            &Device::Cpu,
            DType::F32,
            &mut rand::rngs::StdRng::seed_from_u64(1),
        )?;
        let t = sde_core::time_tensor(0.5, batch, &Device::Cpu, DType::F32)?;
        report(
            "part: score only, 2N evaluations",
            1,
            time_it(1, |_| {
                for _ in 0..2 * steps {
                    score.score(&x, &t)?;
                }
                Ok(())
            })?,
        );
        report(
            "part: block noise only, 2N draws",
            1,
            time_it(1, |seed| {
                let mut noise = BlockNoise::new(seed);
                for _ in 0..2 * steps {
                    noise.randn(&(batch, 2).into(), &Device::Cpu, DType::F32)?;
                }
                Ok(())
            })?,
        );
        report(
            "part: sde-core discretize + langevin_alpha only, N calls each",
            1,
            time_it(1, |_| {
                use sde_core::Sde;
                for _ in 0..steps {
                    sde.discretize(&x, &t)?;
                    sde.langevin_alpha(&t)?;
                }
                Ok(())
            })?,
        );
        let cheap = |x: &candle_core::Tensor,
                     _t: &candle_core::Tensor|
         -> sde_core::Result<candle_core::Tensor> { Ok(x.affine(-0.01, 0.0)?) };
        report(
            "part: sampler with a 1-op score",
            1,
            time_it(1, |seed| {
                let mut noise = BlockNoise::new(seed);
                sampler.sample(
                    &sde,
                    &cheap,
                    (batch, 2),
                    &Device::Cpu,
                    DType::F32,
                    &mut noise,
                )?;
                Ok(())
            })?,
        );
    }

    let timing = time_it(1, |seed| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let out = sampler.sample(&sde, &score, (batch, 2), &Device::Cpu, DType::F32, &mut rng)?;
        let _ = out.x.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    })?;
    report("FastMixtureScore, StdRng", 1, timing);
    Ok(())
}
