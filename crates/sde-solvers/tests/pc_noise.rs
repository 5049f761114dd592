//! Reproducibility of PC sampling with the noise sources of sde-core.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use sde_core::analytic::{FastMixtureScore, GaussianMixture};
use sde_core::noise::PerSampleNoise;
use sde_core::{VeSde, VpSde};
use sde_solvers::corrector::{AnnealedLangevinDynamics, LangevinCorrector, NoCorrector};
use sde_solvers::pc::PcSampler;
use sde_solvers::predictor::{AncestralSamplingPredictor, ReverseDiffusionPredictor};

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2().unwrap()
}

/// With `PerSampleNoise`, sample i is bit-identical whether it is generated in one batch of 8
/// or in batches of 3 and 5 (`with_offset(3)`). This holds for samplers whose steps act on each
/// sample alone: every predictor, ALD and no corrector. (The Langevin corrector's step size is
/// a batch mean, as in the reference, so it couples the samples of a batch.)
#[test]
fn per_sample_noise_is_batch_size_invariant() {
    let gmm = GaussianMixture::ring(8, 4.0, 0.2).unwrap();
    let ve = VeSde::new(0.01, 50.0, 60).unwrap();
    let score = FastMixtureScore::new(&ve, gmm.clone());
    let sampler = PcSampler::new(
        ReverseDiffusionPredictor::new(false),
        AnnealedLangevinDynamics::new(0.16, 2).unwrap(),
    )
    .sampling_eps(1e-5);
    let run = |b: usize, offset: u64| {
        let mut noise = PerSampleNoise::new(42).with_offset(offset);
        sampler
            .sample(&ve, &score, (b, 2), &Device::Cpu, DType::F32, &mut noise)
            .unwrap()
            .x
    };
    let all = rows(&run(8, 0));
    let mut split = rows(&run(3, 0));
    split.extend(rows(&run(5, 3)));
    assert_eq!(all, split);
    // ... and a different seed gives different samples.
    let other = rows(
        &sampler
            .sample(
                &ve,
                &score,
                (8, 2),
                &Device::Cpu,
                DType::F32,
                &mut PerSampleNoise::new(43),
            )
            .unwrap()
            .x,
    );
    assert_ne!(all, other);

    // Same with VP ancestral sampling and no corrector.
    let vp = VpSde::new(0.1, 20.0, 60).unwrap();
    let score = FastMixtureScore::new(&vp, gmm);
    let sampler = PcSampler::new(AncestralSamplingPredictor, NoCorrector);
    let run = |b: usize, offset: u64| {
        let mut noise = PerSampleNoise::new(7).with_offset(offset);
        rows(
            &sampler
                .sample(&vp, &score, (b, 2), &Device::Cpu, DType::F32, &mut noise)
                .unwrap()
                .x,
        )
    };
    let all = run(8, 0);
    let mut split = run(3, 0);
    split.extend(run(5, 3));
    assert_eq!(all, split);
}

/// A seeded `StdRng` gives bit-identical samples run after run; the Langevin corrector's
/// batch coupling means a split batch differs (documented behaviour of the reference).
#[test]
fn seeded_rng_reproduces_and_langevin_couples_the_batch() {
    let gmm = GaussianMixture::ring(8, 4.0, 0.2).unwrap();
    let ve = VeSde::new(0.01, 50.0, 40).unwrap();
    let score = FastMixtureScore::new(&ve, gmm);
    let sampler = PcSampler::new(
        ReverseDiffusionPredictor::new(false),
        LangevinCorrector::new(0.16, 1).unwrap(),
    )
    .sampling_eps(1e-5);
    let go = |seed| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        rows(
            &sampler
                .sample(&ve, &score, (6, 2), &Device::Cpu, DType::F32, &mut rng)
                .unwrap()
                .x,
        )
    };
    assert_eq!(go(3), go(3));
    let all = rows(
        &sampler
            .sample(
                &ve,
                &score,
                (8, 2),
                &Device::Cpu,
                DType::F32,
                &mut PerSampleNoise::new(1),
            )
            .unwrap()
            .x,
    );
    let part = rows(
        &sampler
            .sample(
                &ve,
                &score,
                (3, 2),
                &Device::Cpu,
                DType::F32,
                &mut PerSampleNoise::new(1),
            )
            .unwrap()
            .x,
    );
    assert_ne!(
        all[..3],
        part[..],
        "Langevin's batch-mean step size couples samples"
    );
}
