//! The training loop with the `score-nets` MLP: exact resumption, loss decrease, hooks,
//! the all-reduce seam, and typed errors for damaged or mismatched checkpoints.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use score_nets::{init::seeded_var_builder, Mlp, MlpConfig};
use sde_core::VpSde;
use sde_train::{
    named_vars, Error, HookSchedule, SdeLoss, SdeLossOptions, Toy2d, ToyBatches, TrainConfig,
    Trainer, TrainingLoss,
};

fn mlp(seed: u64, hidden: usize) -> (VarMap, Mlp) {
    let vm = VarMap::new();
    let cfg = MlpConfig {
        hidden,
        n_layers: 2,
        embedding_dim: 16,
        ..MlpConfig::vp(2)
    };
    let net = Mlp::new(
        &cfg,
        seeded_var_builder(&vm, seed, DType::F32, &Device::Cpu),
    )
    .unwrap();
    (vm, net)
}

fn config(n_iters: u64) -> TrainConfig {
    TrainConfig {
        n_iters,
        progress: false,
        log_freq: 10,
        ema_decay: 0.99,
        seed: 42,
        optim: sde_train::AdamConfig {
            lr: 1e-3,
            warmup: 20,
            ..Default::default()
        },
        extra: serde_json::json!({ "model": "mlp", "hidden": 32 }),
        ..Default::default()
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sde-train-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn weights(vm: &VarMap) -> Vec<(String, Vec<f32>)> {
    named_vars(vm)
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect()
}

fn loss() -> SdeLoss<VpSde> {
    SdeLoss::new(
        VpSde::default(),
        SdeLossOptions {
            reduce_mean: true,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn resume_continues_exactly() {
    let n = 400;
    let data = || ToyBatches::new(Toy2d::EightGaussians, 64);
    // Straight run.
    let (vm_a, net_a) = mlp(1, 32);
    let mut a = Trainer::new(&net_a, &vm_a, loss(), config(n)).unwrap();
    let straight = a.run(&mut data(), None).unwrap().losses;
    assert_eq!(straight.len(), n as usize);

    // Half, checkpoint, a fresh process (different initial weights), resume, the other half.
    let dir = tmpdir("resume");
    let (vm_b, net_b) = mlp(1, 32);
    let mut b = Trainer::new(&net_b, &vm_b, loss(), config(n / 2))
        .unwrap()
        .with_checkpoint_dir(&dir)
        .unwrap();
    let first = b.run(&mut data(), None).unwrap();
    assert_eq!(
        first.checkpoints,
        vec![dir.join("checkpoint_200.safetensors")]
    );
    assert_eq!(
        sde_train::latest_checkpoint(&dir).unwrap(),
        Some(dir.join("checkpoint_200.safetensors"))
    );

    let (vm_c, net_c) = mlp(99, 32);
    let mut c = Trainer::new(&net_c, &vm_c, loss(), config(n)).unwrap();
    c.resume(&first.checkpoints[0]).unwrap();
    assert_eq!(c.step(), n / 2);
    let second = c.run(&mut data(), None).unwrap().losses;

    let resumed: Vec<f64> = first.losses.iter().chain(&second).copied().collect();
    assert_eq!(resumed.len(), straight.len());
    for (k, (x, y)) in straight.iter().zip(&resumed).enumerate() {
        assert_eq!(
            x.to_bits(),
            y.to_bits(),
            "loss at step {} differs: {x} vs {y}",
            k + 1
        );
    }
    assert_eq!(weights(&vm_a), weights(&vm_c), "final weights differ");
    for ((na, sa), (nc, sc)) in a.ema().shadow().iter().zip(c.ema().shadow()) {
        assert_eq!(na, nc);
        assert_eq!(
            sa.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            sc.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    for ((_, ma, va), (_, mc, vc)) in a.optimizer().moments().zip(c.optimizer().moments()) {
        assert_eq!(
            ma.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            mc.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        assert_eq!(
            va.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vc.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn training_lowers_the_loss() {
    let (vm, net) = mlp(3, 64);
    let l = loss();
    let eval_batch = Toy2d::EightGaussians
        .sample(
            2048,
            &Device::Cpu,
            DType::F32,
            &mut rand::rngs::StdRng::seed_from_u64(7),
        )
        .unwrap();
    let eval = |net: &Mlp| -> f64 {
        let mut r = rand::rngs::StdRng::seed_from_u64(8);
        l.loss(net, &eval_batch, false, &mut r)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let before = eval(&net);
    let cfg = TrainConfig {
        optim: sde_train::AdamConfig {
            lr: 2e-3,
            warmup: 10,
            ..Default::default()
        },
        ..config(400)
    };
    let dir = tmpdir("lower");
    let log = dir.join("log.jsonl");
    let mut t = Trainer::new(&net, &vm, loss(), cfg)
        .unwrap()
        .with_log(&log)
        .unwrap();
    let s = t
        .run(&mut ToyBatches::new(Toy2d::EightGaussians, 128), None)
        .unwrap();
    let after = eval(&net);
    assert!(after < 0.7 * before, "eval loss {before} -> {after}");
    let head: f64 = s.losses[..20].iter().sum::<f64>() / 20.0;
    let tail: f64 = s.losses[380..].iter().sum::<f64>() / 20.0;
    assert!(tail < head, "training loss {head} -> {tail}");
    // JSON-lines log: one line per log_freq steps.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40);
    assert_eq!(lines[0]["step"], 10);
    assert!(lines[39]["loss"].as_f64().unwrap().is_finite());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hooks_eval_and_reducer() {
    let (vm, net) = mlp(4, 16);
    let dir = tmpdir("hooks");
    let calls: RefCell<Vec<(u64, Option<PathBuf>)>> = RefCell::new(Vec::new());
    let reduced = RefCell::new(0usize);
    let cfg = TrainConfig {
        eval_freq: 5,
        snapshot_freq: 6,
        ..config(12)
    };
    let mut t = Trainer::new(&net, &vm, loss(), cfg)
        .unwrap()
        .with_checkpoint_dir(&dir)
        .unwrap()
        .with_reducer(|g: &mut [Tensor]| {
            *reduced.borrow_mut() += 1;
            assert!(!g.is_empty());
            Ok(())
        });
    t.add_hook(HookSchedule::Every(4), true, |info| {
        // The hook sees the EMA weights.
        let w = weights(info.varmap);
        calls.borrow_mut().push((info.step, None));
        assert!(!w.is_empty());
        Ok(())
    })
    .unwrap();
    t.add_hook(HookSchedule::OnCheckpoint, false, |info| {
        calls
            .borrow_mut()
            .push((info.step, info.checkpoint.map(Path::to_path_buf)));
        Ok(())
    })
    .unwrap();
    assert!(t
        .add_hook(HookSchedule::Every(0), false, |_| Ok(()))
        .is_err());
    let mut eval = ToyBatches::new(Toy2d::EightGaussians, 32);
    let s = t
        .run(
            &mut ToyBatches::new(Toy2d::EightGaussians, 32),
            Some(&mut eval),
        )
        .unwrap();
    drop(t);
    assert_eq!(*reduced.borrow(), 12);
    assert_eq!(
        s.eval_losses.iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![5, 10]
    );
    let want = vec![
        (4, None),
        (6, Some(dir.join("checkpoint_6.safetensors"))),
        (8, None),
        (12, None),
        (12, Some(dir.join("checkpoint_12.safetensors"))),
    ];
    assert_eq!(*calls.borrow(), want);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hook_sees_ema_weights_and_model_is_restored() {
    let (vm, net) = mlp(5, 16);
    let seen = RefCell::new(Vec::new());
    let mut t = Trainer::new(&net, &vm, loss(), config(3)).unwrap();
    t.add_hook(HookSchedule::Every(3), true, |info| {
        *seen.borrow_mut() = weights(info.varmap);
        Ok(())
    })
    .unwrap();
    t.run(&mut ToyBatches::new(Toy2d::Rings, 16), None).unwrap();
    let ema: Vec<(String, Vec<f32>)> = t
        .ema()
        .shadow()
        .iter()
        .map(|(n, s)| {
            (
                n.clone(),
                s.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect();
    drop(t);
    assert_eq!(*seen.borrow(), ema);
    assert_ne!(weights(&vm), ema, "training weights are back in the model");
}

#[test]
fn damaged_or_mismatched_checkpoints_are_typed_errors() {
    let dir = tmpdir("corrupt");
    let (vm, net) = mlp(6, 16);
    let mut t = Trainer::new(&net, &vm, loss(), config(3)).unwrap();
    t.run(&mut ToyBatches::new(Toy2d::TwoMoons, 16), None)
        .unwrap();
    let good = dir.join("good.safetensors");
    t.save_checkpoint(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    // No temporary file is left behind by the atomic write.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

    let (vm2, net2) = mlp(7, 16);
    let mut fresh = Trainer::new(&net2, &vm2, loss(), config(3)).unwrap();
    fresh.resume(&good).unwrap();
    assert_eq!(weights(&vm), weights(&vm2));
    // load_weights: the EMA weights for sampling.
    let ema: Vec<(String, Vec<f32>)> = t
        .ema()
        .shadow()
        .iter()
        .map(|(n, s)| {
            (
                n.clone(),
                s.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect();
    let (vm_s, _net_s) = mlp(11, 16);
    sde_train::load_weights(&good, &vm_s, sde_train::Weights::Ema).unwrap();
    assert_eq!(weights(&vm_s), ema);
    sde_train::load_weights(&good, &vm_s, sde_train::Weights::Model).unwrap();
    assert_eq!(weights(&vm_s), weights(&vm));

    let check = |name: &str, data: &[u8], want: &str| {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        let (vm3, net3) = mlp(8, 16);
        let mut tr = Trainer::new(&net3, &vm3, loss(), config(3)).unwrap();
        let before = weights(&vm3);
        match tr.resume(&p) {
            Err(e @ Error::CorruptCheckpoint { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(want), "{name}: {msg}");
            }
            other => panic!("{name}: expected CorruptCheckpoint, got {other:?}"),
        }
        assert_eq!(
            weights(&vm3),
            before,
            "{name}: a failed resume must not touch the model"
        );
    };
    check(
        "truncated.safetensors",
        &bytes[..bytes.len() / 2],
        "not a complete safetensors file",
    );
    check(
        "header_only.safetensors",
        &bytes[..12],
        "not a complete safetensors file",
    );
    check("empty.safetensors", &[], "not a complete safetensors file");
    let mut flipped = bytes.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x10;
    check("flipped.safetensors", &flipped, "checksum mismatch");

    // Missing file: an I/O error naming the path.
    let missing = dir.join("nope.safetensors");
    match fresh.resume(&missing) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected Io, got {other:?}"),
    }
    // A different model: the error names the first tensor that does not fit.
    let (vm4, net4) = mlp(9, 24);
    let mut other_model = Trainer::new(&net4, &vm4, loss(), config(3)).unwrap();
    match other_model.resume(&good) {
        Err(Error::CheckpointMismatch { what, .. }) => {
            assert!(what.contains("model/") && what.contains("shape"), "{what}")
        }
        other => panic!("expected CheckpointMismatch, got {other:?}"),
    }
    // A different run config.
    let cfg = TrainConfig {
        extra: serde_json::json!({ "model": "other" }),
        ..config(3)
    };
    let (vm5, net5) = mlp(10, 16);
    let mut other_cfg = Trainer::new(&net5, &vm5, loss(), cfg).unwrap();
    match other_cfg.resume(&good) {
        Err(Error::CheckpointMismatch { what, .. }) => assert!(what.contains("`extra`"), "{what}"),
        other => panic!("expected CheckpointMismatch, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
