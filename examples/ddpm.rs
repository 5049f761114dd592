//! DDPM through the VP SDE (Song et al. 2021, §3.4 and §4).
//!
//! Default (no arguments, embedded data, CPU, a few minutes on 2 cores): train the MLP score
//! network (ε-prediction, time label 999 t) on a 2-D toy distribution with the continuous VP loss
//! (or `--loss ddpm`: the discrete DDPM ε-loss over the 1000 ᾱ_i), sample with ancestral
//! sampling (DDPM) and with reverse diffusion (and `--sde subvp` for the sub-VP SDE, which has no
//! ancestral sampler), and write `samples.png`, `score_field.png`, `trajectories.png` and
//! `summary.json` (energy distance, mode coverage, held-out bits/dim through the probability-flow
//! ODE).
//!
//! With `--dataset mnist5k` (the 5,000 real digits embedded in the repository, no download) it
//! reproduces DDPM on real images on a CPU (~20 minutes on 2 cores): trains a small DDPM++ (or
//! `--network ddpm`) with the MNIST preset, checkpoints, samples with ancestral sampling, PC, the
//! probability-flow ODE and DPM-Solver++(2M), and reports held-out bits/dim and the digit
//! classifier's metrics (`scoresde::mnist`, docs/reproduce.md).
//!
//! With `--dataset cifar10|mnist|folder --data-dir DIR` it trains DDPM++ from the paper's preset
//! (`--features cuda` on a GPU); with `--checkpoint FILE` it samples a checkpoint into a grid.
//!
//! `cargo run --release --example ddpm -- --help`

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device};
use clap::Parser;
use rand::SeedableRng;
use score_nets::MlpConfig;
use scoresde::images::{self, ImageArgs};
use scoresde::toy::{self, host, AnyResult, ToyArgs};
use sde_core::{ScoreModelFn, Sde, SubVpSde, VpSde};
use sde_solvers::corrector::NoCorrector;
use sde_solvers::ode_sampler::{OdeSampler, OdeSamplerOptions};
use sde_solvers::pc::PcSampler;
use sde_solvers::predictor::{AncestralSamplingPredictor, ReverseDiffusionPredictor};
use sde_solvers::schedule::Schedule;
use sde_train::{DdpmLoss, SdeLoss, SdeLossOptions, Toy2d};

#[derive(Parser, Debug)]
#[command(
    about = "DDPM through the VP SDE: train a noise-prediction model, sample with ancestral sampling and reverse diffusion"
)]
struct Args {
    /// `continuous` (VP/sub-VP DSM with t ~ U(ε, 1)) or `ddpm` (discrete ε-loss, VP only).
    #[arg(long, default_value = "continuous")]
    loss: String,
    /// Weight the continuous loss by g² (likelihood weighting; with `--dataset mnist5k` also
    /// importance-sampled t).
    #[arg(long)]
    likelihood_weighting: bool,
    /// Also sample with a fast sampler, uniform in log-SNR: ddim, ddim-eta1, dpm++2m, dpm++3m,
    /// dpm++2s, sde-dpm++2m, unipc, heun; or `adaptive` (adaptive-step reverse SDE).
    #[arg(long)]
    sampler: Option<String>,
    /// Steps of the `--sampler`.
    #[arg(long, default_value_t = 20)]
    sampler_steps: usize,
    /// Output directory.
    #[arg(long, default_value = "target/examples/ddpm")]
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
    // `--likelihood-weighting` applies to the MNIST-5k run too
    a.images.mnist.likelihood_weighting = a.likelihood_weighting;
    if let Some(done) = images::run_if_requested(&a.images, images::Family::Vp, &a.out, &a.run) {
        return done;
    }
    a.run.apply_quick();
    let toy_kind = toy::parse_toy(&a.run.toy)?;
    // The discrete DDPM loss trains on the 1000-step table, and its labels index that table:
    // the SDE keeps it (N = 1000), whatever `--n-steps` says; the samplers own their step
    // counts (the chain samplers walk the SDE's N, `--sampler` its `--sampler-steps`).
    let n_sde = if a.loss == "ddpm" {
        1000
    } else {
        a.run.n_steps
    };
    if a.loss == "ddpm" && a.run.n_steps != 1000 {
        println!(
            "  --loss ddpm: the SDE keeps the 1000-step table the model is trained on (ancestral \
             sampling and reverse diffusion walk its 1000 steps); use --sampler for fewer steps"
        );
    }
    match a.images.sde.as_deref().unwrap_or("vp") {
        "vp" => run(
            &a,
            toy_kind,
            &VpSde::new(0.1, 20.0, n_sde)?,
            Some(&VpSde::new(0.1, 20.0, n_sde)?),
        ),
        "subvp" => run(
            &a,
            toy_kind,
            &SubVpSde::new(0.1, 20.0, a.run.n_steps)?,
            None,
        ),
        other => Err(format!("unknown --sde `{other}` (vp, subvp)").into()),
    }
}

/// Trains, samples and evaluates under `sde`; `vp` is the same SDE as a `VpSde` when ancestral
/// sampling and the discrete DDPM loss are available (not for sub-VP).
fn run<S: Sde>(a: &Args, toy_kind: Toy2d, sde: &S, vp: Option<&VpSde>) -> AnyResult<()> {
    let run = a.run.training()?;
    let log = a.out.join("train_log.jsonl");
    let t0 = Instant::now();
    let continuous = a.loss != "ddpm";
    println!(
        "DDPM (VP-family SDE, N = {}) on {toy_kind:?}: training with the {} loss for {} steps",
        sde.n(),
        a.loss,
        a.run.steps
    );
    let (model, _vm, summary) = match (a.loss.as_str(), vp) {
        ("continuous", _) => {
            let opts = SdeLossOptions {
                continuous: true,
                likelihood_weighting: a.likelihood_weighting,
                ..Default::default()
            };
            toy::train_mlp(
                &MlpConfig::vp(2),
                SdeLoss::new(sde, opts)?,
                &run,
                Some(&log),
            )?
        }
        ("ddpm", Some(vp)) => {
            // the discrete loss indexes the 1000-step DDPM table of the SDE, as the reference does
            toy::train_mlp(&MlpConfig::vp(2), DdpmLoss::new(vp, true), &run, Some(&log))?
        }
        ("ddpm", None) => {
            return Err("--loss ddpm needs the VP SDE (sub-VP has no DDPM chain)".into())
        }
        (other, _) => return Err(format!("unknown --loss `{other}` (continuous, ddpm)").into()),
    };
    let train_s = t0.elapsed().as_secs_f64();
    let (first, last) = toy::loss_first_last(&summary);
    println!("  loss {first:.4} -> {last:.4} in {train_s:.1} s");

    let mut rng = rand::rngs::StdRng::seed_from_u64(a.run.seed);
    let shape = toy::points_shape(a.run.n_samples);
    let score = ScoreModelFn::new(sde, &model, continuous);
    let mut results = Vec::new();
    // Ancestral sampling (DDPM), VP only.
    if let Some(vp) = vp {
        let vp_score = ScoreModelFn::new(vp, &model, continuous);
        let t = Instant::now();
        let out = PcSampler::new(AncestralSamplingPredictor, NoCorrector).sample(
            vp,
            &vp_score,
            shape.clone(),
            &Device::Cpu,
            DType::F32,
            &mut rng,
        )?;
        results.push((
            "ancestral sampling (DDPM)",
            out.nfe,
            host(&out.x)?,
            t.elapsed().as_secs_f64(),
        ));
    }
    // Reverse diffusion.
    let t = Instant::now();
    let out = PcSampler::new(ReverseDiffusionPredictor::new(false), NoCorrector).sample(
        sde,
        &score,
        shape.clone(),
        &Device::Cpu,
        DType::F32,
        &mut rng,
    )?;
    results.push((
        "reverse diffusion",
        out.nfe,
        host(&out.x)?,
        t.elapsed().as_secs_f64(),
    ));
    // A fast sampler (`--sampler`), uniform in log-SNR from T to 1e-3.
    let fast = match &a.sampler {
        Some(name) => {
            let t = Instant::now();
            let (x, nfe, label) = scoresde::fast::sample_by_name(
                name,
                a.sampler_steps,
                Schedule::UniformLogSnr { sampling_eps: 1e-3 },
                sde,
                &score,
                shape.clone(),
                &mut rng,
            )?;
            Some((label, nfe, host(&x)?, t.elapsed().as_secs_f64()))
        }
        None => None,
    };
    if let Some((label, nfe, x, secs)) = &fast {
        results.push((label.as_str(), *nfe, x.clone(), *secs));
    }
    // Probability-flow trajectories of 32 particles (the discretised ODE: smooth paths).
    let mut paths = Vec::new();
    PcSampler::new(ReverseDiffusionPredictor::new(true), NoCorrector).sample_observed(
        sde,
        &score,
        toy::points_shape(32),
        &Device::Cpu,
        DType::F32,
        &mut rng,
        toy::trajectory_recorder(32, (sde.n() / 200).max(1), sde.n(), &mut paths),
    )?;
    // Probability-flow ODE (adaptive RK45).
    let t = Instant::now();
    let ode = OdeSampler::new(sde, &score, OdeSamplerOptions::default())?.sample(
        &shape,
        &Device::Cpu,
        DType::F32,
        &mut rng,
    )?;
    results.push((
        "probability-flow ODE (RK45)",
        ode.nfe,
        host(&ode.x)?,
        t.elapsed().as_secs_f64(),
    ));

    let data = host(&toy::toy_points(
        toy_kind,
        a.run.n_samples,
        a.run.seed ^ 0xDA7A,
    )?)?;
    let mut json_samplers = serde_json::Map::new();
    for (name, nfe, pts, secs) in &results {
        let q = toy::quality(toy_kind, pts, a.run.seed)?;
        toy::print_quality(name, &q, *nfe, *secs);
        json_samplers.insert(
            name.to_string(),
            serde_json::json!({"nfe": nfe, "quality": q, "seconds": secs}),
        );
    }
    let lik = toy::held_out_likelihood(sde, &score, toy_kind, a.run.n_likelihood(), a.run.seed)?;
    toy::print_likelihood(&lik);

    let range = 4.5;
    let panels: Vec<&[f64]> = results.iter().map(|r| r.2.as_slice()).collect();
    toy::samples_png(&a.out.join("samples.png"), &data, &panels, range)?;
    toy::score_field_png(
        &a.out.join("score_field.png"),
        sde,
        &score,
        &[0.01, 0.1, 0.4],
        &data,
        range,
    )?;
    toy::trajectories_png(&a.out.join("trajectories.png"), &paths, &data, range)?;
    let summary_json = serde_json::json!({
        "example": "ddpm", "sde": if vp.is_some() { "VP" } else { "sub-VP" }, "N": sde.n(), "sampler": a.sampler, "sampler_steps": a.sampler_steps, "toy": a.run.toy,
        "training": {"loss": a.loss, "likelihood_weighting": a.likelihood_weighting, "steps": a.run.steps, "batch": a.run.batch, "lr": a.run.lr, "loss_first": first, "loss_last": last, "seconds": train_s},
        "samplers": json_samplers, "held_out_likelihood": lik,
    });
    std::fs::write(
        a.out.join("summary.json"),
        serde_json::to_string_pretty(&summary_json)?,
    )?;
    let names: Vec<&str> = results.iter().map(|r| r.0).collect();
    println!("wrote samples.png (data | {}), score_field.png (t = 0.01, 0.1, 0.4), trajectories.png (probability-flow paths), summary.json to {}", names.join(" | "), a.out.display());
    Ok(())
}
