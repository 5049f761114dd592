//! The fused CPU float32 MLP (`sde_kernels::mlp` behind `Mlp::forward`) against the same
//! network in plain candle ops (`Mlp::forward_reference`): outputs, and the gradients of a
//! loss with respect to every parameter, the input and the labels, in both time embeddings,
//! with shared and distinct labels, in training and evaluation mode.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use score_nets::{init::seeded_var_builder, Mlp, MlpConfig};
use sde_core::noise::{NoiseSource, PerSampleNoise};
use sde_core::{Mode, ScoreModel};

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let b = b
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

#[test]
fn the_fused_path_matches_candle_ops_in_values_and_every_gradient() {
    let dev = Device::Cpu;
    for (name, config) in [("ve", MlpConfig::ve(3)), ("vp", MlpConfig::vp(3))] {
        let vm = VarMap::new();
        let net = Mlp::new(&config, seeded_var_builder(&vm, 7, DType::F32, &dev)).unwrap();
        let mut noise = PerSampleNoise::new(3);
        for (b, shared) in [(5usize, false), (300, false), (300, true)] {
            let x =
                Var::from_tensor(&noise.randn(&(b, 3).into(), &dev, DType::F32).unwrap()).unwrap();
            let l = if shared {
                Tensor::full(0.37f32, b, &dev).unwrap()
            } else {
                let u = noise.rand_uniform(&(b,).into(), &dev, DType::F32).unwrap();
                (u * 3.0).unwrap().exp().unwrap().affine(0.05, 0.0).unwrap()
            };
            let l = Var::from_tensor(&l).unwrap();
            let w = noise.randn(&(b, 3).into(), &dev, DType::F32).unwrap();
            for mode in ["train", "eval"] {
                let fused = if mode == "train" {
                    let mut n = PerSampleNoise::new(0);
                    net.forward_t(x.as_tensor(), l.as_tensor(), Mode::Train(&mut n))
                        .unwrap()
                } else {
                    net.forward(x.as_tensor(), l.as_tensor()).unwrap()
                };
                let plain = net.forward_reference(x.as_tensor(), l.as_tensor()).unwrap();
                let e = max_rel(&fused, &plain);
                assert!(
                    e < 2e-5,
                    "{name} b {b} shared {shared} {mode}: output rel. error {e}"
                );
                let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let gp = (plain * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let mut vars: Vec<(String, Tensor)> = vm
                    .data()
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                    .collect();
                vars.push(("x".into(), x.as_tensor().clone()));
                vars.push(("labels".into(), l.as_tensor().clone()));
                for (k, v) in vars {
                    match (gf.get(&v), gp.get(&v)) {
                        (Some(a), Some(p)) => {
                            let e = max_rel(a, p);
                            assert!(e < 1e-4, "{name} b {b} {mode}: d/d{k} rel. error {e}");
                        }
                        // the Fourier W is detached in both paths
                        (None, None) => assert_eq!(k, "embed.W", "{name}: no gradient for {k}"),
                        (a, p) => panic!(
                            "{name}: d/d{k} present fused {} plain {}",
                            a.is_some(),
                            p.is_some()
                        ),
                    }
                }
            }
        }
    }
}

#[test]
fn float64_and_empty_batches_take_the_candle_path_and_agree() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let net = Mlp::new(
        &MlpConfig::ve(2),
        seeded_var_builder(&vm, 1, DType::F64, &dev),
    )
    .unwrap();
    let x = Tensor::zeros((4, 2), DType::F64, &dev).unwrap();
    let l = Tensor::full(0.5f64, 4, &dev).unwrap();
    let a = net.forward(&x, &l).unwrap();
    assert_eq!(a.dtype(), DType::F64);
    assert_eq!(max_rel(&a, &net.forward_reference(&x, &l).unwrap()), 0.0);
    let vm = VarMap::new();
    let net = Mlp::new(
        &MlpConfig::vp(2),
        seeded_var_builder(&vm, 1, DType::F32, &dev),
    )
    .unwrap();
    let y = net
        .forward(
            &Tensor::zeros((0, 2), DType::F32, &dev).unwrap(),
            &Tensor::zeros(0, DType::F32, &dev).unwrap(),
        )
        .unwrap();
    assert_eq!(y.dims(), &[0, 2]);
}
