//! Criterion benches of the PC sampler on the 2-D mixture toy of `bench_ref.py` (case iii).
//!
//! `cargo bench --bench solvers` (short CI profile: 1 s measurement, 10 samples). One
//! iteration = 50 PC steps (reverse diffusion + Langevin, snr 0.16) on 10 000 samples, so the
//! full 1000-step run costs 20 iterations; `examples/bench_solvers.rs` times the full run.
//!
//! Group `sampler_driver`: the same 50 PC steps as a hand-written loop over the public
//! predictor/corrector API (the loop `PcSampler` had before the driver) beside the driver, and
//! the fast samplers at the same 100 score evaluations on the same batch (overhead per
//! evaluation against the PC's). SDE-DPM-Solver++(2M) runs twice, with the caller's noise and on
//! a per-sample Brownian tree (`Sampler::brownian`), to show what batch-size invariance costs.

use std::time::Duration;

use candle_core::{DType, Device};
use criterion::{criterion_group, criterion_main, Criterion};
use sde_core::analytic::{FastMixtureScore, GaussianMixture};
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
    let core = FastMixtureScore::new(&sde, gmm.clone());
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

fn sampler_driver(c: &mut Criterion) {
    use sde_core::noise::BrownianTree;
    use sde_core::{time_tensor, Sde};
    use sde_solvers::corrector::Corrector;
    use sde_solvers::driver::Sampler;
    use sde_solvers::pc::time_grid;
    use sde_solvers::predictor::Predictor;
    use sde_solvers::samplers::{DpmSolverPp2M, SdeDpmSolverPp2M, UniPc};
    use sde_solvers::schedule::Schedule;

    let steps = 50;
    let batch = 10_000;
    let sde = VeSde::new(0.01, 50.0, steps).expect("valid VE parameters");
    let gmm = GaussianMixture::ring(8, 4.0, 0.2).expect("valid mixture");
    let score = FastMixtureScore::new(&sde, gmm);
    let pred = ReverseDiffusionPredictor::new(false);
    let corr = LangevinCorrector::new(0.16, 1).expect("valid corrector");
    let mut group = c.benchmark_group("sampler_driver");
    group
        .measurement_time(Duration::from_secs(1))
        .sample_size(10);
    let sync = |x: &candle_core::Tensor| {
        x.sum_all()
            .and_then(|s| s.to_scalar::<f32>())
            .expect("sync")
    };
    group.bench_function("cpu_pc_hand_loop_gmm2d_b10000_x50", |b| {
        let mut noise = BlockNoise::new(0);
        b.iter(|| {
            let dev = Device::Cpu;
            let mut x = sde
                .prior_sampling(&(batch, 2).into(), &dev, DType::F32, &mut noise)
                .expect("prior");
            let mut x_mean = x.clone();
            for ti in time_grid(1.0, 1e-5, steps, DType::F32).expect("grid") {
                let t = time_tensor(ti, batch, &dev, DType::F32).expect("t");
                let up = corr
                    .update(&sde, &score, &x, &t, &mut noise)
                    .expect("corrector");
                let up = pred
                    .update(&sde, &score, &up.x, &t, &mut noise)
                    .expect("predictor");
                x = up.x;
                x_mean = up.x_mean;
            }
            sync(&x_mean)
        })
    });
    let pc = PcSampler::new(pred, corr).sampling_eps(1e-5);
    group.bench_function("cpu_pc_driver_gmm2d_b10000_x50", |b| {
        let mut noise = BlockNoise::new(0);
        b.iter(|| {
            let out = pc
                .sample(
                    &sde,
                    &score,
                    (batch, 2),
                    &Device::Cpu,
                    DType::F32,
                    &mut noise,
                )
                .expect("sampling succeeds");
            sync(&out.x)
        })
    });
    let sched = Schedule::Karras {
        sigma_min: 0.01 * 5000f64.powf(1e-5),
        sigma_max: 50.0,
        rho: 7.0,
    };
    let dpm = Sampler::new(DpmSolverPp2M::default(), sched.clone(), 99);
    group.bench_function("cpu_dpmpp2m_gmm2d_b10000_nfe100", |b| {
        let mut noise = BlockNoise::new(0);
        b.iter(|| {
            let out = dpm
                .sample(
                    &sde,
                    &score,
                    (batch, 2),
                    &Device::Cpu,
                    DType::F32,
                    &mut noise,
                )
                .expect("sampling succeeds");
            sync(&out.x)
        })
    });
    let sde_dpm = Sampler::new(SdeDpmSolverPp2M::default(), sched.clone(), 99);
    let tree = BrownianTree::new(0, 0.0, 1.0).expect("valid tree");
    for (name, s) in [
        ("cpu_sde_dpmpp2m_gmm2d_b10000_nfe100", sde_dpm.clone()),
        (
            "cpu_sde_dpmpp2m_brownian_gmm2d_b10000_nfe100",
            sde_dpm.brownian(tree),
        ),
    ] {
        group.bench_function(name, |b| {
            let mut noise = BlockNoise::new(0);
            b.iter(|| {
                let out = s
                    .sample(
                        &sde,
                        &score,
                        (batch, 2),
                        &Device::Cpu,
                        DType::F32,
                        &mut noise,
                    )
                    .expect("sampling succeeds");
                sync(&out.x)
            })
        });
    }
    let uni = Sampler::new(UniPc::default(), sched, 99);
    group.bench_function("cpu_unipc_gmm2d_b10000_nfe100", |b| {
        let mut noise = BlockNoise::new(0);
        b.iter(|| {
            let out = uni
                .sample(
                    &sde,
                    &score,
                    (batch, 2),
                    &Device::Cpu,
                    DType::F32,
                    &mut noise,
                )
                .expect("sampling succeeds");
            sync(&out.x)
        })
    });
    group.finish();
}

criterion_group!(benches, pc_sampler, sampler_driver);
criterion_main!(benches);
