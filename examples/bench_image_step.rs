//! An MNIST-size image network timed as a user calls it, beside
//! `../shared/baselines/mnist_step_torch.py` (the reference's own NCSN++ code path):
//!
//! - the twin's network: DDPM++ built from the reference's JSON config
//!   (`benches/data/mnist_ddpmpp.json`: nf 32, ch_mult 1-2-2, one res block, attention at 7×7,
//!   28×28×1, 1,259,393 parameters) with [`NcsnPpConfig::from_reference_json`];
//! - one VP DSM training step at batch 64 (`continuous`, `reduce_mean = false`, Adam lr 2e-4,
//!   no clipping, as the twin; plus the EMA, which the twin lacks) through
//!   [`Trainer::train_step`], and an eval forward at batch 64 with labels 999·U(0, 1);
//! - `--preset`: the same for the MNIST-5k reproduction's own DDPM++ (`nf = 16`, what
//!   `ddpm --dataset mnist5k` trains).
//!
//! Prints medians in ms in the twin's format, so that a whole-process timer (`hyperfine`,
//! `/usr/bin/time -v`) can pair the two:
//!
//! ```sh
//! cargo run --release --example bench_image_step                 # ours
//! SCORE_SDE_REF=... DIR/bin/python ../shared/baselines/mnist_step_torch.py   # PyTorch, same minutes
//! ```
//!
//! `--rounds N` sets the timed repetitions (default 5 steps and 5 forwards, after 2 and 1
//! warm-up runs, as the twin).

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use score_nets::{init::seeded_var_builder, NcsnPp, NcsnPpConfig};
use sde_core::noise::NoiseSource;
use sde_core::{Mode, ScoreModel, VpSde};
use sde_train::{AdamConfig, SdeLoss, SdeLossOptions, TrainConfig, Trainer};

use scoresde::report::median_ms as median;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // reuse freed tensor buffers instead of page-faulting new ones in (glibc)
    score_nets::retain_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let preset = args.iter().any(|a| a == "--preset");
    let (cfg, name) = if preset {
        (
            NcsnPpConfig::mnist_ddpmpp_continuous(),
            "nf16 (mnist5k preset)",
        )
    } else {
        let json: serde_json::Value =
            serde_json::from_str(include_str!("../benches/data/mnist_ddpmpp.json"))?;
        (NcsnPpConfig::from_reference_json(&json)?, "nf32")
    };
    let dev = Device::Cpu;
    let vm = candle_nn::VarMap::new();
    let net = NcsnPp::new(cfg, seeded_var_builder(&vm, 0, DType::F32, &dev))?;
    let n_params: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let x = rng
        .rand_uniform(&(64, 1, 28, 28).into(), &dev, DType::F32)?
        .affine(2.0, -1.0)?;

    let sde = VpSde::new(0.1, 20.0, 1000)?;
    let loss = SdeLoss::new(
        &sde,
        SdeLossOptions {
            continuous: true,
            reduce_mean: false,
            ..Default::default()
        },
    )?;
    let config = TrainConfig {
        progress: false,
        log_freq: 0,
        optim: AdamConfig {
            lr: 2e-4,
            warmup: 0,
            grad_clip: None,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut trainer = Trainer::new(&net, &vm, loss, config)?;
    let step = median(
        || {
            trainer.train_step(&x).expect("train step");
        },
        rounds,
        2,
    );
    drop(trainer);
    let labels = rng
        .rand_uniform(&(64,).into(), &dev, DType::F32)?
        .affine(999.0, 0.0)?;
    let fwd = median(
        || {
            let y: Tensor = net.forward_t(&x, &labels, Mode::Eval).expect("forward");
            y.sum_all().and_then(|s| s.to_scalar::<f32>()).expect("sum");
        },
        rounds,
        1,
    );
    println!(
        "ours mnist ddpm++ {name} b64 train step: {step:.0} ms; forward b64: {fwd:.0} ms \
         (params {n_params})"
    );
    Ok(())
}
