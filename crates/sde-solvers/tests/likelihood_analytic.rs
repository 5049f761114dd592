//! The likelihood against closed-form log densities, with exact scores.
//!
//! The ODE runs from t = ε to T, so what it computes is log p_ε(x); and it starts from the
//! SDE's prior p_T ≈ N(0, σ²I), which only approximates the true p_T. The tests therefore check
//! the identity the ODE solves exactly,
//!
//!   log p_ε(x) = log p_T(z) + ∫_ε^T div f̃ dt,
//!
//! with the closed-form log p_ε and log p_T of the oracle (`delta_logp` + exact log p_T(z)), and
//! separately that the reported `log_p` is `prior_logp(z) + delta_logp`. ε = 1e-5 (default).

use candle_core::{DType, Device, Shape, Tensor};
use rand::SeedableRng;
use sde_core::analytic::{GaussianMixture, GaussianMixtureScore, GaussianScore};
use sde_core::noise::NoiseSource;
use sde_core::{Sde, SubVpSde, VeSde, VpSde};
use sde_solvers::likelihood::{
    bits_per_dim, dequantize_levels, reference_bits_per_dim, DataRange, DivergenceEstimator,
    HutchinsonProbe, Likelihood, LikelihoodOptions, LikelihoodOutput,
};
use sde_solvers::ode::{ErrorNorm, OdeMethod, Rk45Options};

const EPS: f64 = 1e-5;

fn host(x: &Tensor) -> Vec<f64> {
    x.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn times(t: f64, b: usize) -> Tensor {
    sde_core::time_tensor(t, b, &Device::Cpu, DType::F64).unwrap()
}

/// The ODE's estimate of log p_ε(x) with the exact log p_T(z) in place of the prior, per probe:
/// [B][K].
fn ode_log_p_eps(out: &LikelihoodOutput, exact_log_p_t: &[f64]) -> Vec<Vec<f64>> {
    let k = out.delta_logp.dim(1).unwrap();
    let d = host(&out.delta_logp);
    exact_log_p_t
        .iter()
        .enumerate()
        .map(|(i, lt)| (0..k).map(|j| lt + d[i * k + j]).collect())
        .collect()
}

fn check_reported_log_p(out: &LikelihoodOutput) {
    let k = out.delta_logp.dim(1).unwrap();
    let (lp, prior, d) = (
        host(&out.log_p),
        host(&out.prior_logp),
        host(&out.delta_logp),
    );
    for i in 0..lp.len() {
        let mean = (0..k).map(|j| prior[i] + d[i * k + j]).sum::<f64>() / k as f64;
        assert!((lp[i] - mean).abs() < 1e-9);
    }
}

fn exact_opts(error_norm: ErrorNorm) -> LikelihoodOptions {
    LikelihoodOptions {
        estimator: DivergenceEstimator::Exact,
        method: OdeMethod::Rk45(Rk45Options {
            error_norm,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Gaussian data N(μ, s² I) with the exact trace: within 1e-3 nats per sample.
fn gaussian_exact_trace<S: Sde>(sde: &S, shape: &[usize], mean: &Tensor, s: f64) {
    let oracle = GaussianScore::new(
        sde,
        mean.clone(),
        Tensor::new(s as f32, &Device::Cpu).unwrap(),
    )
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let x = oracle
        .sample(&Shape::from(shape), &Device::Cpu, DType::F32, &mut rng)
        .unwrap();
    let b = shape[0];
    for norm in [ErrorNorm::Batch, ErrorNorm::PerSample] {
        let lik = Likelihood::new(sde, &oracle, exact_opts(norm)).unwrap();
        let out = lik.log_likelihood(&x, &mut rng).unwrap();
        check_reported_log_p(&out);
        let z64 = out.z.to_dtype(DType::F64).unwrap();
        let log_p_t = host(&oracle.log_prob(&z64, &times(1.0, b)).unwrap());
        let want = host(
            &oracle
                .log_prob(&x.to_dtype(DType::F64).unwrap(), &times(EPS, b))
                .unwrap(),
        );
        let got = ode_log_p_eps(&out, &log_p_t);
        for i in 0..b {
            assert!(
                (got[i][0] - want[i]).abs() < 1e-3,
                "{norm:?} sample {i}: {} vs {}",
                got[i][0],
                want[i]
            );
        }
        // and log p_ε is within 1e-3 of log p_0 for these SDEs at ε = 1e-5
        let p0 = host(
            &oracle
                .log_prob_data(&x.to_dtype(DType::F64).unwrap())
                .unwrap(),
        );
        for i in 0..b {
            assert!((want[i] - p0[i]).abs() < 1e-3);
        }
    }
}

#[test]
fn gaussian_2d_vp_exact_trace() {
    let mean = Tensor::new(&[0.5f32, -0.3], &Device::Cpu).unwrap();
    gaussian_exact_trace(&VpSde::default(), &[6, 2], &mean, 0.7);
}

#[test]
fn gaussian_2d_subvp_exact_trace() {
    let mean = Tensor::new(&[0.5f32, -0.3], &Device::Cpu).unwrap();
    gaussian_exact_trace(&SubVpSde::default(), &[6, 2], &mean, 0.7);
}

#[test]
fn gaussian_image_1x4x4_vp_exact_trace() {
    let mean = Tensor::arange(0f32, 16.0, &Device::Cpu)
        .unwrap()
        .affine(1.0 / 15.0, -0.5)
        .unwrap()
        .reshape((1, 4, 4))
        .unwrap();
    gaussian_exact_trace(&VpSde::default(), &[4, 1, 4, 4], &mean, 0.5);
}

/// The 8-Gaussian ring under VE with the exact trace: within 1e-3 nats of the closed form.
#[test]
fn mixture_2d_ve_exact_trace() {
    let sde = VeSde::default();
    let gmm = GaussianMixture::ring(8, 4.0, 0.2).unwrap();
    let oracle = GaussianMixtureScore::new(&sde, gmm.clone());
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let x = gmm
        .sample(
            &Shape::from((8, 1, 1, 2)),
            &Device::Cpu,
            DType::F32,
            &mut rng,
        )
        .unwrap();
    let lik = Likelihood::new(&sde, &oracle, exact_opts(ErrorNorm::PerSample)).unwrap();
    let out = lik.log_likelihood(&x, &mut rng).unwrap();
    let log_p_t = oracle
        .log_prob(&out.z.to_dtype(DType::F64).unwrap(), &times(1.0, 8))
        .unwrap();
    let want = oracle
        .log_prob(&x.to_dtype(DType::F64).unwrap(), &times(EPS, 8))
        .unwrap();
    let got = ode_log_p_eps(&out, &log_p_t);
    for i in 0..8 {
        assert!(
            (got[i][0] - want[i]).abs() < 1e-3,
            "sample {i}: {} vs {}",
            got[i][0],
            want[i]
        );
    }
    // p_ε vs p_0 differ by the σ_min = 0.01 smoothing of std 0.2 components: < 0.01 nats here
    let p0 = gmm.log_prob(&x).unwrap();
    for i in 0..8 {
        assert!((want[i] - p0[i]).abs() < 1e-2);
    }
}

/// Hutchinson with K probes: the average is within 4 standard errors of the closed form (plus
/// the 1e-3 solver floor), and the standard error is not degenerate.
fn hutchinson_within_4_se<F: sde_core::ScoreFn, S: Sde>(
    sde: &S,
    oracle: &F,
    x: &Tensor,
    probe: HutchinsonProbe,
    exact: impl Fn(&Tensor, f64) -> Vec<f64>,
) {
    let k = 12;
    let opts = LikelihoodOptions {
        estimator: DivergenceEstimator::Hutchinson { probe, n_probes: k },
        ..Default::default()
    };
    let lik = Likelihood::new(sde, oracle, opts).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let out = lik.log_likelihood(x, &mut rng).unwrap();
    let b = x.dim(0).unwrap();
    let log_p_t = exact(&out.z.to_dtype(DType::F64).unwrap(), 1.0);
    let want = exact(&x.to_dtype(DType::F64).unwrap(), EPS);
    let per = ode_log_p_eps(&out, &log_p_t);
    let se = host(out.std_err.as_ref().unwrap());
    let mut any_spread = false;
    for i in 0..b {
        let mean = per[i].iter().sum::<f64>() / k as f64;
        let sd = (per[i].iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1) as f64).sqrt();
        assert!(
            (sd / (k as f64).sqrt() - se[i]).abs() < 1e-9,
            "reported standard error"
        );
        assert!(
            (mean - want[i]).abs() < 4.0 * se[i] + 1e-3,
            "sample {i}: {mean} vs {want:?} ± {}",
            se[i]
        );
        any_spread |= se[i] > 1e-3;
    }
    assert!(any_spread, "the estimator should have a spread: {se:?}");
}

#[test]
fn hutchinson_gaussian_probes_on_gaussian_data() {
    // (a Rademacher probe is exact for the diagonal Jacobian of isotropic Gaussian data)
    let sde = VpSde::default();
    let oracle = GaussianScore::new(
        &sde,
        Tensor::new(&[0.5f32, -0.3], &Device::Cpu).unwrap(),
        Tensor::new(0.7f32, &Device::Cpu).unwrap(),
    )
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let x = oracle
        .sample(&Shape::from((6, 2)), &Device::Cpu, DType::F32, &mut rng)
        .unwrap();
    hutchinson_within_4_se(&sde, &oracle, &x, HutchinsonProbe::Gaussian, |x, t| {
        host(&oracle.log_prob(x, &times(t, x.dim(0).unwrap())).unwrap())
    });
}

#[test]
fn hutchinson_rademacher_probes_on_the_mixture() {
    let sde = VeSde::default();
    let gmm = GaussianMixture::ring(8, 4.0, 0.2).unwrap();
    let oracle = GaussianMixtureScore::new(&sde, gmm.clone());
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let x = gmm
        .sample(
            &Shape::from((8, 1, 1, 2)),
            &Device::Cpu,
            DType::F32,
            &mut rng,
        )
        .unwrap();
    hutchinson_within_4_se(&sde, &oracle, &x, HutchinsonProbe::Rademacher, |x, t| {
        oracle.log_prob(x, &times(t, x.dim(0).unwrap())).unwrap()
    });
}

#[test]
fn bits_per_dim_conversions() {
    let log_p = Tensor::new(&[-3.0f64, 1.5], &Device::Cpu).unwrap();
    let d = 4;
    let ln2 = std::f64::consts::LN_2;
    // 8-bit data in [0, 1]: +8; in [-1, 1]: +7 — the reference's offsets for the identity and
    // the centring scaler (inverse_scaler(-1) = -1 resp. 0).
    for range in [DataRange::ZeroOne, DataRange::MinusOneOne] {
        let (lo, hi) = range.bounds();
        let a = host(&bits_per_dim(&log_p, d, 8, (lo, hi)).unwrap());
        let b = host(&reference_bits_per_dim(&log_p, d, range).unwrap());
        for (i, lp) in [-3.0f64, 1.5].iter().enumerate() {
            let want = -lp / (d as f64 * ln2) + 8.0 - (hi - lo).log2();
            assert!((a[i] - want).abs() < 1e-12 && (b[i] - want).abs() < 1e-12);
        }
    }
    // 5-bit data in [0, 255/…]: offset 5 − log2(width)
    let c = host(&bits_per_dim(&log_p, 1, 5, (0.0, 4.0)).unwrap());
    assert!((c[0] - (3.0 / ln2 + 5.0 - 2.0)).abs() < 1e-12);
    assert!(bits_per_dim(&log_p, d, 0, (0.0, 1.0)).is_err());
    assert!(bits_per_dim(&log_p, d, 8, (1.0, 1.0)).is_err());
}

#[test]
fn dequantization_stays_in_its_bin() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    // 8-bit levels k/255 in [0, 1]
    let k: Vec<f32> = (0..256).map(|k| k as f32).collect();
    let x = Tensor::from_vec(k.clone(), (256, 1), &Device::Cpu)
        .unwrap()
        .affine(1.0 / 255.0, 0.0)
        .unwrap();
    let y = host(&dequantize_levels(&x, 8, (0.0, 1.0), &mut rng).unwrap());
    for (i, v) in y.iter().enumerate() {
        assert!(
            *v >= i as f64 / 256.0 - 1e-6 && *v < (i + 1) as f64 / 256.0 + 1e-6,
            "{i}: {v}"
        );
    }
    let out_of_range = Tensor::new(&[[1.5f32]], &Device::Cpu).unwrap();
    assert!(dequantize_levels(&out_of_range, 8, (0.0, 1.0), &mut rng).is_err());
}

#[test]
fn invalid_options() {
    let sde = VpSde::default();
    let oracle = GaussianScore::isotropic(&sde, 0.0, 1.0).unwrap();
    let zero = LikelihoodOptions {
        estimator: DivergenceEstimator::Hutchinson {
            probe: HutchinsonProbe::Gaussian,
            n_probes: 0,
        },
        ..Default::default()
    };
    assert!(Likelihood::new(&sde, &oracle, zero).is_err());
    let eps = LikelihoodOptions {
        sampling_eps: 0.0,
        ..Default::default()
    };
    assert!(Likelihood::new(&sde, &oracle, eps).is_err());
    let lik = Likelihood::new(&sde, &oracle, LikelihoodOptions::default()).unwrap();
    let x = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
    let bad_probe = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(lik.log_likelihood_with_probes(&x, &[bad_probe]).is_err());
}

/// Per-sample step control: each sample's likelihood is what it gets alone (its probe follows it
/// when the solver drops finished samples), and agrees with the batch-mode value.
#[test]
fn per_sample_likelihood_is_batch_independent() {
    let sde = VeSde::default();
    let gmm = GaussianMixture::ring(8, 4.0, 0.2).unwrap();
    let oracle = GaussianMixtureScore::new(&sde, gmm.clone());
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let x = gmm
        .sample(
            &Shape::from((6, 1, 1, 2)),
            &Device::Cpu,
            DType::F32,
            &mut rng,
        )
        .unwrap();
    let probe = rng.rademacher(x.shape(), &Device::Cpu, DType::F32).unwrap();
    let per = LikelihoodOptions {
        method: OdeMethod::Rk45(Rk45Options {
            error_norm: ErrorNorm::PerSample,
            ..Default::default()
        }),
        ..Default::default()
    };
    let lik = Likelihood::new(&sde, &oracle, per).unwrap();
    let all = host(
        &lik.log_likelihood_with_probes(&x, std::slice::from_ref(&probe))
            .unwrap()
            .log_p,
    );
    let batch = Likelihood::new(&sde, &oracle, LikelihoodOptions::default()).unwrap();
    let all_batch = host(
        &batch
            .log_likelihood_with_probes(&x, std::slice::from_ref(&probe))
            .unwrap()
            .log_p,
    );
    for i in 0..6 {
        let xi = x.narrow(0, i, 1).unwrap();
        let pi = probe.narrow(0, i, 1).unwrap();
        let alone = host(&lik.log_likelihood_with_probes(&xi, &[pi]).unwrap().log_p)[0];
        assert!(
            (alone - all[i]).abs() < 1e-9,
            "sample {i}: {alone} vs {}",
            all[i]
        );
        assert!(
            (all_batch[i] - all[i]).abs() < 1e-3,
            "sample {i}: per-sample vs batch"
        );
    }
}
