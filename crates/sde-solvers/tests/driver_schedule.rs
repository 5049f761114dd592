//! The sampler framework: λ(t) closed forms against the numeric defaults, schedules and their
//! validation, the driver's services (NFE, score-output checks, denoising, constraint hook,
//! masks), and the reference schedule reproducing the PC sampler.

mod samplers_common;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use samplers_common::{cosine, Generic};
use sde_core::analytic::GaussianScore;
use sde_core::{Sde, SubVpSde, VeSde, VpSde};
use sde_solvers::corrector::{LangevinCorrector, NoCorrector};
use sde_solvers::driver::Sampler;
use sde_solvers::pc::{time_grid, PcSampler, PcStep};
use sde_solvers::predictor::{EulerMaruyamaPredictor, ReverseDiffusionPredictor};
use sde_solvers::samplers::{DpmSolverPp2M, UniPc};
use sde_solvers::schedule::Schedule;
use sde_solvers::Error;

fn lambda_case<S: Sde>(sde: &S, name: &str) {
    let generic = Generic(sde);
    for i in 1..=20 {
        let t = i as f64 / 20.0 * sde.t_end();
        let (a, b) = (sde.log_snr(t).unwrap(), generic.log_snr(t).unwrap());
        assert!(
            (a - b).abs() <= 1e-9 * (1.0 + a.abs()),
            "{name}: λ({t}) {a} vs {b}"
        );
        // the closed-form inverse and the bisection agree and invert λ
        let (ta, tb) = (
            sde.t_of_log_snr(a).unwrap(),
            generic.t_of_log_snr(a).unwrap(),
        );
        assert!((ta - t).abs() < 1e-9, "{name}: t(λ({t})) = {ta}");
        assert!((tb - t).abs() < 1e-9, "{name}: bisection t(λ({t})) = {tb}");
    }
    // λ decreases
    let l: Vec<f64> = (1..=10)
        .map(|i| sde.log_snr(i as f64 / 10.0 * sde.t_end()).unwrap())
        .collect();
    assert!(l.windows(2).all(|w| w[1] < w[0]), "{name}: {l:?}");
    // outside the range: typed error
    let top = sde.log_snr(sde.t_end()).unwrap();
    for bad in [top - 1.0, f64::NAN] {
        assert!(
            matches!(
                sde.t_of_log_snr(bad),
                Err(sde_core::Error::InvalidParameter { .. })
            ),
            "{name}: {bad}"
        );
        assert!(
            matches!(
                generic.t_of_log_snr(bad),
                Err(sde_core::Error::InvalidParameter { .. })
            ),
            "{name}: {bad}"
        );
    }
}

#[test]
fn log_snr_closed_forms_match_the_numeric_default() {
    lambda_case(&VeSde::default(), "VE");
    lambda_case(&VpSde::default(), "VP");
    lambda_case(&SubVpSde::default(), "subVP");
    // VP and sub-VP have σ(0) = 0: λ(0) = +∞ and its inverse is t = 0
    assert_eq!(VpSde::default().log_snr(0.0).unwrap(), f64::INFINITY);
    assert_eq!(
        SubVpSde::default().t_of_log_snr(f64::INFINITY).unwrap(),
        0.0
    );
    // the user cosine SDE: numeric default against its own closed form
    // λ = log(ᾱ^½ / (1 − ᾱ)^½), ᾱ = cos²(π/2 (t+s)/(1+s)) / cos²(π/2 s/(1+s))
    let c = cosine();
    let abar = |t: f64| {
        let f = |u: f64| (std::f64::consts::FRAC_PI_2 * (u + c.s) / (1.0 + c.s)).cos();
        (f(t) / f(0.0)).powi(2)
    };
    for t in [0.1, 0.5, 0.9] {
        let want = 0.5 * (abar(t) / (1.0 - abar(t))).ln();
        let got = c.log_snr(t).unwrap();
        assert!(
            (got - want).abs() < 1e-9,
            "cosine λ({t}) = {got}, want {want}"
        );
        assert!((c.t_of_log_snr(got).unwrap() - t).abs() < 1e-9);
    }
}

#[test]
fn schedules_give_their_grids() {
    let vp = VpSde::default();
    // Reference: the reference grid, bit for bit, then 0
    let r = Schedule::Reference { sampling_eps: 1e-3 }
        .times(&vp, 50, DType::F32)
        .unwrap();
    let mut want = time_grid(1.0, 1e-3, 50, DType::F32).unwrap();
    want.push(0.0);
    assert_eq!(r, want);
    // UniformLogSnr: λ equally spaced
    let u = Schedule::UniformLogSnr { sampling_eps: 1e-3 }
        .times(&vp, 8, DType::F64)
        .unwrap();
    let l: Vec<f64> = u.iter().map(|&t| vp.log_snr(t).unwrap()).collect();
    let d0 = l[1] - l[0];
    assert!(
        l.windows(2).all(|w| ((w[1] - w[0]) - d0).abs() < 1e-8),
        "{l:?}"
    );
    assert_eq!((u[0], u[8]), (1.0, 1e-3));
    // Karras on VP: σ/α follows the ρ-schedule
    let (smin, smax, rho) = (0.01, 80.0, 7.0);
    let k = Schedule::Karras {
        sigma_min: smin,
        sigma_max: smax,
        rho,
    }
    .times(&vp, 10, DType::F64)
    .unwrap();
    for (i, &t) in k.iter().enumerate() {
        let want = (smax.powf(1.0 / rho)
            + i as f64 / 10.0 * (smin.powf(1.0 / rho) - smax.powf(1.0 / rho)))
        .powf(rho);
        let got = (-vp.log_snr(t).unwrap()).exp();
        assert!((got - want).abs() < 1e-9 * want, "{i}: {got} vs {want}");
    }
    // UniformTime
    let ut = Schedule::UniformTime { sampling_eps: 0.2 }
        .times(&vp, 4, DType::F64)
        .unwrap();
    for (a, b) in ut.iter().zip([1.0, 0.8, 0.6, 0.4, 0.2]) {
        assert!((a - b).abs() < 1e-15, "{ut:?}");
    }
}

#[test]
fn schedules_are_validated() {
    let vp = VpSde::default();
    let bad = |s: Schedule, n: usize| s.times(&vp, n, DType::F64).unwrap_err();
    assert!(matches!(
        bad(Schedule::Times(vec![1.0, 0.5, 0.6]), 2),
        Error::InvalidSchedule { index: 2, .. }
    ));
    assert!(matches!(
        bad(Schedule::Times(vec![1.0, 0.5, 0.0]), 2),
        Error::InvalidSchedule { index: 2, .. }
    ));
    assert!(matches!(
        bad(Schedule::Times(vec![1.5, 0.5]), 1),
        Error::InvalidSchedule { index: 0, .. }
    ));
    assert!(matches!(
        bad(Schedule::Times(vec![1.0, f64::NAN]), 1),
        Error::InvalidSchedule { .. }
    ));
    assert!(matches!(
        bad(Schedule::Times(vec![1.0]), 0),
        Error::InvalidSchedule { .. }
    ));
    assert!(matches!(
        bad(Schedule::Times(vec![1.0, 0.5]), 3),
        Error::InvalidSchedule { .. }
    ));
    assert!(matches!(
        bad(Schedule::UniformTime { sampling_eps: 0.5 }, 0),
        Error::InvalidSchedule { .. }
    ));
    assert!(matches!(
        bad(Schedule::UniformLogSnr { sampling_eps: 0.0 }, 4),
        Error::InvalidParameter { .. }
    ));
    assert!(matches!(
        bad(
            Schedule::Karras {
                sigma_min: 0.1,
                sigma_max: 0.05,
                rho: 7.0
            },
            4
        ),
        Error::InvalidSchedule { .. }
    ));
    assert!(matches!(
        bad(
            Schedule::Karras {
                sigma_min: 0.01,
                sigma_max: 1e6,
                rho: 7.0
            },
            4
        ),
        Error::InvalidSchedule { .. }
    ));
    assert!(matches!(
        bad(
            Schedule::Karras {
                sigma_min: 0.01,
                sigma_max: 80.0,
                rho: 0.0
            },
            4
        ),
        Error::InvalidSchedule { .. }
    ));
    assert!(matches!(
        bad(Schedule::Reference { sampling_eps: 2.0 }, 4),
        Error::InvalidParameter { .. }
    ));
    // a user time grid with its own step count runs as given
    let score = GaussianScore::isotropic(&vp, 0.3, 0.6).unwrap();
    let s = Sampler::with_sde_steps(
        DpmSolverPp2M::default(),
        Schedule::Times(vec![1.0, 0.5, 0.1, 0.01]),
    );
    let out = s
        .sample(
            &vp,
            &score,
            (4, 2),
            &Device::Cpu,
            DType::F32,
            &mut rand::rngs::StdRng::seed_from_u64(0),
        )
        .unwrap();
    assert_eq!((out.n_steps, out.nfe), (3, 4));
}

/// The driver over the PC step on the reference schedule with N = sde.n() is the PC sampler.
#[test]
fn reference_schedule_reproduces_the_pc_sampler() {
    let sde = VeSde::new(0.01, 50.0, 30).unwrap();
    let score = GaussianScore::isotropic(&sde, 0.3, 0.6).unwrap();
    let pc = PcSampler::new(
        ReverseDiffusionPredictor::new(false),
        LangevinCorrector::new(0.16, 1).unwrap(),
    )
    .sampling_eps(1e-5);
    let a = pc
        .sample(
            &sde,
            &score,
            (5, 3),
            &Device::Cpu,
            DType::F32,
            &mut rand::rngs::StdRng::seed_from_u64(4),
        )
        .unwrap();
    let b = pc
        .clone()
        .into_sampler()
        .sample(
            &sde,
            &score,
            (5, 3),
            &Device::Cpu,
            DType::F32,
            &mut rand::rngs::StdRng::seed_from_u64(4),
        )
        .unwrap();
    assert_eq!(a.x.to_vec2::<f32>().unwrap(), b.x.to_vec2::<f32>().unwrap());
    // one meaning of NFE: evaluations made; the reference's count under its own name
    assert_eq!((a.nfe, a.nfe_nominal), (60, 60));
    assert_eq!((b.nfe, b.nfe_nominal), (60, Some(60)));
    let em = PcSampler::new(EulerMaruyamaPredictor::new(false), NoCorrector);
    let c = em
        .sample(
            &sde,
            &score,
            (5, 3),
            &Device::Cpu,
            DType::F32,
            &mut rand::rngs::StdRng::seed_from_u64(4),
        )
        .unwrap();
    assert_eq!((c.nfe, c.nfe_nominal), (30, 60));
}

/// Reverse diffusion follows the SDE's chain: on any other grid it is refused, not silently wrong.
#[test]
fn chain_predictors_refuse_other_grids() {
    let sde = VpSde::new(0.1, 20.0, 100).unwrap();
    let score = GaussianScore::isotropic(&sde, 0.3, 0.6).unwrap();
    let rd = PcSampler::new(ReverseDiffusionPredictor::new(false), NoCorrector)
        .into_sampler()
        .n_steps(10);
    let err = rd
        .sample(
            &sde,
            &score,
            (4, 2),
            &Device::Cpu,
            DType::F32,
            &mut rand::rngs::StdRng::seed_from_u64(0),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    // Euler–Maruyama on a uniform-time grid takes Δt = t − t_next
    let em = Sampler::new(
        PcStep {
            predictor: EulerMaruyamaPredictor::new(true),
            corrector: NoCorrector,
        },
        Schedule::UniformTime { sampling_eps: 0.5 },
        1,
    )
    .denoise(false);
    let x = Tensor::new(&[[1.0f64, -2.0]], &Device::Cpu).unwrap();
    let out = em
        .run(
            &sde,
            &score,
            &x,
            &mut rand::rngs::StdRng::seed_from_u64(0),
            |_, _, _| {},
        )
        .unwrap();
    // one step of the probability-flow ODE from t = 1 to 0.5: x − Δt (f − ½ g² s) with Δt = 0.5
    let t = sde_core::time_tensor(1.0, 1, &Device::Cpu, DType::F64).unwrap();
    let (f, g) = sde.sde(&x, &t).unwrap();
    let s = sde_core::ScoreFn::score(&score, &x, &t).unwrap();
    let g2 = g.to_vec1::<f64>().unwrap()[0].powi(2);
    let want = (&x
        - (f - s.affine(0.5 * g2, 0.0).unwrap())
            .unwrap()
            .affine(0.5, 0.0)
            .unwrap())
    .unwrap();
    let (got, want) = (
        out.x.to_vec2::<f64>().unwrap(),
        want.to_vec2::<f64>().unwrap(),
    );
    for (a, b) in got[0].iter().zip(&want[0]) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
}

/// A score function returning the wrong shape or dtype: an error naming it, the shapes and the step.
#[test]
fn wrong_score_outputs_are_named() {
    let sde = VpSde::default();
    let wrong_shape = |x: &Tensor, _t: &Tensor| -> sde_core::Result<Tensor> {
        Ok(Tensor::zeros((x.dim(0)?, 3), x.dtype(), x.device())?)
    };
    let s = Sampler::new(
        UniPc::default(),
        Schedule::UniformLogSnr { sampling_eps: 1e-3 },
        5,
    );
    let err = s
        .sample(
            &sde,
            &wrong_shape,
            (8, 2),
            &Device::Cpu,
            DType::F32,
            &mut rand::rngs::StdRng::seed_from_u64(0),
        )
        .unwrap_err();
    match &err {
        Error::ScoreOutput {
            score_fn,
            expected_shape,
            got_shape,
            step,
            ..
        } => {
            assert!(
                score_fn.contains("wrong_score_outputs_are_named"),
                "{score_fn}"
            );
            assert_eq!(
                (expected_shape.as_slice(), got_shape.as_slice(), *step),
                (&[8, 2][..], &[8, 3][..], 0)
            );
        }
        e => panic!("unexpected {e}"),
    }
    assert!(err.to_string().contains("[8, 3]"));
    // the PC sampler too, and a wrong dtype
    let wrong_dtype =
        |x: &Tensor, _t: &Tensor| -> sde_core::Result<Tensor> { Ok(x.to_dtype(DType::F64)?) };
    let pc = PcSampler::new(ReverseDiffusionPredictor::new(false), NoCorrector);
    let sde = VpSde::new(0.1, 20.0, 50).unwrap();
    match pc.sample(
        &sde,
        &wrong_dtype,
        (8, 2),
        &Device::Cpu,
        DType::F32,
        &mut rand::rngs::StdRng::seed_from_u64(0),
    ) {
        Err(Error::ScoreOutput {
            expected_dtype,
            got_dtype,
            ..
        }) => assert_eq!((expected_dtype, got_dtype), (DType::F32, DType::F64)),
        other => panic!("unexpected {other:?}"),
    }
    // integer data is refused before sampling
    let score = GaussianScore::isotropic(&sde, 0.0, 1.0).unwrap();
    let xi = Tensor::zeros((2, 2), DType::I64, &Device::Cpu).unwrap();
    assert!(pc
        .run(
            &sde,
            &score,
            &xi,
            &mut rand::rngs::StdRng::seed_from_u64(0),
            |_, _, _| {}
        )
        .is_err());
}

/// Inpainting through the constraint hook works with a fast sampler; masks must be {0, 1}.
#[test]
fn inpainting_with_every_sampler_and_binary_masks() {
    let sde = VpSde::default();
    let score = GaussianScore::isotropic(&sde, 0.3, 0.6).unwrap();
    let m = 2000;
    let row = Tensor::new(&[[1.2f32, -0.7, 0.0, 0.0]], &Device::Cpu).unwrap();
    let data = row.broadcast_as((m, 4)).unwrap().contiguous().unwrap();
    let mask = Tensor::new(&[[1f32, 1.0, 0.0, 0.0]], &Device::Cpu).unwrap();
    let s = Sampler::new(
        DpmSolverPp2M::default(),
        Schedule::UniformLogSnr { sampling_eps: 1e-3 },
        20,
    );
    let out = s
        .inpaint(
            &sde,
            &score,
            &data,
            &mask,
            &mut rand::rngs::StdRng::seed_from_u64(1),
        )
        .unwrap();
    let x = out.x.to_vec2::<f32>().unwrap();
    for r in &x {
        assert!(
            (r[0] - 1.2).abs() < 1e-3 && (r[1] + 0.7).abs() < 1e-3,
            "{r:?}"
        );
    }
    // the unknown (independent) coordinates still follow the data N(0.3, 0.6²)
    let mean: f64 = x.iter().map(|r| r[2] as f64).sum::<f64>() / m as f64;
    let var: f64 = x.iter().map(|r| (r[2] as f64 - mean).powi(2)).sum::<f64>() / m as f64;
    assert!(
        (mean - 0.3).abs() < 0.05 && (var.sqrt() - 0.6).abs() < 0.05,
        "{mean} {var}"
    );
    for bad in [0.5f32, -1.0, f32::NAN] {
        let mask = Tensor::new(&[[1f32, bad, 0.0, 0.0]], &Device::Cpu).unwrap();
        match s.inpaint(
            &sde,
            &score,
            &data,
            &mask,
            &mut rand::rngs::StdRng::seed_from_u64(1),
        ) {
            Err(Error::InvalidMask { index: 1, .. }) => {}
            other => panic!("mask {bad}: {other:?}"),
        }
        let pc = PcSampler::new(ReverseDiffusionPredictor::new(false), NoCorrector);
        assert!(matches!(
            pc.inpaint(
                &sde,
                &score,
                &data,
                &mask,
                &mut rand::rngs::StdRng::seed_from_u64(1)
            ),
            Err(Error::InvalidMask { .. })
        ));
    }
}

#[test]
fn denoise_counts_one_evaluation_and_observers_see_every_step() {
    let sde = SubVpSde::default();
    let score = GaussianScore::isotropic(&sde, 0.3, 0.6).unwrap();
    let s = Sampler::new(
        DpmSolverPp2M::default(),
        Schedule::UniformLogSnr { sampling_eps: 1e-3 },
        7,
    );
    let x = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
    let mut seen = vec![];
    let on = s
        .run(
            &sde,
            &score,
            &x,
            &mut rand::rngs::StdRng::seed_from_u64(0),
            |i, t, _| seen.push((i, t)),
        )
        .unwrap();
    let off = s
        .clone()
        .denoise(false)
        .run(
            &sde,
            &score,
            &x,
            &mut rand::rngs::StdRng::seed_from_u64(0),
            |_, _, _| {},
        )
        .unwrap();
    assert_eq!((on.nfe, off.nfe, on.nfe_nominal), (8, 7, None));
    assert_eq!(seen.len(), 7);
    assert_eq!(seen[0], (0, 1.0));
}
