//! Metrics against closed forms and against pytorch-fid / torch-fidelity's values in
//! `testvectors/fid/fid.safetensors`.

use std::collections::HashMap;

use approx::assert_relative_eq;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use sde_eval::linalg::{symmetric_eigen, trace_sqrt_product};
use sde_eval::{
    frechet_distance, inception_score, kid, polynomial_mmd2, precision_recall, Error, FeatureStats,
    GaussianStats, InceptionScoreAccumulator, KidOptions,
};

const FID: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testvectors/fid/fid.safetensors"
);

fn vectors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(FID, &Device::Cpu).unwrap()
}

fn scalar(v: &HashMap<String, Tensor>, k: &str) -> f64 {
    v[k].to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()[0]
}

fn randn(rng: &mut impl Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// A random orthogonal matrix (row-major), by Gram–Schmidt of a Gaussian matrix.
fn orthogonal(rng: &mut impl Rng, n: usize) -> Vec<f64> {
    let mut q = randn(rng, n * n);
    for i in 0..n {
        for j in 0..i {
            let dot: f64 = (0..n).map(|k| q[i * n + k] * q[j * n + k]).sum();
            for k in 0..n {
                q[i * n + k] -= dot * q[j * n + k];
            }
        }
        let nrm = (0..n).map(|k| q[i * n + k].powi(2)).sum::<f64>().sqrt();
        (0..n).for_each(|k| q[i * n + k] /= nrm);
    }
    q
}

/// Qᵀ diag(λ) Q for the rows of an orthogonal Q: a symmetric matrix with spectrum λ.
fn with_spectrum(q: &[f64], lambda: &[f64]) -> Vec<f64> {
    let n = lambda.len();
    let mut a = vec![0.0; n * n];
    for (k, l) in lambda.iter().enumerate() {
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] += l * q[k * n + i] * q[k * n + j];
            }
        }
    }
    a
}

#[test]
fn eigen_known_spectra_and_residuals() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for &n in &[1usize, 2, 3, 10, 57] {
        let q = orthogonal(&mut rng, n);
        // Distinct, repeated and zero eigenvalues.
        let lambda: Vec<f64> = (0..n)
            .map(|i| {
                if i % 4 == 0 {
                    0.0
                } else {
                    (i / 2) as f64 - 3.0
                }
            })
            .collect();
        let a = with_spectrum(&q, &lambda);
        let e = symmetric_eigen(&a, n).unwrap();
        // The values-only path runs the same arithmetic on d and e: bit-identical values.
        let values = sde_eval::linalg::symmetric_eigenvalues(&a, n).unwrap();
        assert!(
            values
                .iter()
                .zip(&e.values)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "n = {n}: {values:?} vs {:?}",
            e.values
        );
        let mut want = lambda.clone();
        want.sort_by(f64::total_cmp);
        for (g, w) in e.values.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12 * n as f64, "n = {n}: {g} vs {w}");
        }
        // A v = λ v and VᵀV = I.
        for j in 0..n {
            let v = e.vector(j);
            for i in 0..n {
                let av: f64 = (0..n).map(|k| a[i * n + k] * v[k]).sum();
                assert!((av - e.values[j] * v[i]).abs() < 1e-12 * n as f64);
            }
            for k in 0..n {
                let dot: f64 = (0..n).map(|i| v[i] * e.vector(k)[i]).sum();
                let want = if j == k { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-12 * n as f64);
            }
        }
    }
    // A diagonal matrix (nothing to reduce) and the 2×2 closed form.
    let e = symmetric_eigen(&[3.0, 0.0, 0.0, -1.0], 2).unwrap();
    assert_eq!(e.values, vec![-1.0, 3.0]);
    let (a, b, c) = (2.0f64, 0.7, -0.5);
    let e = symmetric_eigen(&[a, b, b, c], 2).unwrap();
    let (m, r) = ((a + c) / 2.0, (((a - c) / 2.0).powi(2) + b * b).sqrt());
    assert_relative_eq!(e.values[0], m - r, max_relative = 1e-14);
    assert_relative_eq!(e.values[1], m + r, max_relative = 1e-14);
    // Bad input is an error.
    assert!(matches!(
        symmetric_eigen(&[1.0, 2.0], 2),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        symmetric_eigen(&[f64::NAN], 1),
        Err(Error::NonFinite { .. })
    ));
}

#[test]
fn trace_sqrt_product_closed_forms() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let n = 12;
    let q = orthogonal(&mut rng, n);
    // Commuting: Σ₁ = Qᵀ diag(a) Q, Σ₂ = Qᵀ diag(b) Q: tr √(Σ₁Σ₂) = Σ √(aᵢ bᵢ).
    let a: Vec<f64> = (0..n).map(|_| rng.random_range(0.1..3.0)).collect();
    let b: Vec<f64> = (0..n).map(|_| rng.random_range(0.1..3.0)).collect();
    let want: f64 = a.iter().zip(&b).map(|(x, y)| (x * y).sqrt()).sum();
    let got = trace_sqrt_product(&with_spectrum(&q, &a), &with_spectrum(&q, &b), n).unwrap();
    assert_relative_eq!(got, want, max_relative = 1e-12);
    // Σ₁ = c I with a non-commuting Σ₂ = Pᵀ diag(b) P: tr √(c Σ₂) = √c Σ √bᵢ.
    let p = orthogonal(&mut rng, n);
    let c = 2.5;
    let eye: Vec<f64> = (0..n * n)
        .map(|i| if i % (n + 1) == 0 { c } else { 0.0 })
        .collect();
    let want: f64 = b.iter().map(|x| (c * x).sqrt()).sum();
    let s2 = with_spectrum(&p, &b);
    assert_relative_eq!(
        trace_sqrt_product(&eye, &s2, n).unwrap(),
        want,
        max_relative = 1e-12
    );
    assert_relative_eq!(
        trace_sqrt_product(&s2, &eye, n).unwrap(),
        want,
        max_relative = 1e-12
    );
    // Singular Σ₁ (rank deficient) stays finite and exact: Σ₁ = diag(1, 0), Σ₂ = [[4, 1], [1, 9]]:
    // Σ₁Σ₂ = [[4, 1], [0, 0]], eigenvalues 4 and 0, so the trace is 2.
    let t = trace_sqrt_product(&[1.0, 0.0, 0.0, 0.0], &[4.0, 1.0, 1.0, 9.0], 2).unwrap();
    assert_relative_eq!(t, 2.0, max_relative = 1e-12);
}

#[test]
fn frechet_distance_between_known_gaussians() {
    // d = 3, N(μ₁, Σ₁) and N(μ₂, Σ₂) with Σ₂ = R Σ₁ Rᵀ-like non-commuting matrices; the
    // 1-D closed form per axis when both are diagonal: Σ (μ₁−μ₂)² + (σ₁ − σ₂)².
    let a = GaussianStats::new(
        vec![0.0, 1.0, -2.0],
        vec![1.0, 0., 0., 0., 4.0, 0., 0., 0., 0.25],
        None,
    )
    .unwrap();
    let b = GaussianStats::new(
        vec![1.0, 1.0, 0.0],
        vec![9.0, 0., 0., 0., 1.0, 0., 0., 0., 0.25],
        None,
    )
    .unwrap();
    let want = 1.0 + 4.0 + (1.0f64 - 3.0).powi(2) + (2.0f64 - 1.0).powi(2);
    assert_relative_eq!(
        frechet_distance(&a, &b).unwrap(),
        want,
        max_relative = 1e-12
    );
    // Symmetric, zero on itself, invariant under a common rotation.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let n = 8;
    let q = orthogonal(&mut rng, n);
    let p = orthogonal(&mut rng, n);
    let s1 = with_spectrum(&q, &(0..n).map(|i| 0.5 + i as f64).collect::<Vec<_>>());
    let s2 = with_spectrum(
        &p,
        &(0..n).map(|i| 2.0 + (i as f64).sin()).collect::<Vec<_>>(),
    );
    let g1 = GaussianStats::new(randn(&mut rng, n), s1, None).unwrap();
    let g2 = GaussianStats::new(randn(&mut rng, n), s2, None).unwrap();
    let d12 = frechet_distance(&g1, &g2).unwrap();
    assert_relative_eq!(
        d12,
        frechet_distance(&g2, &g1).unwrap(),
        max_relative = 1e-12
    );
    assert!(frechet_distance(&g1, &g1).unwrap().abs() < 1e-10);
    assert!(d12 > 0.0);
    let other = GaussianStats::new(vec![0.0; 2], vec![1.0, 0.0, 0.0, 1.0], None).unwrap();
    assert!(matches!(
        frechet_distance(&g1, &other),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn frechet_distance_matches_pytorch_fid() {
    // pytorch_fid.fid_score.calculate_frechet_distance(mu_a, sigma_a, mu_b, sigma_b) with
    // mu = np.mean(f.astype(np.float64), 0), sigma = np.cov(f, rowvar=False).
    let v = vectors();
    for d in [16, 64, 256] {
        let a = GaussianStats::from_features(&v[&format!("frechet.d{d}.feats_a")]).unwrap();
        let b = GaussianStats::from_features(&v[&format!("frechet.d{d}.feats_b")]).unwrap();
        let want = scalar(&v, &format!("frechet.d{d}.fid"));
        let got = frechet_distance(&a, &b).unwrap();
        assert_relative_eq!(got, want, max_relative = 1e-6);
    }
}

#[test]
fn streaming_statistics_merge_exactly() {
    let v = vectors();
    let x = &v["frechet.d64.feats_a"];
    let whole = GaussianStats::from_features(x).unwrap();
    // Uneven batches, and shards merged afterwards in another grouping.
    let mut s = FeatureStats::new(64);
    let mut shards = [FeatureStats::new(64), FeatureStats::new(64)];
    let mut first = 0;
    for (k, b) in [1usize, 7, 0, 128, 64, 300].into_iter().enumerate() {
        let batch = x.narrow(0, first, b).unwrap();
        s.update(&batch).unwrap();
        shards[k % 2].update(&batch).unwrap();
        first += b;
    }
    assert_eq!(first, 500);
    let streamed = GaussianStats::from_feature_stats(&s).unwrap();
    let mut merged = shards[1].clone();
    merged.merge(&shards[0]).unwrap();
    let merged = GaussianStats::from_feature_stats(&merged).unwrap();
    for g in [&streamed, &merged] {
        assert_eq!(g.n, Some(500));
        assert_relative_eq!(
            g.mu.as_slice(),
            whole.mu.as_slice(),
            max_relative = 1e-12,
            epsilon = 1e-14
        );
        assert_relative_eq!(
            g.sigma.as_slice(),
            whole.sigma.as_slice(),
            max_relative = 1e-10,
            epsilon = 1e-13
        );
    }
    // Against a plain two-pass covariance.
    let xv = x.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    let mu: Vec<f64> = (0..64)
        .map(|j| xv.iter().map(|r| r[j]).sum::<f64>() / 500.0)
        .collect();
    for (i, j) in [(0, 0), (3, 17), (63, 5)] {
        let c: f64 = xv
            .iter()
            .map(|r| (r[i] - mu[i]) * (r[j] - mu[j]))
            .sum::<f64>()
            / 499.0;
        assert_relative_eq!(streamed.sigma[i * 64 + j], c, max_relative = 1e-10);
    }
    // Errors, and `self` unchanged after one.
    let before = s.clone();
    let bad = Tensor::new(&[[f32::NAN; 64]], &Device::Cpu).unwrap();
    assert!(matches!(s.update(&bad), Err(Error::NonFinite { .. })));
    assert!(matches!(
        s.update(&Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap()),
        Err(Error::ShapeMismatch { .. })
    ));
    assert_eq!(s, before);
    assert!(matches!(
        FeatureStats::new(3).covariance(),
        Err(Error::NotEnoughSamples { .. })
    ));
}

#[test]
fn kid_matches_torch_fidelity() {
    // torch_fidelity.metric_kid.mmd2 / polynomial_mmd (degree 3, gamma = 1/d, coef0 = 1,
    // unbiased) over the whole sets, in float64.
    let v = vectors();
    let (a, b) = (&v["kid.pool3.feats_a"], &v["kid.pool3.feats_b"]);
    let got = polynomial_mmd2(a, b, 3, None, 1.0).unwrap();
    assert_relative_eq!(got, scalar(&v, "kid.pool3"), max_relative = 1e-6);
    let (a16, b16) = (&v["frechet.d16.feats_a"], &v["frechet.d16.feats_b"]);
    let got16 = polynomial_mmd2(a16, b16, 3, None, 1.0).unwrap();
    assert_relative_eq!(got16, scalar(&v, "kid.d16"), max_relative = 1e-6);
    // One subset of the whole set is a permutation of it: the same value, std 0.
    let opts = KidOptions {
        subsets: 3,
        subset_size: 64,
        ..Default::default()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let k = kid(a, b, &opts, &mut rng).unwrap();
    assert_relative_eq!(k.mean, got, max_relative = 1e-9);
    assert!(k.std < 1e-9 * got.abs());
    // Bad options.
    let too_big = KidOptions {
        subset_size: 65,
        ..Default::default()
    };
    assert!(matches!(
        kid(a, b, &too_big, &mut rng),
        Err(Error::InvalidParameter {
            name: "subset_size",
            ..
        })
    ));
    let none = KidOptions {
        subsets: 0,
        subset_size: 10,
        ..Default::default()
    };
    assert!(matches!(
        kid(a, b, &none, &mut rng),
        Err(Error::InvalidParameter {
            name: "subsets",
            ..
        })
    ));
}

#[test]
fn kid_of_one_distribution_is_zero_in_expectation() {
    // The unbiased MMD² has expectation 0 when both sets come from the same distribution; a
    // shift of the mean makes it clearly positive.
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (n, d) = (400, 8);
    let draw = |rng: &mut rand::rngs::StdRng, shift: f32| {
        let v: Vec<f32> = (0..n * d)
            .map(|_| StandardNormal.sample(rng))
            .map(|x: f32| x + shift)
            .collect();
        Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap()
    };
    let (x, y, z) = (
        draw(&mut rng, 0.0),
        draw(&mut rng, 0.0),
        draw(&mut rng, 0.5),
    );
    let opts = KidOptions {
        subsets: 50,
        subset_size: 100,
        ..Default::default()
    };
    let same = kid(&x, &y, &opts, &mut rng).unwrap();
    let shifted = kid(&x, &z, &opts, &mut rng).unwrap();
    // Subsets overlap, so the subset mean's standard error is at most std / √... ≤ std.
    assert!(same.mean.abs() < same.std, "{same:?}");
    assert!(
        shifted.mean > 3.0 * shifted.std && shifted.mean > 10.0 * same.std,
        "{shifted:?} vs {same:?}"
    );
}

#[test]
fn inception_score_matches_reference() {
    // exp(mean_x KL(p(y|x) ‖ p(y))), p = softmax(is.logits) in float64, one split.
    let v = vectors();
    let l = &v["is.logits"];
    let is = inception_score(l, 1).unwrap();
    assert_relative_eq!(is.mean, scalar(&v, "is.score"), max_relative = 1e-6);
    assert_eq!(is.std, 0.0);
    // Streaming in uneven, out-of-order batches gives the same splits.
    let whole = inception_score(l, 4).unwrap();
    let mut acc = InceptionScoreAccumulator::new(100, 4, 1008).unwrap();
    for (first, len) in [(60u64, 40usize), (0, 13), (13, 47)] {
        acc.update(first, &l.narrow(0, first as usize, len).unwrap())
            .unwrap();
    }
    let s = acc.finish().unwrap();
    assert_relative_eq!(s.mean, whole.mean, max_relative = 1e-12);
    assert_relative_eq!(s.std, whole.std, max_relative = 1e-9);
    // Missing samples and bad splits are errors.
    let mut part = InceptionScoreAccumulator::new(100, 4, 1008).unwrap();
    part.update(0, &l.narrow(0, 0, 50).unwrap()).unwrap();
    assert!(matches!(part.finish(), Err(Error::NotEnoughSamples { .. })));
    assert!(matches!(
        inception_score(l, 0),
        Err(Error::InvalidParameter { name: "splits", .. })
    ));
    assert!(matches!(
        inception_score(l, 101),
        Err(Error::InvalidParameter { name: "splits", .. })
    ));
    // Uniform predictions score 1.
    let u = Tensor::zeros((10, 5), DType::F32, &Device::Cpu).unwrap();
    assert_relative_eq!(
        inception_score(&u, 2).unwrap().mean,
        1.0,
        max_relative = 1e-12
    );
}

#[test]
fn precision_recall_limits() {
    let v = vectors();
    let a = &v["frechet.d16.feats_a"];
    let pr = precision_recall(a, a, 3).unwrap();
    assert_eq!((pr.precision, pr.recall), (1.0, 1.0));
    let far = (a + 1e3).unwrap();
    let pr = precision_recall(a, &far, 3).unwrap();
    assert_eq!((pr.precision, pr.recall), (0.0, 0.0));
    // A fake set that is half of the real one: precision 1, recall at least ½.
    let half = a.narrow(0, 0, 100).unwrap();
    let pr = precision_recall(a, &half, 3).unwrap();
    assert_eq!(pr.precision, 1.0);
    assert!(pr.recall >= 0.5, "{pr:?}");
    assert!(matches!(
        precision_recall(a, a, 0),
        Err(Error::InvalidParameter { name: "k", .. })
    ));
    assert!(matches!(
        precision_recall(a, &half, 100),
        Err(Error::InvalidParameter { name: "k", .. })
    ));
}
