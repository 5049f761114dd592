//! The likelihood, inpainting and conditional-sampling examples run end to end in their CI-sized
//! form (`--quick`): each exits successfully, writes its PNGs and a `summary.json`, and one key
//! figure of each is checked against the closed form it is compared with.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/<profile>/examples/<name>`, built by `cargo test` alongside the tests
/// (the test executable is `target/<profile>/deps/<test>-<hash>`).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
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

/// Runs `name --quick --out <tempdir>`, checks the PNGs exist and returns summary.json.
fn run(name: &str, pngs: &[&str]) -> serde_json::Value {
    let out = std::env::temp_dir().join(format!(
        "scoresde-test-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let output = Command::new(example(name))
        .args(["--quick", "--seed", "1", "--out"])
        .arg(&out)
        .output()
        .expect("example runs");
    assert!(
        output.status.success(),
        "{name} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for png in pngs {
        let p = out.join(png);
        let img = image::open(&p).unwrap_or_else(|e| panic!("{name}: {png} unreadable: {e}"));
        assert!(
            img.width() > 50 && img.height() > 50,
            "{name}: {png} is tiny"
        );
    }
    let summary = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap())
        .expect("summary.json is valid JSON");
    std::fs::remove_dir_all(&out).ok();
    summary
}

fn num(v: &serde_json::Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("expected a number, got {v}"))
}

#[test]
fn likelihood_quick_matches_the_closed_form() {
    let s = run("likelihood", &["parity.png", "images.png"]);
    for case in ["gmm_ve", "gmm_vp", "gmm_subvp"] {
        // The ODE with the exact trace reproduces the closed-form log-density to the solver's
        // tolerance once the prior mismatch log p_T − log π is taken out.
        let err = num(&s[case]["exact_trace"]["max_abs_ode_error_nats"]);
        assert!(err < 3e-3, "{case}: ODE error {err} nats\n{s}");
        let within = num(&s[case]["hutchinson"]["fraction_within_4_std_err"]);
        assert!(
            within > 0.9,
            "{case}: Hutchinson within 4 s.e. for {within}"
        );
    }
    let bpd = &s["images_bits_per_dim"];
    let d = (num(&bpd["exact_trace"]) - num(&bpd["closed_form"])).abs();
    assert!(d < 1e-3, "image bits/dim off by {d}\n{s}");
}

#[test]
fn inpainting_quick_fills_from_the_exact_conditional() {
    let s = run("inpainting", &["inpainting.png", "colorization.png"]);
    assert!(
        num(&s["inpainting"]["known_pixels_max_abs_error"]) < 1e-3,
        "{s}"
    );
    assert!(
        num(&s["colorization"]["grey_level_max_abs_error"]) < 1e-3,
        "{s}"
    );
    // Most completions pick the pattern the exact posterior favours, and their mean sits near
    // the exact conditional mean (the quick run's 100 steps leave some discretisation error;
    // an unconditional draw would be off by ~0.3).
    let inp = &s["inpainting"]["check"];
    assert!(num(&inp["mode_agreement"]) > 0.85, "{s}");
    assert!(num(&inp["rms_error_of_mean"]) < 0.08, "{s}");
    assert!(
        num(&s["colorization"]["check"]["mode_agreement"]) > 0.6,
        "{s}"
    );
}

#[test]
fn conditional_quick_lands_in_the_requested_modes() {
    let s = run("conditional", &["samples.png"]);
    let runs = s["runs"].as_array().expect("runs");
    let frac = |name: &str| {
        num(&runs
            .iter()
            .find(|r| r["name"].as_str().is_some_and(|n| n.starts_with(name)))
            .unwrap_or_else(|| panic!("no run {name}: {s}"))["fraction_in_requested_mode"])
    };
    // Unguided samples land in the requested mode by chance (1/8); guidance with the classifier
    // trained in the example puts nearly all of them there.
    assert!(frac("unguided") < 0.3, "{s}");
    assert!(frac("trained classifier, w = 4") > 0.9, "{s}");
    assert!(frac("exact posterior") > 0.9, "{s}");
}
