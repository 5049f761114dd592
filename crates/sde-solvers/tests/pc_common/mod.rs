//! Shared helpers of the `pc_*` tests: reference vectors and a replaying noise source.
#![allow(dead_code)]

use std::collections::HashMap;

use candle_core::{DType, Device, Shape, Tensor};
use sde_core::noise::NoiseSource;

/// Path of a reference vector file.
pub fn vectors(name: &str) -> String {
    format!("{}/../../testvectors/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Loads a reference vector file on the CPU.
pub fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(vectors(name), &Device::Cpu).unwrap()
}

/// Replays recorded normal draws in order (the reference's `randn_like` calls).
pub struct Replay {
    draws: Vec<Tensor>,
    next: usize,
}

impl Replay {
    pub fn new(draws: Vec<Tensor>) -> Self {
        Self { draws, next: 0 }
    }
    /// The draws of a `(n_draws, ...)` tensor, in order.
    pub fn stacked(t: &Tensor) -> Self {
        let n = t.dim(0).unwrap();
        Self::new((0..n).map(|i| t.get(i).unwrap()).collect())
    }
    /// Prepends one draw (the prior).
    pub fn with_first(mut self, first: Tensor) -> Self {
        self.draws.insert(0, first);
        self
    }
    pub fn used(&self) -> usize {
        self.next
    }
    pub fn len(&self) -> usize {
        self.draws.len()
    }
}

impl NoiseSource for Replay {
    fn randn(&mut self, shape: &Shape, device: &Device, dtype: DType) -> sde_core::Result<Tensor> {
        let t = self
            .draws
            .get(self.next)
            .unwrap_or_else(|| panic!("replay exhausted after {} draws", self.next));
        assert_eq!(t.shape(), shape, "draw {} has the wrong shape", self.next);
        self.next += 1;
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }
    fn rand_uniform(&mut self, _: &Shape, _: &Device, _: DType) -> sde_core::Result<Tensor> {
        panic!("the replay source only holds normal draws")
    }
}

/// Host f64 copy.
pub fn host(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The vectors README's tolerance: |got − want| ≤ rtol · max|want| + rtol · |want|.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, rtol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (host(got), host(want));
    let max = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let mut worst = 0.0f64;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let err = (a - b).abs();
        let tol = rtol * max + rtol * b.abs();
        assert!(
            err <= tol,
            "{what}: element {i}: got {a}, want {b} (|diff| {err:.3e} > tol {tol:.3e})"
        );
        worst = worst.max(err / max.max(f64::MIN_POSITIVE));
    }
    eprintln!("{what}: max |diff| / max|want| = {worst:.2e}");
}
