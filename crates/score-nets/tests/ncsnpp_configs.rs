//! NCSN++ configuration surface: presets, validation, every progressive / resblock / embedding
//! combination builds and runs (including the paths the PyTorch reference cannot run), seeded
//! init, the reference initialisation, dropout and dtype policy.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use score_nets::init::seeded_var_builder;
use score_nets::*;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    sde_core::noise::NoiseSource::randn(&mut rng, &shape.into(), &Device::Cpu, DType::F32).unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// A tiny config (8x8, nf 8, two levels) for fast structural tests.
fn tiny() -> NcsnPpConfig {
    NcsnPpConfig {
        image_size: 8,
        nf: 8,
        ch_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        dropout: 0.0,
        init_scale: 1.0, // non-zero so that every branch reaches the output
        ..NcsnPpConfig::small_ncsnpp_ve()
    }
}

fn build(cfg: NcsnPpConfig, seed: u64) -> (NcsnPp, VarMap) {
    let vm = VarMap::new();
    let net = NcsnPp::new(cfg, seeded_var_builder(&vm, seed, DType::F32, &Device::Cpu)).unwrap();
    (net, vm)
}

fn labels(cfg: &NcsnPpConfig) -> Tensor {
    match cfg.embedding_type {
        EmbeddingType::Fourier => Tensor::new(&[0.3f32, 7.0], &Device::Cpu).unwrap(),
        EmbeddingType::Positional => Tensor::new(&[12.0f32, 740.0], &Device::Cpu).unwrap(),
    }
}

#[test]
fn presets_validate_and_match_the_paper() {
    for (name, c) in [
        ("ncsnpp", NcsnPpConfig::cifar10_ncsnpp_continuous()),
        (
            "ncsnpp deep",
            NcsnPpConfig::cifar10_ncsnpp_deep_continuous(),
        ),
        ("ddpmpp", NcsnPpConfig::cifar10_ddpmpp_continuous()),
        (
            "ddpmpp deep",
            NcsnPpConfig::cifar10_ddpmpp_deep_continuous(),
        ),
        (
            "subvp ddpmpp",
            NcsnPpConfig::cifar10_subvp_ddpmpp_continuous(),
        ),
        (
            "subvp ddpmpp deep",
            NcsnPpConfig::cifar10_subvp_ddpmpp_deep_continuous(),
        ),
        ("celebahq", NcsnPpConfig::celebahq_256_ncsnpp_continuous()),
        ("ffhq", NcsnPpConfig::ffhq_1024_ncsnpp_continuous()),
        ("small ve", NcsnPpConfig::small_ncsnpp_ve()),
        ("small vp", NcsnPpConfig::small_ddpmpp_vp()),
    ] {
        c.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        // serde round trip with the reference's lowercase names
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<NcsnPpConfig>(&s).unwrap(), c);
    }
    let s = serde_json::to_value(NcsnPpConfig::celebahq_256_ncsnpp_continuous()).unwrap();
    assert_eq!(s["progressive"], "output_skip");
    assert_eq!(s["progressive_input"], "input_skip");
    assert_eq!(s["resblock_type"], "biggan");
    assert_eq!(s["nonlinearity"], "swish");
    assert_eq!(
        NcsnPpConfig::cifar10_ncsnpp_deep_continuous().num_res_blocks,
        8
    );
}

#[test]
fn small_presets_have_the_parity_configs_parameter_counts() {
    // `num_parameters` of net_ncsnpp_ve.json / net_ddpmpp_vp.json (trainable + W); the sigmas
    // buffer is not a parameter
    for (cfg, want) in [
        (NcsnPpConfig::small_ncsnpp_ve(), 320_793usize),
        (NcsnPpConfig::small_ddpmpp_vp(), 317699),
    ] {
        let (_net, vm) = build(cfg, 0);
        let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(n, want);
    }
}

#[test]
fn invalid_configs_are_errors() {
    let base = tiny();
    let cases: Vec<(&str, NcsnPpConfig)> = vec![
        (
            "nf 0",
            NcsnPpConfig {
                nf: 0,
                ..base.clone()
            },
        ),
        (
            "empty ch_mult",
            NcsnPpConfig {
                ch_mult: vec![],
                ..base.clone()
            },
        ),
        (
            "size not divisible",
            NcsnPpConfig {
                image_size: 6,
                ch_mult: vec![1, 2, 2],
                ..base.clone()
            },
        ),
        (
            "dropout 1",
            NcsnPpConfig {
                dropout: 1.0,
                ..base.clone()
            },
        ),
        (
            "conv_size 5",
            NcsnPpConfig {
                conv_size: 5,
                ..base.clone()
            },
        ),
        (
            "negative init_scale",
            NcsnPpConfig {
                init_scale: -1.0,
                ..base.clone()
            },
        ),
        (
            "fir kernel sums to 0",
            NcsnPpConfig {
                fir_kernel: vec![1.0, -1.0],
                ..base.clone()
            },
        ),
        (
            "groupnorm",
            NcsnPpConfig {
                nf: 6,
                ..base.clone()
            },
        ),
        (
            "positional sigmas",
            NcsnPpConfig {
                embedding_type: EmbeddingType::Positional,
                scale_by_sigma: true,
                sigma_min: 0.0,
                ..base.clone()
            },
        ),
    ];
    for (name, c) in cases {
        let r = c.validate();
        assert!(matches!(r, Err(Error::Config(_))), "{name}: validate");
        let vm = VarMap::new();
        let r = NcsnPp::new(c, seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu));
        assert!(matches!(r, Err(Error::Config(_))), "{name}: new");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let cfg = tiny();
    let (net, _vm) = build(cfg.clone(), 0);
    let l = labels(&cfg);
    assert!(matches!(
        net.forward(&randn(&[2, 3, 16, 16], 0), &l),
        Err(Error::Input(_))
    ));
    assert!(matches!(
        net.forward(&randn(&[2, 1, 8, 8], 0), &l),
        Err(Error::Input(_))
    ));
    assert!(matches!(
        net.forward(&randn(&[2, 3, 8, 8], 0), &randn(&[3], 0)),
        Err(Error::Input(_))
    ));
    // positional scale_by_sigma: a label outside [0, num_scales) is an error, not a panic
    let cfg = NcsnPpConfig {
        embedding_type: EmbeddingType::Positional,
        scale_by_sigma: true,
        ..tiny()
    };
    let (net, _vm) = build(cfg, 0);
    let l = Tensor::new(&[5.0f32, 1000.0], &Device::Cpu).unwrap();
    assert!(matches!(
        net.forward(&randn(&[2, 3, 8, 8], 0), &l),
        Err(Error::Input(_))
    ));
}

#[test]
fn every_architecture_combination_builds_and_runs() {
    let x = randn(&[2, 3, 8, 8], 1);
    let mut n = 0;
    for resblock_type in [ResblockType::Biggan, ResblockType::Ddpm] {
        for fir in [true, false] {
            for progressive in [
                Progressive::None,
                Progressive::OutputSkip,
                Progressive::Residual,
            ] {
                for progressive_input in [
                    ProgressiveInput::None,
                    ProgressiveInput::InputSkip,
                    ProgressiveInput::Residual,
                ] {
                    for combine in [CombineMethod::Sum, CombineMethod::Cat] {
                        if combine == CombineMethod::Cat
                            && progressive_input != ProgressiveInput::InputSkip
                        {
                            continue;
                        }
                        let cfg = NcsnPpConfig {
                            resblock_type,
                            fir,
                            progressive,
                            progressive_input,
                            progressive_combine: combine,
                            ..tiny()
                        };
                        let what = format!("{resblock_type:?} fir={fir} {progressive:?} {progressive_input:?} {combine:?}");
                        let (net, _vm) = build(cfg.clone(), 3);
                        let y = net
                            .forward(&x, &labels(&cfg))
                            .unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert_eq!(y.dims(), x.dims(), "{what}");
                        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
                        assert!(v.iter().all(|u| u.is_finite()), "{what}: non-finite output");
                        assert!(max_abs(&y) > 0.0, "{what}: zero output");
                        n += 1;
                    }
                }
            }
        }
    }
    assert_eq!(n, 2 * 2 * 3 * 4);
}

#[test]
fn unconditional_and_positional_variants_run() {
    let x = randn(&[2, 3, 8, 8], 1);
    for cfg in [
        NcsnPpConfig {
            conditional: false,
            ..tiny()
        },
        NcsnPpConfig {
            embedding_type: EmbeddingType::Positional,
            scale_by_sigma: true,
            ..tiny()
        },
        NcsnPpConfig {
            nonlinearity: Activation::Elu,
            centered: true,
            ..tiny()
        },
    ] {
        let (net, _vm) = build(cfg.clone(), 0);
        assert_eq!(net.forward(&x, &labels(&cfg)).unwrap().dims(), x.dims());
    }
}

#[test]
fn positional_scale_by_sigma_divides_by_the_indexed_sigma() {
    let base = NcsnPpConfig {
        embedding_type: EmbeddingType::Positional,
        ..tiny()
    };
    let (plain, _) = build(
        NcsnPpConfig {
            scale_by_sigma: false,
            ..base.clone()
        },
        4,
    );
    let (scaled, _) = build(
        NcsnPpConfig {
            scale_by_sigma: true,
            ..base.clone()
        },
        4,
    );
    let x = randn(&[2, 3, 8, 8], 2);
    // labels are truncated (`.long()`): 12.9 -> index 12
    let l = Tensor::new(&[12.9f32, 740.0], &Device::Cpu).unwrap();
    let a = plain.forward(&x, &l).unwrap();
    let b = scaled.forward(&x, &l).unwrap();
    let sig = scaled.sigmas();
    assert_eq!(sig.len(), 1000);
    assert!((sig[0] - 50.0).abs() < 1e-12 && (sig[999] - 0.01).abs() < 1e-15);
    for (i, idx) in [(0usize, 12usize), (1, 740)] {
        let ai = (a.get(i).unwrap() / sig[idx]).unwrap();
        let d = max_abs(&(ai - b.get(i).unwrap()).unwrap()) / max_abs(&b.get(i).unwrap());
        assert!(d < 1e-6, "sample {i}: {d}");
    }
    assert_eq!(
        b.dtype(),
        DType::F32,
        "dtype policy: output keeps the input dtype"
    );
}

#[test]
fn seeded_init_is_reproducible_and_follows_the_reference_init() {
    let cfg = NcsnPpConfig {
        init_scale: 0.0,
        ..tiny()
    };
    let (a, vma) = build(cfg.clone(), 42);
    let (b, _) = build(cfg.clone(), 42);
    let (c, _) = build(cfg.clone(), 43);
    let x = randn(&[2, 3, 8, 8], 0);
    let l = labels(&cfg);
    let (ya, yb, yc) = (
        a.forward(&x, &l).unwrap(),
        b.forward(&x, &l).unwrap(),
        c.forward(&x, &l).unwrap(),
    );
    assert_eq!(max_abs(&(&ya - &yb).unwrap()), 0.0);
    assert!(max_abs(&(&ya - &yc).unwrap()) > 0.0);
    let data = vma.data().lock().unwrap();
    // init_scale = 0: the last conv of every block and the output conv ~ U(+-sqrt(3e-10/fan_avg))
    let w = data["all_modules.4.Conv_1.weight"].as_tensor();
    assert!(max_abs(w) < 1e-5);
    // other convs: default_init(1)
    let w = data["all_modules.4.Conv_0.weight"].as_tensor();
    let (o, i) = (w.dim(0).unwrap() as f32, w.dim(1).unwrap() as f32);
    let bound = (3.0 / ((o + i) * 9.0 / 2.0)).sqrt();
    assert!(max_abs(w) <= bound && max_abs(w) > 0.5 * bound);
    // biases zero, GroupNorm weight one, Fourier W ~ 16 N(0,1)
    assert_eq!(max_abs(data["all_modules.4.Conv_0.bias"].as_tensor()), 0.0);
    let g = data["all_modules.4.GroupNorm_0.weight"].as_tensor();
    assert_eq!(max_abs(&(g - 1.0).unwrap()), 0.0);
    assert!(max_abs(data["all_modules.0.W"].as_tensor()) > 8.0);
    // with init_scale = 0 the residual branches are ~0: the output is small but not zero
    assert!(ya
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite()));
}

#[test]
fn train_mode_dropout_draws_from_the_callers_source() {
    use rand::SeedableRng;
    use sde_core::{Mode, ScoreModel};
    let cfg = NcsnPpConfig {
        dropout: 0.3,
        ..tiny()
    };
    let (net, _) = build(cfg.clone(), 1);
    let x = randn(&[2, 3, 8, 8], 0);
    let l = labels(&cfg);
    let eval1 = net.forward_t(&x, &l, Mode::Eval).unwrap();
    let eval2 = net.forward(&x, &l).unwrap();
    assert_eq!(
        max_abs(&(&eval1 - &eval2).unwrap()),
        0.0,
        "eval mode is deterministic"
    );
    let r = |s| rand::rngs::StdRng::seed_from_u64(s);
    let mut rng = r(7);
    let t1 = net.forward_t(&x, &l, Mode::Train(&mut rng)).unwrap();
    let t2 = net.forward_t(&x, &l, Mode::Train(&mut rng)).unwrap();
    assert!(
        max_abs(&(&t1 - &t2).unwrap()) > 0.0,
        "the source advances: consecutive calls draw new masks"
    );
    assert!(max_abs(&(&t1 - &eval1).unwrap()) > 0.0, "train mode drops");
    let t1b = net.forward_t(&x, &l, Mode::Train(&mut r(7))).unwrap();
    assert_eq!(
        max_abs(&(&t1 - &t1b).unwrap()),
        0.0,
        "same source state, same masks: the network keeps no counter"
    );
    let a = net.forward_train(&x, &l, &mut r(3)).unwrap();
    let b = net.forward_train(&x, &l, &mut r(3)).unwrap();
    assert_eq!(max_abs(&(&a - &b).unwrap()), 0.0);
}

#[test]
fn sigmas_buffer_in_the_weights_is_checked() {
    let cfg = tiny();
    let (_net, vm) = build(cfg.clone(), 0);
    let mut ts: std::collections::HashMap<String, Tensor> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let good = Tensor::new(cfg.sigmas(), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    ts.insert("sigmas".into(), good);
    let vb = candle_nn::VarBuilder::from_tensors(ts.clone(), DType::F32, &Device::Cpu);
    NcsnPp::new(cfg.clone(), vb).unwrap();
    ts.insert(
        "sigmas".into(),
        Tensor::ones(1000, DType::F32, &Device::Cpu).unwrap(),
    );
    let vb = candle_nn::VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
    assert!(matches!(
        NcsnPp::new(cfg, vb),
        Err(Error::WeightMismatch(_))
    ));
}

#[test]
fn parity_configs_read_from_reference_json() {
    for (name, want) in [
        ("net_ncsnpp_ve", NcsnPpConfig::small_ncsnpp_ve()),
        ("net_ddpmpp_vp", NcsnPpConfig::small_ddpmpp_vp()),
    ] {
        let p = format!(
            "{}/../../testvectors/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let got = NcsnPpConfig::from_reference_json(&json["config"]).unwrap();
        assert_eq!(got, want, "{name}");
    }
}

/// A backend that hands out broadcast zeros (no allocation) and records every parameter.
struct Counting(std::sync::Mutex<Vec<(String, usize)>>);

impl candle_nn::var_builder::SimpleBackend for Counting {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .unwrap()
            .push((name.to_string(), s.elem_count()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("no {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

#[test]
fn paper_presets_have_the_reference_parameter_counts() {
    // reference `sum(p.numel() for p in model.parameters())` (shared/baselines/baseline_cpu.json)
    for (cfg, want) in [
        (NcsnPpConfig::cifar10_ncsnpp_continuous(), 62_758_915usize),
        (NcsnPpConfig::cifar10_ddpmpp_continuous(), 61_804_419),
    ] {
        let counting = std::sync::Arc::new(Counting(Default::default()));
        struct Shared(std::sync::Arc<Counting>);
        impl candle_nn::var_builder::SimpleBackend for Shared {
            fn get(
                &self,
                s: candle_core::Shape,
                n: &str,
                h: candle_nn::Init,
                d: DType,
                dev: &Device,
            ) -> candle_core::Result<Tensor> {
                self.0.get(s, n, h, d, dev)
            }
            fn get_unchecked(
                &self,
                n: &str,
                d: DType,
                dev: &Device,
            ) -> candle_core::Result<Tensor> {
                self.0.get_unchecked(n, d, dev)
            }
            fn contains_tensor(&self, n: &str) -> bool {
                self.0.contains_tensor(n)
            }
        }
        let vb = candle_nn::VarBuilder::from_backend(
            Box::new(Shared(counting.clone())),
            DType::F32,
            Device::Cpu,
        );
        NcsnPp::new(cfg, vb).unwrap();
        let params = counting.0.lock().unwrap();
        let n: usize = params.iter().map(|p| p.1).sum();
        assert_eq!(n, want);
        let mut names: Vec<&String> = params.iter().map(|p| &p.0).collect();
        let len = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), len, "every parameter requested once");
    }
}
