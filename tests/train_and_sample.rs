//! End to end on a CPU budget (issue: sde-train): training the MLP score network on 8 Gaussians
//! lowers the loss, and sampling it with the predictor–corrector sampler puts samples in every
//! mode with proportions within 5 points of the weights.

use candle_core::{DType, Device};
use rand::SeedableRng;
use score_nets::MlpConfig;
use scoresde::toy::{self, host, ToyTraining};
use sde_core::{ScoreModelFn, VpSde};
use sde_solvers::corrector::LangevinCorrector;
use sde_solvers::pc::PcSampler;
use sde_solvers::predictor::ReverseDiffusionPredictor;
use sde_train::{SdeLoss, SdeLossOptions, Toy2d};

#[test]
fn mlp_trained_on_eight_gaussians_samples_every_mode() {
    let sde = VpSde::new(0.1, 20.0, 200).unwrap();
    let run = ToyTraining {
        toy: Toy2d::EightGaussians,
        steps: 1500,
        batch: 256,
        lr: 3e-3,
        seed: 1,
        progress: false,
    };
    let loss = SdeLoss::new(&sde, SdeLossOptions::default()).unwrap();
    let (model, _vm, summary) = toy::train_mlp(&MlpConfig::vp(2), loss, &run, None).unwrap();
    let k = 100;
    let first: f64 = summary.losses[..k].iter().sum::<f64>() / k as f64;
    let last: f64 = summary.losses[summary.losses.len() - k..]
        .iter()
        .sum::<f64>()
        / k as f64;
    assert!(last < 0.8 * first, "loss did not drop: {first} -> {last}");

    let score = ScoreModelFn::new(&sde, &model, true);
    let pc = PcSampler::new(
        ReverseDiffusionPredictor::new(false),
        LangevinCorrector::new(0.16, 1).unwrap(),
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let out = pc
        .sample(&sde, &score, (4000, 2), &Device::Cpu, DType::F32, &mut rng)
        .unwrap();
    let pts = host(&out.x).unwrap();
    let gmm = Toy2d::EightGaussians.mixture().unwrap();
    let cov = scoresde::metrics::mode_coverage(&gmm, &pts, 4.0).unwrap();
    assert_eq!(cov.modes_covered, 8, "{cov:?}");
    assert!(cov.max_weight_error < 0.05, "{cov:?}");
    assert!(cov.off_mode_fraction < 0.1, "{cov:?}");
}
