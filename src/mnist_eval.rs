//! Sampling and measurement for the MNIST-5k reproduction ([`crate::mnist`]): the samplers a run
//! compares, batched sampling into [0, 1] images, held-out bits/dim through the probability-flow
//! ODE beside per-pixel independent baselines, the digit metrics, and the loss curve.

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use sde_core::noise::NoiseSource;
use sde_core::{AncestralSde, ScoreFn, Sde};
use sde_solvers::corrector::{AnnealedLangevinDynamics, LangevinCorrector, NoCorrector};
use sde_solvers::driver::Sampler;
use sde_solvers::likelihood::{
    bits_per_dim as bpd_of_log_p, dequantize_levels, DataRange, Likelihood, LikelihoodOptions,
};
use sde_solvers::ode_sampler::{OdeSampler, OdeSamplerOptions};
use sde_solvers::pc::PcSampler;
use sde_solvers::predictor::{AncestralSamplingPredictor, NoPredictor, ReverseDiffusionPredictor};
use sde_solvers::samplers::SamplerKind;
use sde_solvers::schedule::Schedule;

use crate::images::Family;
use crate::mnist::{to_unit, MnistPreset};
use crate::toy::AnyResult;

/// A sampler the MNIST run compares.
#[derive(Debug, Clone)]
pub enum ImageSampler {
    /// The paper's PC sampler: reverse diffusion + one Langevin corrector step (`snr`) per
    /// step, N = `sde.n()` steps (2 evaluations per step).
    Pc {
        /// Signal-to-noise ratio of the corrector.
        snr: f64,
    },
    /// SMLD's annealed Langevin dynamics (no predictor, one step per noise level).
    Ald {
        /// Signal-to-noise ratio of the Langevin steps.
        snr: f64,
    },
    /// Ancestral sampling of the SDE's discrete chain (DDPM for VP, SMLD for VE), N steps.
    Ancestral,
    /// The probability-flow ODE with adaptive RK45 (rtol = atol = 1e-5, the reference's).
    Ode,
    /// A fast sampler of the driver.
    Fast {
        /// Which one.
        kind: SamplerKind,
        /// Its time grid.
        schedule: Schedule,
        /// Its step count.
        steps: usize,
        /// The name it is reported under.
        label: String,
    },
}

impl ImageSampler {
    /// The name reported in the summary.
    pub fn name(&self) -> String {
        match self {
            ImageSampler::Pc { snr } => format!("PC (reverse diffusion + Langevin, snr {snr})"),
            ImageSampler::Ald { snr } => format!("annealed Langevin (snr {snr})"),
            ImageSampler::Ancestral => "ancestral sampling".into(),
            ImageSampler::Ode => "probability-flow ODE (RK45)".into(),
            ImageSampler::Fast { label, steps, .. } => format!("{label} ({steps} steps)"),
        }
    }

    /// A short name for files: `pc`, `ald`, `ancestral`, `ode` or the fast sampler's flag name.
    pub fn file_name(&self) -> String {
        match self {
            ImageSampler::Pc { .. } => "pc".into(),
            ImageSampler::Ald { .. } => "ald".into(),
            ImageSampler::Ancestral => "ancestral".into(),
            ImageSampler::Ode => "ode".into(),
            ImageSampler::Fast { label, .. } => label.replace('+', "p"),
        }
    }
}

/// The paper's samplers of a family, in order: for VE (SMLD) annealed Langevin, PC (snr 0.16)
/// and the ODE; for VP (DDPM) ancestral sampling, PC (snr 0.27, the VP configs' value) and the
/// ODE. `--paper-samplers` names them by [`ImageSampler::file_name`] (`ald`, `pc`, `ode`,
/// `ancestral`).
pub fn family_paper_samplers(family: Family) -> Vec<ImageSampler> {
    match family {
        Family::Ve => vec![
            ImageSampler::Ald { snr: 0.16 },
            ImageSampler::Pc { snr: 0.16 },
            ImageSampler::Ode,
        ],
        Family::Vp => vec![
            ImageSampler::Ancestral,
            ImageSampler::Pc { snr: 0.27 },
            ImageSampler::Ode,
        ],
    }
}

/// The samplers of [`family_paper_samplers`] that `preset.paper_samplers` names, in the
/// family's order. A name that is none of theirs is an error naming the flag and the valid
/// names.
pub fn paper_samplers(family: Family, preset: &MnistPreset) -> AnyResult<Vec<ImageSampler>> {
    let all = family_paper_samplers(family);
    let names: Vec<String> = all.iter().map(ImageSampler::file_name).collect();
    if let Some(bad) = preset.paper_samplers.iter().find(|n| !names.contains(n)) {
        return Err(format!(
            "--paper-samplers: `{bad}` is not a paper sampler of this example; expected a \
             comma-separated list of {}, or `none`",
            names.join(", ")
        )
        .into());
    }
    Ok(all
        .into_iter()
        .filter(|s| preset.paper_samplers.contains(&s.file_name()))
        .collect())
}

/// The fast sampler whose samples get the digit metrics: `preset.fast_sampler` (a
/// [`SamplerKind`] name) with `preset.fast_steps` steps, on EDM's ρ = 7 schedule for VE and
/// uniform in log-SNR for VP.
pub fn fast_sampler<S: Sde + ?Sized>(
    family: Family,
    preset: &MnistPreset,
    sde: &S,
) -> AnyResult<ImageSampler> {
    let name = preset.fast_sampler.as_str();
    let kind: SamplerKind = name
        .parse()
        .map_err(|e| format!("--fast-sampler {name}: {e}"))?;
    Ok(ImageSampler::Fast {
        kind,
        schedule: match family {
            Family::Ve => Schedule::karras(sde, 1e-5, 7.0)?,
            Family::Vp => Schedule::UniformLogSnr { sampling_eps: 1e-3 },
        },
        steps: preset.fast_steps,
        label: name.into(),
    })
}

/// What one sampler produced.
#[derive(Debug, Clone)]
pub struct SamplerRun {
    /// [`ImageSampler::name`].
    pub name: String,
    /// Score evaluations per sample (per batch: every batch takes the same number, except the
    /// adaptive ODE, whose mean over batches this is).
    pub nfe: f64,
    /// Wall time of all batches.
    pub seconds: f64,
    /// The samples, `[n, 1, 28, 28]` in [0, 1].
    pub images: Tensor,
}

impl SamplerRun {
    /// The summary entry: NFE, seconds, n and the digit metrics.
    pub fn to_json(&self, digits: &serde_json::Value) -> AnyResult<serde_json::Value> {
        Ok(serde_json::json!({
            "nfe": self.nfe,
            "seconds": self.seconds,
            "n": self.images.dim(0)?,
            "digits": digits,
        }))
    }
}

/// Samples `n` images in batches of `batch` with `sampler`, mapped to [0, 1].
pub fn sample_images<S, F, N>(
    sampler: &ImageSampler,
    sde: &S,
    score: &F,
    n: usize,
    batch: usize,
    centered: bool,
    noise: &mut N,
) -> AnyResult<SamplerRun>
where
    S: AncestralSde,
    F: ScoreFn,
    N: NoiseSource,
{
    let t0 = Instant::now();
    let bar = crate::report::progress(n as u64, sampler.name());
    let (mut parts, mut nfe_sum, mut batches) = (Vec::new(), 0usize, 0usize);
    let mut done = 0;
    let dev = Device::Cpu;
    while done < n {
        let b = batch.min(n - done);
        let shape = (b, 1, 28, 28);
        let (x, nfe) = match sampler {
            ImageSampler::Pc { snr } => {
                let o = PcSampler::new(
                    ReverseDiffusionPredictor::new(false),
                    LangevinCorrector::new(*snr, 1)?,
                )
                .sample(sde, score, shape, &dev, DType::F32, noise)?;
                (o.x, o.nfe)
            }
            ImageSampler::Ald { snr } => {
                let o = PcSampler::new(NoPredictor, AnnealedLangevinDynamics::new(*snr, 1)?)
                    .sample(sde, score, shape, &dev, DType::F32, noise)?;
                (o.x, o.nfe)
            }
            ImageSampler::Ancestral => {
                let o = PcSampler::new(AncestralSamplingPredictor, NoCorrector).sample(
                    sde,
                    score,
                    shape,
                    &dev,
                    DType::F32,
                    noise,
                )?;
                (o.x, o.nfe)
            }
            ImageSampler::Ode => {
                let o = OdeSampler::new(sde, score, OdeSamplerOptions::default())?.sample(
                    &shape.into(),
                    &dev,
                    DType::F32,
                    noise,
                )?;
                (o.x, o.nfe)
            }
            ImageSampler::Fast {
                kind,
                schedule,
                steps,
                ..
            } => {
                let o = Sampler::new(kind.clone(), schedule.clone(), *steps).sample(
                    sde,
                    score,
                    shape,
                    &dev,
                    DType::F32,
                    noise,
                )?;
                (o.x, o.nfe)
            }
        };
        parts.push(to_unit(&x, centered)?);
        nfe_sum += nfe;
        batches += 1;
        done += b;
        bar.inc(b as u64);
    }
    bar.finish_and_clear();
    Ok(SamplerRun {
        name: sampler.name(),
        nfe: nfe_sum as f64 / batches.max(1) as f64,
        seconds: t0.elapsed().as_secs_f64(),
        images: Tensor::cat(&parts, 0)?,
    })
}

/// Held-out bits/dim and the per-pixel baselines, all on the same dequantised test images.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BitsPerDim {
    /// Test images evaluated.
    pub n: usize,
    /// Mean bits/dim of the model (probability-flow ODE, one Rademacher probe, RK45 at
    /// rtol = atol = 1e-5, ε = 1e-5).
    pub mean: f64,
    /// Standard error of the mean over images.
    pub std_err: f64,
    /// Mean drift evaluations per batch.
    pub nfe: f64,
    /// Seconds spent.
    pub seconds: f64,
    /// Per-pixel independent 256-bin histograms fitted on the train set (add-one smoothing),
    /// as a density on the dequantised images (piecewise constant): the best model that treats
    /// pixels independently.
    pub pixel_histogram: f64,
    /// Per-pixel independent Gaussians fitted on the dequantised train set.
    pub pixel_gaussian: f64,
}

/// Bits/dim of the first `n` test images (8-bit, uniform dequantisation through `noise`) under
/// the model's probability-flow ODE, and of the per-pixel baselines fitted on `train`, all
/// through [`sde_solvers::likelihood::bits_per_dim`] over [0, 1].
#[allow(clippy::too_many_arguments)]
pub fn bits_per_dim<S, F, N>(
    sde: &S,
    score: &F,
    test: &Tensor,
    train: &Tensor,
    n: usize,
    batch: usize,
    centered: bool,
    noise: &mut N,
) -> AnyResult<BitsPerDim>
where
    S: Sde,
    F: ScoreFn,
    N: NoiseSource,
{
    let t0 = Instant::now();
    let n = n.min(test.dim(0)?);
    let x = dequantize_levels(&test.narrow(0, 0, n)?, 8, (0.0, 1.0), noise)?;
    let dim = 28 * 28;
    let lik = Likelihood::new(sde, score, LikelihoodOptions::default())?;
    let bar = crate::report::progress(n as u64, "bits/dim (probability flow)");
    let (mut bpd, mut nfe_sum, mut batches) = (Vec::new(), 0usize, 0usize);
    let mut i = 0;
    while i < n {
        let b = batch.min(n - i);
        let xb = x.narrow(0, i, b)?;
        let xs = sde_train::scaler(&xb, centered)?;
        let out = lik.log_likelihood(&xs, noise)?;
        // log p of x in [0, 1]: the scaler x ↦ 2x − 1 adds D log 2 for centred models
        let jac = if centered {
            dim as f64 * 2f64.ln()
        } else {
            0.0
        };
        let log_p = out.log_p.to_dtype(DType::F64)?.affine(1.0, jac)?;
        bpd.extend(crate::report::host(&bpd_of_log_p(
            &log_p,
            dim,
            8,
            DataRange::ZeroOne.bounds(),
        )?)?);
        nfe_sum += out.nfe;
        batches += 1;
        i += b;
        bar.inc(b as u64);
    }
    bar.finish_and_clear();
    let (mean, std_err) = mean_se(&bpd);
    let (hist, gauss) = pixel_baselines(train, &x, noise)?;
    Ok(BitsPerDim {
        n,
        mean,
        std_err,
        nfe: nfe_sum as f64 / batches.max(1) as f64,
        seconds: t0.elapsed().as_secs_f64(),
        pixel_histogram: hist,
        pixel_gaussian: gauss,
    })
}

fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n.max(1.0);
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, (var / n.max(1.0)).sqrt())
}

/// Mean bits/dim of the dequantised test images `x` under per-pixel histograms and per-pixel
/// Gaussians fitted on `train` (k/255 levels in [0, 1], [N, 1, 28, 28]).
fn pixel_baselines<N: NoiseSource>(
    train: &Tensor,
    x: &Tensor,
    noise: &mut N,
) -> AnyResult<(f64, f64)> {
    let dim = 28 * 28;
    let tr: Vec<f32> = train.flatten_all()?.to_vec1()?;
    let n_tr = tr.len() / dim;
    let mut counts = vec![1.0f64; dim * 256]; // add-one smoothing
    for (j, v) in tr.iter().enumerate() {
        let k = (v * 255.0).round().clamp(0.0, 255.0) as usize;
        counts[(j % dim) * 256 + k] += 1.0;
    }
    let total = n_tr as f64 + 256.0;
    // Gaussian per pixel on the dequantised train set (the same dequantisation as the test)
    let trd: Vec<f64> = crate::report::host(&dequantize_levels(train, 8, (0.0, 1.0), noise)?)?;
    let mut mu = vec![0f64; dim];
    let mut var = vec![0f64; dim];
    for (j, v) in trd.iter().enumerate() {
        mu[j % dim] += v / n_tr as f64;
    }
    for (j, v) in trd.iter().enumerate() {
        var[j % dim] += (v - mu[j % dim]).powi(2) / n_tr as f64;
    }
    let xs = crate::report::host(x)?;
    let n = xs.len() / dim;
    let (mut lp_h, mut lp_g) = (vec![0f64; n], vec![0f64; n]);
    for (j, v) in xs.iter().enumerate() {
        let (i, p) = (j / dim, j % dim);
        // the bin of the dequantised value: ⌊256 v⌋
        let k = ((v * 256.0).floor() as usize).min(255);
        // density of the bin's mass spread uniformly over its width 1/256
        lp_h[i] += (counts[p * 256 + k] / total * 256.0).ln();
        let s2 = var[p].max(1e-12);
        lp_g[i] += -0.5 * ((v - mu[p]).powi(2) / s2 + (2.0 * std::f64::consts::PI * s2).ln());
    }
    let to_bpd = |lp: Vec<f64>| -> AnyResult<f64> {
        let t = Tensor::from_vec(lp, n, &Device::Cpu)?;
        let b = crate::report::host(&bpd_of_log_p(&t, dim, 8, (0.0, 1.0))?)?;
        Ok(mean_se(&b).0)
    };
    Ok((to_bpd(lp_h)?, to_bpd(lp_g)?))
}

/// The digit metrics: a classifier trained in the repository on the 4,000 training digits
/// (`sde_eval::digits`), its features of the test set, and the train-vs-test floor.
pub struct DigitEval {
    classifier: sde_eval::digits::DigitClassifier,
    train: Tensor,
    test: Tensor,
}

impl DigitEval {
    /// Loads the committed classifier weights.
    pub fn new(train: &Tensor, test: &Tensor) -> AnyResult<Self> {
        Ok(Self {
            classifier: sde_eval::digits::DigitClassifier::embedded(&Device::Cpu)?,
            train: train.clone(),
            test: test.clone(),
        })
    }

    /// Class shares, confident share, Fréchet distance and KID of `images` ([N, 1, 28, 28] in
    /// [0, 1]) to the test set.
    pub fn report(&self, images: &Tensor) -> AnyResult<sde_eval::digits::DigitReport> {
        Ok(sde_eval::digits::digit_report(
            &self.classifier,
            images,
            &self.test,
            &self.train,
        )?)
    }
}

/// Prints one sampler's line.
pub fn print_run(r: &SamplerRun, d: &sde_eval::digits::DigitReport) {
    let shares = d
        .class_shares
        .iter()
        .map(|s| format!("{:.0}", s * 100.0))
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "  {:<44} NFE {:>6.0}  {:>6.1} s  n {:>5}  confident {:>5.1}%  Fréchet {:>8.2} (floor \
         {:.2})  KID {:.4}  classes % [{shares}]",
        r.name,
        r.nfe,
        r.seconds,
        d.n,
        d.confident_share * 100.0,
        d.frechet,
        d.frechet_floor,
        d.kid.mean,
    );
}

/// `(step, loss)` pairs of a training log (`train_log.jsonl`).
pub fn read_losses(path: &Path) -> AnyResult<Vec<(u64, f64)>> {
    let text = std::fs::read_to_string(path)?;
    let mut v = Vec::new();
    for line in text.lines() {
        let j: serde_json::Value = serde_json::from_str(line)?;
        if let (Some(s), Some(l)) = (j["step"].as_u64(), j["loss"].as_f64()) {
            v.push((s, l));
        }
    }
    Ok(v)
}

/// Means of the first and last 10% of the losses.
pub fn loss_first_last(losses: &[(u64, f64)]) -> (f64, f64) {
    let k = (losses.len() / 10).max(1).min(losses.len());
    let m = |s: &[(u64, f64)]| s.iter().map(|p| p.1).sum::<f64>() / s.len().max(1) as f64;
    (m(&losses[..k]), m(&losses[losses.len() - k..]))
}

/// The loss curve (log scale: raw per step in grey, a moving average in blue).
pub fn loss_png(path: &Path, losses: &[(u64, f64)]) -> AnyResult<()> {
    let pts: Vec<(f64, f64)> = losses
        .iter()
        .filter(|p| p.1 > 0.0 && p.1.is_finite())
        .map(|&(s, l)| (s as f64, l.log10()))
        .collect();
    let w = (pts.len() / 50).max(1);
    let smooth: Vec<(f64, f64)> = pts
        .windows(w)
        .map(|win| {
            let y = win.iter().map(|p| p.1).sum::<f64>() / w as f64;
            (win[w / 2].0, y)
        })
        .collect();
    let img = crate::plot::line_chart(
        &[
            (crate::plot::GREY, &pts),
            (crate::plot::PALETTE[0], &smooth),
        ],
        720,
        360,
    );
    img.save(path)?;
    Ok(())
}

/// SHA-256 of a file, lower-case hex.
pub fn file_sha256(path: &Path) -> AnyResult<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
