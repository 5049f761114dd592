//! Bad input through every public entry point of sde-core: integer and half dtypes, rank 0 and
//! 1, empty batches, zero-size samples, strided views, non-finite parameters. Each call either
//! returns the documented result or a typed error naming the argument, and never panics.
//!
//! Accepted on purpose (tested below): f16 / bf16 tensors (computed in their dtype), empty
//! batches (empty results), zero-size samples `[B, 0]` (empty samples, prior log-density 0 for
//! the log-density's D = 0), rank-1 `x: [B]` for the SDEs (one scalar per sample), and strided
//! views (the same values as their contiguous copies).

use std::panic::{catch_unwind, AssertUnwindSafe};

use candle_core::{DType, Device, Shape, Tensor};
use rand::SeedableRng;
use sde_core::analytic::{GaussianMixture, GaussianMixtureScore, GaussianScore};
use sde_core::noise::{BlockNoise, NoiseSource, PerSampleNoise};
use sde_core::{AncestralSde, Error, Result, ScoreFn, Sde, SubVpSde, VeSde, VpSde};

/// Runs `f`, failing the test (naming `case`) if it panics.
fn no_panic<T>(case: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => panic!("{case}: panicked instead of returning an error"),
    }
}

/// What a case must give.
#[derive(Debug, Clone, Copy)]
enum Want {
    Ok,
    DType(&'static str),
    Rank(&'static str),
    TimeShape,
    TimeRange,
    Shape,
}

fn check<T: std::fmt::Debug>(case: &str, want: Want, r: Result<T>) {
    match (want, &r) {
        (Want::Ok, Ok(_)) => {}
        (Want::DType(arg), Err(Error::DType { arg: a, .. })) if *a == arg => {}
        (Want::Rank(arg), Err(Error::Rank { arg: a, .. })) if *a == arg => {}
        (Want::TimeShape, Err(Error::TimeShape { .. })) => {}
        (Want::TimeRange, Err(Error::TimeOutOfRange { .. })) => {}
        (Want::Shape, Err(Error::ShapeMismatch { .. })) => {}
        _ => panic!("{case}: want {want:?}, got {r:?}"),
    }
    if let Err(e) = &r {
        // every message names the function or the argument, never a bare candle message
        let msg = e.to_string();
        assert!(
            !msg.is_empty() && !matches!(e, Error::Candle(_)),
            "{case}: {msg}"
        );
    }
}

fn dev() -> Device {
    Device::Cpu
}

/// `(name, x, t, want)` for an entry point taking `(x, t)` with data of 2 elements per sample.
fn xt_cases() -> Vec<(String, Tensor, Tensor, Want)> {
    let d = dev();
    let f32x = |shape: &[usize]| {
        Tensor::ones(shape, DType::F32, &d)
            .unwrap()
            .affine(0.3, 0.1)
            .unwrap()
    };
    let t = |b: usize, dt: DType| Tensor::full(0.5f32, b, &d).unwrap().to_dtype(dt).unwrap();
    let mut cases = Vec::new();
    for dt in [DType::U8, DType::U32, DType::I64] {
        cases.push((
            format!("x {dt:?}"),
            f32x(&[3, 2]).to_dtype(dt).unwrap(),
            t(3, DType::F32),
            Want::DType("x"),
        ));
        // an integer time would compute coefficients in the integer dtype and truncate them
        cases.push((
            format!("t {dt:?}"),
            f32x(&[3, 2]),
            Tensor::zeros(3, dt, &d).unwrap(),
            Want::DType("t"),
        ));
    }
    for dt in [DType::F16, DType::BF16, DType::F64] {
        cases.push((
            format!("x and t {dt:?}"),
            f32x(&[3, 2]).to_dtype(dt).unwrap(),
            t(3, dt),
            Want::Ok,
        ));
    }
    cases.push((
        "x rank 0".into(),
        Tensor::new(1f32, &d).unwrap(),
        t(1, DType::F32),
        Want::Rank("x"),
    ));
    cases.push((
        "t rank 0".into(),
        f32x(&[3, 2]),
        Tensor::new(0.5f32, &d).unwrap(),
        Want::TimeShape,
    ));
    cases.push((
        "t [B, 1]".into(),
        f32x(&[3, 2]),
        t(3, DType::F32).unsqueeze(1).unwrap(),
        Want::TimeShape,
    ));
    cases.push((
        "t of another batch".into(),
        f32x(&[3, 2]),
        t(2, DType::F32),
        Want::TimeShape,
    ));
    cases.push((
        "empty batch".into(),
        f32x(&[0, 2]),
        t(0, DType::F32),
        Want::Ok,
    ));
    cases.push((
        "NaN time".into(),
        f32x(&[3, 2]),
        Tensor::new(&[0.5f32, f32::NAN, 0.5], &d).unwrap(),
        Want::TimeRange,
    ));
    cases.push((
        "time above T".into(),
        f32x(&[3, 2]),
        Tensor::new(&[0.5f32, 1.5, 0.5], &d).unwrap(),
        Want::TimeRange,
    ));
    cases.push((
        "negative time".into(),
        f32x(&[3, 2]),
        Tensor::new(&[-0.1f32, 0.5, 0.5], &d).unwrap(),
        Want::TimeRange,
    ));
    // a strided view: the transpose of [2, 3]
    let strided = f32x(&[2, 3]).t().unwrap();
    cases.push(("strided x".into(), strided, t(3, DType::F32), Want::Ok));
    let strided_t = Tensor::new(&[[0.5f32, 0.1], [0.5, 0.1], [0.5, 0.1]], &d)
        .unwrap()
        .narrow(1, 0, 1)
        .unwrap()
        .squeeze(1)
        .unwrap();
    cases.push(("strided t".into(), f32x(&[3, 2]), strided_t, Want::Ok));
    cases
}

/// Extra shapes the SDEs accept but a 2-D mixture does not.
fn sde_only_cases() -> Vec<(String, Tensor, Tensor, Want)> {
    let d = dev();
    let t = |b: usize| Tensor::full(0.5f32, b, &d).unwrap();
    vec![
        (
            "x rank 1".into(),
            Tensor::ones(3, DType::F32, &d).unwrap(),
            t(3),
            Want::Ok,
        ),
        (
            "zero-size sample".into(),
            Tensor::ones((3, 0), DType::F32, &d).unwrap(),
            t(3),
            Want::Ok,
        ),
        (
            "image batch".into(),
            Tensor::ones((2, 1, 2, 2), DType::F32, &d).unwrap(),
            t(2),
            Want::Ok,
        ),
    ]
}

/// Every `(x, t)` method of an SDE against every case; results have the documented shapes.
fn sde_entry_points<S: Sde>(name: &str, sde: &S) {
    let mut cases = xt_cases();
    cases.extend(sde_only_cases());
    for (case, x, t, want) in cases {
        let b = x.dims().first().copied().unwrap_or(0);
        let c = format!("{name}::sde, {case}");
        check(
            &c,
            want,
            no_panic(&c, || sde.sde(&x, &t)).map(|(f, g)| {
                assert_eq!((f.dims(), g.dims()), (x.dims(), &[b][..]), "{c}");
            }),
        );
        let c = format!("{name}::marginal_prob, {case}");
        check(
            &c,
            want,
            no_panic(&c, || sde.marginal_prob(&x, &t)).map(|(m, s)| {
                assert_eq!((m.dims(), s.dims()), (x.dims(), &[b][..]), "{c}");
                assert_eq!(m.dtype(), x.dtype(), "{c}");
            }),
        );
        let c = format!("{name}::discretize, {case}");
        check(&c, want, no_panic(&c, || sde.discretize(&x, &t)));
        let c = format!("{name}::reverse(prob. flow).sde, {case}");
        // dtype-agnostic, so that the SDE's own check is what fails
        let score = |x: &Tensor, _t: &Tensor| -> Result<Tensor> { Ok(x.zeros_like()?) };
        check(
            &c,
            want,
            no_panic(&c, || sde.reverse(&score, true).sde(&x, &t)),
        );
        let c = format!("{name}::reverse.discretize, {case}");
        check(
            &c,
            want,
            no_panic(&c, || sde.reverse(&score, false).discretize(&x, &t)),
        );
    }
}

#[test]
fn sdes_check_dtype_rank_batch_and_time() {
    sde_entry_points("VeSde", &VeSde::default());
    sde_entry_points("VpSde", &VpSde::default());
    sde_entry_points("SubVpSde", &SubVpSde::default());
}

/// The methods of an SDE that take `t` alone, and the prior's log-density.
fn t_only_entry_points<S: Sde>(name: &str, sde: &S) {
    let d = dev();
    let cases: Vec<(&str, Tensor, Want)> = vec![
        (
            "t u8",
            Tensor::zeros(3, DType::U8, &d).unwrap(),
            Want::DType("t"),
        ),
        (
            "t i64",
            Tensor::zeros(3, DType::I64, &d).unwrap(),
            Want::DType("t"),
        ),
        (
            "t rank 0",
            Tensor::new(0.5f32, &d).unwrap(),
            Want::Rank("t"),
        ),
        (
            "t f16",
            Tensor::full(0.5f32, 3, &d)
                .unwrap()
                .to_dtype(DType::F16)
                .unwrap(),
            Want::Ok,
        ),
        (
            "t empty",
            Tensor::zeros(0, DType::F32, &d).unwrap(),
            Want::Ok,
        ),
        (
            "t NaN",
            Tensor::new(&[f32::NAN], &d).unwrap(),
            Want::TimeRange,
        ),
    ];
    for (case, t, want) in cases {
        let c = format!("{name}::marginal_coeffs, {case}");
        check(&c, want, no_panic(&c, || sde.marginal_coeffs(&t)));
        let c = format!("{name}::langevin_alpha, {case}");
        // VE's α is 1 whatever t is: only its dtype-free default applies
        if name != "VeSde" {
            check(&c, want, no_panic(&c, || sde.langevin_alpha(&t)));
        }
    }
    let z_cases: Vec<(&str, Tensor, Want)> = vec![
        (
            "z u32",
            Tensor::zeros((2, 3), DType::U32, &d).unwrap(),
            Want::DType("z"),
        ),
        ("z rank 0", Tensor::new(1f32, &d).unwrap(), Want::Rank("z")),
        (
            "z empty batch",
            Tensor::zeros((0, 3), DType::F32, &d).unwrap(),
            Want::Ok,
        ),
        (
            "z rank 1",
            Tensor::zeros(4, DType::F32, &d).unwrap(),
            Want::Ok,
        ),
        (
            "z zero-size sample",
            Tensor::zeros((2, 0), DType::F32, &d).unwrap(),
            Want::Ok,
        ),
        (
            "z bf16",
            Tensor::zeros((2, 3), DType::BF16, &d).unwrap(),
            Want::Ok,
        ),
    ];
    for (case, z, want) in z_cases {
        let c = format!("{name}::prior_logp, {case}");
        check(
            &c,
            want,
            no_panic(&c, || sde.prior_logp(&z)).map(|l| {
                assert_eq!(l.dims(), &[z.dim(0).unwrap()], "{c}");
            }),
        );
    }
    // D = 0: log N(z; 0, I) over no dimensions is 0
    let l = sde
        .prior_logp(&Tensor::zeros((2, 0), DType::F32, &d).unwrap())
        .unwrap();
    assert_eq!(l.to_vec1::<f32>().unwrap(), vec![0.0, 0.0]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for dt in [DType::U8, DType::I64] {
        let c = format!("{name}::prior_sampling {dt:?}");
        check(
            &c,
            Want::DType("dtype"),
            no_panic(&c, || {
                sde.prior_sampling(&Shape::from((2, 2)), &d, dt, &mut rng)
            }),
        );
    }
    let c = format!("{name}::prior_sampling empty");
    check(
        &c,
        Want::Ok,
        no_panic(&c, || {
            sde.prior_sampling(&Shape::from((0, 2)), &d, DType::F32, &mut rng)
        }),
    );
}

#[test]
fn time_only_methods_and_priors_check_their_input() {
    t_only_entry_points("VeSde", &VeSde::default());
    t_only_entry_points("VpSde", &VpSde::default());
    t_only_entry_points("SubVpSde", &SubVpSde::default());
}

#[test]
fn ancestral_steps_check_their_input() {
    fn run<S: AncestralSde>(name: &str, sde: &S) {
        for (case, x, t, want) in xt_cases() {
            let c = format!("{name}::ancestral_step, {case}");
            let score = x.clone();
            check(
                &c,
                want,
                no_panic(&c, || sde.ancestral_step(&x, &t, &score)),
            );
        }
    }
    run("VeSde", &VeSde::default());
    run("VpSde", &VpSde::default());
}

/// An integer time gives a typed error, not coefficients truncated in the integer dtype (the
/// silent result this replaced: `std` of VE at t = 0 as u8 was 0 instead of σ_min).
#[test]
fn integer_times_are_refused_naming_the_function() {
    let d = dev();
    let x = Tensor::ones((2, 2), DType::F32, &d).unwrap();
    let t = Tensor::zeros(2, DType::I64, &d).unwrap();
    let e = VpSde::default().marginal_prob(&x, &t).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                func: "VpSde::marginal_prob",
                arg: "t",
                got: DType::I64,
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("VpSde::marginal_prob") && msg.contains("`t`") && msg.contains("I64"),
        "{msg}"
    );
    let e = VeSde::default()
        .sde(
            &x.to_dtype(DType::U8).unwrap(),
            &t.to_dtype(DType::F32).unwrap(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                func: "VeSde::sde",
                arg: "x",
                ..
            }
        ),
        "{e}"
    );
    let e = SubVpSde::default()
        .marginal_prob(&Tensor::new(1f32, &d).unwrap(), &t)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "SubVpSde::marginal_prob: `x` must have rank ≥ 1 ([B, ...]), got shape []"
    );
    assert!(sde_core::time_tensor(0.5, 2, &d, DType::U8).is_err());
}

/// Values the half-precision and strided inputs give agree with the float32 contiguous ones.
#[test]
fn half_and_strided_inputs_compute_the_same_values() {
    let d = dev();
    let sde = VpSde::default();
    let x = Tensor::new(&[[0.5f32, -1.0, 2.0], [1.5, 0.25, -0.75]], &d).unwrap();
    let t = Tensor::new(&[0.3f32, 0.7, 0.3], &d).unwrap();
    let xt = x.t().unwrap(); // [3, 2] strided
    let (m, s) = sde.marginal_prob(&xt, &t).unwrap();
    let (m2, s2) = sde.marginal_prob(&xt.contiguous().unwrap(), &t).unwrap();
    assert_eq!(m.to_vec2::<f32>().unwrap(), m2.to_vec2::<f32>().unwrap());
    assert_eq!(s.to_vec1::<f32>().unwrap(), s2.to_vec1::<f32>().unwrap());
    let (mh, sh) = sde
        .marginal_prob(
            &xt.to_dtype(DType::F16).unwrap(),
            &t.to_dtype(DType::F16).unwrap(),
        )
        .unwrap();
    assert_eq!(mh.dtype(), DType::F16);
    let (mh, sh) = (
        mh.to_dtype(DType::F32).unwrap(),
        sh.to_dtype(DType::F32).unwrap(),
    );
    let err = (mh - m)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let err_s = (sh - s)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(err < 2e-3 && err_s < 2e-3, "{err} {err_s}");
}

#[test]
fn analytic_oracles_check_their_input() {
    let gmm = GaussianMixture::ring(4, 2.0, 0.3).unwrap();
    let mix = GaussianMixtureScore::new(VpSde::default(), gmm.clone());
    let gauss = GaussianScore::isotropic(VpSde::default(), 0.2, 0.5).unwrap();
    let mut cases = xt_cases();
    // the mixture needs [B, ...] of D = 2 elements per sample
    let d = dev();
    let t3 = Tensor::full(0.5f32, 3, &d).unwrap();
    let mix_extra = vec![
        (
            "x rank 1",
            Tensor::ones(3, DType::F32, &d).unwrap(),
            Want::Rank("x"),
        ),
        (
            "x of D = 3",
            Tensor::ones((3, 3), DType::F32, &d).unwrap(),
            Want::Shape,
        ),
        (
            "zero-size sample",
            Tensor::ones((3, 0), DType::F32, &d).unwrap(),
            Want::Shape,
        ),
    ];
    for (case, x, want) in &mix_extra {
        for (n, r) in [
            ("score", no_panic(case, || mix.score(x, &t3)).map(|_| ())),
            (
                "score_with_vjp",
                no_panic(case, || mix.score_with_vjp(x, &t3, x)).map(|_| ()),
            ),
            (
                "log_prob",
                no_panic(case, || mix.log_prob(x, &t3)).map(|_| ()),
            ),
            (
                "log_prob_tensor",
                no_panic(case, || mix.log_prob_tensor(x, &t3)).map(|_| ()),
            ),
            (
                "mixture log_prob",
                no_panic(case, || gmm.log_prob(x)).map(|_| ()),
            ),
            ("classify", no_panic(case, || gmm.classify(x)).map(|_| ())),
        ] {
            check(&format!("GaussianMixtureScore::{n}, {case}"), *want, r);
        }
    }
    // the known panic: an integer x_init reaching the analytic score (PcSampler::run)
    cases.push((
        "x i64 [B, 2]".into(),
        Tensor::zeros((3, 2), DType::I64, &d).unwrap(),
        t3.clone(),
        Want::DType("x"),
    ));
    for (case, x, t, want) in &cases {
        // f32 CPU batches take the fast path, f64 the host one: both are covered
        for xx in [
            x.clone(),
            if x.dtype() == DType::F32 {
                x.to_dtype(DType::F64).unwrap()
            } else {
                x.clone()
            },
        ] {
            let c = format!("GaussianMixtureScore::score ({:?}), {case}", xx.dtype());
            check(
                &c,
                *want,
                no_panic(&c, || mix.score(&xx, t)).map(|s| assert_eq!(s.dims(), xx.dims())),
            );
            let c = format!("GaussianMixtureScore::score_with_vjp, {case}");
            check(&c, *want, no_panic(&c, || mix.score_with_vjp(&xx, t, &xx)));
            let c = format!("GaussianMixtureScore::log_prob, {case}");
            check(&c, *want, no_panic(&c, || mix.log_prob(&xx, t)));
            let c = format!("GaussianMixtureScore::log_prob_tensor, {case}");
            check(&c, *want, no_panic(&c, || mix.log_prob_tensor(&xx, t)));
        }
        let c = format!("GaussianScore::score, {case}");
        check(
            &c,
            *want,
            no_panic(&c, || gauss.score(x, t)).map(|s| assert_eq!(s.dims(), x.dims())),
        );
        let c = format!("GaussianScore::score_with_vjp, {case}");
        check(&c, *want, no_panic(&c, || gauss.score_with_vjp(x, t, x)));
        let c = format!("GaussianScore::log_prob, {case}");
        check(&c, *want, no_panic(&c, || gauss.log_prob(x, t)));
    }
    // a probe of the wrong shape
    let x = Tensor::ones((3, 2), DType::F32, &d).unwrap();
    let v = Tensor::ones((3, 3), DType::F32, &d).unwrap();
    check(
        "GaussianScore vjp probe",
        Want::Shape,
        no_panic("probe", || gauss.score_with_vjp(&x, &t3, &v)),
    );
    check(
        "GaussianMixtureScore vjp probe",
        Want::Shape,
        no_panic("probe", || mix.score_with_vjp(&x, &t3, &v)),
    );
    // the data density
    check(
        "log_prob_data u8",
        Want::DType("x"),
        no_panic("", || gauss.log_prob_data(&x.to_dtype(DType::U8).unwrap())),
    );
    check(
        "log_prob_data rank 0",
        Want::Rank("x"),
        no_panic("", || gauss.log_prob_data(&Tensor::new(1f32, &d).unwrap())),
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    check(
        "GaussianMixture::sample rank 1",
        Want::Shape,
        no_panic("", || gmm.sample(&Shape::from(2), &d, DType::F32, &mut rng)),
    );
    check(
        "GaussianMixture::sample u8",
        Want::DType("dtype"),
        no_panic("", || {
            gmm.sample(&Shape::from((2, 2)), &d, DType::U8, &mut rng)
        }),
    );
    check(
        "GaussianMixture::sample empty",
        Want::Ok,
        no_panic("", || {
            gmm.sample(&Shape::from((0, 2)), &d, DType::F32, &mut rng)
        }),
    );
    check(
        "GaussianScore::sample i64",
        Want::DType("dtype"),
        no_panic("", || {
            gauss.sample(&Shape::from((2, 2)), &d, DType::I64, &mut rng)
        }),
    );
}

#[test]
fn analytic_constructors_reject_non_finite_and_empty_parameters() {
    let d = dev();
    let sde = VpSde::default();
    let empty = Tensor::zeros(0, DType::F32, &d).unwrap();
    let one = Tensor::new(1f32, &d).unwrap();
    assert!(matches!(
        GaussianScore::new(&sde, empty.clone(), one.clone()),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        GaussianScore::new(&sde, one.clone(), empty),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        GaussianScore::isotropic(&sde, f64::NAN, 1.0),
        Err(Error::NonFinite { .. })
    ));
    assert!(matches!(
        GaussianScore::isotropic(&sde, 0.0, f64::INFINITY),
        Err(Error::InvalidParameter { name: "std", .. })
    ));
    // integer parameters are fine: they follow x's dtype
    let g = GaussianScore::new(
        &sde,
        Tensor::new(1u8, &d).unwrap(),
        Tensor::new(2i64, &d).unwrap(),
    )
    .unwrap();
    let x = Tensor::ones((2, 2), DType::F32, &d).unwrap();
    g.score(&x, &sde_core::time_tensor(0.5, 2, &d, DType::F32).unwrap())
        .unwrap();
    for (w, m, s, name) in [
        (vec![f64::NAN], vec![vec![0.0]], vec![vec![1.0]], "weights"),
        (
            vec![f64::MAX, f64::MAX],
            vec![vec![0.0], vec![1.0]],
            vec![vec![1.0], vec![1.0]],
            "weights",
        ),
        (
            vec![1.0],
            vec![vec![f64::INFINITY]],
            vec![vec![1.0]],
            "means",
        ),
        (vec![1.0], vec![vec![0.0]], vec![vec![f64::NAN]], "stds"),
    ] {
        match GaussianMixture::new(w, m, s) {
            Err(Error::InvalidParameter { name: n, .. }) => assert_eq!(n, name),
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(GaussianMixture::new(vec![], vec![], vec![]).is_err());
    assert!(GaussianMixture::new(vec![1.0], vec![vec![]], vec![vec![]]).is_err());
    assert!(GaussianMixture::ring(0, 1.0, 0.1).is_err());
    assert!(GaussianMixture::ring(3, f64::NAN, 0.1).is_err());
}

#[test]
fn noise_sources_check_dtype_and_accept_empty_shapes() {
    let d = dev();
    let mut sources: Vec<(&str, Box<dyn NoiseSource>)> = vec![
        ("StdRng", Box::new(rand::rngs::StdRng::seed_from_u64(1))),
        ("PerSampleNoise", Box::new(PerSampleNoise::new(1))),
        ("BlockNoise", Box::new(BlockNoise::new(1))),
    ];
    for (name, src) in sources.iter_mut() {
        for dt in [DType::U8, DType::U32, DType::I64] {
            let s = Shape::from((2, 3));
            check(
                &format!("{name} randn {dt:?}"),
                Want::DType("dtype"),
                no_panic(name, || src.randn(&s, &d, dt)),
            );
            check(
                &format!("{name} rand_uniform {dt:?}"),
                Want::DType("dtype"),
                no_panic(name, || src.rand_uniform(&s, &d, dt)),
            );
            check(
                &format!("{name} rademacher {dt:?}"),
                Want::DType("dtype"),
                no_panic(name, || src.rademacher(&s, &d, dt)),
            );
        }
        for dt in [DType::F16, DType::BF16, DType::F32, DType::F64] {
            for s in [Shape::from((0, 3)), Shape::from((3, 0)), Shape::from(5)] {
                let r = no_panic(name, || src.randn(&s, &d, dt)).unwrap();
                assert_eq!((r.dims(), r.dtype()), (s.dims(), dt), "{name} {s:?}");
                let r = no_panic(name, || src.rademacher(&s, &d, dt)).unwrap();
                assert_eq!(r.dims(), s.dims());
            }
        }
    }
}

#[test]
fn tensor_helpers_name_their_argument() {
    let d = dev();
    let scalar = Tensor::new(1f32, &d).unwrap();
    let v = Tensor::ones(3, DType::F32, &d).unwrap();
    let x = Tensor::ones((3, 2), DType::F32, &d).unwrap();
    check(
        "mul_batch rank 0",
        Want::Rank("x"),
        no_panic("", || sde_core::mul_batch(&v, &scalar)),
    );
    check(
        "expand_batch rank 0",
        Want::Rank("x"),
        no_panic("", || sde_core::expand_batch(&v, &scalar)),
    );
    check(
        "mul_batch wrong v",
        Want::Shape,
        no_panic("", || sde_core::mul_batch(&x, &x)),
    );
    check(
        "sum_non_batch rank 0",
        Want::Rank("x"),
        no_panic("", || sde_core::sum_non_batch(&scalar)),
    );
    check(
        "sample_numel rank 0",
        Want::Rank("x"),
        no_panic("", || sde_core::sample_numel(&scalar)),
    );
    assert_eq!(
        sde_core::sum_non_batch(&v)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        vec![1.0; 3]
    );
    assert_eq!(sde_core::sample_numel(&v).unwrap(), 1);
    assert_eq!(
        sde_core::sample_numel(&Tensor::zeros((3, 0), DType::F32, &d).unwrap()).unwrap(),
        0
    );
    check(
        "check_time i64 t",
        Want::DType("t"),
        no_panic("", || {
            sde_core::check_time(&x, &v.to_dtype(DType::I64).unwrap(), 1.0)
        }),
    );
    check(
        "time_tensor u32",
        Want::DType("dtype"),
        no_panic("", || sde_core::time_tensor(0.5, 3, &d, DType::U32)),
    );
    assert!(matches!(
        sde_core::standard_normal_logp(&x, 0.0),
        Err(Error::InvalidParameter { name: "sigma", .. })
    ));
    assert!(matches!(
        sde_core::standard_normal_logp(&x, f64::NAN),
        Err(Error::InvalidParameter { .. })
    ));
    // finiteness of integer tensors: always finite
    sde_core::ensure_finite(&x.to_dtype(DType::U8).unwrap(), String::new).unwrap();
    sde_core::ensure_finite(&scalar, String::new).unwrap();
    assert_eq!(
        sde_core::to_host_f64(&x.t().unwrap()).unwrap(),
        vec![1.0; 6]
    );
    assert_eq!(
        sde_core::to_host_f64(&x.to_dtype(DType::BF16).unwrap()).unwrap(),
        vec![1.0; 6]
    );
}
