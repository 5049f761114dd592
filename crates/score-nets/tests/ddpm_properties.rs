//! DDPM network beyond the parity vector: gradients, unconditional and SMLD (`scale_by_sigma`)
//! variants, resampling without convolutions, validation, seeded dropout.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use score_nets::init::seeded_var_builder;
use score_nets::{Ddpm, DdpmConfig, Error};
use sde_core::{ScoreFn, ScoreModel, ScoreModelFn, VpSde};

fn tiny() -> DdpmConfig {
    DdpmConfig {
        image_size: 8,
        nf: 32,
        ch_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        dropout: 0.0,
        ..DdpmConfig::cifar10()
    }
}

fn build(cfg: &DdpmConfig, seed: u64) -> (VarMap, Ddpm) {
    let vm = VarMap::new();
    let net = Ddpm::new(cfg, seeded_var_builder(&vm, seed, DType::F32, &Device::Cpu)).unwrap();
    (vm, net)
}

fn images(b: usize, size: usize) -> Tensor {
    let n = b * 3 * size * size;
    let v: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.731).sin()).collect();
    Tensor::from_vec(v, (b, 3, size, size), &Device::Cpu).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Replaces the reference's tiny last-layer init (scale 0 -> 1e-10) by O(1) weights so that
/// gradients have a natural scale.
fn perturb(vm: &VarMap) {
    let data = vm.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (i, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let t = var.as_tensor();
        let n = t.elem_count();
        let v: Vec<f32> = (0..n)
            .map(|k| (((k + 7 * i) as f32) * 0.37).sin() * 0.2)
            .collect();
        let noise = Tensor::from_vec(v, t.shape(), t.device()).unwrap();
        var.set(&(t + noise).unwrap()).unwrap();
    }
}

#[test]
fn gradients_reach_every_parameter_and_the_input() {
    let (vm, net) = build(&tiny(), 1);
    perturb(&vm);
    let x = images(2, 8);
    let labels = Tensor::new(&[12.5f32, 700.0], &Device::Cpu).unwrap();
    let loss = net
        .forward(&x, &labels)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let data = vm.data().lock().unwrap();
    // Same modules as the reference's small DDPM (`net_ddpm_vp.json`: 134 parameters).
    assert_eq!(data.len(), 134, "tiny net parameter count");
    for (name, var) in data.iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let m = max_abs(g);
        assert!(m.is_finite() && m > 0.0, "zero gradient for {name}");
    }
    drop(data);
    // The input gradient the likelihood needs (v^T ds/dx) through the VP score adapter.
    let sde = VpSde::default();
    let score = ScoreModelFn::new(&sde, &net, true);
    let t = Tensor::new(&[0.1f32, 0.8], &Device::Cpu).unwrap();
    let (s, vjp) = score
        .score_with_vjp(&x, &t, &x.ones_like().unwrap())
        .unwrap();
    assert_eq!(s.dims(), x.dims());
    assert_eq!(vjp.dims(), x.dims());
    assert!(max_abs(&vjp) > 0.0);
}

#[test]
fn unconditional_and_scale_by_sigma_variants() {
    // Unconditional: no time-embedding MLP (the reference raises NameError here).
    let cfg = DdpmConfig {
        conditional: false,
        ..tiny()
    };
    let (_vm, net) = build(&cfg, 2);
    let (_vm2, cond) = build(&tiny(), 2);
    assert_eq!(net.num_modules() + 2, cond.num_modules());
    let x = images(2, 8);
    let l1 = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    let l2 = Tensor::new(&[500f32, 900.0], &Device::Cpu).unwrap();
    let a = net.forward(&x, &l1).unwrap();
    let b = net.forward(&x, &l2).unwrap();
    assert_eq!(
        max_abs(&(a - b).unwrap()),
        0.0,
        "unconditional ignores labels"
    );

    // SMLD (VE, discrete) DDPM: output / sigmas[label], integer labels only.
    let ve = DdpmConfig {
        scale_by_sigma: true,
        centered: false,
        ..tiny()
    };
    let plain = DdpmConfig {
        scale_by_sigma: false,
        ..ve.clone()
    };
    let (vm, scaled) = build(&ve, 3);
    perturb(&vm);
    let unscaled = Ddpm::new(&plain, seeded_var_builder(&vm, 3, DType::F32, &Device::Cpu)).unwrap();
    let idx = Tensor::new(&[0i64, 999], &Device::Cpu).unwrap();
    let s = scaled.forward(&x, &idx).unwrap();
    let u = unscaled.forward(&x, &idx).unwrap();
    assert_eq!(s.dtype(), DType::F32);
    let sig = scaled.sigmas();
    assert_eq!(sig.len(), 1000);
    assert!((sig[0] - 50.0).abs() < 1e-9 && (sig[999] - 0.01).abs() < 1e-12);
    for (i, &k) in [0usize, 999].iter().enumerate() {
        let want = (u.get(i).unwrap() / sig[k]).unwrap();
        let err = max_abs(&(s.get(i).unwrap() - &want).unwrap());
        assert!(err <= 1e-6 * max_abs(&want), "sample {i}: {err}");
    }
    let float_labels = Tensor::new(&[0f32, 1.0], &Device::Cpu).unwrap();
    assert!(matches!(
        scaled.forward(&x, &float_labels),
        Err(Error::Input(_))
    ));
    let out_of_range = Tensor::new(&[0i64, 1000], &Device::Cpu).unwrap();
    assert!(matches!(
        scaled.forward(&x, &out_of_range),
        Err(Error::Input(_))
    ));
    let negative = Tensor::new(&[-1i64, 3], &Device::Cpu).unwrap();
    assert!(matches!(
        scaled.forward(&x, &negative),
        Err(Error::Input(_))
    ));
}

#[test]
fn resampling_without_convolutions() {
    let cfg = DdpmConfig {
        resamp_with_conv: false,
        ..tiny()
    };
    let (vm, net) = build(&cfg, 4);
    let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    // Down (all_modules.4) and Up (all_modules.13) have no parameters now.
    assert!(
        !names.iter().any(|n| n.starts_with("all_modules.4.")),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.starts_with("all_modules.13.")));
    let (_vm, with_conv) = build(&tiny(), 4);
    assert_eq!(net.num_modules(), with_conv.num_modules());
    let labels = Tensor::new(&[3f32, 300.0], &Device::Cpu).unwrap();
    let (out, acts) = net
        .forward_with_activations(&images(2, 8), &labels)
        .unwrap();
    assert_eq!(out.dims(), &[2, 3, 8, 8]);
    // Average pooling of the 8x8 map and nearest upsampling of the 4x4 map, exactly.
    let (down_in, down_out) = (&acts[3].1, &acts[4].1);
    assert_eq!(acts[4].0, "all_modules.4");
    let pooled = down_in.avg_pool2d(2).unwrap();
    assert_eq!(max_abs(&(down_out - pooled).unwrap()), 0.0);
    let (up_in, up_out) = (&acts[12].1, &acts[13].1);
    assert_eq!(up_out.dims(), &[2, 64, 8, 8]);
    let back = up_out.avg_pool2d(2).unwrap();
    assert!(
        max_abs(&(back - up_in).unwrap()) < 1e-6,
        "nearest x2 then 2x2 mean is the identity"
    );
}

#[test]
fn validation_errors() {
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu);
    for bad in [
        DdpmConfig { nf: 48, ..tiny() },
        DdpmConfig {
            ch_mult: vec![],
            ..tiny()
        },
        DdpmConfig {
            image_size: 6,
            ch_mult: vec![1, 2, 2],
            ..tiny()
        },
        DdpmConfig {
            dropout: 1.0,
            ..tiny()
        },
        DdpmConfig {
            scale_by_sigma: true,
            sigma_min: 0.0,
            ..tiny()
        },
    ] {
        assert!(
            matches!(Ddpm::new(&bad, vb.clone()), Err(Error::Config(_))),
            "{bad:?}"
        );
    }
    let (_vm, net) = build(&tiny(), 0);
    let labels = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    assert!(matches!(
        net.forward(&images(2, 16), &labels),
        Err(Error::Input(_))
    ));
    assert!(matches!(
        net.forward(&images(3, 8), &labels),
        Err(Error::Input(_))
    ));
    let json = serde_json::json!({"model": {"name": "ncsnpp"}});
    assert!(matches!(
        DdpmConfig::from_reference_json(&json),
        Err(Error::Config(_))
    ));
}

#[test]
fn dropout_draws_from_the_callers_source_and_only_in_training() {
    use rand::SeedableRng;
    use sde_core::Mode;
    let cfg = DdpmConfig {
        dropout: 0.3,
        ..tiny()
    };
    let run = |seed: u64| {
        let (vm, net) = build(&cfg, 5);
        perturb(&vm);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let labels = Tensor::new(&[3f32, 300.0], &Device::Cpu).unwrap();
        let x = images(2, 8);
        let eval = net.forward_t(&x, &labels, Mode::Eval).unwrap();
        let train = net.forward_t(&x, &labels, Mode::Train(&mut rng)).unwrap();
        (
            eval.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            train.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        )
    };
    let (e1, t1) = run(9);
    let (e2, t2) = run(9);
    let (_, t3) = run(10);
    assert_eq!(e1, e2);
    assert_eq!(t1, t2, "same dropout seed, same masks");
    assert_ne!(t1, t3);
    assert_ne!(t1, e1, "training mode applies dropout");
}

/// Per-image mean and variance over each of `groups` channel groups, and the largest
/// per-image, per-channel |mean|, of a `[B, C, H, W]` activation.
fn group_stats(y: &Tensor, groups: usize) -> (f32, f32, f32) {
    let (b, c, h, w) = y.dims4().unwrap();
    let g = y.reshape((b, groups, c / groups * h * w)).unwrap();
    let mean = g.mean_keepdim(2).unwrap();
    let var = g
        .broadcast_sub(&mean)
        .unwrap()
        .sqr()
        .unwrap()
        .mean(2)
        .unwrap();
    let ch_mean = y.reshape((b, c, h * w)).unwrap().mean(2).unwrap();
    (
        max_abs(&mean),
        max_abs(&(var - 1.0).unwrap()),
        max_abs(&ch_mean),
    )
}

#[test]
fn num_groups_reaches_the_groupnorms_and_the_reference_keeps_32() {
    // Every block takes the config's count: at nf 8 (8 and 16 channels), 32 groups divide no
    // level's channels, so a block that kept the reference's 32 would refuse to build.
    let narrow = DdpmConfig {
        nf: 8,
        num_groups: 2,
        ..tiny()
    };
    let (_vm, net) = build(&narrow, 4);
    let labels = Tensor::new(&[10f32, 700.0], &Device::Cpu).unwrap();
    assert_eq!(
        net.forward(&images(2, 8), &labels).unwrap().dims(),
        &[2, 3, 8, 8]
    );
    // The output GroupNorm (freshly built: weight 1, bias 0) normalises each of `num_groups`
    // channel groups per image to mean 0 and variance 1, and nothing finer.
    let x = images(2, 8);
    for (groups, per_channel_centred) in [(8, false), (32, true)] {
        let cfg = DdpmConfig {
            num_groups: groups,
            ..tiny()
        };
        let (_vm, net) = build(&cfg, 4);
        let (_, acts) = net.forward_with_activations(&x, &labels).unwrap();
        let norm = &acts[net.num_modules() - 2];
        assert_eq!(norm.0, format!("all_modules.{}", net.num_modules() - 2));
        let (mean, var_err, ch_mean) = group_stats(&norm.1, groups);
        assert!(mean < 1e-4 && var_err < 1e-3, "{groups}: {mean} {var_err}");
        // One channel a group is instance normalisation: every channel's per-image mean is
        // removed (why the MNIST preset keeps 4 channels a group); with 8 groups it is not.
        assert_eq!(ch_mean < 1e-4, per_channel_centred, "{groups}: {ch_mean}");
    }
    // The reference's models/ddpm.py hard-codes 32 groups: its presets and configs keep them.
    assert_eq!(DdpmConfig::cifar10().num_groups, 32);
    assert_eq!(DdpmConfig::small_test().num_groups, 32);
    // The MNIST preset keeps at least 4 channels a group at every level.
    let m = DdpmConfig::mnist();
    assert!(
        m.ch_mult.iter().all(|k| m.nf * k / m.num_groups >= 4),
        "{m:?}"
    );
    m.validate().unwrap();
    // Channel counts that the groups do not divide, and zero groups, are typed errors.
    for bad in [
        DdpmConfig {
            num_groups: 0,
            ..tiny()
        },
        DdpmConfig { nf: 16, ..tiny() },
    ] {
        match bad.validate() {
            Err(Error::Config(m)) => assert!(m.contains("num_groups"), "{m}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}
