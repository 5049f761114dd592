//! Helpers shared by the sde-core integration tests.
#![allow(dead_code)]

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

/// Loads a reference test-vector file from `testvectors/` at the repository root.
pub fn vectors(name: &str) -> HashMap<String, Tensor> {
    let path = format!("{}/../../testvectors/{name}", env!("CARGO_MANIFEST_DIR"));
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot load {path}: {e}"))
}

pub fn host(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The vectors README's float32 check: |got − want| ≤ rel·max|want| + rel·|want|.
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, rel: f64) {
    assert_close_abs(name, got, want, rel, 0.0)
}

/// As [`assert_close`] with an extra absolute term `abs`.
pub fn assert_close_abs(name: &str, got: &Tensor, want: &Tensor, rel: f64, abs: f64) {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let (g, w) = (host(got), host(want));
    let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let tol = rel * scale + rel * b.abs() + abs;
        assert!(
            (a - b).abs() <= tol,
            "{name}[{i}]: got {a}, want {b} (tol {tol})"
        );
    }
}
