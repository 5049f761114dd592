//! One training step on the CPU: loss + backward + gradient clipping + Adam + EMA, through
//! `sde_train::Trainer::train_step`.
//!
//! - `cpu_train_step_ddpmpp_b8_32x32`: the CIFAR-10 DDPM++ preset
//!   (`configs/vp/cifar10_ddpmpp_continuous`, 61.8 M parameters, dropout 0.1 in train mode),
//!   VP SDE, continuous DSM with `reduce_mean = true`, Adam lr 2e-4 with warm-up 5000 and
//!   clipping at 1, EMA 0.9999. Reference (`shared/baselines/baseline_cpu.json`,
//!   `ddpmpp_vp_train_step`): 4155 ms median (forward+loss 1463, backward 2315, Adam 306,
//!   EMA 42).
//! - `cpu_train_step_mlp_b256_2d`: the score-nets MLP on 8 Gaussians, batch 256 (the toy
//!   training of the examples).
//! - `cpu_train_step_mlp_ve_b512`: the MLP's VE step of `../shared/baselines/mlp_torch.py`
//!   (`MlpConfig::ve(2)`, σ ∈ [0.01, 8], Adam lr 2e-3, batch 512; plus EMA). The same-minutes
//!   comparison with PyTorch is `examples/bench_mlp.rs` (docs/performance.md).
//!
//! `cargo bench --bench train` (sample size 10). `SDE_TRAIN_BENCH_MLP_ONLY=1` skips DDPM++.

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::SeedableRng;
use score_nets::{init::seeded_var_builder, Mlp, MlpConfig, NcsnPp, NcsnPpConfig};
use sde_core::noise::NoiseSource;
use sde_core::VpSde;
use sde_train::{AdamConfig, SdeLoss, SdeLossOptions, Toy2d, TrainConfig, Trainer};

fn train_config(ema_decay: f64) -> TrainConfig {
    TrainConfig {
        progress: false,
        ema_decay,
        optim: AdamConfig::default(),
        ..Default::default()
    }
}

fn bench_ddpmpp(c: &mut Criterion) {
    if std::env::var_os("SDE_TRAIN_BENCH_MLP_ONLY").is_some() {
        return;
    }
    let dev = Device::Cpu;
    let vm = candle_nn::VarMap::new();
    let net = NcsnPp::new(
        NcsnPpConfig::cifar10_ddpmpp_continuous(),
        seeded_var_builder(&vm, 0, DType::F32, &dev),
    )
    .unwrap();
    let sde = VpSde::default();
    let loss = SdeLoss::new(
        &sde,
        SdeLossOptions {
            reduce_mean: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    // Data in [-1, 1] (centered), as the reference's scaled CIFAR-10 batch.
    let batch: Tensor = rng
        .rand_uniform(&(8, 3, 32, 32).into(), &dev, DType::F32)
        .unwrap()
        .affine(2.0, -1.0)
        .unwrap();
    if let Some(n) = std::env::var("SDE_TRAIN_BENCH_BREAKDOWN")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        breakdown(&net, &vm, &loss, &batch, n);
        return;
    }
    let mut trainer = Trainer::new(&net, &vm, loss, train_config(0.9999)).unwrap();
    let mut g = c.benchmark_group("train");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(30));
    g.bench_function("cpu_train_step_ddpmpp_b8_32x32", |b| {
        b.iter(|| trainer.train_step(&batch).unwrap().loss)
    });
    g.finish();
}

/// `SDE_TRAIN_BENCH_BREAKDOWN=n`: times the phases of `n` steps by hand (median per phase) and
/// skips the criterion run of DDPM++ (one criterion run needs ~10 steps of several seconds).
fn breakdown(
    net: &NcsnPp,
    vm: &candle_nn::VarMap,
    loss: &SdeLoss<&VpSde>,
    batch: &Tensor,
    n: usize,
) {
    use sde_train::{Adam, Ema, TrainingLoss};
    use std::time::Instant;
    let mut adam = Adam::new(vm, AdamConfig::default()).unwrap();
    let mut ema = Ema::new(vm, 0.9999).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut phases: Vec<[f64; 5]> = Vec::new();
    for _ in 0..n {
        let t0 = Instant::now();
        let l = loss.loss(net, batch, true, &mut rng).unwrap();
        let _ = l.to_scalar::<f32>().unwrap();
        let t1 = Instant::now();
        let grads = l.backward().unwrap();
        let t2 = Instant::now();
        let g = adam.collect_grads(&grads).unwrap();
        drop(grads);
        adam.step(&g).unwrap();
        let t3 = Instant::now();
        ema.update().unwrap();
        let t4 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        phases.push([ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t3, t4), ms(t0, t4)]);
    }
    let names = ["forward+loss", "backward", "clip+adam", "ema", "total"];
    for (i, name) in names.iter().enumerate() {
        let mut v: Vec<f64> = phases.iter().map(|p| p[i]).collect();
        v.sort_by(f64::total_cmp);
        println!(
            "ddpmpp b8 {name}: median {:.0} ms (min {:.0}, n {n})",
            v[v.len() / 2],
            v[0]
        );
    }
}

fn bench_mlp(c: &mut Criterion) {
    let dev = Device::Cpu;
    let vm = candle_nn::VarMap::new();
    let net = Mlp::new(
        &MlpConfig::vp(2),
        seeded_var_builder(&vm, 0, DType::F32, &dev),
    )
    .unwrap();
    let sde = VpSde::default();
    let loss = SdeLoss::new(&sde, SdeLossOptions::default()).unwrap();
    let mut trainer = Trainer::new(&net, &vm, loss, train_config(0.999)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let batch = Toy2d::EightGaussians
        .sample(256, &dev, DType::F32, &mut rng)
        .unwrap();
    let mut g = c.benchmark_group("train");
    g.sample_size(10).measurement_time(Duration::from_secs(2));
    g.bench_function("cpu_train_step_mlp_b256_2d", |b| {
        b.iter(|| trainer.train_step(&batch).unwrap().loss)
    });
    let vm = candle_nn::VarMap::new();
    let net = Mlp::new(
        &MlpConfig::ve(2),
        seeded_var_builder(&vm, 0, DType::F32, &dev),
    )
    .unwrap();
    let sde = sde_core::VeSde::new(0.01, 8.0, 1000).unwrap();
    let loss = SdeLoss::new(&sde, SdeLossOptions::default()).unwrap();
    let config = TrainConfig {
        optim: AdamConfig {
            lr: 2e-3,
            warmup: 0,
            grad_clip: None,
            ..Default::default()
        },
        ..train_config(0.999)
    };
    let mut trainer = Trainer::new(&net, &vm, loss, config).unwrap();
    let batch = rng.randn(&(512, 2).into(), &dev, DType::F32).unwrap();
    g.bench_function("cpu_train_step_mlp_ve_b512", |b| {
        b.iter(|| trainer.train_step(&batch).unwrap().loss)
    });
    g.finish();
}

criterion_group!(benches, bench_mlp, bench_ddpmpp);
criterion_main!(benches);
