//! The main examples run end to end in their CI-sized form (`--quick`), so they never rot:
//! each exits successfully and writes its plots and a `summary.json` with sane figures.

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/examples/<name>`, built by `cargo test` alongside the tests.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let path = dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "example binary {} not built (run through `cargo test`)",
        path.display()
    );
    path
}

fn run(name: &str, extra: &[&str]) -> serde_json::Value {
    // tests run in parallel threads of one process: each run gets its own folder
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = std::env::temp_dir().join(format!("scoresde-test-{name}-{}-{k}", std::process::id()));
    let status = Command::new(example(name))
        .args(["--quick", "--out"])
        .arg(&out)
        .args(extra)
        .status()
        .expect("example runs");
    assert!(status.success(), "{name} failed: {status}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).expect("summary.json"))
            .expect("valid JSON");
    assert!(
        out.join("samples.png").exists(),
        "{name} did not write samples.png"
    );
    summary
}

#[test]
fn smld_quick_runs() {
    let s = run("smld", &[]);
    let q = &s["pc_reverse_diffusion_langevin"]["quality"];
    assert_eq!(q["modes"]["modes_covered"], 8, "{s}");
    assert!(s["held_out_likelihood"]["mean_log_p"]
        .as_f64()
        .unwrap()
        .is_finite());
    assert!(
        s["training"]["loss_last"].as_f64().unwrap()
            < s["training"]["loss_first"].as_f64().unwrap()
    );
}

#[test]
fn ddpm_quick_runs() {
    let s = run("ddpm", &[]);
    assert!(
        s["samplers"]["ancestral sampling (DDPM)"]["nfe"]
            .as_u64()
            .unwrap()
            > 0,
        "{s}"
    );
    let s = run("ddpm", &["--sde", "subvp"]);
    assert!(
        s["samplers"].get("ancestral sampling (DDPM)").is_none(),
        "sub-VP has no ancestral sampler"
    );
}

/// `--sampler adaptive` runs the adaptive-step reverse SDE; its samples cover every mode.
#[test]
fn the_adaptive_sampler_runs_in_both_toy_examples() {
    let s = run("smld", &["--sampler", "adaptive"]);
    let f = &s["fast_sampler"];
    assert!(f["nfe"].as_u64().unwrap() > 10, "{s}");
    assert_eq!(f["quality"]["modes"]["modes_covered"], 8, "{s}");
    let s = run("ddpm", &["--sampler", "adaptive"]);
    let a = &s["samplers"]["adaptive (tolerance)"];
    assert!(a["nfe"].as_u64().unwrap() > 10, "{s}");
    // An unknown name is refused before training, naming the choices.
    let out = Command::new(example("ddpm"))
        .args(["--quick", "--sampler", "bogus", "--out"])
        .arg(std::env::temp_dir().join(format!("scoresde-test-bogus-{}", std::process::id())))
        .output()
        .expect("example runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus") && err.contains("adaptive"), "{err}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("loss"),
        "trained first"
    );
}

#[test]
fn custom_sde_quick_runs() {
    let s = run("custom_sde", &[]);
    let err = s["likelihood"]["max_abs_error_nats"].as_f64().unwrap();
    assert!(err < 1e-2, "likelihood of the custom SDE off by {err} nats");
    assert_eq!(s["pc"]["coverage"]["modes_covered"], 8);
}

#[test]
fn smld_samples_the_reference_checkpoint() {
    // The reference's own training checkpoint (small NCSN++ config) through the image path.
    let tv = concat!(env!("CARGO_MANIFEST_DIR"), "/testvectors/");
    let out = std::env::temp_dir().join(format!("scoresde-test-ckpt-{}", std::process::id()));
    let status = Command::new(example("smld"))
        .args(["--quick", "--out"])
        .arg(&out)
        .arg("--checkpoint")
        .arg(format!("{tv}ckpt_ncsnpp_ve.pth"))
        .arg("--config")
        .arg(format!("{tv}net_ncsnpp_ve.json"))
        .status()
        .expect("example runs");
    assert!(status.success());
    assert!(out.join("samples.png").exists());
}

#[test]
fn smld_trains_ncsnpp_on_an_image_folder() {
    // The image path end to end on a tiny folder and the small NCSN++ config of the test vectors:
    // load + resize + center crop, train two steps, write a checkpoint, then sample it.
    let dir = std::env::temp_dir().join(format!("scoresde-test-folder-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..4u32 {
        let img = image::RgbImage::from_fn(20, 24, |x, y| {
            image::Rgb([(x * 12) as u8, (y * 10) as u8, (i * 60) as u8])
        });
        img.save(dir.join(format!("img{i}.png"))).unwrap();
    }
    let cfg = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testvectors/net_ncsnpp_ve.json"
    );
    let out = dir.join("out");
    let status = Command::new(example("smld"))
        .args(["--quick", "--dataset", "folder", "--data-dir"])
        .arg(&dir)
        .arg("--config")
        .arg(cfg)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("example runs");
    assert!(status.success());
    let ckpt = out.join("checkpoints").join("checkpoint_2.safetensors");
    assert!(ckpt.exists(), "no checkpoint written");
    let status = Command::new(example("smld"))
        .args(["--quick", "--checkpoint"])
        .arg(&ckpt)
        .arg("--config")
        .arg(cfg)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("example runs");
    assert!(status.success());
    assert!(out.join("samples.png").exists());
}

/// The MNIST-5k reproduction in its CI size: trains 3 steps on the embedded digits, checkpoints,
/// samples with every sampler, evaluates, and resumes from its checkpoint.
fn mnist_quick(name: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--dataset", "mnist5k"];
    args.extend_from_slice(extra);
    let s = run(name, &args);
    assert_eq!(s["dataset"], "mnist5k", "{s}");
    assert_eq!(s["training"]["steps"], 3, "{s}");
    let samplers = s["samplers"].as_object().expect("samplers");
    let paper = s["preset"]["paper_samplers"]
        .as_array()
        .expect("paper samplers");
    assert_eq!(
        samplers.len(),
        paper.len() + 1,
        "the chosen paper samplers and a fast one: {s}"
    );
    if !extra.contains(&"--paper-samplers") {
        assert_eq!(
            paper.len(),
            3,
            "the preset runs all three paper samplers: {s}"
        );
    }
    for (k, v) in samplers {
        assert!(v["nfe"].as_f64().unwrap() >= 1.0, "{k}: {v}");
        assert!(v["n"].as_u64().unwrap() >= 4, "{k}: {v}");
    }
    let bpd = &s["bits_per_dim"];
    for key in ["mean", "pixel_histogram", "pixel_gaussian"] {
        let v = bpd[key].as_f64().unwrap();
        assert!(v.is_finite() && v > 0.0, "{key}: {bpd}");
    }
    // the per-pixel histogram is fitted on the train set: about 1.77 bits/dim on the test set
    let h = bpd["pixel_histogram"].as_f64().unwrap();
    assert!((1.0..2.5).contains(&h), "pixel histogram baseline {h}");
    assert!(s["checkpoint_sha256"].as_str().unwrap().len() == 64, "{s}");
    // the preset trains on dequantised digits and scores a stochastic fast sampler
    assert_eq!(s["preset"]["uniform_dequantization"], true, "{s}");
    assert_eq!(s["fast_sampler"], "sde-dpm++2m (3 steps)", "{s}");
    s
}

/// Runs `ddpm --quick --dataset mnist5k` with `args` and checks that it fails before training,
/// with a message that contains each of `expect`.
fn refused_before_training(tag: &str, args: &[&str], expect: &[&str]) {
    let out = std::env::temp_dir().join(format!("scoresde-test-{tag}-{}", std::process::id()));
    let o = Command::new(example("ddpm"))
        .args(["--quick", "--dataset", "mnist5k"])
        .args(args)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("example runs");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    for e in expect {
        assert!(err.contains(e), "{e} not in: {err}");
    }
    assert!(!out.join("checkpoints").exists(), "trained before refusing");
}

#[test]
fn an_unknown_fast_sampler_is_refused_before_training() {
    refused_before_training(
        "badsampler",
        &["--fast-sampler", "nope"],
        &["--fast-sampler nope"],
    );
}

#[test]
fn too_few_paper_steps_are_refused_naming_the_flag() {
    refused_before_training(
        "papersteps",
        &["--paper-steps", "10"],
        &["--paper-steps 10", "beta_max"],
    );
}

#[test]
fn an_unknown_paper_sampler_is_refused_before_training() {
    refused_before_training(
        "badpaper",
        &["--paper-samplers", "pc,ald"],
        &["--paper-samplers", "`ald`", "ancestral, pc, ode"],
    );
}

#[test]
fn smld_mnist5k_quick_trains_samples_and_evaluates() {
    mnist_quick("smld", &[]);
}

#[test]
fn ddpm_mnist5k_quick_trains_samples_and_evaluates() {
    let first = mnist_quick("ddpm", &[]);
    // `--resume` on a finished run trains no further and evaluates the same checkpoint again
    let out =
        std::env::temp_dir().join(format!("scoresde-test-mnist-resume-{}", std::process::id()));
    for _ in 0..2 {
        let status = Command::new(example("ddpm"))
            .args(["--quick", "--dataset", "mnist5k", "--resume", "--out"])
            .arg(&out)
            .status()
            .expect("example runs");
        assert!(status.success());
    }
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    assert_eq!(
        log.lines().count(),
        3,
        "the resumed run trained again:\n{log}"
    );
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    // another process with the same seed trained the same weights into the same bytes
    assert_eq!(again["checkpoint_sha256"].as_str().map(str::len), Some(64));
    assert_eq!(
        again["checkpoint_sha256"], first["checkpoint_sha256"],
        "same seed, another process: the checkpoint must be byte-identical"
    );
    // the original DDPM network, and the run's own checkpoints as the sampling route; trained
    // with the likelihood weighting and importance-sampled t; only PC of the paper's samplers,
    // on more samples than its grid
    let s = mnist_quick(
        "ddpm",
        &[
            "--network",
            "ddpm",
            "--likelihood-weighting",
            "--paper-samplers",
            "pc",
            "--paper-eval-samples",
            "12",
        ],
    );
    assert_eq!(s["preset"]["network"], "Ddpm", "{s}");
    assert_eq!(s["preset"]["likelihood_weighting"], true, "{s}");
    assert_eq!(
        s["preset"]["paper_samplers"],
        serde_json::json!(["pc"]),
        "{s}"
    );
    let pc = s["samplers"]
        .as_object()
        .and_then(|m| m.iter().find(|(k, _)| k.starts_with("PC")))
        .map(|(_, v)| v.clone())
        .expect("PC ran");
    assert_eq!(pc["n"], 12, "{pc}");
}
