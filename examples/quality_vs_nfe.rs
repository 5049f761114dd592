//! Quality vs NFE: energy distance to exact samples for every sampler × SDE at NFE 5, 10, 20,
//! 50, 100 and 1000, on a 2-D 8-mode mixture and a 3-D non-uniform mixture, with the exact
//! scores (`FastMixtureScore`, the float32 form of `GaussianMixtureScore`) so the only error is
//! the sampler's. Prints the markdown
//! tables of `docs/samplers.md`.
//!
//! The adaptive SDE sampler (Jolicoeur-Martineau et al. 2021, `--sampler adaptive` in the
//! other examples' terms) has no step count: its NFE is what its tolerance gives, so it gets
//! its own rows, one per relative tolerance (`--adaptive-tols`), with the mean NFE per sample.
//!
//! `cargo run --release --example quality_vs_nfe` (`-- --quick` for 800 samples and NFE ≤ 100).

use std::time::Instant;

use clap::Parser;
use sde_core::analytic::GaussianMixture;
use sde_core::{Sde, SubVpSde, VeSde, VpSde};
use sde_solvers::corrector::LangevinCorrector;
use sde_solvers::driver::Sampler;
use sde_solvers::harness::{mixture_quality, QualityReport};
use sde_solvers::pc::PcStep;
use sde_solvers::predictor::EulerMaruyamaPredictor;
use sde_solvers::samplers::{AdaptiveSampler, SamplerKind};
use sde_solvers::schedule::Schedule;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Parser, Debug)]
#[command(about = "Energy distance to exact samples vs NFE for every sampler and SDE")]
struct Args {
    /// Samples per run (and exact draws to compare with).
    #[arg(long, default_value_t = 2000)]
    n: usize,
    /// 800 samples, NFE up to 100.
    #[arg(long)]
    quick: bool,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Relative tolerances ε_rel of the adaptive SDE sampler (ε_abs = 0.0078, the paper's).
    #[arg(long, value_delimiter = ',', default_value = "0.2,0.1,0.05,0.02,0.01")]
    adaptive_tols: Vec<f64>,
    /// Only these SDEs (comma-separated of ve, vp, subvp, cosine).
    #[arg(long, value_delimiter = ',', default_value = "ve,vp,subvp,cosine")]
    sdes: Vec<String>,
    /// Skip the fixed-grid samplers (only the adaptive rows).
    #[arg(long)]
    adaptive_only: bool,
}

/// The cosine-schedule VP SDE (Nichol & Dhariwal 2021) as a user would write it: only the
/// required methods (λ(t) and its inverse come from the trait's numeric defaults).
struct CosineVp;

impl CosineVp {
    const S: f64 = 0.008;
    fn phase(t: &candle_core::Tensor) -> sde_core::Result<candle_core::Tensor> {
        let k = std::f64::consts::FRAC_PI_2 / (1.0 + Self::S);
        Ok(t.affine(k, k * Self::S)?)
    }
}

impl Sde for CosineVp {
    fn t_end(&self) -> f64 {
        0.9946
    }
    fn n(&self) -> usize {
        1000
    }
    fn sde(
        &self,
        x: &candle_core::Tensor,
        t: &candle_core::Tensor,
    ) -> sde_core::Result<(candle_core::Tensor, candle_core::Tensor)> {
        let p = Self::phase(t)?;
        let beta = (p.sin()? / p.cos()?)?.affine(std::f64::consts::PI / (1.0 + Self::S), 0.0)?;
        Ok((
            sde_core::mul_batch(&beta.affine(-0.5, 0.0)?, x)?,
            beta.sqrt()?,
        ))
    }
    fn marginal_prob(
        &self,
        x0: &candle_core::Tensor,
        t: &candle_core::Tensor,
    ) -> sde_core::Result<(candle_core::Tensor, candle_core::Tensor)> {
        let c0 = (std::f64::consts::FRAC_PI_2 * Self::S / (1.0 + Self::S)).cos();
        let m = Self::phase(t)?.cos()?.affine(1.0 / c0, 0.0)?;
        let std = (1.0 - m.sqr()?)?.sqrt()?;
        Ok((sde_core::mul_batch(&m, x0)?, std))
    }
    fn prior_sampling<N: sde_core::noise::NoiseSource + ?Sized>(
        &self,
        shape: &candle_core::Shape,
        dev: &candle_core::Device,
        dtype: candle_core::DType,
        noise: &mut N,
    ) -> sde_core::Result<candle_core::Tensor> {
        noise.randn(shape, dev, dtype)
    }
    fn prior_logp(&self, z: &candle_core::Tensor) -> sde_core::Result<candle_core::Tensor> {
        sde_core::standard_normal_logp(z, 1.0)
    }
}

/// One row of the table: a sampler at the NFE budgets.
fn row<S: Sde>(
    sde: &S,
    schedule: &Schedule,
    kind: Option<SamplerKind>,
    budgets: &[usize],
    gmm: &GaussianMixture,
    a: &Args,
) -> AnyResult<Vec<Option<QualityReport>>> {
    let mut out = Vec::new();
    for &nfe in budgets {
        let rep = match kind {
            Some(k) => {
                // NFE = steps · per-step + 1 (the final denoising evaluation)
                let steps = (nfe.saturating_sub(1)) / k.nfe_per_step();
                if steps == 0 {
                    out.push(None);
                    continue;
                }
                // EDM's sampler on EDM's schedule, the others on the SDE's schedule
                let sched = match k {
                    SamplerKind::EdmHeun(_) => Schedule::karras(sde, eps_of(schedule), 7.0)?,
                    _ => schedule.clone(),
                };
                let s = Sampler::new(k, sched, steps);
                mixture_quality(sde, &s, gmm, a.n, a.seed)?
            }
            None => {
                // the reference's PC sampler: predictor + Langevin corrector over N = NFE/2 of
                // the SDE's own chain (Euler–Maruyama for the SDEs without one)
                let n = nfe / 2;
                if n == 0 {
                    out.push(None);
                    continue;
                }
                pc_row(sde, schedule, n, gmm, a)?
            }
        };
        out.push(Some(rep));
    }
    Ok(out)
}

/// The last time of the SDE's schedule (1e-5 for VE's Karras, else its `sampling_eps`).
fn eps_of(schedule: &Schedule) -> f64 {
    match schedule {
        Schedule::UniformLogSnr { sampling_eps }
        | Schedule::UniformTime { sampling_eps }
        | Schedule::Reference { sampling_eps } => *sampling_eps,
        _ => 1e-5,
    }
}

fn pc_row<S: Sde>(
    sde: &S,
    schedule: &Schedule,
    n: usize,
    gmm: &GaussianMixture,
    a: &Args,
) -> AnyResult<QualityReport> {
    let eps = eps_of(schedule);
    let s = Sampler::new(
        PcStep {
            predictor: EulerMaruyamaPredictor::new(false),
            corrector: LangevinCorrector::new(0.16, 1)?,
        },
        Schedule::Reference { sampling_eps: eps },
        n,
    );
    Ok(mixture_quality(sde, &s, gmm, a.n, a.seed)?)
}

fn table<S: Sde>(
    sde: &S,
    label: &str,
    schedule: Schedule,
    gmm: &GaussianMixture,
    budgets: &[usize],
    a: &Args,
) -> AnyResult<f64> {
    let kinds: &[&str] = if a.adaptive_only {
        &[]
    } else {
        &SamplerKind::NAMES
    };
    println!("\n**{label}** (schedule `{schedule:?}`; heun on `Schedule::karras(sde, ε, 7)`)\n");
    if !a.adaptive_only {
        print!("| sampler |");
        for b in budgets {
            print!(" NFE {b} |");
        }
        println!();
        print!("|---|");
        for _ in budgets {
            print!("---|");
        }
        println!();
    }
    let mut floor = 0.0;
    let mut rows: Vec<(String, Vec<Option<QualityReport>>)> = Vec::new();
    for name in kinds.iter().copied() {
        let k: SamplerKind = name.parse()?;
        rows.push((
            name.to_string(),
            row(sde, &schedule, Some(k), budgets, gmm, a)?,
        ));
    }
    if !a.adaptive_only {
        rows.push((
            "PC (EM + Langevin)".into(),
            row(sde, &schedule, None, budgets, gmm, a)?,
        ));
    }
    for (name, reps) in &rows {
        print!("| {name} |");
        for r in reps {
            match r {
                Some(r) => {
                    floor = r.floor;
                    print!(" {:.4} |", r.energy_distance)
                }
                None => print!(" – |"),
            }
        }
        println!();
    }
    // the adaptive SDE sampler: one row per tolerance, its NFE is what the tolerance gives
    println!("\n| adaptive (ε_abs 0.0078) | mean NFE per sample | batched NFE | energy distance |");
    println!("|---|---|---|---|");
    for &rel in &a.adaptive_tols {
        let s = AdaptiveSampler::default()
            .rel_tol(rel)
            .sampling_eps(eps_of(&schedule));
        let r = mixture_quality(sde, &s, gmm, a.n, a.seed)?;
        floor = r.floor;
        println!(
            "| ε_rel = {rel} | {:.1} | {} | {:.4} |",
            r.nfe_mean, r.nfe, r.energy_distance
        );
    }
    Ok(floor)
}

fn main() -> AnyResult<()> {
    // reuse freed tensor buffers instead of page-faulting new ones in (glibc)
    score_nets::retain_freed_memory();
    let mut a = Args::parse();
    if a.quick {
        a.n = a.n.min(800);
    }
    let budgets: Vec<usize> = if a.quick {
        vec![5, 10, 20, 50, 100]
    } else {
        vec![5, 10, 20, 50, 100, 1000]
    };
    let ring = GaussianMixture::ring(8, 4.0, 0.3)?;
    let skew = GaussianMixture::new(
        vec![0.5, 0.3, 0.15, 0.05],
        vec![
            vec![0.0, 0.0, 0.0],
            vec![3.0, -1.0, 2.0],
            vec![-2.5, 2.5, -1.0],
            vec![1.0, 4.0, -3.0],
        ],
        vec![
            vec![0.5, 0.2, 1.0],
            vec![0.3],
            vec![0.8, 0.4, 0.2],
            vec![0.1],
        ],
    )?;
    let t0 = Instant::now();
    let ve = VeSde::new(0.01, 50.0, 1000)?;
    let vp = VpSde::default();
    let subvp = SubVpSde::default();
    let ve_sched = Schedule::Karras {
        sigma_min: ve.sigma(1e-5),
        sigma_max: 50.0,
        rho: 7.0,
    };
    let vp_sched = Schedule::UniformLogSnr { sampling_eps: 1e-3 };
    println!(
        "Energy distance to {} exact samples (lower is better); exact scores; seed {}.",
        a.n, a.seed
    );
    for (gname, gmm) in [
        ("2-D 8-mode ring", &ring),
        ("3-D non-uniform mixture", &skew),
    ] {
        println!("\n### {gname}");
        let on = |name: &str| a.sdes.iter().any(|s| s == name);
        let mut f = 0.0;
        if on("ve") {
            f = table(
                &ve,
                &format!("VE ({gname})"),
                ve_sched.clone(),
                gmm,
                &budgets,
                &a,
            )?;
        }
        if on("vp") {
            f = table(
                &vp,
                &format!("VP ({gname})"),
                vp_sched.clone(),
                gmm,
                &budgets,
                &a,
            )?;
        }
        if on("subvp") {
            f = table(
                &subvp,
                &format!("sub-VP ({gname})"),
                vp_sched.clone(),
                gmm,
                &budgets,
                &a,
            )?;
        }
        if on("cosine") {
            f = table(
                &CosineVp,
                &format!("cosine VP, user SDE ({gname})"),
                vp_sched.clone(),
                gmm,
                &budgets,
                &a,
            )?;
        }
        println!(
            "\nNoise floor (exact vs exact, {} samples each): {f:.4}",
            a.n
        );
    }
    eprintln!("total {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
