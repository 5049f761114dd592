//! Likelihood speed on the reference's toy problem, one line per measure.
//!
//! 10 000 points of the 2-D mixture of 8 Gaussians (ring of radius 4, std 0.2, layout
//! (B, 1, 1, 2)), VE SDE (σ_min = 0.01, σ_max = 50, N = 1000), exact mixture score, RK45 with
//! rtol = atol = 1e-5, one Rademacher probe, ε = 1e-5: the setup of
//! `../shared/baselines/bench_ref.py` (`bench_likelihood`), whose figure is 3.37 s and 158 NFE
//! (`baseline_cpu.json`, `likelihood_gmm2d`).
//!
//! ```text
//! cargo run --release --example bench_likelihood -- [--points 10000] [--reps 5] [--only NAME]
//! ```

use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor};
use rand::SeedableRng;
use sde_core::analytic::{FastMixtureScore, GaussianMixture};
use sde_core::noise::NoiseSource;
use sde_core::{ScoreFn, VeSde};
use sde_solvers::likelihood::{
    DivergenceEstimator, HutchinsonProbe, Likelihood, LikelihoodOptions, LikelihoodOutput,
};
use sde_solvers::ode::{ErrorNorm, OdeMethod, Rk45Options};

/// The reference's time for this problem (seconds), `baseline_cpu.json` → `likelihood_gmm2d`.
const REFERENCE_SECONDS: f64 = 3.365559387000303;
const REFERENCE_NFE: usize = 158;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

use scoresde::report::cpu_seconds;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Median wall time of `reps` likelihood runs (after one warm-up) and the last output.
fn bench<F: ScoreFn>(
    sde: &VeSde,
    score: &F,
    data: &Tensor,
    error_norm: ErrorNorm,
    reps: usize,
) -> AnyResult<(f64, f64, LikelihoodOutput)> {
    let opts = LikelihoodOptions {
        method: OdeMethod::Rk45(Rk45Options {
            rtol: 1e-5,
            atol: 1e-5,
            error_norm,
            ..Default::default()
        }),
        sampling_eps: 1e-5,
        estimator: DivergenceEstimator::Hutchinson {
            probe: HutchinsonProbe::Rademacher,
            n_probes: 1,
        },
        ..Default::default()
    };
    let lik = Likelihood::new(sde, score, opts)?;
    let mut times = Vec::with_capacity(reps);
    let mut cpu = Vec::with_capacity(reps);
    let mut last = None;
    for r in 0..=reps {
        let mut probe_rng = rand::rngs::StdRng::seed_from_u64(1);
        let c0 = cpu_seconds().unwrap_or(f64::NAN);
        let t0 = Instant::now();
        let out = lik.log_likelihood(data, &mut probe_rng)?;
        let dt = t0.elapsed().as_secs_f64();
        if r > 0 {
            // the first run is a warm-up
            times.push(dt);
            cpu.push(cpu_seconds().unwrap_or(f64::NAN) - c0);
        }
        last = Some(out);
    }
    Ok((median(times), median(cpu), last.ok_or("no run")?))
}

fn main() -> AnyResult<()> {
    // reuse freed tensor buffers instead of page-faulting new ones in (glibc)
    score_nets::retain_freed_memory();
    let n = arg("--points", 10_000);
    let reps = arg("--reps", 5).max(1);
    let dev = Device::Cpu;
    let sde = VeSde::new(0.01, 50.0, 1000)?;
    let gmm = GaussianMixture::ring(8, 4.0, 0.2)?;
    let oracle = FastMixtureScore::new(&sde, gmm.clone());
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let data = gmm.sample(&Shape::from((n, 1, 1, 2)), &dev, DType::F32, &mut rng)?;
    let t_eps = sde_core::time_tensor(1e-5, n, &dev, DType::F64)?;
    let exact = oracle.log_prob(&data.to_dtype(DType::F64)?, &t_eps)?;
    let t_mid = sde_core::time_tensor(0.3, n, &dev, DType::F32)?;
    let probe = rng.rademacher(data.shape(), &dev, DType::F32)?;

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "# machine: {cores} cores, load average {} (wall times are only comparable on an idle machine; cpu = user + system time of all threads)",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let only = std::env::args()
        .skip_while(|a| a != "--only")
        .nth(1)
        .unwrap_or_default();
    let want = |name: &str| name.contains(only.as_str());
    let line = |name: &str, (secs, cpu, out): (f64, f64, LikelihoodOutput)| -> AnyResult<()> {
        let lp = out.log_p.to_vec1::<f64>()?;
        let mean_err = lp.iter().zip(&exact).map(|(a, b)| a - b).sum::<f64>() / n as f64;
        let bpd = out
            .reference_bits_per_dim(sde_solvers::likelihood::DataRange::ZeroOne)?
            .mean_all()?
            .to_scalar::<f64>()?;
        println!(
            "{name} points={n}: {:.4} s wall (median of {reps}), {cpu:.2} s cpu, nfe {}, {:.3} ms/nfe, mean bpd {bpd:.4}, \
             mean log p error vs exact log p_eps {mean_err:+.4} nats; reference {REFERENCE_SECONDS:.2} s / \
             {REFERENCE_NFE} nfe (idle machine) -> {:.1}x by wall time, {:.1}x by cpu time",
            secs,
            out.nfe,
            1e3 * secs / out.nfe as f64,
            REFERENCE_SECONDS / secs,
            REFERENCE_SECONDS / cpu,
        );
        Ok(())
    };
    if want("cpu_likelihood_gmm2d_rk45_batch") {
        line(
            "cpu_likelihood_gmm2d_rk45_batch",
            bench(&sde, &oracle, &data, ErrorNorm::Batch, reps)?,
        )?;
    }
    if want("cpu_likelihood_gmm2d_rk45_per_sample") {
        line(
            "cpu_likelihood_gmm2d_rk45_per_sample",
            bench(&sde, &oracle, &data, ErrorNorm::PerSample, reps)?,
        )?;
    }

    // Where the time goes: the score + vjp of one right-hand-side evaluation alone.
    let time_score = |f: &dyn Fn() -> AnyResult<()>| -> AnyResult<f64> {
        let mut ts = Vec::new();
        for _ in 0..20 {
            let t0 = Instant::now();
            f()?;
            ts.push(t0.elapsed().as_secs_f64());
        }
        Ok(1e3 * median(ts))
    };
    let to = time_score(&|| {
        oracle.score_with_vjp(&data, &t_mid, &probe)?;
        Ok(())
    })?;
    println!("cpu_score_with_vjp_gmm2d points={n}: {to:.3} ms per call (median of 20)");
    Ok(())
}
