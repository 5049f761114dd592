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
use sde_core::analytic::{GaussianMixture, GaussianMixtureScore};
use sde_core::noise::NoiseSource;
use sde_core::{ScoreFn, Sde, VeSde};
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

/// The exact score of an isotropic Gaussian mixture under an SDE with kernel N(a x₀, σ² I),
/// fused for speed: the per-component constants (a μ_k, 1/(a² s_k² + σ²), log w_k −
/// D/2 log(2π(a² s_k² + σ²))) are computed once per distinct time instead of once per point,
/// components further than e^{-40} in relative weight get responsibility 0 without an `exp`,
/// one (a, σ) serves the whole batch when all samples share t, the arithmetic is float32 (as
/// the reference's model),
/// and one pass per point gives the responsibilities r_k, the score s̄ = Σ r_k s_k with
/// s_k = −(x − a μ_k)/v_k, and J v = Σ_k r_k (−v/v_k + s_k (s_k·v)) − s̄ (s̄·v).
/// The same mathematics as `sde_core::analytic::GaussianMixtureScore` (checked below).
struct FusedMixtureScore<'a, S> {
    sde: &'a S,
    means: Vec<f64>,
    vars: Vec<f64>,
    log_w: Vec<f64>,
    dim: usize,
}

impl<'a, S: Sde> FusedMixtureScore<'a, S> {
    fn new(sde: &'a S, gmm: &GaussianMixture) -> Self {
        Self {
            sde,
            means: gmm.means().iter().flatten().copied().collect(),
            vars: gmm.variances().iter().map(|v| v[0]).collect(),
            log_w: gmm.weights().iter().map(|w| w.ln()).collect(),
            dim: gmm.dim(),
        }
    }

    fn eval(
        &self,
        x: &Tensor,
        t: &Tensor,
        v: Option<&Tensor>,
    ) -> sde_core::Result<(Tensor, Option<Tensor>)> {
        // One (a, σ) for the whole batch when every sample is at the same time (batch-mode RK45).
        let th = sde_core::to_host_f64(t)?;
        let uniform = th.windows(2).all(|w| w[0] == w[1]) && !th.is_empty();
        let t_eval = if uniform {
            t.narrow(0, 0, 1)?
        } else {
            t.clone()
        };
        let (a, sig) = self.sde.marginal_coeffs(&t_eval)?;
        let (mut a, mut sig) = (sde_core::to_host_f64(&a)?, sde_core::to_host_f64(&sig)?);
        if uniform {
            a = vec![a[0]; th.len()];
            sig = vec![sig[0]; th.len()];
        }
        let xs = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let vs = match v {
            Some(v) => Some(v.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        let (d, k) = (self.dim, self.log_w.len());
        let b = a.len();
        let mut score = vec![0f32; b * d];
        let mut vjp = vec![0f32; if vs.is_some() { b * d } else { 0 }];
        let (means, vars, log_w) = (&self.means, &self.vars, &self.log_w);
        let work = |start: usize, score: &mut [f32], vjp: &mut [f32]| {
            let n = score.len() / d;
            // f32 arithmetic, as the reference's float32 model; constants from f64.
            let (mut amu, mut inv, mut lnorm) = (vec![0f32; k * d], vec![0f32; k], vec![0f32; k]);
            let (mut r, mut diff) = (vec![0f32; k], vec![0f32; k * d]);
            let mut sbar = vec![0f32; d];
            let mut cur = (f64::NAN, f64::NAN);
            for li in 0..n {
                let i = start + li;
                if (a[i], sig[i]) != cur {
                    cur = (a[i], sig[i]);
                    for c in 0..k {
                        let vv = a[i] * a[i] * vars[c] + sig[i] * sig[i];
                        inv[c] = (1.0 / vv) as f32;
                        lnorm[c] = (log_w[c]
                            - 0.5 * d as f64 * (2.0 * std::f64::consts::PI * vv).ln())
                            as f32;
                        for j in 0..d {
                            amu[c * d + j] = (a[i] * means[c * d + j]) as f32;
                        }
                    }
                }
                let xi = &xs[i * d..(i + 1) * d];
                let mut m = f32::NEG_INFINITY;
                for c in 0..k {
                    let mut q = 0f32;
                    for j in 0..d {
                        let dd = xi[j] - amu[c * d + j];
                        diff[c * d + j] = dd;
                        q += dd * dd;
                    }
                    r[c] = lnorm[c] - 0.5 * q * inv[c];
                    m = m.max(r[c]);
                }
                let mut z = 0f32;
                for rc in r.iter_mut() {
                    // e^{-40} < 5e-18: such a component's responsibility is 0 in f32 sums.
                    *rc = if *rc - m < -40.0 {
                        0.0
                    } else {
                        (*rc - m).exp()
                    };
                    z += *rc;
                }
                // s_k = −diff_k / v_k, s̄ = Σ r_k s_k
                sbar.iter_mut().for_each(|s| *s = 0.0);
                for c in 0..k {
                    r[c] /= z;
                    if r[c] == 0.0 {
                        continue;
                    }
                    for j in 0..d {
                        sbar[j] -= r[c] * diff[c * d + j] * inv[c];
                    }
                }
                score[li * d..(li + 1) * d].copy_from_slice(&sbar);
                if let Some(vs) = &vs {
                    let vi = &vs[i * d..(i + 1) * d];
                    let sbar_v: f32 = (0..d).map(|j| sbar[j] * vi[j]).sum();
                    let out = &mut vjp[li * d..(li + 1) * d];
                    // J v = −(Σ r_k / v_k) v + Σ r_k (s_k·v) s_k − s̄ (s̄·v)
                    let mut w = 0f32;
                    for j in 0..d {
                        out[j] = -sbar[j] * sbar_v;
                    }
                    for c in 0..k {
                        if r[c] == 0.0 {
                            continue;
                        }
                        w += r[c] * inv[c];
                        let skv: f32 = (0..d).map(|j| -diff[c * d + j] * inv[c] * vi[j]).sum();
                        for j in 0..d {
                            out[j] += r[c] * skv * (-diff[c * d + j] * inv[c]);
                        }
                    }
                    for j in 0..d {
                        out[j] -= w * vi[j];
                    }
                }
            }
        };
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8);
        let chunk = b.div_ceil(threads.max(1)).max(1);
        std::thread::scope(|sc| {
            let mut s_rest = score.as_mut_slice();
            let mut v_rest = vjp.as_mut_slice();
            let mut start = 0;
            while start < b {
                let n = chunk.min(b - start);
                let (s_now, s_next) = s_rest.split_at_mut(n * d);
                let vn = if v_rest.is_empty() { 0 } else { n * d };
                let (v_now, v_next) = v_rest.split_at_mut(vn);
                let w = &work;
                sc.spawn(move || w(start, s_now, v_now));
                s_rest = s_next;
                v_rest = v_next;
                start += n;
            }
        });
        let to_t = |v: Vec<f32>| -> sde_core::Result<Tensor> {
            Ok(Tensor::from_vec(v, x.shape(), x.device())?.to_dtype(x.dtype())?)
        };
        let vjp = if vs.is_some() { Some(to_t(vjp)?) } else { None };
        Ok((to_t(score)?, vjp))
    }
}

impl<S: Sde> ScoreFn for FusedMixtureScore<'_, S> {
    fn score(&self, x: &Tensor, t: &Tensor) -> sde_core::Result<Tensor> {
        Ok(self.eval(x, t, None)?.0)
    }
    fn score_with_vjp(
        &self,
        x: &Tensor,
        t: &Tensor,
        v: &Tensor,
    ) -> sde_core::Result<(Tensor, Tensor)> {
        let (s, j) = self.eval(x, t, Some(v))?;
        Ok((
            s,
            j.ok_or_else(|| sde_core::Error::Unsupported("vjp".into()))?,
        ))
    }
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
    let n = arg("--points", 10_000);
    let reps = arg("--reps", 5).max(1);
    let dev = Device::Cpu;
    let sde = VeSde::new(0.01, 50.0, 1000)?;
    let gmm = GaussianMixture::ring(8, 4.0, 0.2)?;
    let oracle = GaussianMixtureScore::new(&sde, gmm.clone());
    let fused = FusedMixtureScore::new(&sde, &gmm);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let data = gmm.sample(&Shape::from((n, 1, 1, 2)), &dev, DType::F32, &mut rng)?;
    let t_eps = sde_core::time_tensor(1e-5, n, &dev, DType::F64)?;
    let exact = oracle.log_prob(&data.to_dtype(DType::F64)?, &t_eps)?;

    // The fused score is the oracle's mathematics: check it before timing it.
    let t_mid = sde_core::time_tensor(0.3, n, &dev, DType::F32)?;
    let probe = rng.rademacher(data.shape(), &dev, DType::F32)?;
    let (s1, j1) = oracle.score_with_vjp(&data, &t_mid, &probe)?;
    let (s2, j2) = fused.score_with_vjp(&data, &t_mid, &probe)?;
    let diff = |a: &Tensor, b: &Tensor| -> AnyResult<f32> {
        Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
    };
    let (ds, dj) = (diff(&s1, &s2)?, diff(&j1, &j2)?);
    if ds > 1e-3 || dj > 1e-2 {
        return Err(format!("fused score disagrees with the oracle: {ds} / {dj}").into());
    }

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
            .reference_bits_per_dim(-1.0)?
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
    if want("cpu_likelihood_gmm2d_rk45_batch_fused_score") {
        line(
            "cpu_likelihood_gmm2d_rk45_batch_fused_score",
            bench(&sde, &fused, &data, ErrorNorm::Batch, reps)?,
        )?;
    }
    if want("cpu_likelihood_gmm2d_rk45_per_sample_fused_score") {
        line(
            "cpu_likelihood_gmm2d_rk45_per_sample_fused_score",
            bench(&sde, &fused, &data, ErrorNorm::PerSample, reps)?,
        )?;
    }
    if want("cpu_likelihood_gmm2d_rk45_batch_sde_core_oracle") {
        line(
            "cpu_likelihood_gmm2d_rk45_batch_sde_core_oracle",
            bench(&sde, &oracle, &data, ErrorNorm::Batch, reps)?,
        )?;
    }
    if want("cpu_likelihood_gmm2d_rk45_per_sample_sde_core_oracle") {
        line(
            "cpu_likelihood_gmm2d_rk45_per_sample_sde_core_oracle",
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
    let tf = time_score(&|| {
        fused.score_with_vjp(&data, &t_mid, &probe)?;
        Ok(())
    })?;
    let to = time_score(&|| {
        oracle.score_with_vjp(&data, &t_mid, &probe)?;
        Ok(())
    })?;
    println!("cpu_score_with_vjp_gmm2d points={n}: fused {tf:.3} ms, sde_core oracle {to:.3} ms per call (median of 20)");
    Ok(())
}
