//! The reference's training checkpoint through the path users take: `.pth` -> model or EMA
//! weights -> strict loading into NCSN++ -> the reference's `output_model` / `output_ema`
//! (`ckpt_ncsnpp_ve.expected.safetensors`), at the README's tolerance for the Fourier NCSN++
//! (1e-4 * max|output|).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use score_nets::checkpoint::{load_reference_checkpoint, CheckpointWeights, StrictWeights};
use score_nets::{NcsnPp, NcsnPpConfig};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testvectors/");

fn tv(name: &str) -> PathBuf {
    PathBuf::from(DIR).join(name)
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

#[test]
fn model_and_ema_weights_reproduce_the_reference_outputs() {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tv("net_ncsnpp_ve.json")).unwrap()).unwrap();
    let config = NcsnPpConfig::from_reference_json(&json["config"]).unwrap();
    let frozen: Vec<&str> = json["parameters_without_grad"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let trainable: Vec<String> = json["parameter_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .filter(|n| !frozen.contains(n))
        .map(str::to_string)
        .collect();
    let expected =
        candle_core::safetensors::load(tv("ckpt_ncsnpp_ve.expected.safetensors"), &Device::Cpu)
            .unwrap();
    let (x, labels) = (&expected["x"], &expected["labels"]);

    let mut outputs = Vec::new();
    for (which, key) in [
        (CheckpointWeights::Model, "output_model"),
        (CheckpointWeights::Ema, "output_ema"),
    ] {
        let ckpt = load_reference_checkpoint(tv("ckpt_ncsnpp_ve.pth"), which, &trainable).unwrap();
        // Strict: every tensor of the checkpoint (incl. the sigmas buffer) is read, none missing.
        let net = StrictWeights::new(ckpt.tensors)
            .with_source(format!("ckpt_ncsnpp_ve.pth ({which:?})"))
            .build(DType::F32, &Device::Cpu, |vb| {
                NcsnPp::new(config.clone(), vb)
            })
            .unwrap();
        let out = net.forward(x, labels).unwrap();
        let want = &expected[key];
        let err = max_abs(&(&out - want).unwrap());
        let scale = max_abs(want);
        eprintln!("{key}: max abs err {err}, max|output| {scale}");
        assert!(
            err <= 1e-4 * scale,
            "{key}: max abs err {err} > 1e-4 * {scale}"
        );
        outputs.push(out);
    }
    // The two weight sets give clearly different networks (README: max difference ~25).
    let gap = max_abs(&(&outputs[0] - &outputs[1]).unwrap());
    assert!(gap > 1.0, "model and EMA outputs differ by only {gap}");
}

/// `parameter_order` reproduces the reference's `model.parameters()` order for NCSN++ and
/// DDPM (so the EMA list of their checkpoints can be named without the json).
#[test]
fn parameter_order_is_the_reference_order() {
    use score_nets::checkpoint::parameter_order;
    use score_nets::{Ddpm, DdpmConfig};
    for name in ["net_ncsnpp_ve", "net_ddpmpp_vp", "net_ddpm_vp"] {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tv(&format!("{name}.json"))).unwrap()).unwrap();
        let want: Vec<&str> = json["parameter_order"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let got = if name == "net_ddpm_vp" {
            let cfg = DdpmConfig::from_reference_json(&json["config"]).unwrap();
            parameter_order(|vb| Ddpm::new(&cfg, vb)).unwrap()
        } else {
            let cfg = NcsnPpConfig::from_reference_json(&json["config"]).unwrap();
            parameter_order(|vb| NcsnPp::new(cfg, vb)).unwrap()
        };
        let got: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(got, want, "{name}");
    }
}
