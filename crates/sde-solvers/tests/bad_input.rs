//! Bad input through the likelihood, the bits/dim conversions, dequantisation and the ODE
//! solvers: integer and half dtypes, rank 0 and 1, empty batches, zero-size samples, strided
//! views, non-finite bounds. Each call returns the documented result or a typed error naming
//! the argument, and never panics.
//!
//! Accepted on purpose: an empty batch (empty results, no evaluation, no draw), f16 / bf16 data
//! (evaluated in their dtype, integrated in the solver dtype), strided data.

use std::panic::{catch_unwind, AssertUnwindSafe};

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use sde_core::analytic::GaussianScore;
use sde_core::VpSde;
use sde_solvers::likelihood::{
    bits_per_dim, dequantize_levels, reference_bits_per_dim, DataRange, DivergenceEstimator,
    HutchinsonProbe, Likelihood, LikelihoodOptions,
};
use sde_solvers::ode::{FixedStep, FixedStepMethod, Rk45, Rk45Options};
use sde_solvers::{Error, Result};

fn no_panic<T>(case: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => panic!("{case}: panicked instead of returning an error"),
    }
}

#[derive(Debug, Clone, Copy)]
enum Want {
    Ok,
    DType(&'static str),
    Rank(&'static str),
    Shape,
    Param(&'static str),
}

fn check<T: std::fmt::Debug>(case: &str, want: Want, r: Result<T>) {
    use sde_core::Error as Core;
    let ok = match (want, &r) {
        (Want::Ok, Ok(_)) => true,
        (Want::DType(a), Err(Error::Core(Core::DType { arg, .. }))) => *arg == a,
        (Want::Rank(a), Err(Error::Core(Core::Rank { arg, .. }))) => *arg == a,
        (Want::Shape, Err(Error::ShapeMismatch { .. })) => true,
        (Want::Param(n), Err(Error::InvalidParameter { name, .. })) => *name == n,
        _ => false,
    };
    assert!(ok, "{case}: want {want:?}, got {r:?}");
}

fn data_cases() -> Vec<(&'static str, Tensor, Want)> {
    let d = Device::Cpu;
    let x = Tensor::new(&[[0.1f32, -0.3], [0.7, 0.2], [-0.5, 0.4]], &d).unwrap();
    vec![
        (
            "u8 data",
            x.to_dtype(DType::U8).unwrap(),
            Want::DType("data"),
        ),
        (
            "u32 data",
            x.to_dtype(DType::U32).unwrap(),
            Want::DType("data"),
        ),
        (
            "i64 data",
            x.to_dtype(DType::I64).unwrap(),
            Want::DType("data"),
        ),
        ("f16 data", x.to_dtype(DType::F16).unwrap(), Want::Ok),
        ("bf16 data", x.to_dtype(DType::BF16).unwrap(), Want::Ok),
        (
            "rank 0",
            Tensor::new(0.5f32, &d).unwrap(),
            Want::Rank("data"),
        ),
        (
            "rank 1",
            Tensor::new(&[0.5f32, 0.1], &d).unwrap(),
            Want::Rank("data"),
        ),
        (
            "zero-size sample",
            Tensor::zeros((3, 0), DType::F32, &d).unwrap(),
            Want::Shape,
        ),
        (
            "empty batch",
            Tensor::zeros((0, 2), DType::F32, &d).unwrap(),
            Want::Ok,
        ),
        (
            "strided",
            x.t().unwrap().contiguous().unwrap().t().unwrap(),
            Want::Ok,
        ),
    ]
}

#[test]
fn likelihood_checks_its_data() {
    let sde = VpSde::default();
    let oracle = GaussianScore::isotropic(&sde, 0.0, 0.5).unwrap();
    for estimator in [
        DivergenceEstimator::Exact,
        DivergenceEstimator::Hutchinson {
            probe: HutchinsonProbe::Rademacher,
            n_probes: 2,
        },
    ] {
        let opts = LikelihoodOptions {
            estimator,
            ..Default::default()
        };
        let lik = Likelihood::new(&sde, &oracle, opts).unwrap();
        for (case, x, want) in data_cases() {
            let c = format!("log_likelihood {estimator:?}, {case}");
            let mut rng = rand::rngs::StdRng::seed_from_u64(0);
            let r = no_panic(&c, || lik.log_likelihood(&x, &mut rng));
            if let Ok(out) = &r {
                let b = x.dim(0).unwrap();
                assert_eq!(out.log_p.dims(), &[b], "{c}");
                assert_eq!(out.z.dims(), x.dims(), "{c}");
                if b == 0 {
                    assert_eq!(out.nfe, 0, "{c}: an empty batch evaluates nothing");
                }
            }
            check(&c, want, r);
            let c = format!("log_likelihood_with_probes, {case}");
            let probes = [x.ones_like().unwrap()];
            check(
                &c,
                want,
                no_panic(&c, || lik.log_likelihood_with_probes(&x, &probes)),
            );
        }
    }
    // the strided view gives the contiguous result
    let lik = Likelihood::new(
        &sde,
        &oracle,
        LikelihoodOptions {
            estimator: DivergenceEstimator::Exact,
            ..Default::default()
        },
    )
    .unwrap();
    let x = Tensor::new(&[[0.1f32, 0.7, -0.5], [-0.3, 0.2, 0.4]], &Device::Cpu).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let a = lik.log_likelihood(&x.t().unwrap(), &mut rng).unwrap().log_p;
    let b = lik
        .log_likelihood(&x.t().unwrap().contiguous().unwrap(), &mut rng)
        .unwrap()
        .log_p;
    assert_eq!(a.to_vec1::<f64>().unwrap(), b.to_vec1::<f64>().unwrap());
    // a probe of another shape names itself
    let probes = [Tensor::ones((3, 3), DType::F32, &Device::Cpu).unwrap()];
    check(
        "probe shape",
        Want::Shape,
        lik.log_likelihood_with_probes(&x.t().unwrap(), &probes),
    );
}

#[test]
fn a_wrong_score_shape_is_reported_with_expected_and_actual_in_order() {
    let sde = VpSde::default();
    // a score function that drops the last coordinate
    let bad = |x: &Tensor, _t: &Tensor| -> sde_core::Result<Tensor> { Ok(x.narrow(1, 0, 1)?) };
    let lik = Likelihood::new(&sde, &bad, LikelihoodOptions::default()).unwrap();
    let x = Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    match lik.log_likelihood(&x, &mut rng) {
        Err(Error::Core(sde_core::Error::ShapeMismatch { expected, got, .. })) => {
            assert!(expected.starts_with("[4, 2]"), "expected: {expected}");
            assert_eq!(got, "[4, 1]");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bits_per_dim_and_dequantisation_check_their_input() {
    let d = Device::Cpu;
    let log_p = Tensor::new(&[-3.0f64, 1.5], &d).unwrap();
    check(
        "dim 0",
        Want::Param("dim"),
        bits_per_dim(&log_p, 0, 8, (0.0, 1.0)),
    );
    check(
        "bit depth 33",
        Want::Param("bit_depth"),
        bits_per_dim(&log_p, 2, 33, (0.0, 1.0)),
    );
    check(
        "NaN range",
        Want::Param("data_range"),
        bits_per_dim(&log_p, 2, 8, (f64::NAN, 1.0)),
    );
    check(
        "reference dim 0",
        Want::Param("dim"),
        reference_bits_per_dim(&log_p, 0, DataRange::ZeroOne),
    );
    // the two data ranges differ by exactly one bit, as the reference's offsets do
    let a = reference_bits_per_dim(&log_p, 2, DataRange::ZeroOne).unwrap();
    let b = reference_bits_per_dim(&log_p, 2, DataRange::MinusOneOne).unwrap();
    let gap = (a - b).unwrap().to_vec1::<f64>().unwrap();
    assert!(gap.iter().all(|g| (g - 1.0).abs() < 1e-12), "{gap:?}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let x = Tensor::new(&[[0.0f32, 1.0]], &d).unwrap();
    for dt in [DType::U8, DType::I64] {
        check(
            "dequantize int",
            Want::DType("x"),
            no_panic("deq", || {
                dequantize_levels(&x.to_dtype(dt).unwrap(), 8, (0.0, 1.0), &mut rng)
            }),
        );
    }
    let nan = Tensor::new(&[[f32::NAN]], &d).unwrap();
    check(
        "dequantize NaN",
        Want::Param("x"),
        no_panic("deq", || dequantize_levels(&nan, 8, (0.0, 1.0), &mut rng)),
    );
    let empty = Tensor::zeros((0, 2), DType::F32, &d).unwrap();
    check(
        "dequantize empty",
        Want::Ok,
        no_panic("deq", || dequantize_levels(&empty, 8, (0.0, 1.0), &mut rng)),
    );
}

#[test]
fn ode_solvers_check_their_initial_state() {
    let d = Device::Cpu;
    let rhs = |x: &Tensor, _t: &Tensor| -> Result<Tensor> { Ok(x.neg()?) };
    let rk = Rk45::new(Rk45Options::default()).unwrap();
    let fixed = FixedStep::new(FixedStepMethod::Heun, 4).unwrap();
    let x = Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0]], &d).unwrap();
    let cases: Vec<(&str, Tensor, Want)> = vec![
        ("u8", x.to_dtype(DType::U8).unwrap(), Want::DType("x0")),
        ("i64", x.to_dtype(DType::I64).unwrap(), Want::DType("x0")),
        ("u32", x.to_dtype(DType::U32).unwrap(), Want::DType("x0")),
        ("f16", x.to_dtype(DType::F16).unwrap(), Want::Ok),
        ("bf16", x.to_dtype(DType::BF16).unwrap(), Want::Ok),
        ("rank 0", Tensor::new(1f32, &d).unwrap(), Want::Shape),
        ("rank 1", Tensor::new(&[1f32, 2.0], &d).unwrap(), Want::Ok),
        (
            "empty batch",
            Tensor::zeros((0, 2), DType::F32, &d).unwrap(),
            Want::Ok,
        ),
        (
            "zero-size sample",
            Tensor::zeros((2, 0), DType::F32, &d).unwrap(),
            Want::Ok,
        ),
        ("strided", x.t().unwrap(), Want::Ok),
    ];
    for (case, x0, want) in &cases {
        let c = format!("Rk45::solve, {case}");
        check(
            &c,
            *want,
            no_panic(&c, || rk.solve(&rhs, x0, 0.0, 1.0)).map(|s| {
                assert_eq!(s.x.dims(), x0.dims(), "{c}");
            }),
        );
        let c = format!("FixedStep::solve, {case}");
        check(&c, *want, no_panic(&c, || fixed.solve(&rhs, x0, 0.0, 1.0)));
    }
    for (t0, t1, name) in [(f64::NAN, 1.0, "t0"), (0.0, f64::INFINITY, "t1")] {
        check("Rk45 bounds", Want::Param(name), rk.solve(&rhs, &x, t0, t1));
        assert!(matches!(
            fixed.solve(&rhs, &x, t0, t1),
            Err(Error::InvalidParameter { .. })
        ));
    }
    // a right-hand side that changes the shape
    let bad = |x: &Tensor, _t: &Tensor| -> Result<Tensor> { Ok(x.narrow(1, 0, 1)?) };
    check(
        "Rk45 rhs shape",
        Want::Shape,
        no_panic("rhs", || rk.solve(&bad, &x, 0.0, 1.0)),
    );
    check(
        "FixedStep rhs shape",
        Want::Shape,
        no_panic("rhs", || fixed.solve(&bad, &x, 0.0, 1.0)),
    );
}

/// The known panic of the catalogue: an integer `x_init` through `PcSampler::run` reached the
/// analytic score inside candle. It is now the sde-core dtype error naming `x`.
#[test]
fn pc_sampler_with_an_integer_initial_state_is_a_dtype_error() {
    use sde_solvers::corrector::NoCorrector;
    use sde_solvers::pc::PcSampler;
    use sde_solvers::predictor::ReverseDiffusionPredictor;
    let sde = VpSde::new(0.1, 20.0, 100).unwrap();
    let oracle = GaussianScore::isotropic(&sde, 0.0, 0.5).unwrap();
    let sampler = PcSampler::new(ReverseDiffusionPredictor::new(false), NoCorrector);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for dt in [DType::U8, DType::U32, DType::I64] {
        let x_init = Tensor::zeros((4, 2), dt, &Device::Cpu).unwrap();
        let r = no_panic("PcSampler::run", || {
            sampler.run(&sde, &oracle, &x_init, &mut rng, |_, _, _| {})
        });
        assert!(r.is_err(), "{dt:?}: {r:?}");
    }
}
