//! Class-conditional sampling with a noise-conditional classifier trained here.
//!
//! The data are a 2-D mixture of 8 Gaussians on a ring, labelled by component. A small MLP
//! classifier p_t(y | x(t)) is trained with AdamW on noised data x(t) ~ p_{0t}(· | x(0))
//! (`sde.marginal_prob`, t ~ U(ε, 1)), then used for classifier guidance
//! s(x, t) + w ∇ₓ log p_t(y | x) with the exact unconditional score of the mixture. The example
//! reports, per requested class, the fraction of samples that land in that mode, for the trained
//! classifier at several guidance scales and for the exact posterior classifier (the Bayes
//! optimum, computed in closed form), and writes `samples.png` coloured by requested class.
//!
//! `cargo run --release --example conditional -- --help`

use std::error::Error;
use std::path::PathBuf;

use candle_core::{DType, Device, Module, Shape, Tensor, Var, D};
use candle_nn::{AdamW, Linear, Optimizer, ParamsAdamW};
use clap::Parser;
use rand::{Rng, SeedableRng};
use scoresde::plot::{self, Canvas};
use scoresde::report::{self, host};
use sde_core::analytic::{FastMixtureScore, GaussianMixture};
use sde_core::noise::NoiseSource;
use sde_core::{expand_batch, Sde, VpSde};
use sde_solvers::controllable::{AutogradClassifier, GuidedScore};
use sde_solvers::corrector::NoCorrector;
use sde_solvers::pc::PcSampler;
use sde_solvers::predictor::ReverseDiffusionPredictor;

#[derive(Parser, Debug)]
#[command(
    about = "Classifier-guided sampling on an 8-mode 2-D mixture with a noise-conditional MLP classifier trained in the example"
)]
struct Args {
    /// Training steps of the classifier (AdamW, batch 512).
    #[arg(long, default_value_t = 3000)]
    train_steps: usize,
    /// Learning rate of AdamW.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Hidden width of the classifier MLP.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// Samples per requested class.
    #[arg(long, default_value_t = 250)]
    per_class: usize,
    /// Discretisation steps N of the VP SDE (reverse-diffusion predictor).
    #[arg(long, default_value_t = 500)]
    n_steps: usize,
    /// Guidance scales w to run with the trained classifier (w = 0, unguided, always runs).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1.0, 4.0])]
    scales: Vec<f64>,
    /// Output directory for samples.png and summary.json.
    #[arg(long, default_value = "target/examples/conditional")]
    out: PathBuf,
    /// Seed of every random draw (initialisation, training data, sampling).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A CI-sized run (a short training, few samples, 100 steps).
    #[arg(long)]
    quick: bool,
}

const K: usize = 8;
const SAMPLING_EPS: f64 = 1e-3;

/// A noise-conditional MLP classifier: features (x / √(a² v + σ²), t) → K logits, where
/// (a, σ) are the SDE's kernel coefficients at t and v the data's per-coordinate variance, so
/// the input stays O(1) at every noise level.
struct Classifier<'a> {
    sde: &'a VpSde,
    data_var: f64,
    layers: Vec<Linear>,
}

impl Classifier<'_> {
    fn logits(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
        let (a, sigma) = self
            .sde
            .marginal_coeffs(t)
            .map_err(candle_core::Error::wrap)?;
        let scale = (a.sqr()?.affine(self.data_var, 0.0)? + sigma.sqr()?)?.sqrt()?;
        let scale =
            expand_batch(&scale.to_dtype(x.dtype())?, x).map_err(candle_core::Error::wrap)?;
        let xin = x.broadcast_div(&scale)?;
        let mut h = Tensor::cat(&[&xin, &t.to_dtype(x.dtype())?.unsqueeze(1)?], 1)?;
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = candle_nn::ops::silu(&h)?;
            }
        }
        Ok(h)
    }
}

/// A linear layer with PyTorch's default init U(−1/√fan_in, 1/√fan_in), drawn through `rng`
/// (candle's own initialisers use an unseeded RNG).
fn linear<R: Rng>(
    fan_in: usize,
    fan_out: usize,
    rng: &mut R,
    vars: &mut Vec<Var>,
) -> candle_core::Result<Linear> {
    let b = 1.0 / (fan_in as f32).sqrt();
    let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-b..b)).collect() };
    let w = Var::from_vec(draw(fan_in * fan_out), (fan_out, fan_in), &Device::Cpu)?;
    let bias = Var::from_vec(draw(fan_out), fan_out, &Device::Cpu)?;
    vars.push(w.clone());
    vars.push(bias.clone());
    Ok(Linear::new(
        w.as_tensor().clone(),
        Some(bias.as_tensor().clone()),
    ))
}

/// Labelled draws from the mixture: (x0 [B, 2], labels [B] u32).
fn labelled<R: Rng>(
    gmm: &GaussianMixture,
    b: usize,
    rng: &mut R,
) -> Result<(Tensor, Tensor, Vec<usize>), Box<dyn Error>> {
    let labels: Vec<usize> = (0..b).map(|_| rng.random_range(0..K)).collect();
    let z = host(&rng.randn(&Shape::from((b, 2)), &Device::Cpu, DType::F64)?)?;
    let mut x = Vec::with_capacity(2 * b);
    for (i, &c) in labels.iter().enumerate() {
        for j in 0..2 {
            x.push((gmm.means()[c][j] + gmm.variances()[c][j].sqrt() * z[2 * i + j]) as f32);
        }
    }
    let y: Vec<u32> = labels.iter().map(|&c| c as u32).collect();
    Ok((
        Tensor::from_vec(x, (b, 2), &Device::Cpu)?,
        Tensor::from_vec(y, b, &Device::Cpu)?,
        labels,
    ))
}

/// The exact posterior logits log w_k N(x; a μ_k, (a² s² + σ²) I) of the mixture at time t
/// (equal weights and isotropic components), as differentiable tensor ops.
fn exact_logits(
    sde: &VpSde,
    gmm: &GaussianMixture,
    x: &Tensor,
    t: &Tensor,
) -> sde_core::Result<Tensor> {
    let (a, sigma) = sde.marginal_coeffs(t)?;
    let b = x.dim(0)?;
    let mu: Vec<f32> = gmm.means().iter().flatten().map(|&v| v as f32).collect();
    let mu = Tensor::from_vec(mu, (1, K, 2), x.device())?.to_dtype(x.dtype())?;
    let s2 = gmm.variances()[0][0];
    let a = a.to_dtype(x.dtype())?.reshape((b, 1, 1))?;
    let var =
        (a.sqr()?.affine(s2, 0.0)? + sigma.to_dtype(x.dtype())?.sqr()?.reshape((b, 1, 1))?)?;
    let d = x.unsqueeze(1)?.broadcast_sub(&a.broadcast_mul(&mu)?)?;
    Ok(d.sqr()?
        .broadcast_div(&var)?
        .sum(D::Minus1)?
        .affine(-0.5, 0.0)?)
}

/// Argmax over the last dim of [B, K] logits.
fn argmax(logits: &Tensor) -> Result<Vec<u32>, Box<dyn Error>> {
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}

fn main() -> Result<(), Box<dyn Error>> {
    // reuse freed tensor buffers instead of page-faulting new ones in (glibc)
    score_nets::retain_freed_memory();
    scoresde::toy::single_threaded_candle();
    let mut args = Args::parse();
    if args.quick {
        args.train_steps = args.train_steps.min(400);
        args.per_class = args.per_class.min(40);
        args.n_steps = args.n_steps.min(100);
    }
    if args.scales.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
        return Err("--scales must be finite and >= 0".into());
    }
    std::fs::create_dir_all(&args.out)?;
    let dev = Device::Cpu;
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let sde = VpSde::new(0.1, 20.0, args.n_steps)?;
    let gmm = GaussianMixture::ring(K, 3.0, 0.3)?;
    let score = FastMixtureScore::new(&sde, gmm.clone());
    let data_var = 0.5 * 3.0f64.powi(2) + 0.3f64.powi(2);

    // ---- train the noise-conditional classifier ----
    let mut vars = Vec::new();
    let h = args.hidden;
    let layers = vec![
        linear(3, h, &mut rng, &mut vars)?,
        linear(h, h, &mut rng, &mut vars)?,
        linear(h, K, &mut rng, &mut vars)?,
    ];
    let clf = Classifier {
        sde: &sde,
        data_var,
        layers,
    };
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: args.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let batch = 512;
    let pb = report::progress(args.train_steps as u64, "training classifier");
    let started = std::time::Instant::now();
    let mut last_loss = f64::NAN;
    for step in 0..args.train_steps {
        let (x0, y, _) = labelled(&gmm, batch, &mut rng)?;
        let t: Vec<f32> = (0..batch)
            .map(|_| rng.random_range(SAMPLING_EPS as f32..1.0))
            .collect();
        let t = Tensor::from_vec(t, batch, &dev)?;
        let (mean, std) = sde.marginal_prob(&x0, &t)?;
        let z = rng.randn(x0.shape(), &dev, DType::F32)?;
        let xt = (mean + sde_core::mul_batch(&std, &z)?)?;
        let loss = candle_nn::loss::cross_entropy(&clf.logits(&xt, &t)?, &y)?;
        opt.backward_step(&loss)?;
        if step % 50 == 0 || step + 1 == args.train_steps {
            last_loss = loss.to_scalar::<f32>()? as f64;
            pb.set_message(format!("training (loss {last_loss:.3})"));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let train_secs = started.elapsed().as_secs_f64();

    // Held-out accuracy at a few noise levels, beside the Bayes-optimal (exact posterior) one.
    let mut acc_table = Vec::new();
    for &tv in &[0.05, 0.2, 0.4, 0.6, 0.8] {
        let n = 4000;
        let (x0, _, labels) = labelled(&gmm, n, &mut rng)?;
        let t = sde_core::time_tensor(tv, n, &dev, DType::F32)?;
        let (mean, std) = sde.marginal_prob(&x0, &t)?;
        let xt = (mean + sde_core::mul_batch(&std, &rng.randn(x0.shape(), &dev, DType::F32)?)?)?;
        let pred = argmax(&clf.logits(&xt, &t)?)?;
        let bayes = argmax(&exact_logits(&sde, &gmm, &xt, &t)?)?;
        let acc = |p: &[u32]| {
            p.iter()
                .zip(&labels)
                .filter(|(a, b)| **a as usize == **b)
                .count() as f64
                / n as f64
        };
        acc_table.push((tv, acc(&pred), acc(&bayes)));
    }

    // ---- guided sampling ----
    let requested: Vec<u32> = (0..K as u32)
        .flat_map(|c| std::iter::repeat_n(c, args.per_class))
        .collect();
    let n = requested.len();
    let labels = Tensor::from_vec(requested.clone(), n, &dev)?;
    let trained = AutogradClassifier::new(|x: &Tensor, t: &Tensor| -> sde_core::Result<Tensor> {
        Ok(clf.logits(x, t)?)
    });
    let exact = AutogradClassifier::new(|x: &Tensor, t: &Tensor| exact_logits(&sde, &gmm, x, t));
    let sampler = PcSampler::new(ReverseDiffusionPredictor::new(false), NoCorrector)
        .sampling_eps(SAMPLING_EPS);
    let mut runs: Vec<(String, f64, Vec<f64>)> = Vec::new();
    let mut settings: Vec<(String, f64, bool)> = vec![("unguided".into(), 0.0, false)];
    for &w in &args.scales {
        settings.push((format!("trained classifier, w = {w}"), w, false));
    }
    settings.push(("exact posterior, w = 1".into(), 1.0, true));
    for (name, w, use_exact) in &settings {
        let pb = report::progress(args.n_steps as u64, name.clone());
        let out = if *use_exact {
            let g = GuidedScore::new(&score, &exact, labels.clone(), *w)?;
            sampler.sample_observed(&sde, &g, (n, 2), &dev, DType::F32, &mut rng, |_, _, _| {
                pb.inc(1)
            })?
        } else {
            let g = GuidedScore::new(&score, &trained, labels.clone(), *w)?;
            sampler.sample_observed(&sde, &g, (n, 2), &dev, DType::F32, &mut rng, |_, _, _| {
                pb.inc(1)
            })?
        };
        pb.finish_and_clear();
        runs.push((name.clone(), *w, host(&out.x)?));
    }

    // ---- report ----
    println!(
        "classifier: MLP 3-{h}-{h}-{K}, {} AdamW steps of batch {batch} in {train_secs:.1} s, final loss {last_loss:.3}",
        args.train_steps
    );
    println!("  held-out accuracy on x(t):   t      trained   Bayes-optimal");
    for (tv, a, b) in &acc_table {
        println!("                             {tv:.2}    {a:7.3}   {b:7.3}");
    }
    println!(
        "guided sampling: VP SDE, N = {}, reverse diffusion, {} samples per class; fraction in the requested mode:",
        args.n_steps, args.per_class
    );
    let mut summary_runs = Vec::new();
    for (name, w, pts) in &runs {
        let xt = Tensor::from_vec(pts.clone(), (n, 2), &dev)?;
        let got = gmm.classify(&xt)?;
        let mut per_class = [0usize; K];
        for (g, r) in got.iter().zip(&requested) {
            if *g == *r as usize {
                per_class[*r as usize] += 1;
            }
        }
        let frac: Vec<f64> = per_class
            .iter()
            .map(|&c| c as f64 / args.per_class as f64)
            .collect();
        let overall = per_class.iter().sum::<usize>() as f64 / n as f64;
        let cov = scoresde::metrics::mode_coverage(&gmm, pts, 4.0)?;
        println!(
            "  {name:<32} overall {overall:.3}  per class [{}]  off-mode {:.3}",
            frac.iter()
                .map(|f| format!("{f:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
            cov.off_mode_fraction
        );
        summary_runs.push(serde_json::json!({
            "name": name, "scale": w, "fraction_in_requested_mode": overall,
            "per_class": frac, "off_mode_fraction": cov.off_mode_fraction,
        }));
    }

    // ---- figure: data coloured by label, then each guided run coloured by requested class ----
    let (x_data, _, lab_data) = labelled(&gmm, 8 * 150, &mut rng)?;
    let x_data = host(&x_data)?;
    let mut panels = Vec::new();
    let mut draw = |pts: &[f64], cls: &dyn Fn(usize) -> usize| {
        let mut c = Canvas::new(360, -5.0, 5.0);
        for k in 0..K {
            let sel: Vec<f64> = pts
                .chunks_exact(2)
                .enumerate()
                .filter(|(i, _)| cls(*i) == k)
                .flat_map(|(_, p)| p.to_vec())
                .collect();
            c.scatter(&sel, plot::PALETTE[k], 1.6, 0.6);
        }
        panels.push(c);
    };
    draw(&x_data, &|i| lab_data[i]);
    for (_, _, pts) in &runs {
        draw(pts, &|i| requested[i] as usize);
    }
    let png = args.out.join("samples.png");
    plot::hstack(&panels.iter().collect::<Vec<_>>()).save(&png)?;

    let summary = serde_json::json!({
        "seed": args.seed, "n_steps": args.n_steps, "per_class": args.per_class,
        "classifier": {
            "train_steps": args.train_steps, "batch": batch, "lr": args.lr, "hidden": h,
            "train_seconds": train_secs, "final_loss": last_loss,
            "held_out_accuracy": acc_table.iter().map(|(t, a, b)| serde_json::json!({"t": t, "trained": a, "bayes_optimal": b})).collect::<Vec<_>>(),
        },
        "runs": summary_runs,
        "figures": {"samples.png": "left: data coloured by component; then one panel per run (unguided, trained classifier at each scale, exact posterior), samples coloured by the requested class"},
    });
    report::write_summary(&args.out, &summary)?;
    println!("wrote {} and summary.json", png.display());
    Ok(())
}
