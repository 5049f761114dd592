//! Strict loading and safetensors I/O: every mismatch reported at once, corrupt files are
//! errors, save → load round trips bit-exactly.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use score_nets::checkpoint::{
    read_safetensors, save_safetensors, save_varmap, DTypePolicy, StrictWeights,
};
use score_nets::{Error, Mlp, MlpConfig};

const DDPM_WEIGHTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testvectors/net_ddpm_vp.weights.safetensors"
);

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("score-nets-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cpu() -> Device {
    Device::Cpu
}

#[test]
fn every_mismatch_is_reported_at_once() {
    let dev = cpu();
    let mut ts = HashMap::new();
    ts.insert(
        "a.weight".to_string(),
        Tensor::zeros((2, 3), DType::F32, &dev).unwrap(),
    );
    ts.insert(
        "a.bias".to_string(),
        Tensor::zeros(2, DType::F64, &dev).unwrap(),
    );
    ts.insert(
        "extra".to_string(),
        Tensor::zeros(5, DType::F32, &dev).unwrap(),
    );
    ts.insert("ok".to_string(), Tensor::ones(4, DType::F32, &dev).unwrap());
    let sw = StrictWeights::new(ts).with_source("my weights");
    let vb = sw.vb(DType::F32, &dev);
    // Wrong shape, wrong dtype, missing, fine; `extra` never read.
    let w = vb.get((3, 3), "a.weight").unwrap();
    assert_eq!(w.dims(), &[3, 3], "placeholder has the requested shape");
    vb.get(2, "a.bias").unwrap();
    vb.get((7, 1), "b.weight").unwrap();
    let ok = vb.get(4, "ok").unwrap();
    assert_eq!(ok.to_vec1::<f32>().unwrap(), vec![1.0; 4]);
    let report = sw.report().unwrap();
    assert_eq!(report.missing.len(), 1);
    assert_eq!(report.missing[0].0, "b.weight");
    assert_eq!(report.unused.len(), 1);
    assert_eq!(report.unused[0].0, "extra");
    assert_eq!(report.wrong_shape.len(), 1);
    assert_eq!(report.wrong_shape[0].1.dims(), &[3, 3]);
    assert_eq!(report.wrong_shape[0].2.dims(), &[2, 3]);
    assert_eq!(
        report.wrong_dtype,
        vec![("a.bias".to_string(), DType::F32, DType::F64)]
    );
    match sw.finish() {
        Err(Error::WeightMismatch(msg)) => {
            for needle in [
                "b.weight",
                "extra",
                "a.weight",
                "a.bias",
                "1 missing",
                "1 unused",
            ] {
                assert!(msg.contains(needle), "`{needle}` not in: {msg}");
            }
        }
        other => panic!("expected WeightMismatch, got {other:?}"),
    }
}

#[test]
fn dtype_policy_cast_floats() {
    let dev = cpu();
    let mut ts = HashMap::new();
    ts.insert("w".to_string(), Tensor::new(&[1.5f32, -2.0], &dev).unwrap());
    ts.insert("i".to_string(), Tensor::new(&[3i64, 4], &dev).unwrap());
    // f32 into an f64 network: refused by default, allowed (exactly) with CastFloats.
    let exact = StrictWeights::new(ts.clone());
    exact.vb(DType::F64, &dev).get(2, "w").unwrap();
    exact.vb(DType::I64, &dev).get(2, "i").unwrap();
    assert!(matches!(exact.finish(), Err(Error::WeightMismatch(_))));
    let cast = StrictWeights::new(ts).dtype_policy(DTypePolicy::CastFloats);
    let w = cast.vb(DType::F64, &dev).get(2, "w").unwrap();
    assert_eq!(w.to_vec1::<f64>().unwrap(), vec![1.5, -2.0]);
    // Integers never become floats.
    cast.vb(DType::F64, &dev).get(2, "i").unwrap();
    let r = cast.report().unwrap();
    assert_eq!(
        r.wrong_dtype,
        vec![("i".to_string(), DType::F64, DType::I64)]
    );
}

#[test]
fn mlp_save_load_roundtrip_and_mismatches() {
    let dev = cpu();
    let dir = tmp_dir("mlp-roundtrip");
    let path = dir.join("mlp.safetensors");
    let cfg = MlpConfig::ve(2);
    let vm = VarMap::new();
    let mlp = Mlp::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    let mut meta = HashMap::new();
    meta.insert("step".to_string(), "12".to_string());
    save_varmap(&vm, Some(meta), &path).unwrap();
    // Saving twice overwrites atomically and leaves no temporary file behind.
    save_varmap(&vm, None, &path).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    let loaded = StrictWeights::from_safetensors(&path)
        .unwrap()
        .build(DType::F32, &dev, |vb| Mlp::new(&cfg, vb))
        .unwrap();
    let x = Tensor::new(&[[0.3f32, -1.2], [2.0, 0.5]], &dev).unwrap();
    let labels = Tensor::new(&[0.05f32, 7.0], &dev).unwrap();
    let a = mlp.forward(&x, &labels).unwrap().to_vec2::<f32>().unwrap();
    let b = loaded
        .forward(&x, &labels)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(a, b, "bit-identical after save/load");

    // A wider network: every affine layer is reported, none silently skipped.
    let wide = MlpConfig {
        hidden: 64,
        ..cfg.clone()
    };
    let err = StrictWeights::from_safetensors(&path)
        .unwrap()
        .build(DType::F32, &dev, |vb| Mlp::new(&wide, vb))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("wrong shape") && msg.contains("layers.2.linear.weight"),
        "{msg}"
    );
    // The positional variant has no Fourier W: it is reported unused.
    let err = StrictWeights::from_safetensors(&path)
        .unwrap()
        .build(DType::F32, &dev, |vb| Mlp::new(&MlpConfig::vp(2), vb))
        .unwrap_err();
    assert!(
        err.to_string().contains("1 unused: [embed.W [32]]"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn safetensors_roundtrip_keeps_dtypes_and_metadata() {
    let dev = cpu();
    let dir = tmp_dir("st-roundtrip");
    let path = dir.join("t.safetensors");
    let f = Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0]], &dev)
        .unwrap()
        .t()
        .unwrap(); // strided
    let d = Tensor::new(&[0.1f64, 0.2], &dev).unwrap();
    let i = Tensor::new(&[7i64], &dev).unwrap();
    let h = Tensor::new(&[0.5f32, -1.0], &dev)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let mut meta = HashMap::new();
    meta.insert("k".to_string(), "v".to_string());
    save_safetensors(
        [("f", &f), ("d", &d), ("i", &i), ("h", &h)],
        Some(meta),
        &path,
    )
    .unwrap();
    let (ts, meta) = read_safetensors(&path).unwrap();
    assert_eq!(meta.get("k").map(String::as_str), Some("v"));
    assert_eq!(
        ts["f"].to_vec2::<f32>().unwrap(),
        vec![vec![1.0, 3.0], vec![2.0, 4.0]]
    );
    assert_eq!(ts["d"].to_vec1::<f64>().unwrap(), vec![0.1, 0.2]);
    assert_eq!(ts["i"].to_vec1::<i64>().unwrap(), vec![7]);
    assert_eq!(ts["h"].dtype(), DType::BF16);
    assert_eq!(
        ts["h"]
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        vec![0.5, -1.0]
    );
    // Duplicate names are refused before anything is written.
    let err = save_safetensors([("d", &d), ("d", &d)], None, dir.join("dup.safetensors"));
    assert!(matches!(err, Err(Error::Input(_))));
    assert!(!dir.join("dup.safetensors").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_truncated_and_missing_files_are_errors() {
    let dir = tmp_dir("corrupt");
    let bytes = std::fs::read(DDPM_WEIGHTS).unwrap();
    // The real file loads.
    let sw = StrictWeights::from_safetensors(DDPM_WEIGHTS).unwrap();
    assert_eq!(sw.tensors().len(), 135);
    let cut = dir.join("cut.safetensors");
    for len in [0, 4, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        match StrictWeights::from_safetensors(&cut) {
            Err(Error::Checkpoint { path, reason }) => {
                assert!(path.ends_with("cut.safetensors"));
                assert!(!reason.is_empty());
            }
            other => panic!("truncated at {len}: expected Checkpoint error, got {other:?}"),
        }
    }
    // Garbage bytes, a corrupted header length, a foreign file, a missing file.
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let g = dir.join("garbage.safetensors");
    std::fs::write(&g, &garbage).unwrap();
    assert!(matches!(
        StrictWeights::from_safetensors(&g),
        Err(Error::Checkpoint { .. })
    ));
    let mut bad_header = bytes.clone();
    bad_header[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&g, &bad_header).unwrap();
    assert!(matches!(
        StrictWeights::from_safetensors(&g),
        Err(Error::Checkpoint { .. })
    ));
    let pth = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testvectors/ckpt_ncsnpp_ve.pth"
    );
    assert!(matches!(
        StrictWeights::from_safetensors(pth),
        Err(Error::Checkpoint { .. })
    ));
    assert!(matches!(
        StrictWeights::from_safetensors(dir.join("nope.safetensors")),
        Err(Error::Checkpoint { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
