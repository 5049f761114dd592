//! SMLD / NCSN through the VE SDE (Song et al. 2021, §3.4 and §4).
//!
//! Default (no arguments, embedded data, CPU, a few minutes on 2 cores): train the MLP score
//! network on a 2-D toy distribution with the continuous VE denoising score-matching loss, sample
//! with annealed Langevin dynamics (NCSN) and with the predictor–corrector sampler (reverse
//! diffusion + Langevin), and write `samples.png`, `score_field.png`, `trajectories.png` and
//! `summary.json` (energy distance to held-out data, mode coverage, held-out bits/dim through the
//! probability-flow ODE).
//!
//! With `--dataset mnist5k` (the 5,000 real digits embedded in the repository) it reproduces
//! SMLD on real images on a CPU (~20 minutes on 2 cores): a small NCSN++ on the VE SDE, sampled
//! with annealed Langevin dynamics, PC, the probability-flow ODE and EDM Heun, with held-out
//! bits/dim and the digit classifier's metrics (`scoresde::mnist`, docs/reproduce.md).
//!
//! With `--dataset cifar10|mnist|folder --data-dir DIR` it trains NCSN++ from the paper's preset
//! (use `--features cuda` on a GPU); with `--checkpoint FILE` it samples from a trained or
//! reference checkpoint and writes an image grid.
//!
//! `cargo run --release --example smld -- --help`

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device};
use clap::Parser;
use rand::SeedableRng;
use score_nets::MlpConfig;
use scoresde::images::{self, ImageArgs};
use scoresde::toy::{self, host, AnyResult, ToyArgs};
use sde_core::{ScoreModelFn, VeSde};
use sde_solvers::corrector::{AnnealedLangevinDynamics, LangevinCorrector, NoCorrector};
use sde_solvers::pc::PcSampler;
use sde_solvers::predictor::{NoPredictor, ReverseDiffusionPredictor};
use sde_solvers::schedule::Schedule;
use sde_train::{SdeLoss, SdeLossOptions};

#[derive(Parser, Debug)]
#[command(
    about = "SMLD / NCSN through the VE SDE: train a score model, sample with annealed Langevin dynamics and the PC sampler"
)]
struct Args {
    /// σ_max of the VE SDE (the paper's rule: about the largest distance between data points).
    #[arg(long, default_value_t = 8.0)]
    sigma_max: f64,
    /// σ_min of the VE SDE.
    #[arg(long, default_value_t = 0.01)]
    sigma_min: f64,
    /// Signal-to-noise ratio of the Langevin corrector.
    #[arg(long, default_value_t = 0.16)]
    snr: f64,
    /// Also sample with a fast sampler on EDM's ρ-schedule: ddim, ddim-eta1, dpm++2m, dpm++3m,
    /// dpm++2s, sde-dpm++2m, unipc, heun; or `adaptive` (adaptive-step reverse SDE).
    #[arg(long)]
    sampler: Option<String>,
    /// Steps of the `--sampler`.
    #[arg(long, default_value_t = 30)]
    sampler_steps: usize,
    /// Output directory.
    #[arg(long, default_value = "target/examples/smld")]
    out: PathBuf,
    #[command(flatten)]
    run: ToyArgs,
    #[command(flatten)]
    images: ImageArgs,
}

fn main() -> AnyResult<()> {
    // reuse freed tensor buffers instead of page-faulting new ones in (glibc)
    score_nets::retain_freed_memory();
    let mut a = Args::parse();
    if let Some(name) = &a.sampler {
        scoresde::fast::check_sampler_name(name)?;
    }
    std::fs::create_dir_all(&a.out)?;
    if let Some(done) = images::run_if_requested(&a.images, images::Family::Ve, &a.out, &a.run) {
        return done;
    }
    a.run.apply_quick();
    let toy_kind = toy::parse_toy(&a.run.toy)?;
    let sde = VeSde::new(a.sigma_min, a.sigma_max, a.run.n_steps)?;
    let run = a.run.training()?;
    println!(
        "SMLD (VE SDE, sigma {} -> {}) on {:?}: training the MLP score network for {} steps",
        a.sigma_min, a.sigma_max, toy_kind, a.run.steps
    );
    let t0 = Instant::now();
    let loss = SdeLoss::new(
        &sde,
        SdeLossOptions {
            continuous: true,
            ..Default::default()
        },
    )?;
    let (model, _vm, summary) = toy::train_mlp(
        &MlpConfig::ve(2),
        loss,
        &run,
        Some(&a.out.join("train_log.jsonl")),
    )?;
    let train_s = t0.elapsed().as_secs_f64();
    let (first, last) = toy::loss_first_last(&summary);
    println!("  loss {first:.4} -> {last:.4} in {train_s:.1} s");

    let score = ScoreModelFn::new(&sde, &model, true);
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.run.seed);
    let shape = toy::points_shape(a.run.n_samples);

    // Annealed Langevin dynamics (NCSN): N/5 noise levels, 5 Langevin steps each.
    let ald_sde = VeSde::new(a.sigma_min, a.sigma_max, (a.run.n_steps / 5).max(2))?;
    let ald = PcSampler::new(NoPredictor, AnnealedLangevinDynamics::new(a.snr, 5)?);
    let t1 = Instant::now();
    let ald_out = ald.sample(
        &ald_sde,
        &ScoreModelFn::new(&ald_sde, &model, true),
        shape.clone(),
        &Device::Cpu,
        DType::F32,
        &mut rng,
    )?;
    let ald_s = t1.elapsed().as_secs_f64();
    // Predictor–corrector: reverse diffusion + Langevin.
    let pc = PcSampler::new(
        ReverseDiffusionPredictor::new(false),
        LangevinCorrector::new(a.snr, 1)?,
    );
    let t2 = Instant::now();
    let pc_out = pc.sample(
        &sde,
        &score,
        shape.clone(),
        &Device::Cpu,
        DType::F32,
        &mut rng,
    )?;
    let pc_s = t2.elapsed().as_secs_f64();
    // Probability-flow trajectories of 32 particles (the discretised ODE: smooth, deterministic paths).
    let mut paths = Vec::new();
    let pf = PcSampler::new(ReverseDiffusionPredictor::new(true), NoCorrector);
    pf.sample_observed(
        &sde,
        &score,
        toy::points_shape(32),
        &Device::Cpu,
        DType::F32,
        &mut rng,
        toy::trajectory_recorder(32, (a.run.n_steps / 200).max(1), a.run.n_steps, &mut paths),
    )?;
    // Reverse diffusion alone (no corrector), for comparison.
    let rd = PcSampler::new(ReverseDiffusionPredictor::new(false), NoCorrector);
    let rd_out = rd.sample(
        &sde,
        &score,
        shape.clone(),
        &Device::Cpu,
        DType::F32,
        &mut rng,
    )?;
    // A fast sampler (`--sampler`) on EDM's ρ = 7 schedule from σ_max down to σ(1e-5).
    let fast = match &a.sampler {
        Some(name) => {
            let sched = Schedule::Karras {
                sigma_min: sde.sigma(1e-5),
                sigma_max: a.sigma_max,
                rho: 7.0,
            };
            let t = Instant::now();
            let (x, nfe, label) = scoresde::fast::sample_by_name(
                name,
                a.sampler_steps,
                sched,
                &sde,
                &score,
                shape,
                &mut rng,
            )?;
            Some((label, x, nfe, t.elapsed().as_secs_f64()))
        }
        None => None,
    };

    let data = host(&toy::toy_points(
        toy_kind,
        a.run.n_samples,
        a.run.seed ^ 0xDA7A,
    )?)?;
    let (ald_pts, pc_pts, rd_pts) = (host(&ald_out.x)?, host(&pc_out.x)?, host(&rd_out.x)?);
    let q_ald = toy::quality(toy_kind, &ald_pts, a.run.seed)?;
    let q_pc = toy::quality(toy_kind, &pc_pts, a.run.seed)?;
    let q_rd = toy::quality(toy_kind, &rd_pts, a.run.seed)?;
    let lik = toy::held_out_likelihood(&sde, &score, toy_kind, a.run.n_likelihood(), a.run.seed)?;

    let range = 4.5;
    toy::samples_png(
        &a.out.join("samples.png"),
        &data,
        &[&ald_pts, &pc_pts, &rd_pts],
        range,
    )?;
    let times: Vec<f64> = [0.05, 0.3, 1.5]
        .iter()
        .map(|s: &f64| (s / a.sigma_min).ln() / (a.sigma_max / a.sigma_min).ln())
        .collect();
    toy::score_field_png(
        &a.out.join("score_field.png"),
        &sde,
        &score,
        &times,
        &data,
        range,
    )?;
    toy::trajectories_png(&a.out.join("trajectories.png"), &paths, &data, range)?;

    toy::print_quality("annealed Langevin (NCSN)", &q_ald, ald_out.nfe, ald_s);
    toy::print_quality("PC: reverse diffusion+Langevin", &q_pc, pc_out.nfe, pc_s);
    toy::print_quality("reverse diffusion only", &q_rd, rd_out.nfe, 0.0);
    let mut fast_json = serde_json::Value::Null;
    if let Some((name, x, nfe, secs)) = &fast {
        let q = toy::quality(toy_kind, &host(x)?, a.run.seed)?;
        toy::print_quality(name, &q, *nfe, *secs);
        fast_json = serde_json::json!({"sampler": name, "steps": a.sampler_steps, "nfe": nfe, "quality": q, "seconds": secs});
    }
    toy::print_likelihood(&lik);
    let summary_json = serde_json::json!({
        "example": "smld", "sde": {"kind": "VE", "sigma_min": a.sigma_min, "sigma_max": a.sigma_max, "N": a.run.n_steps},
        "toy": a.run.toy, "training": {"steps": a.run.steps, "batch": a.run.batch, "lr": a.run.lr, "loss_first": first, "loss_last": last, "seconds": train_s},
        "fast_sampler": fast_json, "annealed_langevin": {"nfe": ald_out.nfe, "quality": q_ald, "seconds": ald_s},
        "pc_reverse_diffusion_langevin": {"nfe": pc_out.nfe, "quality": q_pc, "seconds": pc_s},
        "reverse_diffusion": {"nfe": rd_out.nfe, "quality": q_rd},
        "held_out_likelihood": lik,
    });
    std::fs::write(
        a.out.join("summary.json"),
        serde_json::to_string_pretty(&summary_json)?,
    )?;
    println!("wrote samples.png (data | ALD | PC | reverse diffusion), score_field.png (σ = 0.05, 0.3, 1.5), trajectories.png (probability-flow paths), summary.json to {}", a.out.display());
    Ok(())
}
