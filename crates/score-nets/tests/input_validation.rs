//! The public entry points of the networks under bad input: every case of the table is a
//! typed error (`Error::Input` from the network, `sde_core::Error` through `forward_t`),
//! never a panic and never a silent result. Inputs: integer / half / other-float dtypes,
//! rank 0 and 1, empty batch, wrong channel count or image size, wrong label shape, non-finite
//! labels, and σ ≤ 0 for NCSN++'s Fourier embedding of log σ (NaN in the reference).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use score_nets::init::seeded_var_builder;
use score_nets::{Ddpm, DdpmConfig, Error, Mlp, MlpConfig, NcsnPp, NcsnPpConfig};
use sde_core::{Mode, ScoreModel};

fn ncsnpp(cfg: NcsnPpConfig) -> NcsnPp {
    let vm = VarMap::new();
    NcsnPp::new(cfg, seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu)).unwrap()
}

fn zeros(shape: &[usize], dtype: DType) -> Tensor {
    Tensor::zeros(shape, dtype, &Device::Cpu).unwrap()
}

fn full(v: f64, n: usize, dtype: DType) -> Tensor {
    Tensor::full(v, n, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// `(case, x, labels)` that every image network of 3 × 16 × 16 must refuse.
fn bad_image_inputs() -> Vec<(&'static str, Tensor, Tensor)> {
    let ok = |b| zeros(&[b, 3, 16, 16], DType::F32);
    let sig = |b| full(1.0, b, DType::F32);
    vec![
        ("x u8", zeros(&[2, 3, 16, 16], DType::U8), sig(2)),
        ("x i64", zeros(&[2, 3, 16, 16], DType::I64), sig(2)),
        ("x f16", zeros(&[2, 3, 16, 16], DType::F16), sig(2)),
        ("x bf16", zeros(&[2, 3, 16, 16], DType::BF16), sig(2)),
        (
            "x f64 for f32 weights",
            zeros(&[2, 3, 16, 16], DType::F64),
            sig(2),
        ),
        ("x rank 0", Tensor::new(1f32, &Device::Cpu).unwrap(), sig(1)),
        ("x rank 1", zeros(&[3], DType::F32), sig(3)),
        ("x rank 3", zeros(&[3, 16, 16], DType::F32), sig(3)),
        ("empty batch", ok(0), sig(0)),
        ("wrong channels", zeros(&[2, 1, 16, 16], DType::F32), sig(2)),
        ("wrong size", zeros(&[2, 3, 8, 8], DType::F32), sig(2)),
        ("non-square", zeros(&[2, 3, 16, 8], DType::F32), sig(2)),
        (
            "zero-size trailing",
            zeros(&[2, 3, 16, 0], DType::F32),
            sig(2),
        ),
        (
            "labels rank 0",
            ok(2),
            Tensor::new(1f32, &Device::Cpu).unwrap(),
        ),
        ("labels [B+1]", ok(2), sig(3)),
        ("labels [B, 1]", ok(2), zeros(&[2, 1], DType::F32)),
        ("labels NaN", ok(2), full(f64::NAN, 2, DType::F32)),
        ("labels inf", ok(2), full(f64::INFINITY, 2, DType::F32)),
    ]
}

fn assert_refused<T: std::fmt::Debug>(net: &str, case: &str, r: score_nets::Result<T>) {
    match r {
        Err(Error::Input(m)) => assert!(m.contains(net), "{net} / {case}: {m}"),
        other => panic!("{net} / {case}: expected Error::Input, got {other:?}"),
    }
}

#[test]
fn image_networks_refuse_bad_inputs_with_typed_errors() {
    let fourier = ncsnpp(NcsnPpConfig {
        nf: 8,
        ..NcsnPpConfig::small_ncsnpp_ve()
    });
    let positional = ncsnpp(NcsnPpConfig {
        nf: 8,
        ..NcsnPpConfig::small_ddpmpp_vp()
    });
    let vm = VarMap::new();
    let ddpm = Ddpm::new(
        &DdpmConfig::small_test(),
        seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu),
    )
    .unwrap();
    for (case, x, labels) in bad_image_inputs() {
        assert_refused("NCSN++", case, fourier.forward(&x, &labels));
        assert_refused("NCSN++", case, positional.forward(&x, &labels));
        assert_refused("DDPM", case, ddpm.forward(&x, &labels));
        assert_refused(
            "NCSN++",
            case,
            fourier.forward_with_activations(&x, &labels),
        );
        // through the trait, in both modes
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
        for net in [&fourier as &dyn ScoreModel, &positional, &ddpm] {
            assert!(net.forward_t(&x, &labels, Mode::Eval).is_err(), "{case}");
            assert!(
                net.forward_t(&x, &labels, Mode::Train(&mut rng)).is_err(),
                "{case}"
            );
        }
    }
}

#[test]
fn fourier_embedding_refuses_sigma_zero_instead_of_nan() {
    // The reference's NCSN++ returns NaN for σ = 0 (it embeds log σ, and with scale_by_sigma
    // divides by σ). σ(t) of a VE SDE is ≥ σ_min > 0, so σ ≤ 0 is an input error naming the
    // label; the positional embedding (DDPM++) takes label 0 and stays finite.
    let fourier = ncsnpp(NcsnPpConfig {
        nf: 8,
        ..NcsnPpConfig::small_ncsnpp_ve()
    });
    let x = zeros(&[2, 3, 16, 16], DType::F32);
    for bad in [0.0, -1.0] {
        let labels = Tensor::new(&[1.0f32, bad], &Device::Cpu).unwrap();
        match fourier.forward(&x, &labels) {
            Err(Error::Input(m)) => {
                assert!(m.contains("labels[1]") && m.contains("σ > 0"), "{m}")
            }
            other => panic!("σ = {bad}: {other:?}"),
        }
    }
    // integer σ labels are fine when positive
    let ints = Tensor::new(&[1i64, 2], &Device::Cpu).unwrap();
    let y = fourier.forward(&x, &ints).unwrap();
    assert!(y
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite()));
    let positional = ncsnpp(NcsnPpConfig {
        nf: 8,
        ..NcsnPpConfig::small_ddpmpp_vp()
    });
    let y = positional
        .forward(&x, &Tensor::new(&[0f32, 999.0], &Device::Cpu).unwrap())
        .unwrap();
    assert!(y
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite()));
}

#[test]
fn mlp_refuses_bad_inputs_with_typed_errors() {
    let vm = VarMap::new();
    let mlp = Mlp::new(
        &MlpConfig::ve(2),
        seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let sig = |b| full(1.0, b, DType::F32);
    for (case, x, labels) in [
        ("x i64", zeros(&[2, 2], DType::I64), sig(2)),
        ("x rank 0", Tensor::new(1f32, &Device::Cpu).unwrap(), sig(1)),
        ("x rank 1", zeros(&[2], DType::F32), sig(2)),
        ("wrong dim", zeros(&[2, 3], DType::F32), sig(2)),
        ("labels [B+1]", zeros(&[2, 2], DType::F32), sig(3)),
        (
            "sigma 0",
            zeros(&[2, 2], DType::F32),
            full(0.0, 2, DType::F32),
        ),
        (
            "sigma NaN",
            zeros(&[2, 2], DType::F32),
            full(f64::NAN, 2, DType::F32),
        ),
    ] {
        match mlp.forward(&x, &labels) {
            Err(Error::Input(_)) => {}
            other => panic!("Mlp / {case}: expected Error::Input, got {other:?}"),
        }
    }
}
