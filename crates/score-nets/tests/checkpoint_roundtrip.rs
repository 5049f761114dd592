//! Every network through the user's weight paths: the parity weight files load strictly (every
//! tensor read, `sigmas` included), and a network trained from scratch (seeded `VarMap`) saved
//! with `save_varmap` loads strictly back into an identical network.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use score_nets::checkpoint::{save_varmap, StrictWeights};
use score_nets::init::seeded_var_builder;
use score_nets::{Ddpm, DdpmConfig, Mlp, MlpConfig, NcsnPp, NcsnPpConfig};
use sde_core::ScoreModel;

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
fn parity_weight_files_load_strictly() {
    for (name, tol) in [
        ("net_ncsnpp_ve", 1e-4f32),
        ("net_ddpmpp_vp", 2e-5),
        ("net_ddpm_vp", 2e-5),
    ] {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tv(&format!("{name}.json"))).unwrap()).unwrap();
        let sw =
            StrictWeights::from_safetensors(tv(&format!("{name}.weights.safetensors"))).unwrap();
        let net: Box<dyn ScoreModel> = if name == "net_ddpm_vp" {
            let cfg = DdpmConfig::from_reference_json(&json["config"]).unwrap();
            Box::new(
                sw.build(DType::F32, &Device::Cpu, |vb| Ddpm::new(&cfg, vb))
                    .unwrap(),
            )
        } else {
            let cfg = NcsnPpConfig::from_reference_json(&json["config"]).unwrap();
            Box::new(
                sw.build(DType::F32, &Device::Cpu, |vb| NcsnPp::new(cfg, vb))
                    .unwrap(),
            )
        };
        let io =
            candle_core::safetensors::load(tv(&format!("{name}.io.safetensors")), &Device::Cpu)
                .unwrap();
        let out = net
            .forward_t(&io["x"], &io["labels"], sde_core::Mode::Eval)
            .unwrap();
        let err = max_abs(&(&out - &io["output"]).unwrap());
        assert!(err <= tol * max_abs(&io["output"]), "{name}: {err}");
    }
}

fn roundtrip<M: ScoreModel>(
    tag: &str,
    build: impl Fn(candle_nn::VarBuilder<'static>) -> score_nets::Result<M>,
    x: &Tensor,
    labels: &Tensor,
) {
    let vm = VarMap::new();
    let fresh = build(seeded_var_builder(&vm, 17, DType::F32, &Device::Cpu)).unwrap();
    let dir = std::env::temp_dir().join(format!("score-nets-rt-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    save_varmap(&vm, None, &path).unwrap();
    let sw = StrictWeights::from_safetensors(&path).unwrap();
    // Every variable comes back bit for bit.
    for (name, var) in vm.data().lock().unwrap().iter() {
        let saved = &sw.tensors()[name];
        assert_eq!(
            max_abs(&(var.as_tensor() - saved).unwrap()),
            0.0,
            "{tag}: {name}"
        );
    }
    let loaded = sw.build(DType::F32, &Device::Cpu, &build).unwrap();
    let a = fresh.forward_t(x, labels, sde_core::Mode::Eval).unwrap();
    let b = loaded.forward_t(x, labels, sde_core::Mode::Eval).unwrap();
    // Same weights; the convolutions may take another (equally exact) kernel for variables,
    // which track gradients, than for plain tensors, so compare to float32 rounding.
    let err = max_abs(&(&a - &b).unwrap());
    assert!(
        err <= 1e-5 * max_abs(&a),
        "{tag}: {err} vs max {}",
        max_abs(&a)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fresh_networks_save_and_load_back_strictly() {
    let dev = Device::Cpu;
    let img: Vec<f32> = (0..2 * 3 * 16 * 16)
        .map(|i| ((i as f32) * 0.11).sin())
        .collect();
    let x = Tensor::from_vec(img, (2, 3, 16, 16), &dev).unwrap();
    let sigmas = Tensor::new(&[0.3f32, 20.0], &dev).unwrap();
    let steps = Tensor::new(&[10f32, 800.0], &dev).unwrap();
    roundtrip(
        "ncsnpp",
        |vb| NcsnPp::new(NcsnPpConfig::small_ncsnpp_ve(), vb),
        &x,
        &sigmas,
    );
    roundtrip(
        "ddpmpp",
        |vb| NcsnPp::new(NcsnPpConfig::small_ddpmpp_vp(), vb),
        &x,
        &steps,
    );
    roundtrip(
        "ddpm",
        |vb| Ddpm::new(&DdpmConfig::small_test(), vb),
        &x,
        &steps,
    );
    let x2 = Tensor::new(&[[0.5f32, -1.0], [2.0, 0.1]], &dev).unwrap();
    roundtrip("mlp", |vb| Mlp::new(&MlpConfig::ve(2), vb), &x2, &sigmas);
}
