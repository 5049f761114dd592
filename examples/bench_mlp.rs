//! The examples' MLP score net (`MlpConfig::ve(2)`: Fourier 64, hidden 128, 3 layers) timed as
//! a user calls it, beside `../shared/baselines/mlp_torch.py` (its PyTorch twin):
//!
//! - forward at B = 3000 with one shared label σ = 1 (what a sampler step evaluates, and what
//!   the PyTorch twin times), and with 3000 distinct labels;
//! - one DSM training step at B = 512 through [`Trainer::train_step`] (VE loss with σ ∈
//!   [0.01, 8], Adam lr 2e-3 without warm-up or clipping, as the twin; plus EMA, which the twin
//!   lacks).
//!
//! Prints medians in ms, in the twin's format, so that a whole-process timer (`hyperfine`,
//! `/usr/bin/time -v`) can pair the two:
//!
//! ```sh
//! cargo run --release --example bench_mlp            # ours
//! DIR/bin/python ../shared/baselines/mlp_torch.py     # PyTorch, same minutes
//! ```
//!
//! `--rounds N` sets the number of timed repetitions (default 50 forward, 200 steps).

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use score_nets::{init::seeded_var_builder, Mlp, MlpConfig};
use sde_core::noise::NoiseSource;
use sde_core::{Mode, ScoreModel, VeSde};
use sde_train::{AdamConfig, SdeLoss, SdeLossOptions, TrainConfig, Trainer};

use scoresde::report::median_ms as median;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: Option<usize> = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse())
        .transpose()?;
    let dev = Device::Cpu;
    let vm = candle_nn::VarMap::new();
    let net = Mlp::new(
        &MlpConfig::ve(2),
        seeded_var_builder(&vm, 0, DType::F32, &dev),
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let x = rng.randn(&(3000, 2).into(), &dev, DType::F32)?;
    let shared = Tensor::ones(3000, DType::F32, &dev)?;
    // σ log-uniform in [0.01, 8]: every row its own label.
    let u = rng.rand_uniform(&(3000,).into(), &dev, DType::F32)?;
    let distinct = (u * (8f64 / 0.01).ln())?.exp()?.affine(0.01, 0.0)?;
    let fwd = |l: &Tensor| {
        net.forward_t(&x, l, Mode::Eval)
            .expect("forward")
            .sum_all()
            .and_then(|s| s.to_scalar::<f32>())
            .expect("sum");
    };
    let n_fwd = rounds.unwrap_or(50);
    let fwd_shared = median(|| fwd(&shared), n_fwd, 3);
    let fwd_distinct = median(|| fwd(&distinct), n_fwd, 3);

    let sde = VeSde::new(0.01, 8.0, 1000)?;
    let loss = SdeLoss::new(&sde, SdeLossOptions::default())?;
    let config = TrainConfig {
        progress: false,
        log_freq: 0,
        optim: AdamConfig {
            lr: 2e-3,
            warmup: 0,
            grad_clip: None,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut trainer = Trainer::new(&net, &vm, loss, config)?;
    let batch = rng.randn(&(512, 2).into(), &dev, DType::F32)?;
    let step = median(
        || {
            trainer.train_step(&batch).expect("train step");
        },
        rounds.unwrap_or(200),
        3,
    );
    println!(
        "ours mlp fwd B=3000: {fwd_shared:.3} ms (distinct labels {fwd_distinct:.3} ms); \
         train step B=512: {step:.3} ms"
    );
    Ok(())
}
