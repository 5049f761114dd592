//! Evaluates a score model the way the paper's tables do: K samples drawn in resumable shards
//! with per-sample seeds, scored by FID / Inception Score / KID against a reference (a
//! statistics file, an image folder or a data set), and bits/dim of a data set through the
//! probability-flow ODE; everything lands in `summary.json` with n, seeds and the sha256 of the
//! checkpoint and of the feature network's weights.
//!
//! ```text
//! # FID / IS / KID of 50,000 samples against CIFAR-10's training statistics (pytorch-fid's file)
//! evaluate --checkpoint ckpt.pth --config cifar10_ncsnpp_continuous.json \
//!          --inception pt_inception-2015-12-05-6726825d.pth --ref cifar10_train_stats.npz \
//!          --n-samples 50000
//! # MNIST: distances in the embedded digit classifier's features, held-out bits/dim
//! evaluate --checkpoint runs/ddpm/checkpoints/checkpoint_final.safetensors --features digits \
//!          --ref mnist5k:test --bpd-data mnist5k:test
//! # Reference statistics of a data set or an image folder (no checkpoint needed)
//! evaluate --inception pt_inception.pth --ref cifar10:train --data-dir cifar-10-batches-bin \
//!          --write-stats cifar10_train.npz
//! ```
//! A killed run started again with the same `--out` resumes where it stopped (the shards
//! under `samples/` and `bpd/`). `cargo run --release --example evaluate -- --help`.

use std::cell::RefCell;
use std::error::Error;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use clap::{Parser, ValueEnum};
use rand::SeedableRng;
use score_nets::checkpoint::CheckpointWeights;
use score_nets::{
    CorrectorName, EmbeddingType, NcsnPpConfig, NetworkConfig, PredictorName, ReferenceConfig,
    ReferenceSde, SamplingSettings, ScoreNet,
};
use sde_core::noise::PerSampleNoise;
use sde_core::{ScoreModelFn, Sde, SubVpSde, VeSde, VpSde};
use sde_eval::inception::sha256_file;
use sde_eval::{
    bits_per_dim_sharded, frechet_distance, kid, sample_sharded, BpdPlan, DigitClassifier,
    FeatureExtractor, FeatureStats, Features, FidInceptionV3, GaussianStats, KidOptions, Metrics,
    Progress, ShardPlan, StatsFormat, Summary,
};
use sde_solvers::corrector::CorrectorKind;
use sde_solvers::driver::Sampler;
use sde_solvers::likelihood::{
    DivergenceEstimator, HutchinsonProbe, Likelihood, LikelihoodOptions,
};
use sde_solvers::ode::{ErrorNorm, OdeMethod, Rk45Options};
use sde_solvers::ode_sampler::{OdeSampler, OdeSamplerOptions};
use sde_solvers::pc::PcSampler;
use sde_solvers::predictor::PredictorKind;
use sde_solvers::samplers::SamplerKind;
use sde_solvers::schedule::Schedule;

type AnyResult<T> = Result<T, Box<dyn Error>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SdeName {
    Ve,
    Vp,
    Subvp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MetricName {
    Fid,
    Is,
    Kid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FeatureKind {
    /// pytorch-fid's Inception-v3 (`--inception` weight file): FID / IS / KID.
    Inception,
    /// The embedded MNIST digit classifier (28×28 grayscale): distances in its features.
    Digits,
}

#[derive(Parser, Debug)]
#[command(
    about = "FID / IS / KID of a checkpoint's samples (sharded, resumable) and bits/dim of a data set"
)]
struct Args {
    /// Score network checkpoint: ours (`.safetensors` from sde-train, or plain weights) or the
    /// reference's (`.pth`).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Network config: the reference's JSON dump (needed for `.pth`), or an NCSN++ config as
    /// JSON; default: the config stored in our checkpoint.
    #[arg(long)]
    config: Option<PathBuf>,
    /// SDE; default: the reference config's, else VE for Fourier-embedding NCSN++, VP otherwise.
    #[arg(long, value_enum)]
    sde: Option<SdeName>,
    /// Use the raw model weights instead of the EMA weights.
    #[arg(long)]
    model_weights: bool,
    /// Samples K to draw and score (0: none, e.g. for bits/dim only).
    #[arg(long, default_value_t = 1000)]
    n_samples: u64,
    /// Samples per shard file.
    #[arg(long, default_value_t = 250)]
    shard_size: u64,
    /// Samples (or data points) per network call.
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    /// `pc` (predictor-corrector), `ode` (probability flow, RK45), or a fast sampler: ddim,
    /// ddim-eta1, dpm++2m, dpm++3m, dpm++2s, sde-dpm++2m, unipc, heun.
    #[arg(long, default_value = "pc")]
    sampler: String,
    /// Sampling steps: the SDE's N for `pc` (default: the config's), the step count of a fast
    /// sampler (default 50).
    #[arg(long)]
    steps: Option<usize>,
    /// PC predictor: reverse_diffusion, euler_maruyama or none (default: the config's; VE:
    /// reverse_diffusion, VP: euler_maruyama).
    #[arg(long)]
    predictor: Option<String>,
    /// PC corrector: langevin, ald or none (default: the config's; VE: langevin, VP: none).
    #[arg(long)]
    corrector: Option<String>,
    /// Corrector signal-to-noise ratio (default: the config's, else 0.16).
    #[arg(long)]
    snr: Option<f64>,
    /// Seed of the per-sample noise (sample i depends on (seed, i) only).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Feature network of the metrics.
    #[arg(long, value_enum, default_value = "inception")]
    features: FeatureKind,
    /// pytorch-fid's weight file (`pt_inception-2015-12-05-6726825d.pth`; zip or legacy torch
    /// format, or a compact safetensors file). Only this file gives FIDs comparable with papers.
    #[arg(long)]
    inception: Option<PathBuf>,
    /// Reference: a statistics file (`.npz` as pytorch-fid's, or ours `.safetensors`), an image
    /// folder, or a data set `mnist5k[:train|:test]`, `cifar10[:train|:test]` (with
    /// `--data-dir`), `mnist` (IDX file in `--data-dir`). KID needs images, not a statistics file.
    #[arg(long)]
    r#ref: Option<String>,
    /// Where `cifar10` / `mnist` data live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Write the reference's feature statistics here (`.npz` or `.safetensors`); without a
    /// checkpoint, that is all the run does.
    #[arg(long)]
    write_stats: Option<PathBuf>,
    /// Side images of a folder are resized to (default: the model's image size, else 32).
    #[arg(long)]
    image_size: Option<usize>,
    /// Inception Score splits.
    #[arg(long, default_value_t = 10)]
    is_splits: usize,
    /// Metrics of the samples, comma-separated: fid, is, kid (FID of 2048-d Inception features
    /// costs two 2048 × 2048 symmetric eigendecompositions, tens of seconds on one core).
    #[arg(long, default_value = "fid,is,kid", value_delimiter = ',')]
    metrics: Vec<MetricName>,
    /// KID subsets.
    #[arg(long, default_value_t = 100)]
    kid_subsets: usize,
    /// KID subset size (clamped to the set sizes).
    #[arg(long, default_value_t = 1000)]
    kid_subset_size: usize,
    /// bits/dim of this data set (same syntax as `--ref`, no statistics file), 8-bit uniform
    /// dequantisation, through the probability-flow ODE.
    #[arg(long)]
    bpd_data: Option<String>,
    /// Only the first N data points of `--bpd-data`.
    #[arg(long)]
    bpd_n: Option<u64>,
    /// Hutchinson probes per data point.
    #[arg(long, default_value_t = 1)]
    bpd_probes: usize,
    /// Evaluations per data point (fresh dequantisation and probes; the reference's
    /// `bpd_num_repeats`).
    #[arg(long, default_value_t = 1)]
    bpd_repeats: u64,
    /// RK45 tolerance (rtol = atol) of the likelihood (and of `--sampler ode`).
    #[arg(long, default_value_t = 1e-5)]
    tol: f64,
    /// Output folder: `samples/` and `bpd/` shards, `samples.png`, `summary.json`.
    #[arg(long, default_value = "target/examples/evaluate")]
    out: PathBuf,
    /// A CI-sized run: at most 8 samples in shards of 4, 5 sampling steps, 4 bits/dim points.
    #[arg(long)]
    quick: bool,
}

/// The feature network, with the channel conversion images need for it (grayscale images are
/// repeated to RGB for Inception; RGB images are averaged to gray for the digit classifier).
struct Extractor {
    inner: Box<dyn FeatureExtractor>,
    channels: usize,
}

impl FeatureExtractor for Extractor {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn num_classes(&self) -> Option<usize> {
        self.inner.num_classes()
    }
    fn extract(&self, images: &Tensor) -> sde_eval::Result<Features> {
        let c = images.dims().get(1).copied().unwrap_or(0);
        let x = match (c, self.channels) {
            (1, 3) => images.repeat((1, 3, 1, 1))?,
            (3, 1) => images.mean_keepdim(1)?,
            _ => images.clone(),
        };
        self.inner.extract(&x)
    }
    fn name(&self) -> String {
        self.inner.name()
    }
    fn weights_sha256(&self) -> Option<String> {
        self.inner.weights_sha256()
    }
}

fn extractor(a: &Args, dev: &Device) -> AnyResult<Extractor> {
    Ok(match a.features {
        FeatureKind::Inception => {
            let path = a.inception.as_ref().ok_or(
                "--features inception needs --inception PATH (pytorch-fid's \
                 pt_inception-2015-12-05-6726825d.pth); or use --features digits for MNIST",
            )?;
            Extractor {
                inner: Box::new(FidInceptionV3::load(path, dev)?),
                channels: 3,
            }
        }
        FeatureKind::Digits => Extractor {
            inner: Box::new(DigitClassifier::embedded(dev)?),
            channels: 1,
        },
    })
}

/// Images `[N, C, H, W]` in [0, 1] named by `spec` (see `--ref`), and a description.
fn load_images(spec: &str, a: &Args, size: usize) -> AnyResult<(Tensor, String)> {
    let p = Path::new(spec);
    if p.is_dir() {
        let x = sde_train::load_image_folder(p, size)?;
        return Ok((x, format!("image folder {spec} (resized to {size}×{size})")));
    }
    let (name, split) = spec.split_once(':').unwrap_or((spec, "test"));
    let train = match split {
        "train" => true,
        "test" => false,
        other => return Err(format!("unknown split `{other}` in `{spec}` (train, test)").into()),
    };
    let dir = || {
        a.data_dir
            .as_ref()
            .ok_or_else(|| format!("`{spec}` needs --data-dir"))
    };
    let x = match name {
        "mnist5k" => {
            let s = if train {
                sde_train::Split::Train
            } else {
                sde_train::Split::Test
            };
            sde_train::mnist5k(s)?.0
        }
        "cifar10" => sde_train::load_cifar10_dir(dir()?, train)?.0,
        "mnist" => sde_train::load_mnist_images(dir()?)?,
        other => {
            return Err(format!(
                "`{other}` is neither a file, a folder nor a data set (mnist5k, cifar10, mnist)"
            )
            .into())
        }
    };
    Ok((x, format!("data set {name}, {split} split")))
}

/// Features (and their streamed statistics) of `images`, in batches, with a progress bar.
fn featurise(
    ex: &Extractor,
    images: &Tensor,
    batch: usize,
    progress: bool,
) -> AnyResult<(Tensor, FeatureStats)> {
    let n = images.dim(0)?;
    let bar = if progress {
        indicatif::ProgressBar::new(n as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_message("reference features");
    let mut stats = FeatureStats::new(ex.dim());
    let mut parts = Vec::new();
    for lo in (0..n).step_by(batch.max(1)) {
        let b = (n - lo).min(batch.max(1));
        let f = ex
            .extract(&images.narrow(0, lo, b)?)?
            .features
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        stats.update(&f)?;
        parts.push(f);
        bar.inc(b as u64);
    }
    bar.finish_and_clear();
    Ok((Tensor::cat(&parts, 0)?, stats))
}

/// What the reference gives: statistics always, raw features when it is made of images.
struct Reference {
    stats: GaussianStats,
    features: Option<Tensor>,
    description: String,
}

fn reference(a: &Args, ex: &Extractor, size: usize) -> AnyResult<Option<Reference>> {
    let Some(spec) = &a.r#ref else {
        return Ok(None);
    };
    let p = Path::new(spec);
    if p.is_file() {
        let stats = GaussianStats::load(p)?;
        if stats.dim() != ex.dim() {
            return Err(format!(
                "statistics file {spec} has dimension {}, the {} features {}",
                stats.dim(),
                ex.name(),
                ex.dim()
            )
            .into());
        }
        return Ok(Some(Reference {
            stats,
            features: None,
            description: format!("statistics file {spec} (sha256 {})", sha256_file(p)?),
        }));
    }
    let (images, description) = load_images(spec, a, size)?;
    let n_max = if a.quick { 16 } else { usize::MAX };
    let n = images.dim(0)?.min(n_max);
    let images = images.narrow(0, 0, n)?;
    println!("reference: {description}, {n} images");
    let (features, fs) = featurise(ex, &images, a.batch_size, !a.quick)?;
    Ok(Some(Reference {
        stats: GaussianStats::from_feature_stats(&fs)?,
        features: Some(features),
        description,
    }))
}

/// The score network with its SDE, label convention and data geometry.
struct Model {
    net: ScoreNet,
    sde: AnySde,
    continuous: bool,
    channels: usize,
    size: usize,
    centered: bool,
    sampling: Option<SamplingSettings>,
    sha256: String,
}

enum AnySde {
    Ve(VeSde),
    Vp(VpSde),
    SubVp(SubVpSde),
}

/// The network config: `--config` (reference dump or NCSN++ JSON), else the one our
/// checkpoint stores (`TrainConfig.extra`, as the config itself or under a member).
fn network_config(
    a: &Args,
    stored: Option<&serde_json::Value>,
) -> AnyResult<(NetworkConfig, Option<ReferenceConfig>)> {
    let from_json = |v: &serde_json::Value| -> Option<(NetworkConfig, Option<ReferenceConfig>)> {
        if let Ok(r) = ReferenceConfig::from_json(v) {
            if let Ok(n) = r.network() {
                return Some((n, Some(r)));
            }
        }
        serde_json::from_value::<NcsnPpConfig>(v.clone())
            .ok()
            .map(|c| (NetworkConfig::NcsnPp(c), None))
    };
    if let Some(p) = &a.config {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p)?)?;
        return from_json(&v).ok_or_else(|| {
            format!(
                "{}: neither a reference config dump nor an NCSN++ config",
                p.display()
            )
            .into()
        });
    }
    let extra = stored.and_then(|c| c.get("extra"));
    let candidates = extra.into_iter().flat_map(|e| {
        std::iter::once(e).chain(
            ["model", "network", "net", "config", "ncsnpp"]
                .into_iter()
                .filter_map(move |k| e.get(k)),
        )
    });
    for c in candidates {
        if let Some(found) = from_json(c) {
            return Ok(found);
        }
    }
    Err("no network config: pass --config (the reference's JSON dump, or an NCSN++ config)".into())
}

fn load_model(a: &Args, path: &Path, dev: &Device, quick: bool) -> AnyResult<Model> {
    let is_pth = path.extension().is_some_and(|e| e == "pth" || e == "pt");
    let ours = if is_pth {
        None
    } else {
        sde_train::load_checkpoint(path).ok()
    };
    let (network, reference) = network_config(a, ours.as_ref().map(|c| &c.config))?;
    let source = path.display().to_string();
    let net = if is_pth {
        let which = if a.model_weights {
            CheckpointWeights::Model
        } else {
            CheckpointWeights::Ema
        };
        network.load_checkpoint(path, which, DType::F32, dev)?
    } else if let Some(ck) = ours {
        let weights = if a.model_weights || ck.ema.is_empty() {
            ck.model
        } else {
            ck.ema
        };
        network.load_weights(weights.into_iter().collect(), &source, DType::F32, dev)?
    } else {
        let (t, _) = score_nets::checkpoint::read_safetensors(path)?;
        network.load_weights(t, &source, DType::F32, dev)?
    };
    let (channels, size, centered, sigmas, num_scales) = match &network {
        NetworkConfig::NcsnPp(c) => (
            c.num_channels,
            c.image_size,
            c.centered,
            (c.sigma_min, c.sigma_max),
            c.num_scales,
        ),
        NetworkConfig::Ddpm(c) => (
            c.num_channels,
            c.image_size,
            c.centered,
            (c.sigma_min, c.sigma_max),
            c.num_scales,
        ),
    };
    let n = a
        .steps
        .unwrap_or(num_scales)
        .min(if quick { 5 } else { usize::MAX })
        .max(1);
    let sde = match (a.sde, reference.as_ref().map(|r| r.sde()).transpose()?) {
        (None, Some(ReferenceSde::Ve(s))) | (Some(SdeName::Ve), Some(ReferenceSde::Ve(s))) => {
            AnySde::Ve(VeSde::new(s.sigma_min(), s.sigma_max(), n)?)
        }
        (None, Some(ReferenceSde::Vp(s))) | (Some(SdeName::Vp), Some(ReferenceSde::Vp(s))) => {
            AnySde::Vp(VpSde::new(s.beta_min(), s.beta_max(), n)?)
        }
        (None, Some(ReferenceSde::SubVp(s)))
        | (Some(SdeName::Subvp), Some(ReferenceSde::SubVp(s))) => {
            AnySde::SubVp(SubVpSde::new(s.beta_min(), s.beta_max(), n)?)
        }
        (Some(name), Some(_)) => {
            return Err(format!("--sde {name:?} contradicts the reference config's SDE").into())
        }
        (name, None) => {
            let fourier = matches!(&network, NetworkConfig::NcsnPp(c) if c.embedding_type == EmbeddingType::Fourier);
            match name.unwrap_or(if fourier { SdeName::Ve } else { SdeName::Vp }) {
                SdeName::Ve => AnySde::Ve(VeSde::new(sigmas.0, sigmas.1, n)?),
                SdeName::Vp => AnySde::Vp(VpSde::new(0.1, 20.0, n)?),
                SdeName::Subvp => AnySde::SubVp(SubVpSde::new(0.1, 20.0, n)?),
            }
        }
    };
    Ok(Model {
        net,
        sde,
        continuous: reference
            .as_ref()
            .map(|r| r.continuous())
            .transpose()?
            .unwrap_or(true),
        channels,
        size,
        centered,
        sampling: reference.as_ref().map(|r| r.sampling()).transpose()?,
        sha256: sha256_file(path)?,
    })
}

/// [0, 1] → the model's range.
fn scaler(x: &Tensor, centered: bool) -> candle_core::Result<Tensor> {
    if centered {
        x.affine(2.0, -1.0)
    } else {
        Ok(x.clone())
    }
}

/// Samples as the reference scores them: inverse scaler, clip to [0, 1], then 8-bit
/// (`np.clip(x * 255, 0, 255).astype(np.uint8)`, which truncates) and back to [0, 1].
fn to_images(x: &Tensor, centered: bool) -> candle_core::Result<Tensor> {
    let x = if centered {
        x.affine(0.5, 0.5)?
    } else {
        x.clone()
    };
    x.affine(255.0, 0.0)?
        .clamp(0.0, 255.0)?
        .floor()?
        .affine(1.0 / 255.0, 0.0)?
        .to_device(&Device::Cpu)
}

fn parse_predictor(s: &str) -> AnyResult<PredictorKind> {
    Ok(match s {
        "reverse_diffusion" => PredictorKind::ReverseDiffusion {
            probability_flow: false,
        },
        "euler_maruyama" => PredictorKind::EulerMaruyama {
            probability_flow: false,
        },
        "none" => PredictorKind::None,
        other => {
            return Err(format!(
                "unknown predictor `{other}` (reverse_diffusion, euler_maruyama, none)"
            )
            .into())
        }
    })
}

/// Everything the sharded run needs, for one concrete SDE type.
#[allow(clippy::too_many_arguments)]
fn run_with_sde<S: Sde>(
    a: &Args,
    sde: &S,
    is_ve: bool,
    model: &Model,
    ex: Option<&Extractor>,
    reference: Option<&Reference>,
    dev: &Device,
    summary: &mut Summary,
) -> AnyResult<()> {
    let score = ScoreModelFn::new(sde, &model.net, model.continuous);
    let settings = model.sampling.clone();
    let eps = settings
        .as_ref()
        .map(|s| s.sampling_eps)
        .unwrap_or(if is_ve { 1e-5 } else { 1e-3 });
    let shape = |b: usize| (b, model.channels, model.size, model.size);
    let first_batch: RefCell<Option<Tensor>> = RefCell::new(None);

    if let Some(ex) = ex {
        let n = if a.quick {
            a.n_samples.min(8)
        } else {
            a.n_samples
        };
        let (shard, batch) = if a.quick {
            (a.shard_size.min(4), a.batch_size.min(4))
        } else {
            (a.shard_size, a.batch_size)
        };
        let plan = ShardPlan::new(n, shard, batch, a.seed)?;
        // Shards of another checkpoint or sampler setting are never mixed in.
        let tagged = |note: &str| ShardPlan {
            model: Some(format!("checkpoint sha256 {}; {note}", model.sha256)),
            ..plan.clone()
        };
        let keep = |x: Tensor| -> sde_eval::Result<Tensor> {
            let img = to_images(&x, model.centered)?;
            if first_batch.borrow().is_none() {
                *first_batch.borrow_mut() = Some(img.clone());
            }
            Ok(img)
        };
        let progress = if a.quick {
            Progress::Hidden
        } else {
            Progress::Bar
        };
        let dir = a.out.join("samples");
        let note;
        let sharded = match a.sampler.as_str() {
            "pc" => {
                let pred = match (&a.predictor, settings.as_ref().and_then(|s| s.predictor)) {
                    (Some(p), _) => parse_predictor(p)?,
                    (None, Some(p)) => match p {
                        PredictorName::EulerMaruyama => parse_predictor("euler_maruyama")?,
                        PredictorName::ReverseDiffusion => parse_predictor("reverse_diffusion")?,
                        PredictorName::None => PredictorKind::None,
                        PredictorName::AncestralSampling => PredictorKind::AncestralSampling,
                    },
                    (None, None) if is_ve => parse_predictor("reverse_diffusion")?,
                    (None, None) => parse_predictor("euler_maruyama")?,
                };
                let snr = a.snr.or(settings.as_ref().map(|s| s.snr)).unwrap_or(0.16);
                let each = settings.as_ref().map(|s| s.n_steps_each).unwrap_or(1);
                let corr_name = a.corrector.clone().unwrap_or_else(|| {
                    match settings.as_ref().and_then(|s| s.corrector) {
                        Some(CorrectorName::Langevin) => "langevin".into(),
                        Some(CorrectorName::Ald) => "ald".into(),
                        Some(CorrectorName::None) => "none".into(),
                        None if is_ve => "langevin".into(),
                        None => "none".into(),
                    }
                });
                let corr = match corr_name.as_str() {
                    "langevin" => CorrectorKind::Langevin {
                        snr,
                        n_steps_each: each,
                    },
                    "ald" => CorrectorKind::AnnealedLangevin {
                        snr,
                        n_steps_each: each,
                    },
                    "none" => CorrectorKind::None,
                    other => {
                        return Err(
                            format!("unknown corrector `{other}` (langevin, ald, none)").into()
                        )
                    }
                };
                note = format!(
                    "sampler: PC, predictor {pred:?}, corrector {corr:?}, N = {}, sampling_eps {eps}",
                    sde.n()
                );
                let pc = PcSampler::new(pred.for_any_sde()?, corr).sampling_eps(eps);
                sample_sharded(
                    &dir,
                    &tagged(&note),
                    ex,
                    |noise: &mut PerSampleNoise, b| {
                        keep(pc.sample(sde, &score, shape(b), dev, DType::F32, noise)?.x)
                    },
                    progress,
                )?
            }
            "ode" => {
                let opts = OdeSamplerOptions {
                    method: OdeMethod::Rk45(Rk45Options {
                        rtol: a.tol,
                        atol: a.tol,
                        error_norm: ErrorNorm::PerSample,
                        ..Default::default()
                    }),
                    sampling_eps: eps,
                    ..Default::default()
                };
                note = format!("sampler: probability-flow ODE, RK45 per-sample rtol = atol = {}, sampling_eps {eps}", a.tol);
                let ode = OdeSampler::new(sde, &score, opts)?;
                sample_sharded(
                    &dir,
                    &tagged(&note),
                    ex,
                    |noise: &mut PerSampleNoise, b| {
                        let s: candle_core::Shape = shape(b).into();
                        keep(ode.sample(&s, dev, DType::F32, noise)?.x)
                    },
                    progress,
                )?
            }
            fast => {
                let kind: SamplerKind = fast.parse()?;
                let steps = a
                    .steps
                    .unwrap_or(50)
                    .min(if a.quick { 5 } else { usize::MAX });
                note = format!(
                    "sampler: {fast}, {steps} steps uniform in log-SNR, sampling_eps {eps}"
                );
                let sampler =
                    Sampler::new(kind, Schedule::UniformLogSnr { sampling_eps: eps }, steps);
                sample_sharded(
                    &dir,
                    &tagged(&note),
                    ex,
                    |noise: &mut PerSampleNoise, b| {
                        keep(
                            sampler
                                .sample(sde, &score, shape(b), dev, DType::F32, noise)?
                                .x,
                        )
                    },
                    progress,
                )?
            }
        };
        println!("{note}");
        summary.notes.push(note);
        summary.n = n;
        if let Some(x) = first_batch.borrow().as_ref() {
            let k = x.dim(0)?.min(64);
            let grid = (k as f64).sqrt().ceil() as usize;
            sde_train::save_image_grid(&x.narrow(0, 0, k)?, grid, a.out.join("samples.png"))?;
        }
        let m = &mut summary.metrics;
        let wants = |k: MetricName| a.metrics.contains(&k);
        if let Some(r) = reference {
            if wants(MetricName::Fid) {
                let stats = GaussianStats::from_feature_stats(&sharded.feature_stats()?)?;
                m.fid = Some(frechet_distance(&stats, &r.stats)?);
            }
            if let Some(rf) = r.features.as_ref().filter(|_| wants(MetricName::Kid)) {
                let sf = sharded.features()?;
                let size = a.kid_subset_size.min(sf.dim(0)?).min(rf.dim(0)?);
                let kid_seed = a.seed ^ 0x4B1D;
                let mut rng = rand::rngs::StdRng::seed_from_u64(kid_seed);
                let opts = KidOptions {
                    subsets: a.kid_subsets,
                    subset_size: size,
                    ..Default::default()
                };
                m.kid = Some(kid(&sf, rf, &opts, &mut rng)?);
                m.kid_subsets = Some((size, a.kid_subsets));
                summary.kid_seed = Some(kid_seed);
            }
        }
        if ex.num_classes().is_some() && wants(MetricName::Is) {
            let splits = a.is_splits.min(n as usize).max(1);
            m.inception_score = Some(sharded.inception_score(splits)?);
            m.is_splits = Some(splits);
        }
    }

    if let Some(spec) = &a.bpd_data {
        let (images, description) = load_images(spec, a, model.size)?;
        let (_, c, h, w) = images.dims4()?;
        if (c, h, w) != (model.channels, model.size, model.size) {
            return Err(format!(
                "--bpd-data {spec} has images [{c}, {h}, {w}], the model takes [{}, {}, {}]",
                model.channels, model.size, model.size
            )
            .into());
        }
        let total = images.dim(0)? as u64;
        let n = a
            .bpd_n
            .unwrap_or(total)
            .min(total)
            .min(if a.quick { 4 } else { u64::MAX });
        let range = if model.centered {
            sde_solvers::likelihood::DataRange::MinusOneOne
        } else {
            sde_solvers::likelihood::DataRange::ZeroOne
        };
        let batch = if a.quick {
            a.batch_size.min(2)
        } else {
            a.batch_size
        };
        let plan = BpdPlan {
            n_repeats: a.bpd_repeats,
            model: Some(model.sha256.clone()),
            ..BpdPlan::new(n, a.shard_size, batch, a.seed, range)?
        };
        let opts = LikelihoodOptions {
            method: OdeMethod::Rk45(Rk45Options {
                rtol: a.tol,
                atol: a.tol,
                error_norm: ErrorNorm::PerSample,
                ..Default::default()
            }),
            estimator: DivergenceEstimator::Hutchinson {
                probe: HutchinsonProbe::Rademacher,
                n_probes: a.bpd_probes,
            },
            ..Default::default()
        };
        let lik = Likelihood::new(sde, &score, opts)?;
        let data = |i: u64, b: usize| -> sde_eval::Result<Tensor> {
            let x = images.narrow(0, i as usize, b)?.to_device(dev)?;
            Ok(scaler(&x, model.centered)?)
        };
        let progress = if a.quick {
            Progress::Hidden
        } else {
            Progress::Bar
        };
        let out = bits_per_dim_sharded(a.out.join("bpd"), &plan, &lik, data, progress)?;
        let bpd = out.summary()?;
        println!(
            "bits/dim on {description} ({n} points, {} repeats): {:.4} ± {:.4} (standard error), {} drift evaluations",
            bpd.n_repeats, bpd.mean, bpd.std_err, bpd.nfe
        );
        summary.notes.push(format!(
            "bits/dim: {description}, first {n} points, 8-bit uniform dequantisation, RK45 per-sample rtol = atol = {}, {} Rademacher probe(s)",
            a.tol, a.bpd_probes
        ));
        summary.metrics.bits_per_dim = Some(bpd);
    }
    Ok(())
}

fn main() -> AnyResult<()> {
    // reuse freed tensor buffers instead of page-faulting new ones in (glibc)
    score_nets::retain_freed_memory();
    let a = Args::parse();
    let dev = {
        #[cfg(feature = "cuda")]
        {
            Device::new_cuda(0)?
        }
        #[cfg(not(feature = "cuda"))]
        {
            Device::Cpu
        }
    };
    std::fs::create_dir_all(&a.out)?;
    // Samples are drawn for a checkpoint unless `--n-samples 0` (bits/dim only).
    let wants_samples = a.checkpoint.is_some() && a.n_samples > 0;
    let ex = if wants_samples || a.write_stats.is_some() {
        Some(extractor(&a, &dev)?)
    } else {
        None
    };
    let model = match &a.checkpoint {
        Some(p) => Some(load_model(&a, p, &dev, a.quick)?),
        None => None,
    };
    let size = a
        .image_size
        .or(model.as_ref().map(|m| m.size))
        .unwrap_or(32);
    let reference = match &ex {
        Some(ex) => reference(&a, ex, size)?,
        None => None,
    };
    let mut summary = Summary {
        n: 0,
        seed: a.seed,
        kid_seed: None,
        checkpoint_sha256: model.as_ref().map(|m| m.sha256.clone()),
        extractor: ex.as_ref().map(|e| e.name()).unwrap_or_default(),
        extractor_weights_sha256: ex.as_ref().and_then(|e| e.weights_sha256()),
        reference: reference.as_ref().map(|r| r.description.clone()),
        reference_n: reference.as_ref().and_then(|r| r.stats.n),
        metrics: Metrics::default(),
        notes: Vec::new(),
    };
    if let Some(path) = &a.write_stats {
        let r = reference
            .as_ref()
            .filter(|r| r.features.is_some())
            .ok_or("--write-stats needs --ref naming images (a data set or a folder)")?;
        r.stats.save(path, StatsFormat::from_path(path))?;
        println!(
            "wrote {} statistics of {} ({} features) to {}",
            summary.extractor,
            r.description,
            r.stats.n.unwrap_or(0),
            path.display()
        );
        summary
            .notes
            .push(format!("wrote reference statistics to {}", path.display()));
    }
    if let Some(m) = &model {
        let ex = if wants_samples { ex.as_ref() } else { None };
        match &m.sde {
            AnySde::Ve(s) => {
                run_with_sde(&a, s, true, m, ex, reference.as_ref(), &dev, &mut summary)?
            }
            AnySde::Vp(s) => {
                run_with_sde(&a, s, false, m, ex, reference.as_ref(), &dev, &mut summary)?
            }
            AnySde::SubVp(s) => {
                run_with_sde(&a, s, false, m, ex, reference.as_ref(), &dev, &mut summary)?
            }
        }
    } else if a.write_stats.is_none() {
        return Err("nothing to do: pass --checkpoint (to evaluate) or --write-stats".into());
    }
    if a.features == FeatureKind::Digits && summary.metrics.fid.is_some() {
        summary.notes.push(
            "`fid` is the Fréchet distance in the digit classifier's 128-d features, not FID"
                .into(),
        );
    }
    let m = &summary.metrics;
    if let Some(f) = m.fid {
        println!(
            "{} = {f:.4} (n = {})",
            if a.features == FeatureKind::Digits {
                "Fréchet distance (digit features)"
            } else {
                "FID"
            },
            summary.n
        );
    }
    if let Some(k) = m.kid {
        println!("KID = {:.6} ± {:.6}", k.mean, k.std);
    }
    if let Some(is) = m.inception_score {
        println!("IS = {:.4} ± {:.4}", is.mean, is.std);
    }
    summary.save(a.out.join("summary.json"))?;
    println!("summary: {}", a.out.join("summary.json").display());
    Ok(())
}
