//! Inpainting and colorization with the PC inpainter / colorizer of `sde_solvers::controllable`,
//! on small images whose conditional distribution is known in closed form.
//!
//! The data are mixtures of Gaussians over 8×8 images: six prototype patterns (stripes, checks,
//! a gradient, a disc, a cross) with independent pixel noise, in grey (1, 8, 8) for inpainting and
//! in colour (3, 8, 8) for colorization. Given the known pixels (or the grey level), the exact
//! conditional is again a mixture — the posterior over patterns times the per-pattern Gaussian of
//! the unknown pixels — so every filled pixel can be compared with its exact conditional mean and
//! standard deviation. Each test image is completed `--repeats` times to estimate both.
//!
//! `cargo run --release --example inpainting -- --help`

use std::error::Error;
use std::path::PathBuf;

use candle_core::{DType, Device, Shape, Tensor};
use clap::{Parser, ValueEnum};
use rand::SeedableRng;
use scoresde::plot;
use scoresde::report::{self, host, mean};
use sde_core::analytic::{FastMixtureScore, GaussianMixture};
use sde_core::noise::NoiseSource;
use sde_core::VpSde;
use sde_solvers::corrector::LangevinCorrector;
use sde_solvers::pc::PcSampler;
use sde_solvers::predictor::ReverseDiffusionPredictor;

/// Which pixels are unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MaskKind {
    /// The right half of the image.
    Right,
    /// The central 4×4 box.
    Center,
}

#[derive(Parser, Debug)]
#[command(
    about = "PC inpainting and colorization of 8x8 mixture-of-Gaussian images, checked against the exact conditional"
)]
struct Args {
    /// Completions per test image (their mean and spread estimate the conditional's).
    #[arg(long, default_value_t = 64)]
    repeats: usize,
    /// Discretisation steps N of the VP SDE (reverse diffusion + Langevin, snr 0.16). The
    /// replacement method converges to the exact conditional as N grows (try 2000).
    #[arg(long, default_value_t = 1000)]
    n_steps: usize,
    /// Signal-to-noise ratio of the Langevin corrector.
    #[arg(long, default_value_t = 0.16)]
    snr: f64,
    /// Unknown region for inpainting.
    #[arg(long, value_enum, default_value_t = MaskKind::Right)]
    mask: MaskKind,
    /// Output directory for inpainting.png, colorization.png and summary.json.
    #[arg(long, default_value = "target/examples/inpainting")]
    out: PathBuf,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A CI-sized run (16 repeats, 100 steps).
    #[arg(long)]
    quick: bool,
}

const S: usize = 8; // image side
const P: usize = S * S; // pixels per channel
const K: usize = 6; // prototypes
const PIXEL_STD: f64 = 0.06;

/// Prototype k as P values in [0, 1].
fn pattern(k: usize) -> Vec<f64> {
    let mut v = vec![0.0; P];
    for r in 0..S {
        for c in 0..S {
            let on = match k {
                0 => (r / 2) % 2 == 0,
                1 => (c / 2) % 2 == 0,
                2 => (r / 2 + c / 2) % 2 == 0,
                3 => {
                    v[r * S + c] = (r + c) as f64 / (2 * S - 2) as f64;
                    continue;
                }
                4 => {
                    let (dr, dc) = (r as f64 - 3.5, c as f64 - 3.5);
                    dr * dr + dc * dc < 2.9 * 2.9
                }
                _ => r == c || r + c == S - 1,
            };
            v[r * S + c] = if on { 1.0 } else { 0.0 };
        }
    }
    v
}

const COLOURS: [[f64; 3]; K] = [
    [0.9, 0.15, 0.15],
    [0.15, 0.75, 0.2],
    [0.2, 0.3, 0.95],
    [0.95, 0.85, 0.1],
    [0.85, 0.2, 0.8],
    [0.1, 0.8, 0.85],
];

/// The component means: grey (1, 8, 8) levels 0.15..0.85, or colour (3, 8, 8) on a dark ground.
fn means(channels: usize) -> Vec<Vec<f64>> {
    (0..K)
        .map(|k| {
            let pat = pattern(k);
            if channels == 1 {
                pat.iter().map(|p| 0.15 + 0.7 * p).collect()
            } else {
                (0..3)
                    .flat_map(|ch| pat.iter().map(move |p| 0.1 + p * (COLOURS[k][ch] - 0.1)))
                    .collect()
            }
        })
        .collect()
}

/// `n` test images, image i from component i mod K: (images [n·D] flat, components).
fn test_images<N: NoiseSource>(
    mu: &[Vec<f64>],
    n: usize,
    noise: &mut N,
) -> Result<Vec<f64>, Box<dyn Error>> {
    let d = mu[0].len();
    let z = host(&noise.randn(&Shape::from((n, d)), &Device::Cpu, DType::F64)?)?;
    Ok((0..n)
        .flat_map(|i| (0..d).map(move |j| (i, j)))
        .map(|(i, j)| mu[i % K][j] + PIXEL_STD * z[i * d + j])
        .collect())
}

/// Posterior weights r_k ∝ Π_j N(obs_j; m_kj, s²) over the observed coordinates (equal w_k).
fn posterior(obs: &[(f64, Vec<f64>)]) -> Vec<f64> {
    // obs: for each observed coordinate, (value, per-component means)
    let mut l = [0.0; K];
    for (y, m) in obs {
        for k in 0..K {
            l[k] -= (y - m[k]).powi(2) / (2.0 * PIXEL_STD * PIXEL_STD);
        }
    }
    let mx = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = l.iter().map(|v| (v - mx).exp()).collect();
    let s: f64 = w.iter().sum();
    w.iter().map(|v| v / s).collect()
}

/// Mixture moments per unknown coordinate: mean Σ r_k m_k and variance Σ r_k (v + m_k²) − mean².
fn mixture_moments(r: &[f64], m: &[f64], v: f64) -> (f64, f64) {
    let mean: f64 = r.iter().zip(m).map(|(r, m)| r * m).sum();
    let second: f64 = r.iter().zip(m).map(|(r, m)| r * (v + m * m)).sum();
    (mean, (second - mean * mean).max(0.0))
}

/// Statistics of `reps` completions per image against the exact conditional moments, over the
/// unknown coordinates `unknown` (indices into one image's D values).
struct Check {
    /// RMS over images and unknown coordinates of (empirical mean − exact mean).
    rms_mean_error: f64,
    /// The Monte-Carlo error expected of that RMS: √(mean exact var / reps).
    rms_mean_error_expected: f64,
    /// RMS of (sample − exact mean)/exact std: 1 if the spread is right.
    z_rms: f64,
    /// Fraction of completions whose nearest pattern is the posterior's most likely one.
    mode_agreement: f64,
    /// Empirical means per image, [n·D] (unknown coords; known coords copied from the sample).
    emp_mean: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
fn check(
    samples: &[f64],
    exact_mean: &[f64],
    exact_var: &[f64],
    unknown: &[usize],
    n: usize,
    reps: usize,
    d: usize,
    classes: &[usize],
    map_class: &[usize],
) -> Check {
    let mut emp_mean = vec![0.0; n * d];
    let (mut se, mut z2, mut var_sum, mut cnt) = (0.0, 0.0, 0.0, 0usize);
    for i in 0..n {
        for j in 0..d {
            let m: f64 = (0..reps)
                .map(|r| samples[(i * reps + r) * d + j])
                .sum::<f64>()
                / reps as f64;
            emp_mean[i * d + j] = m;
        }
        for &j in unknown {
            let (em, ev) = (exact_mean[i * d + j], exact_var[i * d + j]);
            se += (emp_mean[i * d + j] - em).powi(2);
            var_sum += ev;
            cnt += 1;
            for r in 0..reps {
                z2 += (samples[(i * reps + r) * d + j] - em).powi(2) / ev;
            }
        }
    }
    let agree = (0..n * reps)
        .filter(|&s| classes[s] == map_class[s / reps])
        .count();
    Check {
        rms_mean_error: (se / cnt as f64).sqrt(),
        rms_mean_error_expected: (var_sum / cnt as f64 / reps as f64).sqrt(),
        z_rms: (z2 / (cnt * reps) as f64).sqrt(),
        mode_agreement: agree as f64 / (n * reps) as f64,
        emp_mean,
    }
}

fn check_json(c: &Check) -> serde_json::Value {
    serde_json::json!({
        "rms_error_of_mean": c.rms_mean_error,
        "rms_error_of_mean_expected_monte_carlo": c.rms_mean_error_expected,
        "z_rms": c.z_rms,
        "mode_agreement": c.mode_agreement,
    })
}

/// Repeats each of the n images (flat D values) `reps` times as a [n·reps, C, 8, 8] tensor.
fn repeat(images: &[f64], n: usize, reps: usize, c: usize) -> Result<Tensor, Box<dyn Error>> {
    let d = c * P;
    let v: Vec<f32> = (0..n)
        .flat_map(|i| std::iter::repeat_n(i, reps))
        .flat_map(|i| images[i * d..(i + 1) * d].iter().map(|&x| x as f32))
        .collect();
    Ok(Tensor::from_vec(v, (n * reps, c, S, S), &Device::Cpu)?)
}

fn main() -> Result<(), Box<dyn Error>> {
    // reuse freed tensor buffers instead of page-faulting new ones in (glibc)
    score_nets::retain_freed_memory();
    scoresde::toy::single_threaded_candle();
    let mut args = Args::parse();
    if args.quick {
        args.repeats = args.repeats.min(16);
        args.n_steps = args.n_steps.min(100);
    }
    if args.repeats < 2 {
        return Err("--repeats must be at least 2".into());
    }
    std::fs::create_dir_all(&args.out)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let sde = VpSde::new(0.1, 20.0, args.n_steps)?;
    let sampler = PcSampler::new(
        ReverseDiffusionPredictor::new(false),
        LangevinCorrector::new(args.snr, 1)?,
    );
    let n = K; // one test image per pattern
    let reps = args.repeats;

    // ================= inpainting, grey (1, 8, 8) =================
    let mu = means(1);
    let gmm = GaussianMixture::new(vec![1.0; K], mu.clone(), vec![vec![PIXEL_STD]; K])?;
    let score = FastMixtureScore::new(&sde, gmm.clone());
    let known: Vec<bool> = (0..P)
        .map(|p| {
            let (r, c) = (p / S, p % S);
            match args.mask {
                MaskKind::Right => c < S / 2,
                MaskKind::Center => !((2..6).contains(&r) && (2..6).contains(&c)),
            }
        })
        .collect();
    let unknown: Vec<usize> = (0..P).filter(|&p| !known[p]).collect();
    let images = test_images(&mu, n, &mut rng)?;
    let mask_t = Tensor::from_vec(
        known
            .iter()
            .map(|&k| if k { 1f32 } else { 0.0 })
            .collect::<Vec<_>>(),
        (1, 1, S, S),
        &Device::Cpu,
    )?;
    let data = repeat(&images, n, reps, 1)?;
    let pb = report::spinner("inpainting");
    let t0 = std::time::Instant::now();
    let out = sampler.inpaint(&sde, &score, &data, &mask_t, &mut rng)?;
    pb.finish_and_clear();
    let inpaint_secs = t0.elapsed().as_secs_f64();
    let samples = host(&out.x)?;
    let known_err = (0..n * reps)
        .flat_map(|s| (0..P).filter(|&p| known[p]).map(move |p| (s, p)))
        .map(|(s, p)| (samples[s * P + p] - images[(s / reps) * P + p]).abs())
        .fold(0.0, f64::max);
    // Exact conditional of the unknown pixels.
    let (mut ex_mean, mut ex_var, mut map_class) = (vec![0.0; n * P], vec![0.0; n * P], vec![]);
    for i in 0..n {
        let obs: Vec<(f64, Vec<f64>)> = (0..P)
            .filter(|&p| known[p])
            .map(|p| (images[i * P + p], (0..K).map(|k| mu[k][p]).collect()))
            .collect();
        let r = posterior(&obs);
        map_class.push((0..K).fold(0, |b, k| if r[k] > r[b] { k } else { b }));
        for p in 0..P {
            let m: Vec<f64> = (0..K).map(|k| mu[k][p]).collect();
            let (a, v) = mixture_moments(&r, &m, PIXEL_STD * PIXEL_STD);
            ex_mean[i * P + p] = if known[p] { images[i * P + p] } else { a };
            ex_var[i * P + p] = v;
        }
    }
    let classes = gmm.classify(&out.x)?;
    let inp = check(
        &samples, &ex_mean, &ex_var, &unknown, n, reps, P, &classes, &map_class,
    );

    // Figure: per row original | masked | 3 completions | empirical mean | exact mean (RGB).
    let n_show = 3.min(reps);
    let cols = 3 + n_show + 1;
    let mut grid = Vec::with_capacity(n * cols * 3 * P);
    let grey = |v: &[f64], grid: &mut Vec<f32>| {
        for _ in 0..3 {
            grid.extend(v.iter().map(|&x| x as f32));
        }
    };
    for i in 0..n {
        let img = &images[i * P..(i + 1) * P];
        grey(img, &mut grid);
        for (ch, tint) in [0.95f32, 0.55, 0.55].iter().enumerate() {
            let _ = ch;
            grid.extend((0..P).map(|p| if known[p] { img[p] as f32 } else { *tint }));
        }
        for r in 0..n_show {
            grey(
                &samples[(i * reps + r) * P..(i * reps + r + 1) * P],
                &mut grid,
            );
        }
        grey(&inp.emp_mean[i * P..(i + 1) * P], &mut grid);
        grey(&ex_mean[i * P..(i + 1) * P], &mut grid);
    }
    let png_inpaint = args.out.join("inpainting.png");
    report::upscale(&plot::image_grid(&grid, n * cols, 3, S, S, cols)?, 10).save(&png_inpaint)?;

    // ================= colorization, colour (3, 8, 8) =================
    let muc = means(3);
    let d = 3 * P;
    let gmm_c = GaussianMixture::new(vec![1.0; K], muc.clone(), vec![vec![PIXEL_STD]; K])?;
    let score_c = FastMixtureScore::new(&sde, gmm_c.clone());
    let images_c = test_images(&muc, n, &mut rng)?;
    // Grey level g = (R + G + B)/3, given to the colorizer as equal R, G, B.
    let grey_of = |img: &[f64], p: usize| (img[p] + img[P + p] + img[2 * P + p]) / 3.0;
    let grey_imgs: Vec<f64> = (0..n)
        .flat_map(|i| {
            let img = &images_c[i * d..(i + 1) * d];
            (0..3).flat_map(move |_| (0..P).map(move |p| grey_of(img, p)))
        })
        .collect();
    let gray = repeat(&grey_imgs, n, reps, 3)?;
    let pb = report::spinner("colorizing");
    let t0 = std::time::Instant::now();
    let out_c = sampler.colorize(&sde, &score_c, &gray, &mut rng)?;
    pb.finish_and_clear();
    let color_secs = t0.elapsed().as_secs_f64();
    let samples_c = host(&out_c.x)?;
    let grey_err = (0..n * reps)
        .flat_map(|s| (0..P).map(move |p| (s, p)))
        .map(|(s, p)| {
            (grey_of(&samples_c[s * d..(s + 1) * d], p) - grey_imgs[(s / reps) * d + p]).abs()
        })
        .fold(0.0, f64::max);
    // Exact conditional given the grey level: u₀ = √3 g is observed with std s for component k
    // at √3 ḡ_k; the colour directions keep their component means and variance, so per channel
    // x_c | k = μ_kc − ḡ_k + g with variance (2/3) s².
    let (mut exc_mean, mut exc_var, mut map_c) = (vec![0.0; n * d], vec![0.0; n * d], vec![]);
    let s3 = 3f64.sqrt();
    for i in 0..n {
        let img = &images_c[i * d..(i + 1) * d];
        let obs: Vec<(f64, Vec<f64>)> = (0..P)
            .map(|p| {
                (
                    s3 * grey_of(img, p),
                    (0..K).map(|k| s3 * grey_of(&muc[k], p)).collect(),
                )
            })
            .collect();
        let r = posterior(&obs);
        map_c.push((0..K).fold(0, |b, k| if r[k] > r[b] { k } else { b }));
        for ch in 0..3 {
            for p in 0..P {
                let g = grey_of(img, p);
                let m: Vec<f64> = (0..K)
                    .map(|k| muc[k][ch * P + p] - grey_of(&muc[k], p) + g)
                    .collect();
                let (a, v) = mixture_moments(&r, &m, 2.0 / 3.0 * PIXEL_STD * PIXEL_STD);
                exc_mean[i * d + ch * P + p] = a;
                exc_var[i * d + ch * P + p] = v;
            }
        }
    }
    let classes_c = gmm_c.classify(&out_c.x)?;
    let all: Vec<usize> = (0..d).collect();
    let col = check(
        &samples_c, &exc_mean, &exc_var, &all, n, reps, d, &classes_c, &map_c,
    );

    let mut grid_c = Vec::with_capacity(n * cols * d);
    for i in 0..n {
        let to32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
        grid_c.extend(to32(&images_c[i * d..(i + 1) * d]));
        grid_c.extend(to32(&grey_imgs[i * d..(i + 1) * d]));
        for r in 0..n_show {
            grid_c.extend(to32(&samples_c[(i * reps + r) * d..(i * reps + r + 1) * d]));
        }
        grid_c.extend(to32(&col.emp_mean[i * d..(i + 1) * d]));
        grid_c.extend(to32(&exc_mean[i * d..(i + 1) * d]));
    }
    let png_color = args.out.join("colorization.png");
    report::upscale(&plot::image_grid(&grid_c, n * cols, 3, S, S, cols)?, 10).save(&png_color)?;

    // ================= report =================
    println!(
        "VP SDE, N = {}, reverse diffusion + Langevin (snr {}), {} test images x {} completions; pixel noise std {PIXEL_STD}",
        args.n_steps, args.snr, n, reps
    );
    for (name, c, extra, secs, nfe) in [
        (
            "inpainting (1,8,8)",
            &inp,
            format!("known pixels kept within {known_err:.1e}"),
            inpaint_secs,
            out.nfe,
        ),
        (
            "colorization (3,8,8)",
            &col,
            format!("grey level kept within {grey_err:.1e}"),
            color_secs,
            out_c.nfe,
        ),
    ] {
        println!(
            "  {name:<21} RMS |mean - exact conditional mean| {:.4} (Monte-Carlo level {:.4}), z-RMS {:.3} (1 = exact spread), posterior mode {:.1}%, {extra}; NFE {nfe}, {secs:.1} s",
            c.rms_mean_error,
            c.rms_mean_error_expected,
            c.z_rms,
            100.0 * c.mode_agreement
        );
    }
    let summary = serde_json::json!({
        "seed": args.seed, "n_steps": args.n_steps, "snr": args.snr, "repeats": reps,
        "n_test_images": n, "pixel_std": PIXEL_STD, "mask": format!("{:?}", args.mask),
        "inpainting": {"check": check_json(&inp), "known_pixels_max_abs_error": known_err, "nfe": out.nfe, "seconds": inpaint_secs},
        "colorization": {"check": check_json(&col), "grey_level_max_abs_error": grey_err, "nfe": out_c.nfe, "seconds": color_secs},
        "figures": {
            "inpainting.png": "per row: original | masked (unknown pixels pink) | 3 completions | mean of all completions | exact conditional mean",
            "colorization.png": "per row: original | grey input | 3 colorizations | mean of all colorizations | exact conditional mean",
        },
    });
    report::write_summary(&args.out, &summary)?;
    println!(
        "mean z over both tasks {:.3}; wrote {}, {} and summary.json",
        mean(&[inp.z_rms, col.z_rms]),
        png_inpaint.display(),
        png_color.display()
    );
    Ok(())
}
