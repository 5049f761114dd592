//! The MNIST-5k reproduction behind `smld --dataset mnist5k` and `ddpm --dataset mnist5k`:
//! train a small NCSN++ / DDPM++ / DDPM on the 4,000 embedded training digits, checkpoint, sample
//! with the paper's samplers and a fast one, and measure: held-out bits/dim through the
//! probability-flow ODE beside a per-pixel baseline ([`crate::mnist_eval`]), class shares,
//! confidence and Fréchet distance / KID in a digit classifier's features.
//!
//! Everything a run does is set by a [`MnistPreset`] that the command line overrides
//! ([`MnistArgs`]); `--quick` shrinks every stage to CI seconds.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use score_nets::{DdpmConfig, NcsnPpConfig, NetworkConfig};
use sde_core::{ScoreModelFn, VeSde, VpSde};
use sde_train::{
    AdamConfig, BatchSource, LrDecay, SdeLoss, SdeLossOptions, ShuffledBatches, TrainConfig,
};

use crate::images::Family;
use crate::mnist_eval::{self, BitsPerDim, SamplerRun};
use crate::toy::AnyResult;

/// Which network a run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum MnistNetwork {
    /// NCSN++ ([`NcsnPpConfig::mnist_ncsnpp_continuous`]), the SMLD/VE network.
    Ncsnpp,
    /// DDPM++ ([`NcsnPpConfig::mnist_ddpmpp_continuous`]), the VP network of the paper.
    Ddpmpp,
    /// The original DDPM U-Net ([`DdpmConfig::mnist`]: `nf = 16`, 4 GroupNorm groups, i.e. 4
    /// channels a group at the first level and 8 below, as the paper's network has at
    /// `nf = 128`).
    Ddpm,
}

/// Command-line options of the MNIST-5k run (flattened into the examples' arguments); every
/// `None` takes the [`MnistPreset`]'s value.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MnistArgs {
    /// Network of the MNIST run (default: ncsnpp for smld, ddpmpp for ddpm).
    #[arg(long, value_enum)]
    pub network: Option<MnistNetwork>,
    /// Peak learning rate of the image run (preset: 2e-3; `--lr` is the 2-D run's).
    #[arg(long = "image-lr", id = "image_lr")]
    pub lr: Option<f64>,
    /// Linear warm-up steps (preset: 100).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Keep the learning rate constant after the warm-up (the reference) instead of the preset's
    /// cosine annealing to 0.
    #[arg(long)]
    pub constant_lr: bool,
    /// EMA decay (preset: 0.999).
    #[arg(long)]
    pub ema_decay: Option<f64>,
    /// Samples for the digit metrics (preset: 1000).
    #[arg(long)]
    pub n_eval_samples: Option<usize>,
    /// Test images for bits/dim (preset: 50 of the 1,000; `--bpd-images 1000` for all, about
    /// 6 s per image on 2 cores).
    #[arg(long)]
    pub bpd_images: Option<usize>,
    /// Steps N of the paper's samplers (PC, ancestral, annealed Langevin) (preset: 200).
    #[arg(long)]
    pub paper_steps: Option<usize>,
    /// Which of the paper's samplers run, comma-separated: `ald`, `pc`, `ode` for smld,
    /// `ancestral`, `pc`, `ode` for ddpm, or `none` (preset: all three).
    #[arg(long)]
    pub paper_samplers: Option<String>,
    /// Samples each paper sampler draws for its digit metrics, at least its 8×8 grid (preset:
    /// 64; 1000 gives them the fast sampler's full report: PC at N = 200 then takes about
    /// 18 min on 2 cores).
    #[arg(long)]
    pub paper_eval_samples: Option<usize>,
    /// The fast sampler whose 1,000 samples get the digit metrics: ddim, ddim-eta1, dpm++2m,
    /// dpm++3m, dpm++2s, sde-dpm++2m, unipc, heun (preset: sde-dpm++2m, SDE-DPM-Solver++(2M)).
    #[arg(long)]
    pub fast_sampler: Option<String>,
    /// Steps of the fast sampler (preset: 25; uniform in log-SNR for VP, EDM's ρ = 7 schedule for
    /// VE).
    #[arg(long)]
    pub fast_steps: Option<usize>,
    /// Base channel count `nf` of the network (preset: 16; for DDPM a multiple of 4, its
    /// GroupNorms keeping 4 channels a group).
    #[arg(long)]
    pub nf: Option<usize>,
    /// Train with the likelihood weighting λ(t) = g(t)² and importance-sampled t (Song et al.
    /// 2021, "Maximum likelihood training of score-based diffusion models"), which bounds the
    /// bits/dim, instead of the preset's λ(t) = σ(t)². Set by `ddpm --likelihood-weighting`.
    #[arg(skip)]
    pub likelihood_weighting: bool,
    /// Train on the 8-bit digits as they are instead of uniformly dequantised ones (the
    /// reference's `data.uniform_dequantization = False`).
    #[arg(long)]
    pub no_uniform_dequantization: bool,
    /// Resume from the newest checkpoint in `<out>/checkpoints` if there is one.
    #[arg(long)]
    pub resume: bool,
}

/// Everything an MNIST-5k run does, sized for 2 CPU cores (~20 minutes in release).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MnistPreset {
    /// The network.
    pub network: MnistNetwork,
    /// Base channel count of the network (`model.nf`).
    pub nf: usize,
    /// Optimiser (Adam, warm-up, clipping, decay).
    pub optim: AdamConfig,
    /// EMA decay of the weights that sample.
    pub ema_decay: f64,
    /// Training steps.
    pub n_iters: u64,
    /// Training batch size.
    pub batch: usize,
    /// Train on uniformly dequantised digits, $(255x + u)/256$ with fresh $u \sim U(0, 1)$ per
    /// pixel and step (the reference's `data.uniform_dequantization`), the distribution the
    /// held-out bits/dim evaluates the model on. On the 8-bit values themselves (80% of MNIST's
    /// pixels exactly 0) the model learns near-point masses that a dequantised test pixel
    /// misses.
    pub uniform_dequantization: bool,
    /// λ(t) = g(t)² with importance-sampled t instead of λ(t) = σ(t)².
    pub likelihood_weighting: bool,
    /// Samples for the digit metrics.
    pub n_eval_samples: usize,
    /// Test images for bits/dim.
    pub bpd_images: usize,
    /// N of the paper's samplers.
    pub paper_steps: usize,
    /// Which paper samplers run, by [`crate::mnist_eval::ImageSampler::file_name`].
    pub paper_samplers: Vec<String>,
    /// Samples each paper sampler draws for its digit metrics (at least its grid).
    pub paper_eval_samples: usize,
    /// The fast sampler (a `SamplerKind` name).
    pub fast_sampler: String,
    /// Steps of the fast sampler.
    pub fast_steps: usize,
    /// Batch size of sampling and likelihood evaluation.
    pub eval_batch: usize,
}

impl MnistPreset {
    /// The preset of `family` with `network` (default NCSN++ for VE, DDPM++ for VP): Adam
    /// 2e-3 with 100 warm-up steps and cosine annealing, clipping at 1, EMA 0.999, 1400 steps of
    /// batch 64 on uniformly dequantised digits, 1000 evaluation samples from SDE-DPM-Solver++(2M)
    /// in 25 steps, 50 bits/dim images, N = 200 for the paper's samplers.
    pub fn new(family: Family, network: Option<MnistNetwork>) -> Self {
        let network = network.unwrap_or(match family {
            Family::Ve => MnistNetwork::Ncsnpp,
            Family::Vp => MnistNetwork::Ddpmpp,
        });
        let n_iters = 1400;
        Self {
            network,
            nf: 16,
            optim: AdamConfig {
                lr: 2e-3,
                warmup: 100,
                grad_clip: Some(1.0),
                decay: LrDecay::Cosine {
                    total_steps: n_iters,
                },
                ..AdamConfig::default()
            },
            ema_decay: 0.999,
            n_iters,
            batch: 64,
            uniform_dequantization: true,
            likelihood_weighting: false,
            n_eval_samples: 1000,
            bpd_images: 50,
            paper_steps: 200,
            paper_samplers: crate::mnist_eval::family_paper_samplers(family)
                .iter()
                .map(crate::mnist_eval::ImageSampler::file_name)
                .collect(),
            paper_eval_samples: 64,
            // stochastic: the ODE samplers (dpm++2m, heun) leave a fifth of the samples of a
            // briefly trained model with speckled backgrounds that no later step removes
            fast_sampler: "sde-dpm++2m".into(),
            fast_steps: 25,
            eval_batch: 100,
        }
    }

    /// The CI-sized version: 3 steps of batch 4, 8 samples, 2 bits/dim images, N = 25.
    pub fn quick(mut self) -> Self {
        self.n_iters = 3;
        self.batch = 4;
        self.optim.warmup = 1;
        self.optim.decay = LrDecay::Cosine { total_steps: 3 };
        self.n_eval_samples = 8;
        self.bpd_images = 2;
        self.paper_steps = 25; // the VP chain needs β_max / N < 1
        self.paper_eval_samples = 8;
        self.fast_steps = 3;
        self.eval_batch = 4;
        self
    }

    /// Applies the command line: `train_steps` / `train_batch` from the image arguments and
    /// every option of `a` that is set. The cosine decay follows the step count.
    pub fn with_args(
        mut self,
        a: &MnistArgs,
        train_steps: Option<u64>,
        train_batch: Option<usize>,
    ) -> Self {
        if let Some(n) = train_steps {
            self.n_iters = n;
        }
        if let Some(b) = train_batch {
            self.batch = b;
        }
        if let Some(nf) = a.nf {
            self.nf = nf;
        }
        if let Some(lr) = a.lr {
            self.optim.lr = lr;
        }
        if let Some(w) = a.warmup {
            self.optim.warmup = w;
        }
        self.optim.decay = if a.constant_lr {
            LrDecay::Constant
        } else {
            LrDecay::Cosine {
                total_steps: self.n_iters.max(self.optim.warmup + 1),
            }
        };
        if a.likelihood_weighting {
            self.likelihood_weighting = true;
        }
        if a.no_uniform_dequantization {
            self.uniform_dequantization = false;
        }
        if let Some(e) = a.ema_decay {
            self.ema_decay = e;
        }
        if let Some(n) = a.n_eval_samples {
            self.n_eval_samples = n;
        }
        if let Some(n) = a.bpd_images {
            self.bpd_images = n;
        }
        if let Some(n) = a.paper_steps {
            self.paper_steps = n;
        }
        if let Some(list) = &a.paper_samplers {
            self.paper_samplers = match list.trim() {
                "none" => Vec::new(),
                l => l.split(',').map(|s| s.trim().to_string()).collect(),
            };
        }
        if let Some(n) = a.paper_eval_samples {
            self.paper_eval_samples = n;
        }
        if let Some(s) = &a.fast_sampler {
            self.fast_sampler = s.clone();
        }
        if let Some(n) = a.fast_steps {
            self.fast_steps = n;
        }
        self
    }

    /// The network configuration.
    pub fn network_config(&self) -> NetworkConfig {
        let nf = self.nf;
        match self.network {
            MnistNetwork::Ncsnpp => NetworkConfig::NcsnPp(NcsnPpConfig {
                nf,
                ..NcsnPpConfig::mnist_ncsnpp_continuous()
            }),
            MnistNetwork::Ddpmpp => NetworkConfig::NcsnPp(NcsnPpConfig {
                nf,
                ..NcsnPpConfig::mnist_ddpmpp_continuous()
            }),
            // 4 channels a GroupNorm group at the first level, as the preset (and the paper's
            // nf = 128 with 32 groups) has, whatever `--nf` is
            MnistNetwork::Ddpm => NetworkConfig::Ddpm(DdpmConfig {
                nf,
                num_groups: (nf / 4).max(1),
                ..DdpmConfig::mnist()
            }),
        }
    }
}

/// Whether the network takes inputs in [−1, 1] (`data.centered`).
fn centered(net: &NetworkConfig) -> bool {
    match net {
        NetworkConfig::NcsnPp(c) => c.centered,
        NetworkConfig::Ddpm(c) => c.centered,
    }
}

/// σ_max of a VE network's `sigmas` buffer.
fn sigma_max(net: &NetworkConfig) -> f64 {
    match net {
        NetworkConfig::NcsnPp(c) => c.sigma_max,
        NetworkConfig::Ddpm(c) => c.sigma_max,
    }
}

/// What identifies a trained MNIST model in its checkpoints' `extra` config: a `--resume` must
/// match it, while the evaluation settings may change between a run and its resume.
/// `likelihood_weighting` is written only when on, so checkpoints from before the flag existed
/// (unweighted) still resume.
fn mnist_run_identity(network: &str, preset: &MnistPreset) -> serde_json::Value {
    let mut id = serde_json::json!({
        "dataset": "mnist5k",
        "network": network,
        "uniform_dequantization": preset.uniform_dequantization,
    });
    if preset.likelihood_weighting {
        id["likelihood_weighting"] = serde_json::Value::Bool(true);
    }
    id
}

/// Runs the whole MNIST-5k reproduction into `out`: train, checkpoint, sample, evaluate, and
/// write `samples.png` (the fast sampler's 8×8 grid), `samples_<sampler>.png` per sampler,
/// `loss.png`, `train_log.jsonl`, `checkpoints/` and `summary.json`.
pub fn run(
    family: Family,
    a: &MnistArgs,
    train_steps: Option<u64>,
    train_batch: Option<usize>,
    out: &Path,
    seed: u64,
    quick: bool,
) -> AnyResult<()> {
    let mut preset = MnistPreset::new(family, a.network);
    if quick {
        preset = preset.quick();
    }
    let preset = preset.with_args(a, train_steps, train_batch);
    // refuse an unknown sampler before training, not after
    if let Err(e) = preset
        .fast_sampler
        .parse::<sde_solvers::samplers::SamplerKind>()
    {
        return Err(format!("--fast-sampler {}: {e}", preset.fast_sampler).into());
    }
    mnist_eval::paper_samplers(family, &preset)?;
    let net = preset.network_config();
    match (family, preset.network) {
        (Family::Ve, MnistNetwork::Ncsnpp)
        | (Family::Vp, MnistNetwork::Ddpmpp | MnistNetwork::Ddpm) => {}
        (Family::Ve, _) => return Err("smld (VE) trains NCSN++: use `--network ncsnpp`".into()),
        (Family::Vp, _) => {
            return Err("ddpm (VP) trains DDPM++ or DDPM: use `--network ddpmpp` or `ddpm`".into())
        }
    }
    // the paper's samplers walk the SDE's N = --paper-steps (the VP chain's betas β_max / N
    // must lie in (0, 1)): name the flag, not the SDE parameter, when it is refused
    let paper_steps = |e: sde_core::Error| {
        format!(
            "--paper-steps {}: the paper's samplers' discretisation is refused: {e}",
            preset.paper_steps
        )
    };
    match family {
        Family::Ve => with_sde(
            &VeSde::new(0.01, sigma_max(&net), preset.paper_steps).map_err(paper_steps)?,
            family,
            &preset,
            &net,
            a.resume,
            out,
            seed,
        ),
        Family::Vp => with_sde(
            &VpSde::new(0.1, 20.0, preset.paper_steps).map_err(paper_steps)?,
            family,
            &preset,
            &net,
            a.resume,
            out,
            seed,
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn with_sde<S: sde_core::AncestralSde + Sync>(
    sde: &S,
    family: Family,
    preset: &MnistPreset,
    net: &NetworkConfig,
    resume: bool,
    out: &Path,
    seed: u64,
) -> AnyResult<()> {
    let dev = Device::Cpu;
    let (train, _) = sde_train::mnist5k(sde_train::Split::Train)?;
    let (test, _) = sde_train::mnist5k(sde_train::Split::Test)?;
    let centered = centered(net);
    println!(
        "MNIST-5k ({} train / {} test digits{}), {:?} under {}: {} steps of batch {}, Adam \
         {:.0e} (warm-up {}, {:?}), EMA {}",
        train.dim(0)?,
        test.dim(0)?,
        if preset.uniform_dequantization {
            ", uniformly dequantised"
        } else {
            ""
        },
        preset.network,
        match family {
            Family::Ve => "the VE SDE (SMLD)",
            Family::Vp => "the VP SDE (DDPM)",
        },
        preset.n_iters,
        preset.batch,
        preset.optim.lr,
        preset.optim.warmup,
        preset.optim.decay,
        preset.ema_decay
    );

    // ---- train ----
    let t0 = Instant::now();
    let vm = VarMap::new();
    let vb = score_nets::init::seeded_var_builder(&vm, seed, DType::F32, &dev);
    let model = net.build(vb)?;
    let n_params: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
    println!("  {n_params} parameters");
    let loss = SdeLoss::new(
        sde,
        SdeLossOptions {
            continuous: true,
            reduce_mean: false,
            likelihood_weighting: preset.likelihood_weighting,
            importance_sampling: preset.likelihood_weighting,
            ..Default::default()
        },
    )?;
    let config = TrainConfig {
        n_iters: preset.n_iters,
        log_freq: 1,
        snapshot_freq: 500,
        ema_decay: preset.ema_decay,
        optim: preset.optim.clone(),
        seed,
        progress: true,
        extra: mnist_run_identity(&format!("{net:?}"), preset),
        ..TrainConfig::default()
    };
    let ckpt_dir = out.join("checkpoints");
    let log_path = out.join("train_log.jsonl");
    if !resume {
        // a fresh run: the log and checkpoints of an earlier run would mix with this one
        let _ = std::fs::remove_file(&log_path);
        let _ = std::fs::remove_dir_all(&ckpt_dir);
    }
    let mut trainer = sde_train::Trainer::new(&model, &vm, loss, config)?
        .with_log(&log_path)?
        .with_checkpoint_dir(&ckpt_dir)?;
    if resume {
        if let Some(latest) = sde_train::latest_checkpoint(&ckpt_dir)? {
            trainer.resume(&latest)?;
            println!(
                "  resumed from {} (step {})",
                latest.display(),
                trainer.step()
            );
        }
    }
    let summary = if preset.uniform_dequantization {
        // fresh dequantisation noise from the step's data generator (seeded by step, so a
        // resumed run draws what the uninterrupted one drew)
        let mut digits = ShuffledBatches::new(train.clone(), preset.batch, seed)?;
        let mut batches = |step: u64, rng: &mut dyn rand::RngCore| {
            let b = digits.batch(step, rng)?;
            sde_train::scaler(&sde_train::uniform_dequantize(&b, rng)?, centered)
        };
        trainer.run(&mut batches, None)?
    } else {
        let data = sde_train::scaler(&train, centered)?;
        trainer.run(&mut ShuffledBatches::new(data, preset.batch, seed)?, None)?
    };
    let train_s = t0.elapsed().as_secs_f64();
    let losses = mnist_eval::read_losses(&log_path)?;
    mnist_eval::loss_png(&out.join("loss.png"), &losses)?;
    let (first, last) = mnist_eval::loss_first_last(&losses);
    println!(
        "  trained in {train_s:.0} s: loss {first:.1} -> {last:.1} (mean of the first / last \
         10% of steps); {} checkpoints in {}",
        summary.checkpoints.len(),
        ckpt_dir.display()
    );
    // Sampling uses the EMA weights, as the reference.
    trainer.ema_mut().swap()?;
    drop(trainer);
    // the newest checkpoint (this run's last, or the one a finished run resumed from)
    let ckpt_hash = sde_train::latest_checkpoint(&ckpt_dir)?
        .map(|p| mnist_eval::file_sha256(&p))
        .transpose()?;

    // ---- sample ----
    let score = ScoreModelFn::new(sde, &model, true);
    let mut runs: Vec<SamplerRun> = Vec::new();
    let grid = 64.min(preset.n_eval_samples.max(4));
    let n_paper = preset.paper_eval_samples.max(grid);
    for s in &mnist_eval::paper_samplers(family, preset)? {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5A3B);
        let run = mnist_eval::sample_images(
            s,
            sde,
            &score,
            n_paper,
            preset.eval_batch,
            centered,
            &mut rng,
        )?;
        sde_train::save_image_grid(
            &run.images.narrow(0, 0, grid)?,
            8,
            out.join(format!("samples_{}.png", s.file_name())),
        )?;
        runs.push(run);
    }
    // The fast sampler: the 8×8 grid and the digit metrics on n_eval_samples.
    let fast = mnist_eval::fast_sampler(family, preset, sde)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xFA57);
    let fast_run = mnist_eval::sample_images(
        &fast,
        sde,
        &score,
        preset.n_eval_samples,
        preset.eval_batch,
        centered,
        &mut rng,
    )?;
    let grid_images = fast_run.images.narrow(0, 0, grid)?;
    sde_train::save_image_grid(&grid_images, 8, out.join("samples.png"))?;
    sde_train::save_image_grid(
        &grid_images,
        8,
        out.join(format!("samples_{}.png", fast.file_name())),
    )?;
    runs.push(fast_run);

    // ---- evaluate ----
    let digits = mnist_eval::DigitEval::new(&train, &test)?;
    let mut sampler_json = serde_json::Map::new();
    for r in &runs {
        let report = digits.report(&r.images)?;
        mnist_eval::print_run(r, &report);
        sampler_json.insert(r.name.clone(), r.to_json(&serde_json::to_value(&report)?)?);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xB1D5);
    let bpd: BitsPerDim = mnist_eval::bits_per_dim(
        sde,
        &score,
        &test,
        &train,
        preset.bpd_images,
        preset.eval_batch,
        centered,
        &mut rng,
    )?;
    println!(
        "  held-out bits/dim ({} test images, probability-flow ODE, 8-bit uniform \
         dequantisation): {:.3} ± {:.3}; per-pixel independent baselines fitted on the train set: \
         histogram {:.3}, Gaussian {:.3}",
        bpd.n, bpd.mean, bpd.std_err, bpd.pixel_histogram, bpd.pixel_gaussian
    );
    let total_s = t0.elapsed().as_secs_f64();
    let summary_json = serde_json::json!({
        "example": match family { Family::Ve => "smld", Family::Vp => "ddpm" },
        "dataset": "mnist5k",
        "sde": format!("{:?}", family),
        "preset": preset,
        "seed": seed,
        "checkpoint_sha256": ckpt_hash,
        "training": {"steps": preset.n_iters, "loss_first": first, "loss_last": last, "seconds": train_s},
        "samplers": sampler_json,
        "fast_sampler": fast.name(),
        "bits_per_dim": bpd,
        "seconds_total": total_s,
    });
    crate::report::write_summary(out, &summary_json)?;
    println!(
        "wrote samples.png ({} grid), samples_<sampler>.png, loss.png, summary.json to {} in \
         {total_s:.0} s",
        fast.name(),
        out.display()
    );
    Ok(())
}

/// `x` scaled back to [0, 1] and clamped.
pub(crate) fn to_unit(x: &Tensor, centered: bool) -> AnyResult<Tensor> {
    Ok(sde_train::inverse_scaler(x, centered)?.clamp(0.0, 1.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_identity_names_likelihood_weighting_only_when_on() {
        let mut preset = MnistPreset::new(Family::Vp, None);
        let plain = mnist_run_identity("net", &preset);
        assert!(plain.get("likelihood_weighting").is_none());
        assert_eq!(plain["uniform_dequantization"], true);
        preset.likelihood_weighting = true;
        let weighted = mnist_run_identity("net", &preset);
        assert_eq!(weighted["likelihood_weighting"], true);
        assert_ne!(plain, weighted);
    }
}
