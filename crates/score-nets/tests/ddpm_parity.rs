//! The DDPM network against the reference (`net_ddpm_vp.{json,weights,io}.safetensors`):
//! weights loaded strictly, output and every module's activation at the README tolerance
//! (2e-5 * max|output| for positional models), plus save -> load round trip.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use score_nets::checkpoint::{save_safetensors, StrictWeights};
use score_nets::{Ddpm, DdpmConfig, Error};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testvectors/");

fn tv(name: &str) -> PathBuf {
    PathBuf::from(DIR).join(name)
}

fn config() -> DdpmConfig {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tv("net_ddpm_vp.json")).unwrap()).unwrap();
    DdpmConfig::from_reference_json(&json["config"]).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap())
}

fn load(dtype: DType) -> Ddpm {
    let policy = if dtype == DType::F32 {
        score_nets::checkpoint::DTypePolicy::Exact
    } else {
        score_nets::checkpoint::DTypePolicy::CastFloats
    };
    StrictWeights::from_safetensors(tv("net_ddpm_vp.weights.safetensors"))
        .unwrap()
        .dtype_policy(policy)
        .build(dtype, &Device::Cpu, |vb| Ddpm::new(&config(), vb))
        .unwrap()
}

#[test]
fn config_from_reference_json_is_the_small_preset() {
    assert_eq!(config(), DdpmConfig::small_test());
}

#[test]
fn output_and_activations_match_the_reference() {
    let io =
        candle_core::safetensors::load(tv("net_ddpm_vp.io.safetensors"), &Device::Cpu).unwrap();
    let net = load(DType::F32);
    assert_eq!(net.num_modules(), 18);
    let (out, acts) = net
        .forward_with_activations(&io["x"], &io["labels"])
        .unwrap();
    let want = &io["output"];
    let scale = max_abs(want);
    let err = max_abs_diff(&out, want);
    eprintln!("ddpm f32: max abs err {err}, max|output| {scale}");
    assert!(
        err <= 2e-5 * scale,
        "output: max abs err {err}, max|output| {scale}"
    );
    // Against the float64 reference the float32 error floor is ~1e-6 relative.
    let err64 = max_abs_diff(&out, &io["output_f64"]);
    assert!(err64 <= 2e-5 * scale, "vs f64: {err64}");

    // Every module output, in call order, named as in the vectors (act.NNN.all_modules.i).
    let mut names: Vec<&String> = io.keys().filter(|k| k.starts_with("act.")).collect();
    names.sort();
    assert_eq!(names.len(), acts.len());
    for (k, (name, got)) in names.iter().zip(&acts) {
        assert!(k.ends_with(&format!(".{name}")), "{k} vs {name}");
        let want = &io[k.as_str()];
        assert_eq!(got.dims(), want.dims(), "{k}");
        let err = max_abs_diff(got, want);
        assert!(
            err <= 2e-5 * max_abs(want).max(1e-3),
            "{k}: max abs err {err}"
        );
    }
}

#[test]
fn float64_network_is_closer_to_the_float64_reference() {
    let io =
        candle_core::safetensors::load(tv("net_ddpm_vp.io.safetensors"), &Device::Cpu).unwrap();
    let net = load(DType::F64);
    let x = io["x"].to_dtype(DType::F64).unwrap();
    let out = net.forward(&x, &io["labels"]).unwrap();
    assert_eq!(out.dtype(), DType::F64);
    let want = &io["output_f64"];
    let err = max_abs_diff(&out, want);
    eprintln!("ddpm f64: max abs err {err}, max|output| {}", max_abs(want));
    // The weights are float32 in both; the remaining difference is the f32 time embedding
    // (computed in float32 as the reference does) and the f32 labels.
    assert!(
        err <= 2e-6 * max_abs(want),
        "f64 network vs f64 reference: {err}"
    );
}

#[test]
fn save_load_roundtrip_through_strict_safetensors() {
    let io =
        candle_core::safetensors::load(tv("net_ddpm_vp.io.safetensors"), &Device::Cpu).unwrap();
    let weights =
        candle_core::safetensors::load(tv("net_ddpm_vp.weights.safetensors"), &Device::Cpu)
            .unwrap();
    let dir = std::env::temp_dir().join(format!("score-nets-ddpm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ddpm.safetensors");
    save_safetensors(weights.iter().map(|(k, v)| (k.as_str(), v)), None, &path).unwrap();
    let a = load(DType::F32).forward(&io["x"], &io["labels"]).unwrap();
    let b = StrictWeights::from_safetensors(&path)
        .unwrap()
        .build(DType::F32, &Device::Cpu, |vb| Ddpm::new(&config(), vb))
        .unwrap()
        .forward(&io["x"], &io["labels"])
        .unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);

    // Dropping one tensor and adding a foreign one: both reported by the strict loader.
    let mut broken = weights.clone();
    broken.remove("all_modules.6.NIN_3.W");
    broken.insert(
        "all_modules.99.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let err = StrictWeights::new(broken)
        .build(DType::F32, &Device::Cpu, |vb| Ddpm::new(&config(), vb))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("all_modules.6.NIN_3.W") && msg.contains("all_modules.99.weight"),
        "{msg}"
    );
    // A config with another channel count: shape mismatches, not a panic.
    let wide = DdpmConfig { nf: 64, ..config() };
    let err = StrictWeights::new(weights.clone())
        .build(DType::F32, &Device::Cpu, |vb| Ddpm::new(&wide, vb))
        .unwrap_err();
    assert!(matches!(err, Error::WeightMismatch(_)), "{err}");
    // A sigmas buffer of another noise schedule is refused.
    let other = DdpmConfig {
        sigma_max: 80.0,
        ..config()
    };
    let err = StrictWeights::new(weights)
        .build(DType::F32, &Device::Cpu, |vb| Ddpm::new(&other, vb))
        .unwrap_err();
    assert!(err.to_string().contains("sigmas"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
