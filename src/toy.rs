//! The 2-D pipeline the `smld` and `ddpm` examples share: train the MLP score network on a toy
//! distribution, sample it, and write the plots and statistics of a run.

use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarMap;
use score_nets::{Mlp, MlpConfig};
use sde_core::{time_tensor, ScoreFn, Sde};
use sde_solvers::likelihood::{DivergenceEstimator, Likelihood, LikelihoodOptions};
use sde_solvers::ode::{ErrorNorm, OdeMethod, Rk45Options};
use sde_train::{AdamConfig, Toy2d, ToyBatches, TrainConfig, TrainSummary, Trainer, TrainingLoss};

use crate::metrics::{self, ModeCoverage};
use crate::plot::{self, Canvas};

/// Errors of the example pipelines (any crate's error).
pub type AnyError = Box<dyn std::error::Error + Send + Sync>;
/// `Result` with [`AnyError`].
pub type AnyResult<T> = std::result::Result<T, AnyError>;

/// Settings of a toy training run.
#[derive(Debug, Clone)]
pub struct ToyTraining {
    /// The data distribution.
    pub toy: Toy2d,
    /// Optimisation steps.
    pub steps: u64,
    /// Batch size.
    pub batch: usize,
    /// Peak learning rate (Adam, linear warm-up over the first 5% of the steps).
    pub lr: f64,
    /// Seed of the weights and of the training draws.
    pub seed: u64,
    /// Show a progress bar.
    pub progress: bool,
}

/// Trains the MLP score network `cfg` with `loss` on the toy data and returns it with the EMA
/// weights in place (as the reference samples with), its variables and the run's summary.
/// The loss log goes to `log` as JSON lines when given.
pub fn train_mlp<L: TrainingLoss>(
    cfg: &MlpConfig,
    loss: L,
    run: &ToyTraining,
    log: Option<&Path>,
) -> AnyResult<(Mlp, VarMap, TrainSummary)> {
    let vm = VarMap::new();
    let vb = score_nets::init::seeded_var_builder(&vm, run.seed, DType::F32, &Device::Cpu);
    let model = Mlp::new(cfg, vb)?;
    let config = TrainConfig {
        n_iters: run.steps,
        log_freq: 50,
        ema_decay: 0.999,
        optim: AdamConfig {
            lr: run.lr,
            warmup: (run.steps / 20).max(1),
            grad_clip: Some(1.0),
            ..AdamConfig::default()
        },
        seed: run.seed,
        progress: run.progress,
        ..TrainConfig::default()
    };
    let summary = {
        let mut trainer = Trainer::new(&model, &vm, loss, config)?;
        if let Some(p) = log {
            trainer = trainer.with_log(p)?;
        }
        let summary = trainer.run(&mut ToyBatches::new(run.toy, run.batch), None)?;
        trainer.ema_mut().swap()?; // sample with the EMA weights
        summary
    };
    Ok((model, vm, summary))
}

/// Draws `n` points of the toy distribution as a `[n, 2]` f32 tensor.
pub fn toy_points(toy: Toy2d, n: usize, seed: u64) -> AnyResult<Tensor> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Ok(toy.sample(n, &Device::Cpu, DType::F32, &mut rng)?)
}

/// Flattened f64 host copy of a tensor.
pub use crate::report::host;

/// Sample-quality figures of a set of 2-D samples against held-out data.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Quality {
    /// Energy distance between the samples and held-out data.
    pub energy_distance: f64,
    /// Energy distance between two independent held-out sets of the same size (the noise floor).
    pub energy_distance_data_vs_data: f64,
    /// Mode coverage, when the toy distribution is a mixture.
    pub modes: Option<ModeCoverage>,
}

/// Energy distance to held-out data (at most 2000 points each) and mode coverage.
pub fn quality(toy: Toy2d, samples: &[f64], seed: u64) -> AnyResult<Quality> {
    let n = (samples.len() / 2).min(2000);
    let a = host(&toy_points(toy, n, seed ^ 0xA11CE)?)?;
    let b = host(&toy_points(toy, n, seed ^ 0xB0B)?)?;
    let modes = match toy.mixture() {
        Some(g) => Some(metrics::mode_coverage(&g, samples, 4.0)?),
        None => None,
    };
    Ok(Quality {
        energy_distance: metrics::energy_distance(&samples[..2 * n], &a, 2),
        energy_distance_data_vs_data: metrics::energy_distance(&b, &a, 2),
        modes,
    })
}

/// Held-out log-likelihood through the probability-flow ODE (exact trace in 2-D): mean
/// log p in nats per point, bits/dim of the continuous density (−log p / (2 ln 2)), NFE, and the
/// true mean log density when the toy distribution is a mixture.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldOutLikelihood {
    /// Mean log p_ε(x) from the ODE, nats per point.
    pub mean_log_p: f64,
    /// −mean log p / (D ln 2).
    pub bits_per_dim: f64,
    /// The data's own mean log density (the best any model can do), when known.
    pub true_mean_log_p: Option<f64>,
    /// Function evaluations of the ODE.
    pub nfe: usize,
    /// Points evaluated.
    pub n_points: usize,
}

/// Computes [`HeldOutLikelihood`] on `n` fresh points.
pub fn held_out_likelihood<S: Sde, F: ScoreFn>(
    sde: &S,
    score: &F,
    toy: Toy2d,
    n: usize,
    seed: u64,
) -> AnyResult<HeldOutLikelihood> {
    use rand::SeedableRng;
    let x = toy_points(toy, n, seed ^ 0x1E57)?;
    // rtol = atol = 1e-4 with per-sample step control: a freshly trained small network gives a
    // stiffer flow than the exact score, and per-sample steps keep one hard point from slowing
    // every other.
    let opts = LikelihoodOptions {
        estimator: DivergenceEstimator::Exact,
        sampling_eps: 1e-3,
        method: OdeMethod::Rk45(Rk45Options {
            rtol: 1e-4,
            atol: 1e-4,
            error_norm: ErrorNorm::PerSample,
            ..Default::default()
        }),
        ..Default::default()
    };
    let lik = Likelihood::new(sde, score, opts)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let out = lik.log_likelihood(&x, &mut rng)?;
    let lp = host(&out.log_p)?;
    let mean = lp.iter().sum::<f64>() / lp.len() as f64;
    let true_mean = match toy.mixture() {
        Some(g) => {
            let t = g.log_prob(&x)?;
            Some(t.iter().sum::<f64>() / t.len() as f64)
        }
        None => None,
    };
    Ok(HeldOutLikelihood {
        mean_log_p: mean,
        bits_per_dim: -mean / (2.0 * std::f64::consts::LN_2),
        true_mean_log_p: true_mean,
        nfe: out.nfe,
        n_points: n,
    })
}

/// Side-by-side scatter panels, each drawn over the data in grey.
pub fn samples_png(path: &Path, data: &[f64], panels: &[&[f64]], range: f64) -> AnyResult<()> {
    let mut canvases = vec![];
    let mut first = Canvas::new(420, -range, range);
    first.scatter(data, plot::PALETTE[0], 1.2, 0.6);
    canvases.push(first);
    for (i, p) in panels.iter().enumerate() {
        let mut c = Canvas::new(420, -range, range);
        c.scatter(data, plot::GREY, 1.0, 0.35);
        c.scatter(p, plot::PALETTE[(i + 1) % plot::PALETTE.len()], 1.2, 0.6);
        canvases.push(c);
    }
    plot::hstack(&canvases.iter().collect::<Vec<_>>()).save(path)?;
    Ok(())
}

/// The learned score as arrows on a grid at several times (one panel per time), over the data.
/// Arrows show std(t)² · s(x, t) — the denoising displacement — capped in length for legibility.
pub fn score_field_png<S: Sde, F: ScoreFn>(
    path: &Path,
    sde: &S,
    score: &F,
    times: &[f64],
    data: &[f64],
    range: f64,
) -> AnyResult<()> {
    let g = 21;
    let mut grid = Vec::with_capacity(g * g * 2);
    for i in 0..g {
        for j in 0..g {
            grid.push(-range + 2.0 * range * (j as f64 + 0.5) / g as f64);
            grid.push(-range + 2.0 * range * (i as f64 + 0.5) / g as f64);
        }
    }
    let x = Tensor::from_vec(grid.clone(), (g * g, 2), &Device::Cpu)?.to_dtype(DType::F32)?;
    let cell = 2.0 * range / g as f64;
    let mut canvases = vec![];
    for (k, &t) in times.iter().enumerate() {
        let tt = time_tensor(t, g * g, &Device::Cpu, DType::F32)?;
        let s = host(&score.score(&x, &tt)?)?;
        let (_, std) = sde.marginal_coeffs(&tt)?;
        let var = host(&std)?[0].powi(2);
        let mut c = Canvas::new(420, -range, range);
        c.scatter(data, plot::GREY, 1.0, 0.3);
        for p in 0..g * g {
            let (x0, y0) = (grid[2 * p], grid[2 * p + 1]);
            let (mut dx, mut dy) = (var * s[2 * p], var * s[2 * p + 1]);
            let len = (dx * dx + dy * dy).sqrt();
            let cap = 0.9 * cell;
            if len > cap {
                dx *= cap / len;
                dy *= cap / len;
            }
            c.arrow(
                (x0, y0),
                (x0 + dx, y0 + dy),
                plot::PALETTE[k % plot::PALETTE.len()],
            );
        }
        canvases.push(c);
    }
    plot::hstack(&canvases.iter().collect::<Vec<_>>()).save(path)?;
    Ok(())
}

/// Keeps candle's CPU thread pool to one thread unless the user set `CANDLE_NUM_THREADS`: for
/// 2-D data every tensor op is tiny and synchronising worker threads costs more than it saves
/// (much more on a loaded machine, where candle's spinning barrier waits for descheduled
/// workers). Call it first thing in `main`, before any tensor op.
///
/// It also keeps freed memory in the process ([`score_nets::retain_freed_memory`], glibc):
/// candle allocates a fresh buffer for every op, and returning each one to the kernel made page
/// faults cost as much as the arithmetic. (This replaces a copy of that `mallopt` call whose
/// 256 MiB mmap threshold glibc refused, above its 32 MiB maximum, leaving that setting unchanged.)
pub fn single_threaded_candle() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    score_nets::retain_freed_memory();
}

/// Trajectories of a few particles (polylines from the prior to the data), over the data.
pub fn trajectories_png(
    path: &Path,
    paths: &[Vec<(f64, f64)>],
    data: &[f64],
    range: f64,
) -> AnyResult<()> {
    let mut c = Canvas::new(600, -range, range);
    c.scatter(data, plot::GREY, 1.0, 0.35);
    for (i, p) in paths.iter().enumerate() {
        c.polyline(p, plot::PALETTE[i % plot::PALETTE.len()]);
        if let Some(&end) = p.last() {
            c.scatter(&[end.0, end.1], [0, 0, 0], 2.5, 1.0);
        }
    }
    c.save(path)?;
    Ok(())
}

/// An observer for `PcSampler::sample_observed` that records the first `k` particles every
/// `every` steps (and at the last step).
pub fn trajectory_recorder(
    k: usize,
    every: usize,
    n_steps: usize,
    out: &mut Vec<Vec<(f64, f64)>>,
) -> impl FnMut(usize, f64, &Tensor) + '_ {
    out.clear();
    out.resize(k, Vec::new());
    move |i, _t, x| {
        if i % every.max(1) == 0 || i + 1 == n_steps {
            if let Ok(v) = x
                .narrow(0, 0, k.min(x.dim(0).unwrap_or(0)))
                .and_then(|v| v.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>())
            {
                for (j, p) in v.chunks_exact(2).enumerate() {
                    out[j].push((p[0], p[1]));
                }
            }
        }
    }
}

/// A shape `[n, 2]`.
pub fn points_shape(n: usize) -> Shape {
    Shape::from((n, 2))
}

/// Parses a toy distribution's command-line name: `eight-gaussians`, `checkerboard`,
/// `swiss-roll`, `two-moons`, `rings`.
pub fn parse_toy(s: &str) -> AnyResult<Toy2d> {
    Ok(match s {
        "eight-gaussians" | "8gaussians" => Toy2d::EightGaussians,
        "checkerboard" => Toy2d::Checkerboard,
        "swiss-roll" => Toy2d::SwissRoll,
        "two-moons" | "moons" => Toy2d::TwoMoons,
        "rings" => Toy2d::Rings,
        other => {
            return Err(format!(
                "unknown toy distribution `{other}` (eight-gaussians, checkerboard, swiss-roll, two-moons, rings)"
            )
            .into())
        }
    })
}

/// Command-line options the 2-D runs of the `smld` and `ddpm` examples share.
#[derive(clap::Args, Debug, Clone)]
pub struct ToyArgs {
    /// 2-D toy distribution: eight-gaussians, checkerboard, swiss-roll, two-moons, rings.
    #[arg(long, default_value = "eight-gaussians")]
    pub toy: String,
    /// Training steps.
    #[arg(long, default_value_t = 6000)]
    pub steps: u64,
    /// Batch size.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// Peak learning rate (Adam with linear warm-up).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Discretisation steps N of the samplers.
    #[arg(long, default_value_t = 1000)]
    pub n_steps: usize,
    /// Samples to draw.
    #[arg(long, default_value_t = 3000)]
    pub n_samples: usize,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// CI-sized run (seconds): few steps and samples.
    #[arg(long)]
    pub quick: bool,
}

impl ToyArgs {
    /// Caps the sizes for `--quick`.
    pub fn apply_quick(&mut self) {
        if self.quick {
            self.steps = self.steps.min(300);
            self.n_samples = self.n_samples.min(500);
            self.n_steps = self.n_steps.min(100);
        }
    }

    /// The training settings these options describe.
    pub fn training(&self) -> AnyResult<ToyTraining> {
        Ok(ToyTraining {
            toy: parse_toy(&self.toy)?,
            steps: self.steps,
            batch: self.batch,
            lr: self.lr,
            seed: self.seed,
            progress: !self.quick,
        })
    }

    /// Held-out points for the likelihood (fewer with `--quick`).
    pub fn n_likelihood(&self) -> usize {
        if self.quick {
            100
        } else {
            300
        }
    }
}

/// Mean training loss over the first and the last tenth of the run.
pub fn loss_first_last(summary: &TrainSummary) -> (f64, f64) {
    let l = &summary.losses;
    if l.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let k = (l.len() / 10).max(1);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    (mean(&l[..k]), mean(&l[l.len() - k..]))
}

/// Prints one sampler's line: NFE, energy distance against the data-vs-data floor, mode
/// coverage, seconds.
pub fn print_quality(name: &str, q: &Quality, nfe: usize, secs: f64) {
    let modes = q
        .modes
        .as_ref()
        .map(|m| {
            format!(
                ", modes {}/{}, max weight error {:.3}, off-mode {:.3}",
                m.modes_covered,
                m.weights.len(),
                m.max_weight_error,
                m.off_mode_fraction
            )
        })
        .unwrap_or_default();
    println!(
        "  {name:<30} NFE {nfe:5}  energy distance {:.4} (data vs data {:.4}){modes}  [{secs:.1} s]",
        q.energy_distance, q.energy_distance_data_vs_data
    );
}

/// Prints the held-out likelihood line.
pub fn print_likelihood(lik: &HeldOutLikelihood) {
    println!(
        "  held-out log-likelihood (probability-flow ODE, exact trace): {:.4} nats/point = {:.4} bits/dim{} [NFE {}]",
        lik.mean_log_p,
        lik.bits_per_dim,
        lik.true_mean_log_p
            .map(|t| format!(" (data's own: {t:.4} nats/point)"))
            .unwrap_or_default(),
        lik.nfe
    );
}
