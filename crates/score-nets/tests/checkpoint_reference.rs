//! The reference's own training checkpoint (`ckpt_ncsnpp_ve.pth`, `torch.save` zip format):
//! model and EMA weights, names, shapes, step, and errors on foreign or damaged files.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use score_nets::checkpoint::{load_reference_checkpoint, CheckpointWeights};
use score_nets::Error;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testvectors/");

fn tv(name: &str) -> PathBuf {
    PathBuf::from(DIR).join(name)
}

/// `[n for n, p in model.named_parameters() if p.requires_grad]` from the reference's json.
fn trainable_order() -> Vec<String> {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tv("net_ncsnpp_ve.json")).unwrap()).unwrap();
    let frozen: Vec<String> = json["parameters_without_grad"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(frozen, vec!["all_modules.0.W".to_string()]);
    json["parameter_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .filter(|n| !frozen.contains(n))
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn model_and_ema_weights_match_the_reference_names_and_shapes() {
    let order = trainable_order();
    assert_eq!(order.len(), 224);
    let reference =
        candle_core::safetensors::load(tv("net_ncsnpp_ve.weights.safetensors"), &Device::Cpu)
            .unwrap();
    let expected =
        candle_core::safetensors::load(tv("ckpt_ncsnpp_ve.expected.safetensors"), &Device::Cpu)
            .unwrap();
    let step = expected["step"]
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()[0];

    let model =
        load_reference_checkpoint(tv("ckpt_ncsnpp_ve.pth"), CheckpointWeights::Model, &[]).unwrap();
    let ema = load_reference_checkpoint(tv("ckpt_ncsnpp_ve.pth"), CheckpointWeights::Ema, &order)
        .unwrap();
    assert_eq!(model.step, Some(step));
    assert_eq!(step, 7);
    assert_eq!(ema.ema_decay, Some(0.9));

    for ck in [&model, &ema] {
        let mut got: Vec<&String> = ck.tensors.keys().collect();
        let mut want: Vec<&String> = reference.keys().collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "same state_dict keys, `module.` stripped");
        for (k, t) in &reference {
            assert_eq!(ck.tensors[k].dims(), t.dims(), "{k}");
            // Everything is f32, including `sigmas` (float64 in PyTorch, cast on load).
            assert_eq!(ck.tensors[k].dtype(), DType::F32, "{k}");
        }
    }
    // Training started from the reference weights: frozen W and the sigmas buffer are
    // unchanged, and the EMA takes them from the model.
    for k in ["all_modules.0.W", "sigmas"] {
        assert_eq!(max_abs_diff(&model.tensors[k], &reference[k]), 0.0, "{k}");
        assert_eq!(max_abs_diff(&ema.tensors[k], &reference[k]), 0.0, "{k}");
    }
    // Two Adam steps moved the trainable weights; the EMA lags between start and model.
    let mut n_moved = 0;
    let mut n_ema_differs = 0;
    for k in &order {
        let (w0, wm, we) = (&reference[k], &model.tensors[k], &ema.tensors[k]);
        if max_abs_diff(wm, w0) > 0.0 {
            n_moved += 1;
        }
        if max_abs_diff(we, wm) > 0.0 {
            n_ema_differs += 1;
        }
    }
    assert!(
        n_moved > 200,
        "only {n_moved} parameters changed in training"
    );
    assert!(
        n_ema_differs > 200,
        "EMA equals the model on {} parameters",
        224 - n_ema_differs
    );
}

#[test]
fn ema_list_must_fit_the_parameter_order() {
    let path = tv("ckpt_ncsnpp_ve.pth");
    let mut order = trainable_order();
    // One name too many (the frozen W included): refused, with the counts.
    let mut with_w = vec!["all_modules.0.W".to_string()];
    with_w.extend(order.iter().cloned());
    match load_reference_checkpoint(&path, CheckpointWeights::Ema, &with_w) {
        Err(Error::Checkpoint { reason, .. }) => {
            assert!(reason.contains("224") && reason.contains("225"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // Two parameters of different shapes swapped: the shape check catches it.
    order.swap(0, 1); // all_modules.1.weight [64, 16] <-> all_modules.1.bias [64]
    match load_reference_checkpoint(&path, CheckpointWeights::Ema, &order) {
        Err(Error::Checkpoint { reason, .. }) => {
            assert!(reason.contains("wrong parameter order"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // An unknown name.
    let mut renamed = trainable_order();
    renamed[5] = "all_modules.99.weight".to_string();
    assert!(matches!(
        load_reference_checkpoint(&path, CheckpointWeights::Ema, &renamed),
        Err(Error::Checkpoint { .. })
    ));
}

#[test]
fn foreign_truncated_and_garbage_files_are_errors() {
    let dir = std::env::temp_dir().join(format!("score-nets-pth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(tv("ckpt_ncsnpp_ve.pth")).unwrap();
    let cut = dir.join("cut.pth");
    for len in [0, 10, 1000, bytes.len() / 2, bytes.len() - 30] {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        match load_reference_checkpoint(&cut, CheckpointWeights::Model, &[]) {
            Err(Error::Checkpoint { .. }) => {}
            other => panic!("truncated at {len}: {:?}", other.map(|c| c.tensors.len())),
        }
    }
    let garbage: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    std::fs::write(&cut, &garbage).unwrap();
    assert!(matches!(
        load_reference_checkpoint(&cut, CheckpointWeights::Model, &[]),
        Err(Error::Checkpoint { .. })
    ));
    // Flip bytes inside the archive's data (storages and the pickle): an error or, where the
    // damage only changes values, a load; never a panic.
    let mut flipped = bytes.clone();
    for i in (200..flipped.len()).step_by(4099) {
        flipped[i] ^= 0x5a;
    }
    std::fs::write(&cut, &flipped).unwrap();
    let _ = load_reference_checkpoint(&cut, CheckpointWeights::Ema, &trainable_order());
    // A safetensors file is not a torch checkpoint; nor is a missing file.
    assert!(matches!(
        load_reference_checkpoint(
            tv("net_ncsnpp_ve.weights.safetensors"),
            CheckpointWeights::Model,
            &[]
        ),
        Err(Error::Checkpoint { .. })
    ));
    assert!(matches!(
        load_reference_checkpoint(dir.join("missing.pth"), CheckpointWeights::Model, &[]),
        Err(Error::Checkpoint { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
