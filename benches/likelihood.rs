//! Criterion bench of the likelihood on the reference's toy problem (issue 3, "Speed"):
//! 10 000 points of the 2-D mixture of 8 Gaussians (ring of radius 4, std 0.2), VE SDE
//! (σ_min = 0.01, σ_max = 50), the exact mixture score of `sde_core::analytic`, RK45 with
//! rtol = atol = 1e-5 and one Rademacher probe (`bench_ref.py`: 3.37 s, 158 NFE), with the
//! scipy-compatible batch error norm and with per-sample step control; plus one RK45 solve of
//! the probability-flow ODE sampler for the same points.
//!
//! `cargo bench --bench likelihood`; `examples/bench_likelihood.rs` prints the same figures
//! as one line per measure.

use candle_core::{DType, Device, Shape};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::SeedableRng;
use sde_core::analytic::{FastMixtureScore, GaussianMixture};
use sde_core::VeSde;
use sde_solvers::likelihood::{
    DivergenceEstimator, HutchinsonProbe, Likelihood, LikelihoodOptions,
};
use sde_solvers::ode::{ErrorNorm, OdeMethod, Rk45Options};
use sde_solvers::ode_sampler::{OdeSampler, OdeSamplerOptions};

fn likelihood(c: &mut Criterion) {
    score_nets::retain_freed_memory();
    let n = 10_000;
    let sde = VeSde::new(0.01, 50.0, 1000).expect("valid VE parameters");
    let gmm = GaussianMixture::ring(8, 4.0, 0.2).expect("valid mixture");
    let oracle = FastMixtureScore::new(&sde, gmm.clone());
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let data = gmm
        .sample(
            &Shape::from((n, 1, 1, 2)),
            &Device::Cpu,
            DType::F32,
            &mut rng,
        )
        .expect("sampling");

    let mut group = c.benchmark_group("cpu_likelihood_gmm2d_10k");
    group
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(1))
        .warm_up_time(std::time::Duration::from_millis(500));
    for (name, error_norm) in [
        ("rk45_batch", ErrorNorm::Batch),
        ("rk45_per_sample", ErrorNorm::PerSample),
    ] {
        let opts = LikelihoodOptions {
            method: OdeMethod::Rk45(Rk45Options {
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
        let lik = Likelihood::new(&sde, &oracle, opts).expect("valid options");
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut probe_rng = rand::rngs::StdRng::seed_from_u64(1);
                let out = lik
                    .log_likelihood(&data, &mut probe_rng)
                    .expect("likelihood");
                // CPU tensors are computed eagerly; reading one value syncs any device.
                out.log_p
                    .max_all()
                    .and_then(|m| m.to_scalar::<f64>())
                    .expect("sync")
            })
        });
    }
    let sampler = OdeSampler::new(
        &sde,
        &oracle,
        OdeSamplerOptions {
            sampling_eps: 1e-5,
            ..Default::default()
        },
    )
    .expect("valid options");
    let z = sampler.encode(&data).expect("encode").x;
    group.bench_function("ode_sampler_decode_rk45_batch", |b| {
        b.iter(|| {
            let out = sampler.decode(&z).expect("decode");
            out.x
                .max_all()
                .and_then(|m| m.to_scalar::<f32>())
                .expect("sync")
        })
    });
    group.finish();
}

criterion_group!(benches, likelihood);
criterion_main!(benches);
