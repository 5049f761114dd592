//! Adam against hand-computed steps, warm-up and clipping; EMA against its formula.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarMap};
use sde_train::{named_vars, Adam, AdamConfig, Ema};

fn var_map(init: &[f32]) -> VarMap {
    let vm = VarMap::new();
    vm.get(init.len(), "w", Init::Const(0.0), DType::F32, &Device::Cpu)
        .unwrap();
    named_vars(&vm)[0]
        .1
        .set(&Tensor::new(init, &Device::Cpu).unwrap())
        .unwrap();
    vm
}

fn w(vm: &VarMap) -> Vec<f32> {
    named_vars(vm)[0].1.as_tensor().to_vec1::<f32>().unwrap()
}

#[test]
fn adam_matches_hand_computed_steps() {
    let cfg = AdamConfig {
        lr: 0.1,
        warmup: 0,
        grad_clip: None,
        ..Default::default()
    };
    let vm = var_map(&[1.0, -2.0]);
    let mut adam = Adam::new(&vm, cfg.clone()).unwrap();
    let gs = [[0.5f32, -1.0], [0.25, 2.0], [-0.1, 0.3]];
    // Hand computation in f64 (torch.optim.Adam).
    let (mut th, mut m, mut v) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2]);
    for (k, g) in gs.iter().enumerate() {
        let gt = Tensor::new(g, &Device::Cpu).unwrap();
        let st = adam.step(&[gt]).unwrap();
        assert_eq!(st.lr, 0.1);
        let kk = (k + 1) as i32;
        for i in 0..2 {
            let gi = g[i] as f64;
            m[i] = 0.9 * m[i] + 0.1 * gi;
            v[i] = 0.999 * v[i] + 0.001 * gi * gi;
            let denom = v[i].sqrt() / (1.0 - 0.999f64.powi(kk)).sqrt() + 1e-8;
            th[i] -= 0.1 / (1.0 - 0.9f64.powi(kk)) * m[i] / denom;
        }
        let got = w(&vm);
        for i in 0..2 {
            assert!(
                (got[i] as f64 - th[i]).abs() < 1e-6,
                "step {k}: {got:?} vs {th:?}"
            );
        }
    }
    // First Adam step moves every coordinate by ≈ lr (m̂/√v̂ = sign g).
    assert_eq!(adam.n_steps(), 3);
}

#[test]
fn warmup_and_clipping() {
    let cfg = AdamConfig {
        lr: 1.0,
        warmup: 4,
        grad_clip: Some(1.0),
        ..Default::default()
    };
    assert_eq!(cfg.lr_at(0), 0.0);
    assert_eq!(cfg.lr_at(2), 0.5);
    assert_eq!(cfg.lr_at(10), 1.0);
    let vm = var_map(&[0.0, 0.0]);
    let mut adam = Adam::new(&vm, cfg).unwrap();
    // Step 0 has rate 0: nothing moves, but the moments see the clipped gradient.
    let g = Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap(); // ‖g‖ = 5 → clipped to 1
    let st = adam.step(std::slice::from_ref(&g)).unwrap();
    assert_eq!((st.lr, st.grad_norm), (0.0, 5.0));
    assert_eq!(w(&vm), vec![0.0, 0.0]);
    let (_, m, _) = adam.moments().next().unwrap();
    let m = m.to_vec1::<f32>().unwrap();
    let c = 1.0 / (5.0 + 1e-6);
    assert!(
        (m[0] as f64 - 0.1 * 3.0 * c).abs() < 1e-7 && (m[1] as f64 - 0.1 * 4.0 * c).abs() < 1e-7
    );
    // Non-finite gradients are refused and leave θ alone.
    let bad = Tensor::new(&[f32::NAN, 0.0], &Device::Cpu).unwrap();
    assert!(matches!(
        adam.step(&[bad]),
        Err(sde_train::Error::NonFinite { .. })
    ));
    assert_eq!(w(&vm), vec![0.0, 0.0]);
    assert!(Adam::new(
        &vm,
        AdamConfig {
            beta1: 1.0,
            ..Default::default()
        }
    )
    .is_err());
}

#[test]
fn ema_follows_the_formula() {
    for decay in [0.999, 0.9999, 0.5] {
        let vm = var_map(&[0.0]);
        let mut ema = Ema::new(&vm, decay).unwrap();
        let mut shadow = 0.0f64;
        for n in 1..=30u64 {
            let theta = (n as f64).sin();
            named_vars(&vm)[0]
                .1
                .set(&Tensor::new(&[theta as f32], &Device::Cpu).unwrap())
                .unwrap();
            ema.update().unwrap();
            let d = decay.min((1.0 + n as f64) / (10.0 + n as f64));
            shadow -= (1.0 - d) * (shadow - theta as f32 as f64);
            let got = ema.shadow()[0].1.to_vec1::<f32>().unwrap()[0] as f64;
            assert!(
                (got - shadow).abs() < 1e-6,
                "decay {decay}, n {n}: {got} vs {shadow}"
            );
        }
        assert_eq!(ema.num_updates(), Some(30));
        // swap puts the shadow into the model and back.
        let before = w(&vm);
        let s = ema.shadow()[0].1.to_vec1::<f32>().unwrap();
        let inside = ema.with_ema_weights(|| Ok(w(&vm))).unwrap();
        assert_eq!(inside, s);
        assert_eq!(w(&vm), before);
    }
    let vm = var_map(&[0.0]);
    assert!(Ema::new(&vm, 1.5).is_err());
}

/// The generic tensor-op path (non-f32 or non-CPU variables) against the same hand computation,
/// in f64, and the EMA formula there.
#[test]
fn adam_and_ema_tensor_path_f64() {
    let vm = VarMap::new();
    vm.get(2, "w", Init::Const(0.0), DType::F64, &Device::Cpu)
        .unwrap();
    let var = named_vars(&vm)[0].1.clone();
    var.set(&Tensor::new(&[1.0f64, -2.0], &Device::Cpu).unwrap())
        .unwrap();
    let cfg = AdamConfig {
        lr: 0.1,
        warmup: 0,
        grad_clip: Some(1.0),
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut adam = Adam::new(&vm, cfg).unwrap();
    let mut ema = Ema::new(&vm, 0.999).unwrap();
    let (mut th, mut m, mut v, mut sh) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2], [1.0f64, -2.0]);
    for (k, g) in [[0.5f64, -1.0], [0.25, 2.0], [-0.1, 0.3]]
        .iter()
        .enumerate()
    {
        adam.step(&[Tensor::new(g, &Device::Cpu).unwrap()]).unwrap();
        ema.update().unwrap();
        let norm = (g[0] * g[0] + g[1] * g[1]).sqrt();
        let clip = (1.0 / (norm + 1e-6)).min(1.0);
        let kk = (k + 1) as i32;
        let d = 0.999f64.min((2.0 + k as f64) / (11.0 + k as f64));
        for i in 0..2 {
            let gi = g[i] * clip + 0.01 * th[i];
            m[i] = 0.9 * m[i] + 0.1 * gi;
            v[i] = 0.999 * v[i] + 0.001 * gi * gi;
            th[i] -= 0.1 / (1.0 - 0.9f64.powi(kk)) * m[i]
                / (v[i].sqrt() / (1.0 - 0.999f64.powi(kk)).sqrt() + 1e-8);
            sh[i] -= (1.0 - d) * (sh[i] - th[i]);
        }
        let got = var.as_tensor().to_vec1::<f64>().unwrap();
        let got_ema = ema.shadow()[0].1.to_vec1::<f64>().unwrap();
        for i in 0..2 {
            assert!(
                (got[i] - th[i]).abs() < 1e-12,
                "step {k}: {got:?} vs {th:?}"
            );
            assert!(
                (got_ema[i] - sh[i]).abs() < 1e-12,
                "ema {k}: {got_ema:?} vs {sh:?}"
            );
        }
    }
}

#[test]
fn cosine_decay_follows_its_formula_after_the_warm_up() {
    use sde_train::LrDecay;
    let cfg = AdamConfig {
        lr: 1e-3,
        warmup: 10,
        decay: LrDecay::Cosine { total_steps: 110 },
        ..Default::default()
    };
    cfg.validate().unwrap();
    // warm-up: linear from 0
    assert_eq!(cfg.lr_at(0), 0.0);
    assert!((cfg.lr_at(5) - 5e-4).abs() < 1e-15);
    // peak at the end of the warm-up, half way down at the midpoint, 0 at and after the end
    assert!((cfg.lr_at(10) - 1e-3).abs() < 1e-15);
    assert!((cfg.lr_at(60) - 5e-4).abs() < 1e-12);
    let k = 35u64; // a quarter of the way: ½(1 + cos(π/4))
    let want = 1e-3 * 0.5 * (1.0 + std::f64::consts::FRAC_PI_4.cos());
    assert!((cfg.lr_at(k) - want).abs() < 1e-15);
    assert!(cfg.lr_at(110).abs() < 1e-18);
    assert!(cfg.lr_at(500).abs() < 1e-18);
    // monotone after the warm-up
    assert!((10..110).all(|k| cfg.lr_at(k + 1) <= cfg.lr_at(k)));
    // the constant default is the reference's
    assert_eq!(AdamConfig::default().decay, LrDecay::Constant);
    // a decay that ends inside the warm-up is a typed error naming the field
    let bad = AdamConfig {
        warmup: 100,
        decay: LrDecay::Cosine { total_steps: 50 },
        ..Default::default()
    };
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("decay.total_steps"), "{e}");
}
