//! A tiny score network for the tests (the `score-nets` MLP is exercised elsewhere).
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use sde_core::ScoreModel;

/// x ∈ R², label → 2-layer tanh MLP on [x, label / 1000].
pub struct TinyNet {
    l1: Linear,
    l2: Linear,
}

impl TinyNet {
    pub fn new(vb: VarBuilder, hidden: usize) -> candle_core::Result<Self> {
        Ok(Self {
            l1: candle_nn::linear(3, hidden, vb.pp("l1"))?,
            l2: candle_nn::linear(hidden, 2, vb.pp("l2"))?,
        })
    }
}

impl ScoreModel for TinyNet {
    fn forward_t(
        &self,
        x: &Tensor,
        labels: &Tensor,
        _mode: sde_core::Mode<'_>,
    ) -> sde_core::Result<Tensor> {
        let l = labels
            .to_dtype(x.dtype())?
            .affine(1e-3, 0.0)?
            .unsqueeze(1)?;
        let h = Tensor::cat(&[x, &l], 1)?;
        let h = self.l1.forward(&h)?.tanh()?;
        Ok(self.l2.forward(&h)?)
    }
}

/// A TinyNet with deterministic weights (filled from a seeded RNG, not candle's unseeded init).
pub fn tiny_net(seed: u64, hidden: usize) -> (VarMap, TinyNet) {
    use rand::{Rng, SeedableRng};
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let net = TinyNet::new(vb, hidden).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data = vm.data().lock().unwrap();
    let mut names: Vec<_> = data.keys().cloned().collect();
    names.sort();
    for n in names {
        let var = &data[&n];
        let k = var.elem_count();
        let fan = var.dims().last().copied().unwrap_or(1) as f32;
        let vals: Vec<f32> = (0..k)
            .map(|_| (rng.random::<f32>() * 2.0 - 1.0) / fan.sqrt())
            .collect();
        var.set(&Tensor::from_vec(vals, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    drop(data);
    (vm, net)
}
