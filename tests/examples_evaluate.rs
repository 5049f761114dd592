//! The `evaluate` example end to end on a tiny NCSN++ checkpoint trained one step on the
//! embedded MNIST-5k digits: sharded sampling scored in the digit classifier's features and in
//! Inception's (the test vectors' random-weight file), bits/dim of test digits, reference
//! statistics written and read back, and a second run that resumes from the shards to the same
//! numbers.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device};
use candle_nn::VarMap;
use score_nets::{NcsnPp, NcsnPpConfig};
use sde_core::VeSde;
use sde_train::{SdeLoss, SdeLossOptions, ShuffledBatches, TrainConfig, Trainer};

/// `target/<profile>/examples/evaluate`, built by `cargo test` alongside the tests.
fn example() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let path = dir
        .join("examples")
        .join(format!("evaluate{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} not built (run through `cargo test`)",
        path.display()
    );
    path
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("scoresde-evaluate-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A 1×28×28 NCSN++ (nf 8) trained one step on MNIST-5k by sde-train's Trainer: a checkpoint
/// of ours, with its network config stored as the run's `extra`.
fn tiny_checkpoint(dir: &Path) -> PathBuf {
    let cfg = NcsnPpConfig {
        image_size: 28,
        num_channels: 1,
        nf: 8,
        attn_resolutions: vec![7],
        ..NcsnPpConfig::small_ncsnpp_ve()
    };
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = score_nets::init::seeded_var_builder(&vm, 0, DType::F32, &dev);
    let model = NcsnPp::new(cfg.clone(), vb).unwrap();
    let sde = VeSde::new(cfg.sigma_min, cfg.sigma_max, 10).unwrap();
    let loss = SdeLoss::new(
        &sde,
        SdeLossOptions {
            continuous: true,
            reduce_mean: false,
            ..Default::default()
        },
    )
    .unwrap();
    let config = TrainConfig {
        n_iters: 1,
        progress: false,
        extra: serde_json::to_value(&cfg).unwrap(),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(&model, &vm, loss, config)
        .unwrap()
        .with_checkpoint_dir(dir.join("checkpoints"))
        .unwrap();
    let images = sde_train::mnist5k(sde_train::Split::Train)
        .unwrap()
        .0
        .narrow(0, 0, 8)
        .unwrap();
    let mut batches = ShuffledBatches::new(images, 4, 0).unwrap();
    trainer.run(&mut batches, None).unwrap();
    let ck = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .expect("a checkpoint");
    ck
}

fn evaluate(args: &[&str]) -> serde_json::Value {
    let out = Command::new(example())
        .args(args)
        .env("CANDLE_NUM_THREADS", "1")
        .output()
        .expect("evaluate runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "evaluate {args:?} failed:\n{log}");
    eprintln!("{log}");
    let dir = args
        .iter()
        .position(|a| *a == "--out")
        .map(|i| PathBuf::from(args[i + 1]))
        .unwrap();
    serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap()
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn evaluate_digits_bits_per_dim_and_resume() {
    let dir = tmp("digits");
    let ck = tiny_checkpoint(&dir);
    let out = dir.join("eval");
    let args = [
        "--quick",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--features",
        "digits",
        "--ref",
        "mnist5k:test",
        "--bpd-data",
        "mnist5k:test",
        "--tol",
        "1e-3",
        "--out",
        out.to_str().unwrap(),
    ];
    let s = evaluate(&args);
    let m = &s["metrics"];
    assert_eq!(s["n"], 8, "{s}");
    assert!(f(&m["fid"]) > 0.0, "{s}");
    assert!(f(&m["kid"]["mean"]).is_finite());
    assert_eq!(m["kid_subsets"][0], 8);
    assert!(f(&m["inception_score"]["mean"]) >= 1.0);
    let b = &m["bits_per_dim"];
    assert_eq!((b["n"].as_u64(), b["dim"].as_u64()), (Some(4), Some(784)));
    assert!(f(&b["mean"]) > 0.0 && f(&b["std_err"]) >= 0.0, "{b}");
    assert_eq!(
        s["extractor_weights_sha256"].as_str(),
        sde_eval::DigitClassifier::embedded(&Device::Cpu)
            .unwrap()
            .weights_sha256()
    );
    assert_eq!(
        s["checkpoint_sha256"].as_str().unwrap(),
        sde_eval::inception::sha256_file(&ck).unwrap()
    );
    assert!(out.join("samples.png").exists());
    // Shards are on disk: a second run resumes from them (nothing left to compute) and
    // reports the same numbers.
    assert!(out.join("samples/shard_000001.safetensors").exists());
    assert!(out.join("bpd/bpd_000000.safetensors").exists());
    let again = evaluate(&args);
    assert_eq!(again["metrics"], s["metrics"]);
    // Reference statistics of a data set, without a checkpoint: written and read back; scored
    // against, they give the FID of the data set itself (from the same shards: the run resumes)
    // and no KID (a statistics file holds no features).
    let stats = dir.join("mnist_test.npz");
    let st = evaluate(&[
        "--quick",
        "--features",
        "digits",
        "--ref",
        "mnist5k:test",
        "--write-stats",
        stats.to_str().unwrap(),
        "--out",
        dir.join("stats_only").to_str().unwrap(),
    ]);
    assert!(
        st["notes"][0].as_str().unwrap().contains("mnist_test"),
        "{st}"
    );
    let back = sde_eval::GaussianStats::load(&stats).unwrap();
    assert_eq!((back.dim(), back.n), (128, None));
    let from_file = evaluate(&[
        "--quick",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--features",
        "digits",
        "--ref",
        stats.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let (a, b) = (f(&from_file["metrics"]["fid"]), f(&m["fid"]));
    assert!((a - b).abs() <= 1e-9 * b, "{a} vs {b}");
    assert!(from_file["metrics"]["kid"].is_null());
    assert!(from_file["reference"]
        .as_str()
        .unwrap()
        .contains("statistics file"));
    // Another sampler in the same folder is refused (its shards would mix with these) ...
    let refused = Command::new(example())
        .args([
            "--quick",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--features",
            "digits",
        ])
        .args(["--sampler", "dpm++2m", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("plan.json"));
    // ... and runs in its own folder.
    let fast = evaluate(&[
        "--quick",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--features",
        "digits",
        "--ref",
        stats.to_str().unwrap(),
        "--sampler",
        "dpm++2m",
        "--out",
        dir.join("fast").to_str().unwrap(),
    ]);
    assert!(f(&fast["metrics"]["fid"]) > 0.0);
    assert!(
        fast["notes"][0].as_str().unwrap().contains("dpm++2m"),
        "{fast}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn evaluate_inception_against_a_folder_and_its_statistics() {
    let dir = tmp("inception");
    // A checkpoint in the reference's format (`torch.save` of its training state) with its
    // config dump: the test vectors' small NCSN++ (3 × 16 × 16, random weights).
    let root = env!("CARGO_MANIFEST_DIR");
    let ck = format!("{root}/testvectors/ckpt_ncsnpp_ve.pth");
    let config = format!("{root}/testvectors/net_ncsnpp_ve.json");
    // A folder of 3 real digits as PNG.
    let folder = dir.join("ref");
    std::fs::create_dir_all(&folder).unwrap();
    let test = sde_train::mnist5k(sde_train::Split::Test).unwrap().0;
    for i in 0..3 {
        let px: Vec<u8> = test
            .get(i)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| (v * 255.0).round() as u8)
            .collect();
        image::GrayImage::from_raw(28, 28, px)
            .unwrap()
            .save(folder.join(format!("{i}.png")))
            .unwrap();
    }
    let weights = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testvectors/fid/inception_random_compact.safetensors"
    );
    let stats = dir.join("ref_stats.npz");
    let out = dir.join("eval");
    // FID of 2048-d features (two 2048² eigendecompositions, a minute in a debug build) is
    // left to the digit test's 128-d features.
    let s = evaluate(&[
        "--quick",
        "--checkpoint",
        &ck,
        "--config",
        &config,
        "--inception",
        weights,
        "--ref",
        folder.to_str().unwrap(),
        "--write-stats",
        stats.to_str().unwrap(),
        "--metrics",
        "is,kid",
        "--n-samples",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let m = &s["metrics"];
    assert!(
        m["fid"].is_null() && f(&m["kid"]["mean"]).is_finite(),
        "{s}"
    );
    assert_eq!(m["kid_subsets"][0], 2);
    assert!(f(&m["inception_score"]["mean"]) >= 1.0);
    assert_eq!(s["n"], 2);
    assert_eq!(s["extractor"], "pytorch-fid-inception-v3");
    assert_eq!(
        s["extractor_weights_sha256"].as_str().unwrap(),
        sde_eval::inception::sha256_file(weights).unwrap()
    );
    // The reference config's sampler (PC) with the quick run's 5 steps.
    let notes = s["notes"].as_array().unwrap();
    let pc = |n: &serde_json::Value| {
        let n = n.as_str().unwrap();
        n.contains("PC") && n.contains("N = 5")
    };
    assert!(notes.iter().any(pc), "{s}");
    assert_eq!(
        s["checkpoint_sha256"].as_str().unwrap(),
        sde_eval::inception::sha256_file(&ck).unwrap()
    );
    let back = sde_eval::GaussianStats::load(&stats).unwrap();
    assert_eq!((back.dim(), back.n), (2048, None));
    // Bad input is an error message, not a panic.
    let bad = Command::new(example())
        .args(["--quick", "--checkpoint", &ck, "--config", &config, "--out"])
        .arg(dir.join("bad"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--inception"));
    std::fs::remove_dir_all(&dir).ok();
}
