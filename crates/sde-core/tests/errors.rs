//! Every error variant is reachable from bad user input, and none of it panics.

use candle_core::{DType, Device, Shape, Tensor};
use rand::SeedableRng;
use sde_core::analytic::{GaussianMixture, GaussianScore};
use sde_core::noise::{DeviceNoise, NoiseSource, PerSampleNoise};
use sde_core::{time_tensor, Error, ScoreFn, Sde, SubVpSde, VeSde, VpSde};

fn invalid(r: Result<impl std::fmt::Debug, Error>, name: &str) {
    match r {
        Err(Error::InvalidParameter { name: n, .. }) => assert_eq!(n, name),
        other => panic!("expected InvalidParameter({name}), got {other:?}"),
    }
}

#[test]
fn constructors_reject_bad_parameters() {
    invalid(VeSde::new(1.0, 0.5, 10), "sigma_max");
    invalid(VeSde::new(1.0, 1.0, 10), "sigma_max");
    invalid(VeSde::new(0.0, 1.0, 10), "sigma_min");
    invalid(VeSde::new(f64::NAN, 1.0, 10), "sigma_min");
    invalid(VeSde::new(0.1, f64::INFINITY, 10), "sigma_max");
    invalid(VeSde::new(0.1, 1.0, 0), "N");
    invalid(VpSde::new(0.0, 20.0, 1000), "beta_min");
    invalid(VpSde::new(-1.0, 20.0, 1000), "beta_min");
    invalid(VpSde::new(1.0, 0.5, 1000), "beta_max");
    invalid(VpSde::new(0.1, 20.0, 10), "beta_max"); // β_max/N ≥ 1: DDPM betas leave (0, 1)
    invalid(SubVpSde::new(0.1, f64::NAN, 1000), "beta_max");
    invalid(SubVpSde::new(0.1, 20.0, 0), "N");
    invalid(
        GaussianMixture::new(
            vec![1.0, -1.0],
            vec![vec![0.0], vec![1.0]],
            vec![vec![1.0], vec![1.0]],
        ),
        "weights",
    );
    invalid(
        GaussianMixture::new(vec![1.0], vec![vec![0.0]], vec![vec![0.0]]),
        "stds",
    );
    invalid(GaussianScore::isotropic(VpSde::default(), 0.0, -1.0), "std");
    assert!(matches!(
        GaussianMixture::new(vec![1.0], vec![vec![0.0, 1.0]], vec![vec![1.0, 1.0, 1.0]]),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn time_shape_and_range_are_checked() {
    let sde = VpSde::default();
    let x = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
    let t_bad_shape = Tensor::zeros((2,), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        sde.sde(&x, &t_bad_shape),
        Err(Error::TimeShape { batch: 3, .. })
    ));
    assert!(matches!(
        sde.marginal_prob(&x, &t_bad_shape),
        Err(Error::TimeShape { .. })
    ));
    let t_2d = Tensor::zeros((3, 1), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        sde.discretize(&x, &t_2d),
        Err(Error::TimeShape { .. })
    ));
    let t_late = Tensor::new(&[0.5f32, 1.5, 0.1], &Device::Cpu).unwrap();
    match sde.marginal_prob(&x, &t_late) {
        Err(Error::TimeOutOfRange { index, t, .. }) => assert_eq!((index, t), (1, 1.5)),
        other => panic!("{other:?}"),
    }
    let t_neg = Tensor::new(&[-0.1f32, 0.5, 0.1], &Device::Cpu).unwrap();
    assert!(matches!(
        VeSde::default().discretize(&x, &t_neg),
        Err(Error::TimeOutOfRange { index: 0, .. })
    ));
    let t_nan = Tensor::new(&[f32::NAN, 0.5, 0.1], &Device::Cpu).unwrap();
    assert!(matches!(
        SubVpSde::default().sde(&x, &t_nan),
        Err(Error::TimeOutOfRange { .. })
    ));
    let g = GaussianScore::isotropic(&sde, 0.0, 1.0).unwrap();
    assert!(matches!(
        g.score(&x, &t_late),
        Err(Error::TimeOutOfRange { .. })
    ));
}

#[test]
fn mixture_rejects_data_of_the_wrong_dimension() {
    let gmm = GaussianMixture::ring(8, 4.0, 0.2).unwrap();
    let x = Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(gmm.log_prob(&x), Err(Error::ShapeMismatch { .. })));
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    assert!(matches!(
        gmm.sample(&Shape::from((4, 3)), &Device::Cpu, DType::F32, &mut rng),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn non_finite_values_are_reported() {
    let x = Tensor::new(&[[1.0f32, f32::NAN]], &Device::Cpu).unwrap();
    match sde_core::ensure_finite(&x, || "x after step 3".into()) {
        Err(Error::NonFinite { what }) => assert_eq!(what, "x after step 3"),
        other => panic!("{other:?}"),
    }
    let y = Tensor::new(&[[1.0f32, f32::INFINITY]], &Device::Cpu).unwrap();
    assert!(sde_core::ensure_finite(&y, || "y".into()).is_err());
    let z = Tensor::new(&[[1.0f32, -3e38]], &Device::Cpu).unwrap();
    assert!(sde_core::ensure_finite(&z, || "z".into()).is_ok());
}

#[test]
fn noise_sources_refuse_what_they_cannot_do() {
    assert!(matches!(
        DeviceNoise::new(&Device::Cpu, 1),
        Err(Error::Unsupported(_))
    ));
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    assert!(matches!(
        rng.randn(&Shape::from(3), &Device::Cpu, DType::U32),
        Err(Error::DType {
            got: DType::U32,
            ..
        })
    ));
    assert!(matches!(
        PerSampleNoise::new(1).randn(&Shape::from(()), &Device::Cpu, DType::F32),
        Err(Error::Rank { arg: "shape", .. })
    ));
}

#[test]
fn noise_is_reproducible_and_well_distributed() {
    let mut a = rand::rngs::StdRng::seed_from_u64(42);
    let mut b = rand::rngs::StdRng::seed_from_u64(42);
    let s = Shape::from((1000, 4));
    let x = a.randn(&s, &Device::Cpu, DType::F32).unwrap();
    let y = b.randn(&s, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(
        x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    let r = a
        .rademacher(&s, &Device::Cpu, DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    assert!(r.iter().all(|v| *v == 1.0 || *v == -1.0));
    let mean = r.iter().sum::<f64>() / r.len() as f64;
    assert!(mean.abs() < 0.1, "{mean}"); // sd of the mean = 1/√4000 ≈ 0.016
                                         // per-sample streams: sample 5 of a batch of 8 is sample 0 of a batch of 3 at offset 5,
                                         // draw after draw
    let mut big = PerSampleNoise::new(7);
    let mut small = PerSampleNoise::new(7).with_offset(5);
    for _ in 0..3 {
        let u = big
            .randn(&Shape::from((8, 2, 2)), &Device::Cpu, DType::F32)
            .unwrap();
        let v = small
            .randn(&Shape::from((3, 2, 2)), &Device::Cpu, DType::F32)
            .unwrap();
        assert_eq!(
            u.get(5)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            v.get(0)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
    }
    let _ = time_tensor(0.1, 2, &Device::Cpu, DType::F32).unwrap();
}
