//! The reference's training checkpoint through the path users take: `.pth` -> model or EMA
//! weights -> strict loading into NCSN++ -> the reference's `output_model` / `output_ema`
//! (`ckpt_ncsnpp_ve.expected.safetensors`), at the README's tolerance for the Fourier NCSN++
//! (1e-4 * max|output|).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use score_nets::checkpoint::CheckpointWeights;
use score_nets::{NcsnPp, NcsnPpConfig, ReferenceConfig, ScoreNet};
use sde_core::{Mode, ScoreModel};

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
    // One call from the reference's config file: the network, its frozen parameters and the
    // EMA order are derived from the config, not from the json's `parameter_order`.
    let reference = ReferenceConfig::from_file(tv("net_ncsnpp_ve.json")).unwrap();
    let expected =
        candle_core::safetensors::load(tv("ckpt_ncsnpp_ve.expected.safetensors"), &Device::Cpu)
            .unwrap();
    let (x, labels) = (&expected["x"], &expected["labels"]);

    let mut outputs = Vec::new();
    for (which, key) in [
        (CheckpointWeights::Model, "output_model"),
        (CheckpointWeights::Ema, "output_ema"),
    ] {
        // Strict: every tensor of the checkpoint (incl. the sigmas buffer) is read, none missing.
        let net = reference
            .load_checkpoint(tv("ckpt_ncsnpp_ve.pth"), which, DType::F32, &Device::Cpu)
            .unwrap();
        assert!(matches!(net, ScoreNet::NcsnPp(_)));
        let out = net.forward_t(x, labels, Mode::Eval).unwrap();
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

/// The EMA order the one call derives equals the reference's
/// `[n for n, p in model.named_parameters() if p.requires_grad]` recorded in the json.
#[test]
fn trainable_order_from_the_config_is_the_reference_order() {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tv("net_ncsnpp_ve.json")).unwrap()).unwrap();
    let frozen: Vec<String> = json["parameters_without_grad"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = json["parameter_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .filter(|n| !frozen.contains(n))
        .collect();
    let net = ReferenceConfig::from_json(&json)
        .unwrap()
        .network()
        .unwrap();
    assert_eq!(net.frozen_parameters(), frozen);
    assert_eq!(net.trainable_parameter_order().unwrap(), want);
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
