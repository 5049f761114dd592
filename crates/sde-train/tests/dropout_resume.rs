//! Dropout-exact resumption: NCSN++ (the small VE preset) with dropout 0.1, trained, killed
//! after a checkpoint and resumed by a fresh trainer, ends bit-identical (weights, EMA, Adam
//! moments, losses) to an uninterrupted run, because every dropout mask is drawn from the
//! trainer's checkpointed generator ([`sde_core::Mode::Train`]).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use score_nets::{init::seeded_var_builder, NcsnPp, NcsnPpConfig};
use sde_core::noise::NoiseSource;
use sde_core::VeSde;
use sde_train::{named_vars, SdeLoss, SdeLossOptions, ShuffledBatches, TrainConfig, Trainer};

const STEPS: u64 = 4;

fn net(dropout: f64, seed: u64) -> (VarMap, NcsnPp) {
    // init_scale 1 (the paper: 0, i.e. 1e-10): the conv after each dropout starts non-zero,
    // so the masks change the very first losses and the test cannot pass without them.
    let cfg = NcsnPpConfig {
        dropout,
        nf: 8,
        init_scale: 1.0,
        ..NcsnPpConfig::small_ncsnpp_ve()
    };
    let vm = VarMap::new();
    let net = NcsnPp::new(cfg, seeded_var_builder(&vm, seed, DType::F32, &Device::Cpu)).unwrap();
    (vm, net)
}

fn data() -> ShuffledBatches {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let x = rng
        .rand_uniform(&(8, 3, 16, 16).into(), &Device::Cpu, DType::F32)
        .unwrap();
    ShuffledBatches::new(x, 2, 3).unwrap()
}

fn loss() -> SdeLoss<VeSde> {
    SdeLoss::new(
        VeSde::new(0.01, 50.0, 1000).unwrap(),
        SdeLossOptions::default(),
    )
    .unwrap()
}

fn config(n_iters: u64) -> TrainConfig {
    TrainConfig {
        n_iters,
        progress: false,
        log_freq: 0,
        ema_decay: 0.9,
        seed: 11,
        optim: sde_train::AdamConfig {
            warmup: 0,
            ..Default::default()
        },
        extra: serde_json::json!({ "model": "small_ncsnpp_ve", "dropout": 0.1 }),
        ..Default::default()
    }
}

fn host(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("sde-train-dropout-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn ncsnpp_with_dropout_resumes_bit_identically() {
    // Uninterrupted run.
    let (vm_a, net_a) = net(0.1, 1);
    let mut a = Trainer::new(&net_a, &vm_a, loss(), config(STEPS)).unwrap();
    let straight = a.run(&mut data(), None).unwrap().losses;

    // Dropout is really on in the trainer's steps: the same run without it differs at step 1.
    let (vm_0, net_0) = net(0.0, 1);
    let mut no_dropout = Trainer::new(&net_0, &vm_0, loss(), config(1)).unwrap();
    let l0 = no_dropout.run(&mut data(), None).unwrap().losses;
    assert_ne!(
        l0[0].to_bits(),
        straight[0].to_bits(),
        "dropout had no effect"
    );

    // Killed after the checkpoint at step k = STEPS / 2 ...
    let dir = tmpdir();
    let (vm_b, net_b) = net(0.1, 1);
    let mut b = Trainer::new(&net_b, &vm_b, loss(), config(STEPS / 2))
        .unwrap()
        .with_checkpoint_dir(&dir)
        .unwrap();
    let first = b.run(&mut data(), None).unwrap();
    drop(b);
    // ... and resumed by a fresh trainer around a network with other initial weights.
    let (vm_c, net_c) = net(0.1, 77);
    let mut c = Trainer::new(&net_c, &vm_c, loss(), config(STEPS)).unwrap();
    c.resume(&first.checkpoints[0]).unwrap();
    assert_eq!(c.step(), STEPS / 2);
    let second = c.run(&mut data(), None).unwrap().losses;

    let resumed: Vec<u64> = first
        .losses
        .iter()
        .chain(&second)
        .map(|l| l.to_bits())
        .collect();
    let straight_bits: Vec<u64> = straight.iter().map(|l| l.to_bits()).collect();
    assert_eq!(resumed, straight_bits, "losses differ");
    for ((na, va), (nc, vc)) in named_vars(&vm_a).iter().zip(named_vars(&vm_c).iter()) {
        assert_eq!(na, nc);
        assert_eq!(host(va.as_tensor()), host(vc.as_tensor()), "weight {na}");
    }
    for ((na, sa), (_, sc)) in a.ema().shadow().iter().zip(c.ema().shadow()) {
        assert_eq!(host(sa), host(sc), "EMA {na}");
    }
    assert_eq!(a.optimizer().n_steps(), c.optimizer().n_steps());
    for ((n, ma, va), (_, mc, vc)) in a.optimizer().moments().zip(c.optimizer().moments()) {
        assert_eq!(host(ma), host(mc), "Adam m {n}");
        assert_eq!(host(va), host(vc), "Adam v {n}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
