//! Criterion benches of the PC sampler on the 2-D mixture toy of `bench_ref.py` (case iii).
//!
//! `cargo bench --bench solvers` (short CI profile: 1 s measurement, 10 samples). One
//! iteration = 50 PC steps (reverse diffusion + Langevin, snr 0.16) on 10 000 samples, so the
//! full 1000-step run costs 20 iterations; `examples/bench_solvers.rs` times the full run.

use std::time::Duration;

use candle_core::{DType, Device};
use criterion::{criterion_group, criterion_main, Criterion};
use sde_core::analytic::{GaussianMixture, GaussianMixtureScore};
use sde_core::noise::BlockNoise;
use sde_core::VeSde;
use sde_solvers::corrector::LangevinCorrector;
use sde_solvers::pc::PcSampler;
use sde_solvers::predictor::ReverseDiffusionPredictor;

fn pc_sampler(c: &mut Criterion) {
    let steps = 50;
    let batch = 10_000;
    let sde = VeSde::new(0.01, 50.0, steps).expect("valid VE parameters");
    let gmm = GaussianMixture::ring(8, 4.0, 0.2).expect("valid mixture");
    let sampler = PcSampler::new(
        ReverseDiffusionPredictor::new(false),
        LangevinCorrector::new(0.16, 1).expect("valid corrector"),
    )
    .sampling_eps(1e-5);
    let mut group = c.benchmark_group("pc_sampler");
    group
        .measurement_time(Duration::from_secs(1))
        .sample_size(10);
    let core = GaussianMixtureScore::new(&sde, gmm.clone());
    group.bench_function("cpu_pc_rd_langevin_gmm2d_b10000_x50", |b| {
        let mut noise = BlockNoise::new(0);
        b.iter(|| {
            let out = sampler
                .sample(
                    &sde,
                    &core,
                    (batch, 2),
                    &Device::Cpu,
                    DType::F32,
                    &mut noise,
                )
                .expect("sampling succeeds");
            out.x
                .sum_all()
                .and_then(|s| s.to_scalar::<f32>())
                .expect("sync")
        })
    });
    group.finish();
}

criterion_group!(benches, pc_sampler);
criterion_main!(benches);
