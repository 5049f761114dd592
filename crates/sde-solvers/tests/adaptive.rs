//! The adaptive-step reverse-SDE sampler (Jolicoeur-Martineau et al. 2021) against closed-form
//! truth: Gaussian data with its exact score, the tolerance/NFE/error trade-off, per-sample
//! steps, batch-size invariance, rejected steps on a consistent Brownian path, typed errors,
//! and mixture quality on VE, VP, sub-VP and a user cosine VP through the harness.

mod samplers_common;

use std::cell::Cell;

use candle_core::{DType, Device, Shape, Tensor};
use samplers_common::cosine;
use sde_core::analytic::{GaussianMixture, GaussianScore};
use sde_core::noise::{BrownianTree, PerSampleNoise};
use sde_core::{to_host_f64, ScoreFn, Sde, SubVpSde, VeSde, VpSde};
use sde_solvers::harness::mixture_quality;
use sde_solvers::samplers::{AdaptiveOutput, AdaptiveSampler};
use sde_solvers::Error;

const MU: f64 = 0.5;
const S: f64 = 0.3;

fn tree<Q: Sde>(sde: &Q, seed: u64) -> BrownianTree {
    BrownianTree::new(seed, 0.0, sde.t_end()).unwrap()
}

fn prior<Q: Sde>(sde: &Q, b: usize, d: usize, seed: u64) -> Tensor {
    sde.prior_sampling(
        &Shape::from((b, d)),
        &Device::Cpu,
        DType::F64,
        &mut PerSampleNoise::new(seed),
    )
    .unwrap()
}

fn run<Q: Sde>(sde: &Q, a: &AdaptiveSampler, x: &Tensor, tree: &BrownianTree) -> AdaptiveOutput {
    let score = GaussianScore::isotropic(sde, MU, S).unwrap();
    a.run(sde, &score, x, tree, |_, _, _| {}).unwrap()
}

/// Sample mean and variance of all values.
fn moments(x: &Tensor) -> (f64, f64) {
    let v = to_host_f64(x).unwrap();
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (
        m,
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0),
    )
}

/// Variance of Tweedie's denoiser applied to the exact marginal at ε: α² s⁴ / (α² s² + σ²).
fn denoised_variance<Q: Sde>(sde: &Q, eps: f64) -> f64 {
    let t = Tensor::new(&[eps], &Device::Cpu).unwrap();
    let (a, s) = sde.marginal_coeffs(&t).unwrap();
    let (a, s) = (to_host_f64(&a).unwrap()[0], to_host_f64(&s).unwrap()[0]);
    a * a * S.powi(4) / (a * a * S * S + s * s)
}

fn tol(t: f64) -> AdaptiveSampler {
    AdaptiveSampler::default().rel_tol(t).abs_tol(0.78 * t)
}

#[test]
fn gaussian_moments_match_the_exact_marginal_within_the_tolerance() {
    let (b, d) = (2000, 2);
    let n = (b * d) as f64;
    for (label, eps) in [("VP", 1e-3), ("VE", 1e-5)] {
        for rel in [0.05, 0.01] {
            let (out, want_var) = if label == "VP" {
                let sde = VpSde::default();
                let a = tol(rel).sampling_eps(eps);
                (
                    run(&sde, &a, &prior(&sde, b, d, 1), &tree(&sde, 2)),
                    denoised_variance(&sde, eps),
                )
            } else {
                let sde = VeSde::new(0.01, 50.0, 1000).unwrap();
                let a = tol(rel).sampling_eps(eps);
                (
                    run(&sde, &a, &prior(&sde, b, d, 1), &tree(&sde, 2)),
                    denoised_variance(&sde, eps),
                )
            };
            let (m, v) = moments(&out.x);
            // 4 standard errors of the estimators plus a bias allowed to scale with the tolerance
            let tol_m = 4.0 * S / n.sqrt() + 0.5 * rel;
            let tol_v = 4.0 * S * S * (2.0 / n).sqrt() + 0.5 * rel * S * S;
            eprintln!(
                "{label} rel_tol {rel}: mean {m:.4} (want {MU}), var {v:.5} (want {want_var:.5}), mean NFE {:.1}",
                out.mean_nfe()
            );
            assert!((m - MU).abs() < tol_m, "{label} {rel}: mean {m}");
            assert!(
                (v - want_var).abs() < tol_v,
                "{label} {rel}: var {v} vs {want_var}"
            );
        }
    }
}

#[test]
fn tighter_tolerance_costs_more_and_errs_less() {
    // Strong error against a very tight run on the same prior draws and Brownian paths.
    let sde = VpSde::default();
    let x = prior(&sde, 200, 1, 3);
    let w = tree(&sde, 4);
    let fine = run(&sde, &tol(1e-4).denoise(false), &x, &w);
    let fine_x = to_host_f64(&fine.x).unwrap();
    let mut last = (0.0, f64::INFINITY);
    for t in [0.1, 0.03, 0.01, 0.003] {
        let out = run(&sde, &tol(t).denoise(false), &x, &w);
        let v = to_host_f64(&out.x).unwrap();
        let rms = (v
            .iter()
            .zip(&fine_x)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            / v.len() as f64)
            .sqrt();
        eprintln!(
            "tol {t}: mean NFE {:.1}, strong error {rms:.2e}",
            out.mean_nfe()
        );
        assert!(
            out.mean_nfe() > last.0 && rms < last.1,
            "tol {t}: NFE {} error {rms} after {last:?}",
            out.mean_nfe()
        );
        last = (out.mean_nfe(), rms);
    }
    assert!(last.1 < 0.05 * S, "tightest strong error {}", last.1);
    assert!(fine.mean_nfe() > last.0);
}

#[test]
fn step_counts_are_per_sample_and_nfe_is_counted() {
    let sde = VpSde::default();
    let x = prior(&sde, 64, 2, 5);
    let inner = GaussianScore::isotropic(&sde, MU, S).unwrap();
    let calls = Cell::new(0usize);
    let score = |x: &Tensor, t: &Tensor| -> sde_core::Result<Tensor> {
        calls.set(calls.get() + 1);
        inner.score(x, t)
    };
    let mut seen = 0;
    let mut prev_t = vec![sde.t_end(); 64];
    let a = AdaptiveSampler::default().rel_tol(0.02);
    let out = a
        .run(&sde, &score, &x, &tree(&sde, 6), |i, t, xi| {
            assert_eq!(i, seen);
            assert_eq!(xi.dims(), &[64, 2]);
            assert!(t.iter().zip(&prev_t).all(|(now, before)| now <= before));
            prev_t = t.to_vec();
            seen += 1;
        })
        .unwrap();
    assert!(prev_t.iter().all(|&t| t == 1e-3), "{prev_t:?}");
    assert_eq!(seen, out.iterations);
    assert_eq!(out.nfe, calls.get());
    assert_eq!(out.nfe, 2 * out.iterations + 1);
    let (lo, hi) = (
        out.accepted.iter().min().unwrap(),
        out.accepted.iter().max().unwrap(),
    );
    eprintln!("accepted steps per sample: {lo}..{hi}");
    assert!(lo < hi, "every sample took {lo} steps");
    let per = out.nfe_per_sample();
    assert!(per.iter().all(|&n| n <= out.nfe && n >= 3));
    assert_eq!(*per.iter().max().unwrap(), out.nfe);
}

#[test]
fn samples_do_not_depend_on_the_batch() {
    let sde = SubVpSde::default();
    let score = GaussianScore::isotropic(&sde, MU, S).unwrap();
    let a = AdaptiveSampler::default().rel_tol(0.02);
    let dev = Device::Cpu;
    let t = tree(&sde, 8);
    let big = a
        .sample(
            &sde,
            &score,
            (16, 3),
            &dev,
            DType::F32,
            &mut PerSampleNoise::new(9),
            &t,
        )
        .unwrap();
    let small = a
        .sample(
            &sde,
            &score,
            (4, 3),
            &dev,
            DType::F32,
            &mut PerSampleNoise::new(9),
            &t,
        )
        .unwrap();
    let mid = a
        .sample(
            &sde,
            &score,
            (4, 3),
            &dev,
            DType::F32,
            &mut PerSampleNoise::new(9).with_offset(8),
            &t.clone().with_offset(8),
        )
        .unwrap();
    let rows = |x: &Tensor, s: usize| x.narrow(0, s, 4).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(rows(&big.x, 0), rows(&small.x, 0));
    assert_eq!(rows(&big.x, 8), rows(&mid.x, 0));
    assert_eq!(big.accepted[..4], small.accepted[..]);
    assert_eq!(big.rejected[8..12], mid.rejected[..]);
    assert!(big.iterations >= small.iterations);
}

#[test]
fn rejected_steps_stay_on_the_same_brownian_path() {
    // A first step over the whole interval is rejected (several times) for every sample; the
    // retries query the tree inside intervals already drawn. Tight runs from the same prior draws
    // on the same tree then agree whatever the rejections, and differ on another tree.
    let sde = VpSde::default();
    let x = prior(&sde, 100, 1, 10);
    let (w, other) = (tree(&sde, 11), tree(&sde, 12));
    let big_first = run(&sde, &tol(1e-3).h_init(1.0).denoise(false), &x, &w);
    let small_first = run(&sde, &tol(1e-3).h_init(1e-4).denoise(false), &x, &w);
    let elsewhere = run(&sde, &tol(1e-3).h_init(1.0).denoise(false), &x, &other);
    assert!(
        big_first.rejected.iter().all(|&r| r >= 1),
        "{:?}",
        big_first.rejected
    );
    let total_rejected = |o: &AdaptiveOutput| o.rejected.iter().sum::<usize>();
    assert!(total_rejected(&big_first) > total_rejected(&small_first));
    let rms = |a: &Tensor, b: &Tensor| {
        let (a, b) = (to_host_f64(a).unwrap(), to_host_f64(b).unwrap());
        (a.iter()
            .zip(&b)
            .map(|(p, q)| (p - q) * (p - q))
            .sum::<f64>()
            / a.len() as f64)
            .sqrt()
    };
    let same = rms(&big_first.x, &small_first.x);
    let diff = rms(&big_first.x, &elsewhere.x);
    eprintln!("same path: rms {same:.2e}; other path: rms {diff:.2e}");
    assert!(same < 0.02 * S, "{same}");
    assert!(diff > 0.3 * S, "{diff}");
}

#[test]
fn bad_options_are_typed_errors() {
    let sde = VpSde::default();
    let t = tree(&sde, 0);
    let x = prior(&sde, 4, 2, 0);
    let score = GaussianScore::isotropic(&sde, MU, S).unwrap();
    let d = AdaptiveSampler::default();
    let cases: Vec<(&str, AdaptiveSampler)> = vec![
        ("abs_tol", d.abs_tol(0.0)),
        ("abs_tol", d.abs_tol(f64::NAN)),
        ("rel_tol", d.rel_tol(-0.1)),
        ("safety", d.safety(1.5)),
        ("safety", d.safety(0.0)),
        ("exp", d.exp(0.0)),
        ("h_init", d.h_init(-1.0)),
        ("sampling_eps", d.sampling_eps(0.0)),
        ("sampling_eps", d.sampling_eps(1.0)),
        ("max_steps", d.max_steps(0)),
    ];
    for (want, a) in cases {
        match a.run(&sde, &score, &x, &t, |_, _, _| {}) {
            Err(Error::InvalidParameter { name, .. }) => assert_eq!(name, want),
            other => panic!("{want}: {other:?}"),
        }
    }
    // a tree that does not span [ε, T]
    let short = BrownianTree::new(0, 0.01, 1.0).unwrap();
    assert!(matches!(
        d.run(&sde, &score, &x, &short, |_, _, _| {}),
        Err(Error::InvalidParameter { name: "tree", .. })
    ));
    // too few iterations
    assert!(matches!(
        d.max_steps(3).run(&sde, &score, &x, &t, |_, _, _| {}),
        Err(Error::MaxSteps { max_steps: 3, .. })
    ));
    // integer data
    let xi = Tensor::zeros((4, 2), DType::U32, &Device::Cpu).unwrap();
    assert!(matches!(
        d.run(&sde, &score, &xi, &t, |_, _, _| {}),
        Err(Error::Unsupported(_))
    ));
    // a score of the wrong shape names the iteration
    let wrong = |x: &Tensor, _t: &Tensor| -> sde_core::Result<Tensor> { Ok(x.narrow(1, 0, 1)?) };
    match d.run(&sde, &wrong, &x, &t, |_, _, _| {}) {
        Err(Error::ScoreOutput {
            step, got_shape, ..
        }) => {
            assert_eq!((step, got_shape), (0, vec![4, 1]))
        }
        other => panic!("{other:?}"),
    }
    // a score that turns NaN after the first iterations names the iteration
    let calls = Cell::new(0);
    let nan_later = |x: &Tensor, t: &Tensor| -> sde_core::Result<Tensor> {
        calls.set(calls.get() + 1);
        let s = score.score(x, t)?;
        Ok(if calls.get() > 6 { (s * f64::NAN)? } else { s })
    };
    match d.run(&sde, &nan_later, &x, &t, |_, _, _| {}) {
        Err(Error::NonFinite { step, .. }) => assert_eq!(step, 3),
        other => panic!("{other:?}"),
    }
}

fn quality<Q: Sde>(sde: &Q, label: &str, a: AdaptiveSampler) {
    let gmm = GaussianMixture::ring(8, 4.0, 0.3).unwrap();
    let rep = mixture_quality(sde, &a, &gmm, 600, 3).unwrap();
    eprintln!(
        "{label}: ED {:.4} (floor {:.4}), NFE {} (mean {:.1}), share err {:.3}",
        rep.energy_distance, rep.floor, rep.nfe, rep.nfe_mean, rep.max_share_error
    );
    assert!(
        rep.energy_distance < 3.0 * rep.floor.abs().max(0.01),
        "{label}: energy distance {:.4} vs floor {:.4}",
        rep.energy_distance,
        rep.floor
    );
    assert!(rep.max_share_error < 0.06, "{label}: {:?}", rep.mode_shares);
    assert!(rep.nfe_mean <= rep.nfe as f64);
}

#[test]
fn mixture_quality_on_every_sde() {
    let a = AdaptiveSampler::default().rel_tol(0.05);
    quality(
        &VeSde::new(0.01, 50.0, 1000).unwrap(),
        "VE",
        a.sampling_eps(1e-5),
    );
    quality(&VpSde::default(), "VP", a);
    quality(&SubVpSde::default(), "subVP", a);
    quality(&cosine(), "cosine", a);
}
