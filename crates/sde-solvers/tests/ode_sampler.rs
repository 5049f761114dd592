//! The probability-flow ODE sampler against the reference's `get_ode_sampler` runs
//! (`samplers.safetensors`, `ode_{ve,vp,subvp}`), and encode/decode round trips.

use std::collections::HashMap;

use candle_core::{DType, Device, Shape, Tensor};
use rand::SeedableRng;
use sde_core::analytic::GaussianScore;
use sde_core::{Sde, SubVpSde, VeSde, VpSde};
use sde_solvers::ode::{ErrorNorm, OdeMethod, Rk45Options};
use sde_solvers::ode_sampler::{OdeSampler, OdeSamplerOptions};

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testvectors/samplers.safetensors"
);

fn load() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(VECTORS, &Device::Cpu).unwrap()
}

fn host(x: &Tensor) -> Vec<f64> {
    x.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn scalar_i64(x: &Tensor) -> usize {
    x.flatten_all().unwrap().to_vec1::<i64>().unwrap()[0] as usize
}

/// Data N(0.3, 0.6² I) as in the vectors' README; RK45 rtol = atol = 1e-5, N = 1000.
fn parity<S: Sde>(sde: &S, name: &str, eps: f64) {
    let v = load();
    let score = GaussianScore::isotropic(sde, 0.3, 0.6).unwrap();
    let z = &v[&format!("ode_{name}.z")];
    for (mode, denoise) in [("plain", false), ("denoise", true)] {
        let opts = OdeSamplerOptions {
            sampling_eps: eps,
            denoise,
            ..Default::default()
        };
        let sampler = OdeSampler::new(sde, &score, opts).unwrap();
        let out = sampler.decode(z).unwrap();
        let want_nfe = scalar_i64(&v[&format!("ode_{name}.{mode}.nfe")]);
        // The reference reports scipy's nfev; our NFE also counts the denoising evaluation.
        assert_eq!(out.nfe, want_nfe + denoise as usize, "{name}.{mode}: nfe");
        assert_eq!(out.x.dtype(), DType::F32);
        let (got, want) = (host(&out.x), host(&v[&format!("ode_{name}.{mode}.out")]));
        let scale = want.iter().fold(0f64, |m, w| m.max(w.abs()));
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-5 * scale + 1e-5 * w.abs(),
                "{name}.{mode}: {g} vs {w} (max {scale})"
            );
        }
    }
}

#[test]
fn ode_ve_matches_reference() {
    parity(&VeSde::new(0.01, 50.0, 1000).unwrap(), "ve", 1e-5);
}

#[test]
fn ode_vp_matches_reference() {
    parity(&VpSde::new(0.1, 20.0, 1000).unwrap(), "vp", 1e-3);
}

#[test]
fn ode_subvp_matches_reference() {
    parity(&SubVpSde::new(0.1, 20.0, 1000).unwrap(), "subvp", 1e-3);
}

/// decode(encode(x)) = x within 1e-3 (exact Gaussian score), in both error-norm modes and for
/// image-shaped data.
#[test]
fn encode_decode_round_trip() {
    let sde = VpSde::default();
    let score = GaussianScore::isotropic(&sde, 0.3, 0.6).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let x = score
        .sample(
            &Shape::from((8, 1, 4, 4)),
            &Device::Cpu,
            DType::F32,
            &mut rng,
        )
        .unwrap();
    for error_norm in [ErrorNorm::Batch, ErrorNorm::PerSample] {
        let method = OdeMethod::Rk45(Rk45Options {
            error_norm,
            ..Default::default()
        });
        let opts = OdeSamplerOptions {
            method,
            ..Default::default()
        };
        let sampler = OdeSampler::new(&sde, &score, opts).unwrap();
        let z = sampler.encode(&x).unwrap();
        // the latent of Gaussian data is Gaussian: z = a₁μ + √(v₁/v_ε)(x − a_ε μ) with v = a²s² + σ²
        let back = sampler.decode(&z.x).unwrap();
        let err = host(&(back.x - &x).unwrap())
            .iter()
            .fold(0f64, |m, d| m.max(d.abs()));
        assert!(err < 1e-3, "{error_norm:?}: round trip error {err}");
    }
}

/// The sampler's output distribution: mean and std of N(0.3, 0.6²) data, VE with denoising.
#[test]
fn samples_have_the_data_moments() {
    let sde = VeSde::default();
    let score = GaussianScore::isotropic(&sde, 0.3, 0.6).unwrap();
    let opts = OdeSamplerOptions {
        sampling_eps: 1e-5,
        denoise: true,
        ..Default::default()
    };
    let sampler = OdeSampler::new(&sde, &score, opts).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let out = sampler
        .sample(&Shape::from((2000, 2)), &Device::Cpu, DType::F32, &mut rng)
        .unwrap();
    let h = host(&out.x);
    let n = h.len() as f64;
    let mean = h.iter().sum::<f64>() / n;
    let std = (h.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    // 4000 values: the standard error of the mean is 0.6/√4000 ≈ 0.0095
    assert!((mean - 0.3).abs() < 0.04, "mean {mean}");
    assert!((std - 0.6).abs() < 0.03, "std {std}");
}

#[test]
fn invalid_options_are_rejected() {
    let sde = VpSde::default();
    let score = GaussianScore::isotropic(&sde, 0.0, 1.0).unwrap();
    for eps in [0.0, -1.0, 1.0, f64::NAN] {
        let opts = OdeSamplerOptions {
            sampling_eps: eps,
            ..Default::default()
        };
        assert!(matches!(
            OdeSampler::new(&sde, &score, opts),
            Err(sde_solvers::Error::InvalidParameter {
                name: "sampling_eps",
                ..
            })
        ));
    }
}

/// The cheap fixed-step methods approach the RK45 solution at their orders (Heun 2, Euler 1).
#[test]
fn fixed_step_methods_approach_rk45() {
    use sde_solvers::ode::{FixedStep, FixedStepMethod};
    let sde = VpSde::default();
    let score = GaussianScore::isotropic(&sde, 0.3, 0.6).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let z = sde
        .prior_sampling(&Shape::from((16, 2)), &Device::Cpu, DType::F32, &mut rng)
        .unwrap();
    let decode = |method: OdeMethod| {
        let opts = OdeSamplerOptions {
            method,
            ..Default::default()
        };
        let out = OdeSampler::new(&sde, &score, opts)
            .unwrap()
            .decode(&z)
            .unwrap();
        (host(&out.x), out.nfe)
    };
    let tight = Rk45Options {
        rtol: 1e-8,
        atol: 1e-8,
        ..Default::default()
    };
    let (reference, _) = decode(OdeMethod::Rk45(tight));
    let err = |m: FixedStepMethod, n: usize| {
        let (x, nfe) = decode(OdeMethod::Fixed(FixedStep::new(m, n).unwrap()));
        // the steps' evaluations, plus the denoising one (on by default)
        let denoise = usize::from(OdeSamplerOptions::default().denoise);
        assert_eq!(
            nfe,
            n * FixedStep::new(m, n).unwrap().evals_per_step() + denoise
        );
        x.iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    };
    let (h1, h2) = (
        err(FixedStepMethod::Heun, 50),
        err(FixedStepMethod::Heun, 100),
    );
    let (e1, e2) = (
        err(FixedStepMethod::Euler, 200),
        err(FixedStepMethod::Euler, 400),
    );
    assert!(h2 < 2e-3 && (h1 / h2).log2() > 1.6, "Heun errors {h1} {h2}");
    assert!(
        e2 < 2e-2 && (e1 / e2).log2() > 0.8,
        "Euler errors {e1} {e2}"
    );
}

/// A float32 solver state (for Metal, or to halve memory) still matches the reference's
/// outputs closely; the NFE may differ from scipy's float64 run.
#[test]
fn float32_solver_state() {
    let v = load();
    let sde = VpSde::new(0.1, 20.0, 1000).unwrap();
    let score = GaussianScore::isotropic(&sde, 0.3, 0.6).unwrap();
    let opts = OdeSamplerOptions {
        solver_dtype: DType::F32,
        denoise: false,
        ..Default::default()
    };
    let out = OdeSampler::new(&sde, &score, opts)
        .unwrap()
        .decode(&v["ode_vp.z"])
        .unwrap();
    let (got, want) = (host(&out.x), host(&v["ode_vp.plain.out"]));
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs()));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-4 * scale, "{g} vs {w}");
    }
}
