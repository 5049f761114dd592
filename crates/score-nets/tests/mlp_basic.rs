//! MLP score network: shapes, input validation, gradient flow, score adapter wiring.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use score_nets::{Error, Mlp, MlpConfig, MlpEmbedding};
use sde_core::{ScoreFn, ScoreModel, ScoreModelFn, Sde, VeSde, VpSde};

fn build(cfg: &MlpConfig) -> (VarMap, Mlp) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let mlp = Mlp::new(cfg, vb).unwrap();
    (vm, mlp)
}

fn data(b: usize, d: usize) -> Tensor {
    let v: Vec<f32> = (0..b * d).map(|i| ((i as f32) * 0.37).sin()).collect();
    Tensor::from_vec(v, (b, d), &Device::Cpu).unwrap()
}

#[test]
fn shapes_and_parameter_names() {
    for cfg in [MlpConfig::ve(3), MlpConfig::vp(3)] {
        let (vm, mlp) = build(&cfg);
        let x = data(5, 3);
        let labels = Tensor::new(&[0.1f32, 0.5, 1.0, 5.0, 40.0], &Device::Cpu).unwrap();
        let out = mlp.forward_t(&x, &labels, sde_core::Mode::Eval).unwrap();
        assert_eq!(out.dims(), &[5, 3]);
        let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
        // temb.{0,1} + input + 3 * (linear, temb) + output, weight and bias each.
        let n_affine = 2 + 1 + 2 * cfg.n_layers + 1;
        let fourier = usize::from(matches!(cfg.embedding, MlpEmbedding::Fourier { .. }));
        assert_eq!(names.len(), 2 * n_affine + fourier, "{names:?}");
        assert!(names.contains(&"layers.2.temb.weight".to_string()));
        assert_eq!(fourier == 1, names.contains(&"embed.W".to_string()));
    }
}

#[test]
fn scale_by_sigma_divides_by_the_label() {
    // With scale_by_sigma the output is out/label; the same weights without it give out.
    let cfg = MlpConfig::ve(2);
    let (vm, mlp) = build(&cfg);
    let plain_cfg = MlpConfig {
        scale_by_sigma: false,
        ..cfg.clone()
    };
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let plain = Mlp::new(&plain_cfg, vb).unwrap();
    let x = data(4, 2);
    let labels = Tensor::new(&[0.01f32, 0.3, 2.0, 50.0], &Device::Cpu).unwrap();
    let a = mlp.forward(&x, &labels).unwrap();
    let b = plain.forward(&x, &labels).unwrap();
    let b_scaled = b.broadcast_div(&labels.unsqueeze(1).unwrap()).unwrap();
    let diff = (a - b_scaled).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-3);
}

#[test]
fn input_validation() {
    let (_vm, mlp) = build(&MlpConfig::ve(2));
    let labels = Tensor::new(&[0.5f32, 1.0], &Device::Cpu).unwrap();
    let wrong_dim = data(2, 3);
    assert!(matches!(
        mlp.forward(&wrong_dim, &labels),
        Err(Error::Input(_))
    ));
    let wrong_rank = Tensor::zeros((2, 2, 1), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        mlp.forward(&wrong_rank, &labels),
        Err(Error::Input(_))
    ));
    let wrong_labels = Tensor::new(&[0.5f32, 1.0, 2.0], &Device::Cpu).unwrap();
    assert!(matches!(
        mlp.forward(&data(2, 2), &wrong_labels),
        Err(Error::Input(_))
    ));
    // log(sigma) needs sigma > 0.
    let zero = Tensor::new(&[0.0f32, 1.0], &Device::Cpu).unwrap();
    assert!(matches!(
        mlp.forward(&data(2, 2), &zero),
        Err(Error::Input(_))
    ));
    let ints = Tensor::new(&[1i64, 2], &Device::Cpu).unwrap();
    assert!(matches!(
        mlp.forward(&ints.unsqueeze(1).unwrap(), &labels),
        Err(Error::Input(_))
    ));
    // Through the trait the error survives as sde_core::Error::Model.
    assert!(mlp
        .forward_t(&wrong_dim, &labels, sde_core::Mode::Eval)
        .is_err());
}

#[test]
fn config_validation() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    for bad in [
        MlpConfig {
            data_dim: 0,
            ..MlpConfig::ve(2)
        },
        MlpConfig {
            hidden: 0,
            ..MlpConfig::ve(2)
        },
        MlpConfig {
            n_layers: 0,
            ..MlpConfig::ve(2)
        },
        MlpConfig {
            embedding_dim: 7,
            ..MlpConfig::ve(2)
        },
        MlpConfig {
            embedding: MlpEmbedding::Fourier {
                scale: f64::NAN,
                log_label: true,
            },
            ..MlpConfig::ve(2)
        },
    ] {
        assert!(
            matches!(Mlp::new(&bad, vb.clone()), Err(Error::Config(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn gradients_reach_every_trainable_parameter() {
    for cfg in [MlpConfig::ve(2), MlpConfig::vp(2)] {
        let (vm, mlp) = build(&cfg);
        let x = data(6, 2);
        let labels = Tensor::new(&[0.02f32, 0.1, 0.7, 3.0, 11.0, 45.0], &Device::Cpu).unwrap();
        let loss = mlp
            .forward(&x, &labels)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let data = vm.data().lock().unwrap();
        for (name, var) in data.iter() {
            let g = grads.get(var.as_tensor());
            if name == "embed.W" {
                // The Fourier frequencies are fixed, as in the reference (requires_grad=False).
                assert!(g.is_none(), "embed.W must not be trained");
                continue;
            }
            let g = g.unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm.is_finite() && norm > 0.0, "zero gradient for {name}");
        }
    }
}

#[test]
fn as_score_function_of_ve_and_vp() {
    let dev = Device::Cpu;
    let x = data(4, 2);
    let t = Tensor::new(&[0.01f32, 0.3, 0.6, 1.0], &dev).unwrap();
    let (_vm, ve_mlp) = build(&MlpConfig::ve(2));
    let ve = VeSde::default();
    let s = ScoreModelFn::new(&ve, &ve_mlp, true).score(&x, &t).unwrap();
    assert_eq!(s.dims(), &[4, 2]);
    let (_vm, vp_mlp) = build(&MlpConfig::vp(2));
    let vp = VpSde::default();
    let s = ScoreModelFn::new(&vp, &vp_mlp, true).score(&x, &t).unwrap();
    assert_eq!(s.dims(), &[4, 2]);
    // Discrete VE labels are i64 indices: positional embedding accepts them.
    let s = ScoreModelFn::new(&ve, &vp_mlp, false)
        .score(&x, &t)
        .unwrap();
    assert_eq!(s.dims(), &[4, 2]);
}

#[test]
fn seeded_init_is_deterministic() {
    use score_nets::init::seeded_var_builder;
    let out = |seed: u64| {
        let vm = VarMap::new();
        let vb = seeded_var_builder(&vm, seed, DType::F32, &Device::Cpu);
        let mlp = Mlp::new(&MlpConfig::ve(2), vb).unwrap();
        let labels = Tensor::new(&[0.05f32, 0.5, 5.0], &Device::Cpu).unwrap();
        mlp.forward(&data(3, 2), &labels)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    };
    assert_eq!(out(3), out(3), "same seed, bit-identical network");
    assert_ne!(out(3), out(4));
}

/// The network can represent and learn a real score: regress the exact VE score of
/// p_0 = N(0.3, 0.6^2 I) (sde_core's analytic oracle) at random (x, t) with Adam.
#[test]
fn learns_the_exact_score_of_a_gaussian() {
    use candle_nn::{AdamW, Optimizer, ParamsAdamW};
    use rand::{Rng, SeedableRng};
    use sde_core::analytic::GaussianScore;
    let dev = Device::Cpu;
    let sde = VeSde::new(0.01, 5.0, 1000).unwrap();
    let oracle = GaussianScore::isotropic(sde.clone(), 0.3, 0.6).unwrap();
    let vm = VarMap::new();
    let vb = score_nets::init::seeded_var_builder(&vm, 0, DType::F32, &dev);
    let cfg = MlpConfig {
        hidden: 64,
        n_layers: 2,
        ..MlpConfig::ve(2)
    };
    let mlp = Mlp::new(&cfg, vb).unwrap();
    let model = ScoreModelFn::new(&sde, &mlp, true);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut batch = |n: usize| {
        let t: Vec<f32> = (0..n).map(|_| rng.random_range(0.05f32..1.0)).collect();
        let t = Tensor::new(t, &dev).unwrap();
        let std = sde.marginal_coeffs(&t).unwrap().1;
        let z = sde_core::noise::randn_like(
            &Tensor::zeros((n, 2), DType::F32, &dev).unwrap(),
            &mut rng,
        )
        .unwrap();
        let x = (sde_core::mul_batch(&(std.sqr().unwrap() + 0.36).unwrap().sqrt().unwrap(), &z)
            .unwrap()
            + 0.3)
            .unwrap();
        // sigma^2-weighted regression onto the exact score.
        let w = std.clone();
        (x, t, w)
    };
    let err = |model: &ScoreModelFn<'_, VeSde, Mlp>, b: &(Tensor, Tensor, Tensor)| {
        let (x, t, w) = b;
        let d = (model.score(x, t).unwrap() - oracle.score(x, t).unwrap()).unwrap();
        sde_core::mul_batch(w, &d)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
    };
    let test = batch(512);
    let before = err(&model, &test).to_scalar::<f32>().unwrap();
    let mut opt = AdamW::new(
        vm.all_vars(),
        ParamsAdamW {
            lr: 3e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    for _ in 0..300 {
        let b = batch(128);
        opt.backward_step(&err(&model, &b)).unwrap();
    }
    let after = err(&model, &test).to_scalar::<f32>().unwrap();
    eprintln!("mlp regression: before {before}, after {after}");
    // sigma * score has unit scale; 0.05 is a 5 % relative error on average.
    assert!(
        after < 0.05 && after < 0.1 * before,
        "before {before}, after {after}"
    );
}
