//! RK45 and fixed-step integrators against linear ODEs with known solutions, a measured
//! convergence order, pinned step counts and the error paths.

use candle_core::{DType, Device, Tensor};
use sde_solvers::ode::{ErrorNorm, FixedStep, FixedStepMethod, OdeRhs, Rk45, Rk45Options};
use sde_solvers::{Error, Result};

fn host(x: &Tensor) -> Vec<f64> {
    x.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// dx/dt = M x with M = [[-0.5, 2], [-2, -0.5]]: x(t) = e^{-t/2} R(-2t) x0 (a damped rotation).
fn rotation(x: &Tensor, _t: &Tensor) -> Result<Tensor> {
    let m = Tensor::new(&[[-0.5f64, -2.0], [2.0, -0.5]], x.device())?.to_dtype(x.dtype())?;
    Ok(x.matmul(&m)?) // row vectors: x Mᵀ
}

fn rotation_exact(x0: &[f64], t: f64) -> Vec<f64> {
    let (c, s, d) = ((2.0 * t).cos(), (2.0 * t).sin(), (-0.5 * t).exp());
    x0.chunks(2)
        .flat_map(|p| [d * (c * p[0] + s * p[1]), d * (-s * p[0] + c * p[1])])
        .collect()
}

fn max_abs_err(got: &[f64], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

fn case_linear_reaches_tolerance(dev: &Device) {
    let x0v = vec![1.0, 0.0, 0.3, -2.0, -1.5, 0.7];
    let x0 = Tensor::from_vec(x0v.clone(), (3, 2), dev).unwrap();
    let want = rotation_exact(&x0v, 3.0);
    let mut errs = Vec::new();
    for rtol in [1e-4, 1e-6, 1e-8] {
        let opts = Rk45Options {
            rtol,
            atol: rtol * 1e-2,
            ..Default::default()
        };
        let sol = Rk45::new(opts)
            .unwrap()
            .solve(&rotation, &x0, 0.0, 3.0)
            .unwrap();
        assert_eq!(sol.nfe, 2 + 6 * (sol.n_accepted + sol.n_rejected));
        let e = max_abs_err(&host(&sol.x), &want);
        // The global error stays within a small multiple of the tolerance.
        assert!(e < 20.0 * rtol, "rtol {rtol}: error {e}");
        errs.push(e);
    }
    // ... and scales with it: 100x smaller rtol gives a 10x-1000x smaller error.
    for w in errs.windows(2) {
        let ratio = w[0] / w[1];
        assert!((10.0..2000.0).contains(&ratio), "errors {errs:?}");
    }
}

#[test]
fn linear_rotation_reaches_tolerance_cpu() {
    case_linear_reaches_tolerance(&Device::Cpu);
}

#[cfg(feature = "cuda")]
#[test]
fn linear_rotation_reaches_tolerance_cuda() {
    case_linear_reaches_tolerance(&Device::new_cuda(0).unwrap());
}

/// dx/dt = −2 t x backwards from t = 2 to 0: x(0) = x(2) e^{4}; the time tensor is used.
#[test]
fn time_dependent_linear_backwards() {
    let rhs = |x: &Tensor, t: &Tensor| -> Result<Tensor> {
        Ok(sde_core::mul_batch(&t.affine(-2.0, 0.0)?, x)?)
    };
    let x2 = Tensor::new(&[[1.0f64], [-0.25]], &Device::Cpu).unwrap();
    let opts = Rk45Options {
        rtol: 1e-9,
        atol: 1e-12,
        ..Default::default()
    };
    let sol = Rk45::new(opts).unwrap().solve(&rhs, &x2, 2.0, 0.0).unwrap();
    let got = host(&sol.x);
    let e4 = 4f64.exp();
    assert!((got[0] - e4).abs() < 1e-7 * e4, "{got:?}");
    assert!((got[1] + 0.25 * e4).abs() < 1e-7 * e4, "{got:?}");
}

/// Fixed steps of the 5th-order Dormand–Prince solution on dx/dt = cos(t) x, x(t) = e^{sin t}:
/// halving h divides the error by 2⁵.
#[test]
fn dormand_prince_convergence_order_is_five() {
    let rhs = |x: &Tensor, t: &Tensor| -> Result<Tensor> { Ok(sde_core::mul_batch(&t.cos()?, x)?) };
    let x0 = Tensor::ones((1, 1), DType::F64, &Device::Cpu).unwrap();
    let exact = 3f64.sin().exp();
    let err = |n: usize| {
        let sol = FixedStep::new(FixedStepMethod::DormandPrince5, n)
            .unwrap()
            .solve(&rhs, &x0, 0.0, 3.0)
            .unwrap();
        assert_eq!(sol.nfe, 6 * n);
        (host(&sol.x)[0] - exact).abs()
    };
    let e: Vec<f64> = [8, 16, 32, 64].iter().map(|&n| err(n)).collect();
    let orders: Vec<f64> = e.windows(2).map(|w| (w[0] / w[1]).log2()).collect();
    for p in &orders[1..] {
        assert!(
            (4.6..5.5).contains(p),
            "measured orders {orders:?} (errors {e:?})"
        );
    }
}

/// Euler and Heun have orders 1 and 2 on the same problem.
#[test]
fn euler_and_heun_orders() {
    let rhs = |x: &Tensor, t: &Tensor| -> Result<Tensor> { Ok(sde_core::mul_batch(&t.cos()?, x)?) };
    let x0 = Tensor::ones((1, 1), DType::F64, &Device::Cpu).unwrap();
    let exact = 3f64.sin().exp();
    for (method, order) in [(FixedStepMethod::Euler, 1.0), (FixedStepMethod::Heun, 2.0)] {
        let err = |n: usize| {
            let s = FixedStep::new(method, n)
                .unwrap()
                .solve(&rhs, &x0, 0.0, 3.0)
                .unwrap();
            (host(&s.x)[0] - exact).abs()
        };
        let p = (err(400) / err(800)).log2();
        assert!((p - order).abs() < 0.15, "{method:?}: order {p}");
    }
}

/// The step count for dx/dt = −x on [0, 1] at rtol = atol = 1e-6 (scipy's RK45 rules) is pinned,
/// as diffsol pins `number_of_steps`: a change in step control shows up here.
#[test]
fn nfe_is_pinned() {
    let rhs = |x: &Tensor, _t: &Tensor| -> Result<Tensor> { Ok(x.neg()?) };
    let x0 = Tensor::ones((1, 1), DType::F64, &Device::Cpu).unwrap();
    let opts = Rk45Options {
        rtol: 1e-6,
        atol: 1e-6,
        ..Default::default()
    };
    let sol = Rk45::new(opts).unwrap().solve(&rhs, &x0, 0.0, 1.0).unwrap();
    assert_eq!(
        (sol.nfe, sol.n_accepted, sol.n_rejected),
        (PINNED_NFE, PINNED_ACC, 0)
    );
    assert!((host(&sol.x)[0] - (-1f64).exp()).abs() < 1e-6);
}
const PINNED_NFE: usize = 32;
const PINNED_ACC: usize = 5;

/// Per-sample control: a stiff-ish sample (λ = 60) does not shrink the easy one's (λ = 1)
/// steps; each sample gives exactly what it gives when solved alone.
#[test]
fn per_sample_error_norm_decouples_samples() {
    let lambdas = |x: &Tensor| {
        Tensor::new(&[[1.0f64], [60.0]], x.device())
            .unwrap()
            .narrow(0, 0, x.dim(0).unwrap())
            .unwrap()
    };
    let rhs2 =
        |x: &Tensor, _t: &Tensor| -> Result<Tensor> { Ok(x.broadcast_mul(&lambdas(x))?.neg()?) };
    let x0 = Tensor::new(&[[1.0f64], [1.0]], &Device::Cpu).unwrap();
    let per = Rk45Options {
        error_norm: ErrorNorm::PerSample,
        ..Default::default()
    };
    let both = Rk45::new(per.clone())
        .unwrap()
        .solve(&rhs2, &x0, 0.0, 1.0)
        .unwrap();
    let easy_alone = Rk45::new(per)
        .unwrap()
        .solve(&rhs2, &x0.narrow(0, 0, 1).unwrap(), 0.0, 1.0)
        .unwrap();
    let both_h = host(&both.x);
    assert_eq!(both_h[0], host(&easy_alone.x)[0]);
    assert!((both_h[0] - (-1f64).exp()).abs() < 1e-5);
    assert!((both_h[1] - (-60f64).exp()).abs() < 1e-5);
    // the hard sample needs many more steps than the easy one
    assert!(both.n_accepted > 3 * easy_alone.n_accepted);
    // In batch mode every sample takes the hard sample's steps.
    let batch = Rk45::new(Rk45Options::default())
        .unwrap()
        .solve(&rhs2, &x0, 0.0, 1.0)
        .unwrap();
    assert!(batch.n_accepted + easy_alone.n_accepted > both.n_accepted - 2);
    assert!(batch.n_accepted > 3 * easy_alone.n_accepted);
}

#[test]
fn errors_are_typed() {
    let x0 = Tensor::ones((2, 1), DType::F64, &Device::Cpu).unwrap();
    let nan = |x: &Tensor, t: &Tensor| -> Result<Tensor> {
        // finite until t = 0.5, then NaN
        let m = t.ge(0.5)?.to_dtype(x.dtype())?.affine(f64::NAN, 0.0)?;
        Ok(sde_core::mul_batch(&m.affine(1.0, 1.0)?, x)?)
    };
    match Rk45::new(Rk45Options::default())
        .unwrap()
        .solve(&nan, &x0, 0.0, 1.0)
    {
        Err(Error::NonFinite { t, .. }) => assert!(t < 0.5),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    let neg = |x: &Tensor, _t: &Tensor| -> Result<Tensor> { Ok(x.neg()?) };
    let opts = Rk45Options {
        max_steps: 2,
        ..Default::default()
    };
    assert!(matches!(
        Rk45::new(opts).unwrap().solve(&neg, &x0, 0.0, 10.0),
        Err(Error::MaxSteps { max_steps: 2, .. })
    ));
    for bad in [
        Rk45Options {
            rtol: 0.0,
            ..Default::default()
        },
        Rk45Options {
            atol: -1.0,
            ..Default::default()
        },
        Rk45Options {
            max_steps: 0,
            ..Default::default()
        },
        Rk45Options {
            first_step: Some(0.0),
            ..Default::default()
        },
        Rk45Options {
            max_step: f64::NAN,
            ..Default::default()
        },
    ] {
        assert!(matches!(
            Rk45::new(bad),
            Err(Error::InvalidParameter { .. })
        ));
    }
    assert!(matches!(
        FixedStep::new(FixedStepMethod::Euler, 0),
        Err(Error::InvalidParameter { .. })
    ));
    let wrong = |x: &Tensor, _t: &Tensor| -> Result<Tensor> { Ok(x.narrow(0, 0, 1)?) };
    assert!(matches!(
        Rk45::new(Rk45Options::default())
            .unwrap()
            .solve(&wrong, &x0, 0.0, 1.0),
        Err(Error::ShapeMismatch { .. })
    ));
    let _ = &wrong as &dyn OdeRhs;
}

/// With a row-independent right-hand side, per-sample RK45 drops finished samples from the
/// batch: the results are those of the closure version (which keeps every row), with fewer rows
/// evaluated.
#[test]
fn per_sample_compaction_keeps_results_and_saves_work() {
    use sde_solvers::ode::Rowwise;
    use std::cell::Cell;
    let rows_seen = Cell::new(0usize);
    // dx/dt = -x², x(t) = x0 / (1 + x0 t): larger x0 needs more steps.
    let f = |x: &Tensor, _t: &Tensor| -> Result<Tensor> {
        rows_seen.set(rows_seen.get() + x.dim(0)?);
        Ok(x.sqr()?.neg()?)
    };
    let x0v: Vec<f64> = (0..16).map(|i| 10f64.powf(i as f64 / 3.0 - 2.0)).collect();
    let x0 = Tensor::from_vec(x0v.clone(), (16, 1), &Device::Cpu).unwrap();
    let opts = Rk45Options {
        error_norm: ErrorNorm::PerSample,
        rtol: 1e-7,
        atol: 1e-9,
        ..Default::default()
    };
    let solver = Rk45::new(opts).unwrap();
    let plain = solver.solve(&f, &x0, 0.0, 2.0).unwrap();
    let full_rows = rows_seen.replace(0);
    let compact = solver.solve(&Rowwise(f), &x0, 0.0, 2.0).unwrap();
    let compact_rows = rows_seen.get();
    assert_eq!(host(&plain.x), host(&compact.x));
    assert_eq!(
        (plain.n_accepted, plain.n_rejected),
        (compact.n_accepted, compact.n_rejected)
    );
    assert_eq!(full_rows, 16 * plain.nfe);
    assert!(
        compact_rows < full_rows * 3 / 4,
        "{compact_rows} of {full_rows} rows"
    );
    for (got, x0) in host(&compact.x).iter().zip(&x0v) {
        let want = x0 / (1.0 + 2.0 * x0);
        assert!(
            (got - want).abs() < 1e-6 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }
}
