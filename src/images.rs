//! The image path of the `smld` and `ddpm` examples: train NCSN++ / DDPM++ from the paper's
//! presets on CIFAR-10, MNIST or a folder of images, or sample a trained (ours, safetensors) or
//! reference (`.pth`) checkpoint into an image grid.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use score_nets::checkpoint::CheckpointWeights;
use score_nets::{NcsnPp, NcsnPpConfig, NetworkConfig, ReferenceConfig, ScoreNet};
use sde_core::{ScoreModelFn, Sde, SubVpSde, VeSde, VpSde};
use sde_solvers::corrector::LangevinCorrector;
use sde_solvers::pc::PcSampler;
use sde_solvers::predictor::ReverseDiffusionPredictor;
use sde_train::{SdeLoss, SdeLossOptions, ShuffledBatches, TrainConfig, Trainer};

use crate::toy::AnyResult;

/// Command-line options of the image path (flattened into the examples' arguments).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ImageArgs {
    /// Train on images: `mnist5k` (embedded, no download), `cifar10` (binary batches), `mnist`
    /// (IDX file) or `folder` (PNG/JPEG).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Where the dataset lives (the `cifar-10-batches-bin` folder, the MNIST images IDX file, or
    /// the image folder).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Sample from this checkpoint (ours: `.safetensors` from training; the reference's: `.pth`).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Network config as the reference's JSON (ml_collections dump); default: the paper's preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Use the raw model weights of a checkpoint instead of the EMA weights.
    #[arg(long)]
    pub model_weights: bool,
    /// Use the deep preset (NCSN++ / DDPM++ continuous deep).
    #[arg(long)]
    pub deep: bool,
    /// Image-path training steps (default: the paper's 1.3 M; the MNIST-5k preset's 1400, about
    /// 12 min on 2 cores; 3600, about 33 min, beats the per-pixel bits/dim baseline and halves
    /// the Fréchet distance, see docs/reproduce.md). The cosine schedule stretches to match.
    #[arg(long)]
    pub train_steps: Option<u64>,
    /// Image-path batch size (default: the paper's 128; the MNIST-5k preset's 64).
    #[arg(long)]
    pub train_batch: Option<usize>,
    /// Images to sample into the grid.
    #[arg(long, default_value_t = 16)]
    pub n_images: usize,
    /// PC sampler steps for images.
    #[arg(long, default_value_t = 1000)]
    pub sample_steps: usize,
    /// `vp` (default for ddpm) or `subvp`.
    #[arg(long)]
    pub sde: Option<String>,
    /// The MNIST-5k run's options (`--dataset mnist5k`).
    #[command(flatten)]
    pub mnist: crate::mnist::MnistArgs,
}

/// Which paper family an example reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SMLD / NCSN++ with the VE SDE.
    Ve,
    /// DDPM / DDPM++ with the VP (or sub-VP) SDE.
    Vp,
}

fn device() -> AnyResult<Device> {
    #[cfg(feature = "cuda")]
    {
        return Ok(Device::new_cuda(0)?);
    }
    #[allow(unreachable_code)]
    Ok(Device::Cpu)
}

fn preset(family: Family, a: &ImageArgs) -> AnyResult<NcsnPpConfig> {
    if let Some(p) = &a.config {
        // a bare ml_collections dump, or one wrapped as `{"config": ...}` (as the test vectors)
        return match ReferenceConfig::from_file(p)?.network()? {
            NetworkConfig::NcsnPp(c) => Ok(c),
            NetworkConfig::Ddpm(_) => {
                Err("the image path runs NCSN++ / DDPM++ (`model.name = ncsnpp`), not DDPM".into())
            }
        };
    }
    let subvp = a.sde.as_deref() == Some("subvp");
    Ok(match (family, a.deep, subvp) {
        (Family::Ve, false, _) => NcsnPpConfig::cifar10_ncsnpp_continuous(),
        (Family::Ve, true, _) => NcsnPpConfig::cifar10_ncsnpp_deep_continuous(),
        (Family::Vp, false, false) => NcsnPpConfig::cifar10_ddpmpp_continuous(),
        (Family::Vp, true, false) => NcsnPpConfig::cifar10_ddpmpp_deep_continuous(),
        (Family::Vp, false, true) => NcsnPpConfig::cifar10_subvp_ddpmpp_continuous(),
        (Family::Vp, true, true) => NcsnPpConfig::cifar10_subvp_ddpmpp_deep_continuous(),
    })
}

/// The examples' entry: runs the image path when `--dataset` or `--checkpoint` was given and
/// returns its result; otherwise prepares the process for the 2-D run
/// ([`crate::toy::single_threaded_candle`]) and returns `None`.
pub fn run_if_requested(
    a: &ImageArgs,
    family: Family,
    out: &Path,
    run_args: &crate::toy::ToyArgs,
) -> Option<AnyResult<()>> {
    if a.dataset.is_some() || a.checkpoint.is_some() {
        Some(run(a, family, out, run_args.seed, run_args.quick))
    } else {
        crate::toy::single_threaded_candle();
        None
    }
}

/// Runs the image path: sampling a checkpoint when `--checkpoint` is given, else training on
/// `--dataset`.
pub fn run(a: &ImageArgs, family: Family, out: &Path, seed: u64, quick: bool) -> AnyResult<()> {
    if a.dataset.as_deref() == Some("mnist5k") {
        if a.checkpoint.is_some() {
            return Err(
                "--dataset mnist5k keeps its checkpoints in <out>/checkpoints: rerun \
                        with the same --out and --resume to sample and evaluate the newest one \
                        (training stops at once when its steps are done)"
                    .into(),
            );
        }
        if a.config.is_some() || a.deep || a.sde.as_deref() == Some("subvp") {
            return Err(
                "--dataset mnist5k runs its own presets (--network ncsnpp|ddpmpp|ddpm); \
                 --config, --deep and --sde subvp apply to the CIFAR-10 / folder path"
                    .into(),
            );
        }
        return crate::mnist::run(
            family,
            &a.mnist,
            a.train_steps,
            a.train_batch,
            out,
            seed,
            quick,
        );
    }
    let cfg = preset(family, a)?;
    // N only matters for sampling (training uses the continuous loss).
    let n = if quick {
        a.sample_steps.min(10)
    } else {
        a.sample_steps
    };
    match family {
        Family::Ve => with_sde(
            &VeSde::new(0.01, cfg_sigma_max(&cfg), n)?,
            a,
            cfg,
            out,
            seed,
            quick,
        ),
        Family::Vp if a.sde.as_deref() == Some("subvp") => {
            with_sde(&SubVpSde::new(0.1, 20.0, n)?, a, cfg, out, seed, quick)
        }
        Family::Vp => with_sde(&VpSde::new(0.1, 20.0, n)?, a, cfg, out, seed, quick),
    }
}

fn cfg_sigma_max(cfg: &NcsnPpConfig) -> f64 {
    cfg.sigmas().first().copied().unwrap_or(50.0)
}

fn with_sde<S: Sde>(
    sde: &S,
    a: &ImageArgs,
    cfg: NcsnPpConfig,
    out: &Path,
    seed: u64,
    quick: bool,
) -> AnyResult<()> {
    let dev = device()?;
    if let Some(ckpt) = &a.checkpoint {
        let model = load_network(ckpt, &cfg, !a.model_weights, &dev)?;
        let n = if quick { a.n_images.min(4) } else { a.n_images };
        return sample_grid(sde, &model, &cfg, n, &dev, seed, &out.join("samples.png"));
    }
    let Some(ds) = &a.dataset else {
        return Err("the image path needs --dataset (or --checkpoint)".into());
    };
    let images = match (ds.as_str(), &a.data_dir) {
        ("cifar10", Some(dir)) => sde_train::load_cifar10_dir(dir, true)?.0,
        ("mnist", Some(dir)) => sde_train::load_mnist_images(dir)?,
        ("folder", Some(dir)) => sde_train::load_image_folder(dir, cfg.image_size)?,
        ("cifar10" | "mnist" | "folder", None) => {
            return Err(format!("--dataset {ds} needs --data-dir").into())
        }
        (other, _) => {
            return Err(
                format!("unknown dataset `{other}` (mnist5k, cifar10, mnist, folder)").into(),
            )
        }
    };
    let mut cfg = cfg;
    let (_, c, h, _) = images.dims4()?;
    cfg.num_channels = c;
    cfg.image_size = h;
    let data = sde_train::scaler(&images, cfg.centered)?;
    let vm = VarMap::new();
    let vb = score_nets::init::seeded_var_builder(&vm, seed, DType::F32, &dev);
    let model = NcsnPp::new(cfg.clone(), vb)?;
    let loss = SdeLoss::new(
        sde,
        SdeLossOptions {
            continuous: true,
            reduce_mean: false,
            ..Default::default()
        },
    )?;
    let steps = if quick {
        2
    } else {
        a.train_steps.unwrap_or(1_300_000)
    };
    let batch = if quick {
        2
    } else {
        a.train_batch.unwrap_or(128)
    };
    let config = TrainConfig {
        n_iters: steps,
        snapshot_freq: 10_000,
        ema_decay: if matches!(cfg.embedding_type, score_nets::EmbeddingType::Fourier) {
            0.999
        } else {
            0.9999
        },
        seed,
        progress: !quick,
        extra: serde_json::to_value(&cfg)?,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(&model, &vm, loss, config)?
        .with_log(out.join("train_log.jsonl"))?
        .with_checkpoint_dir(out.join("checkpoints"))?;
    let mut batches =
        ShuffledBatches::new(data.to_device(&dev)?, batch, seed)?.with_random_flip(true);
    let summary = trainer.run(&mut batches, None)?;
    println!(
        "trained {} steps; last loss {:.4}; checkpoints in {}",
        steps,
        summary.losses.last().copied().unwrap_or(f64::NAN),
        out.join("checkpoints").display()
    );
    Ok(())
}

/// Builds NCSN++ / DDPM++ `cfg` with the weights of `path` (strictly: every key must match).
pub fn load_network(path: &Path, cfg: &NcsnPpConfig, ema: bool, dev: &Device) -> AnyResult<NcsnPp> {
    let net = NetworkConfig::NcsnPp(cfg.clone());
    let is_pth = path.extension().is_some_and(|e| e == "pth" || e == "pt");
    let which = if ema {
        CheckpointWeights::Ema
    } else {
        CheckpointWeights::Model
    };
    let loaded = if is_pth {
        net.load_checkpoint(path, which, DType::F32, dev)?
    } else {
        let tensors = match sde_train::load_checkpoint(path) {
            Ok(ck) => (if ema { ck.ema } else { ck.model }).into_iter().collect(),
            // not a training checkpoint: plain weights
            Err(_) => score_nets::checkpoint::read_safetensors(path)?.0,
        };
        net.load_weights(tensors, &path.display().to_string(), DType::F32, dev)?
    };
    match loaded {
        ScoreNet::NcsnPp(n) => Ok(n),
        ScoreNet::Ddpm(_) => Err("internal: an NCSN++ config built DDPM".into()),
    }
}

/// Samples `n` images with the PC sampler (reverse diffusion + Langevin, snr 0.16 (VE) / 0.27,
/// N = `sde.n()` steps) and writes them as a grid.
pub fn sample_grid<S: Sde>(
    sde: &S,
    model: &NcsnPp,
    cfg: &NcsnPpConfig,
    n: usize,
    dev: &Device,
    seed: u64,
    path: &Path,
) -> AnyResult<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let score = ScoreModelFn::new(sde, model, true);
    let snr = if cfg.centered { 0.27 } else { 0.16 };
    let pc = PcSampler::new(
        ReverseDiffusionPredictor::new(false),
        LangevinCorrector::new(snr, 1)?,
    );
    let shape = (n, cfg.num_channels, cfg.image_size, cfg.image_size);
    let bar = indicatif::ProgressBar::new(sde.n() as u64);
    let out = pc.sample_observed(sde, &score, shape, dev, DType::F32, &mut rng, |_, _, _| {
        bar.inc(1)
    })?;
    bar.finish_and_clear();
    let x: Tensor = sde_train::inverse_scaler(&out.x, cfg.centered)?.clamp(0.0, 1.0)?;
    sde_train::save_image_grid(
        &x.to_device(&Device::Cpu)?,
        (n as f64).sqrt().ceil() as usize,
        path,
    )?;
    println!(
        "sampled {n} images with {} network evaluations: {}",
        out.nfe,
        path.display()
    );
    Ok(())
}
