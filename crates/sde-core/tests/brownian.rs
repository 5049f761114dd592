//! The per-sample Brownian tree and its `NoiseSource` adapter: the law of the increments
//! (variance, covariance of overlapping intervals, independence of disjoint ones), additivity
//! over subdivisions in any query order, batch-size invariance, value stability and typed
//! errors.

use candle_core::{DType, Device, Shape, Tensor};
use sde_core::noise::{BrownianNoise, BrownianTree, NoiseSource};
use sde_core::Error;

const CPU: Device = Device::Cpu;

fn host(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn inc(tree: &BrownianTree, t0: f64, t1: f64, shape: impl Into<Shape>) -> Vec<f64> {
    host(
        &tree
            .increment(t0, t1, &shape.into(), &CPU, DType::F64)
            .unwrap(),
    )
}

fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (
        m,
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0),
    )
}

fn corr(a: &[f64], b: &[f64]) -> f64 {
    let (ma, va) = mean_var(a);
    let (mb, vb) = mean_var(b);
    let n = a.len() as f64;
    let c = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - ma) * (y - mb))
        .sum::<f64>()
        / (n - 1.0);
    c / (va * vb).sqrt()
}

const B: usize = 20_000;

/// Var[W(t1) − W(t0)] = |t1 − t0| and mean 0, within 5 standard errors (the relative SE of a
/// variance estimate from n draws is √(2/n) = 1 % here), for long, short, non-dyadic and
/// near-`tol` intervals, in either order.
#[test]
fn increment_variance_is_interval_length() {
    let tree = BrownianTree::new(11, 0.0, 1.0).unwrap();
    for (t0, t1) in [
        (0.0, 1.0),
        (0.3, 0.31),
        (0.123456, 0.7),
        (1.0, 0.9999),
        (1e-3, 1e-3 + 3e-6),
    ] {
        let v = inc(&tree, t0, t1, (B, 1));
        let (m, var) = mean_var(&v);
        let len = (t1 - t0).abs();
        let se_var = len * (2.0 / B as f64).sqrt();
        assert!(
            (var - len).abs() < 5.0 * se_var,
            "({t0}, {t1}): var {var} vs {len}"
        );
        assert!(
            m.abs() < 5.0 * (len / B as f64).sqrt(),
            "({t0}, {t1}): mean {m}"
        );
    }
}

/// Cov[W(a, c), W(b, d)] = c − b for a < b < c < d (the overlap), and disjoint increments,
/// different samples and different coordinates are uncorrelated (|ρ| < 4/√n).
#[test]
fn covariance_is_overlap_and_disjoint_increments_are_independent() {
    let tree = BrownianTree::new(5, 0.0, 1.0).unwrap();
    let (a, b, c, d) = (0.1, 0.37, 0.62, 0.9);
    let x = inc(&tree, a, c, (B, 1));
    let y = inc(&tree, b, d, (B, 1));
    let rho = corr(&x, &y);
    let want = (c - b) / ((c - a) * (d - b)).sqrt();
    assert!(
        (rho - want).abs() < 4.0 / (B as f64).sqrt(),
        "{rho} vs {want}"
    );

    let bound = 4.0 / (B as f64).sqrt();
    let left = inc(&tree, 0.1, 0.4, (B, 1));
    let right = inc(&tree, 0.4, 0.45, (B, 1));
    assert!(corr(&left, &right).abs() < bound);
    // samples k and k + 1
    assert!(corr(&left[..B - 1], &left[1..]).abs() < bound);
    // coordinates of one sample
    let two = inc(&tree, 0.2, 0.8, (B, 2));
    let (c0, c1): (Vec<f64>, Vec<f64>) = two.chunks(2).map(|p| (p[0], p[1])).unzip();
    assert!(corr(&c0, &c1).abs() < bound);
}

/// W(a, c) = W(a, b) + W(b, c) to f64 rounding, whichever is queried first, over many random
/// subdivisions of one interval, and the reversed interval is the negated increment.
#[test]
fn increments_add_over_subdivisions_in_any_order() {
    let tree = BrownianTree::new(2, 1e-3, 1.0).unwrap();
    let shape = (64, 3);
    let late = inc(&tree, 0.5, 0.75, shape);
    let whole = inc(&tree, 0.25, 0.75, shape);
    let early = inc(&tree, 0.25, 0.5, shape);
    for ((w, e), l) in whole.iter().zip(&early).zip(&late) {
        assert!((w - (e + l)).abs() < 1e-12);
    }
    // 100 random cut points (a fixed LCG), summed from the end backwards.
    let mut u = 12345u64;
    let mut cuts: Vec<f64> = (0..100)
        .map(|_| {
            u = u
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            1e-3 + (1.0 - 1e-3) * ((u >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect();
    cuts.push(1e-3);
    cuts.push(1.0);
    cuts.sort_by(f64::total_cmp);
    let mut sum = vec![0.0; 64 * 3];
    for w in cuts.windows(2).rev() {
        for (s, v) in sum.iter_mut().zip(inc(&tree, w[1], w[0], shape)) {
            *s += v;
        }
    }
    let total = inc(&tree, 1.0, 1e-3, shape);
    for (s, t) in sum.iter().zip(&total) {
        assert!((s - t).abs() < 1e-11, "{s} vs {t}");
    }
    let back = inc(&tree, 0.75, 0.25, shape);
    assert!(back.iter().zip(&whole).all(|(b, w)| *b == -w));
}

/// Sample k is the same in a batch of 7 (shared or per-sample intervals, or as a row subset)
/// and alone in a batch of 1 with offset k.
#[test]
fn sample_does_not_depend_on_batch() {
    let tree = BrownianTree::new(9, 0.0, 1.0).unwrap();
    let t0: Vec<f64> = (0..7).map(|k| 0.1 + 0.05 * k as f64).collect();
    let t1: Vec<f64> = (0..7).map(|k| 0.9 - 0.07 * k as f64).collect();
    let shared = inc(&tree, 0.2, 0.6, (7, 3));
    let each = host(
        &tree
            .increment_each(&t0, &t1, &Shape::from((7, 3)), &CPU, DType::F64)
            .unwrap(),
    );
    let rows = host(
        &tree
            .increment_rows(
                &[5, 2],
                &[t0[5], t0[2]],
                &[t1[5], t1[2]],
                &Shape::from((2, 3)),
                &CPU,
                DType::F64,
            )
            .unwrap(),
    );
    assert_eq!(&rows[..3], &each[15..18]);
    assert_eq!(&rows[3..], &each[6..9]);
    for k in 0..7 {
        let alone = tree.clone().with_offset(k as u64);
        assert_eq!(inc(&alone, 0.2, 0.6, (1, 3)), &shared[3 * k..3 * k + 3]);
        let one = host(
            &alone
                .increment_each(&[t0[k]], &[t1[k]], &Shape::from((1, 3)), &CPU, DType::F64)
                .unwrap(),
        );
        assert_eq!(one, &each[3 * k..3 * k + 3]);
    }
}

/// The same seed gives bit-identical increments (also from a fresh tree), another seed other
/// ones, a float32 request is the f64 path rounded, and the first values per seed are pinned
/// (the path is part of the reproducibility contract: changing the generator changes them).
#[test]
fn reproducible_and_value_stable() {
    let a = BrownianTree::new(0, 0.0, 1.0).unwrap();
    let b = BrownianTree::new(0, 0.0, 1.0).unwrap();
    let c = BrownianTree::new(1, 0.0, 1.0).unwrap();
    let shape = Shape::from((3, 2));
    assert_eq!(inc(&a, 0.3, 0.7, (3, 2)), inc(&b, 0.3, 0.7, (3, 2)));
    assert_ne!(inc(&a, 0.3, 0.7, (3, 2)), inc(&c, 0.3, 0.7, (3, 2)));
    // (seed, sample) keys do not collide with (seed + 1, sample − 1)
    let a1 = inc(&a.clone().with_offset(1), 0.3, 0.7, (1, 2));
    let c0 = inc(&c, 0.3, 0.7, (1, 2));
    assert_ne!(a1, c0);
    let f32s = a.increment(0.3, 0.7, &shape, &CPU, DType::F32).unwrap();
    let want: Vec<f32> = inc(&a, 0.3, 0.7, (3, 2))
        .iter()
        .map(|&v| v as f32)
        .collect();
    assert_eq!(f32s.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);

    // Printed by this test's first run (`cargo test -p sde-core --test brownian -- --nocapture`).
    let pinned: [(u64, [f64; 4]); 2] = [
        (
            0,
            [
                -0.34192177623829423,
                0.7072115139602896,
                -0.06073873016126374,
                -0.7043461437926898,
            ],
        ),
        (
            1,
            [
                1.1604473783122606,
                -0.173647840146874,
                0.6191175141509324,
                -0.41358765308116524,
            ],
        ),
    ];
    let got: Vec<Vec<f64>> = pinned
        .iter()
        .map(|(seed, _)| {
            inc(
                &BrownianTree::new(*seed, 0.0, 1.0).unwrap(),
                0.25,
                0.625,
                (2, 2),
            )
        })
        .collect();
    eprintln!("{got:?}");
    for ((seed, want), got) in pinned.into_iter().zip(got) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-14, "seed {seed}: {got:?}");
        }
    }
}

#[test]
fn bad_queries_give_typed_errors() {
    let tree = BrownianTree::new(0, 0.0, 1.0).unwrap();
    let shape = Shape::from((2, 2));
    let time_err = |r: sde_core::Result<Tensor>, which: &str| match r {
        Err(Error::BrownianTime { which: w, .. }) => assert_eq!(w, which),
        other => panic!("expected BrownianTime({which}), got {other:?}"),
    };
    time_err(
        tree.increment(f64::NAN, 0.5, &shape, &CPU, DType::F32),
        "t0",
    );
    time_err(tree.increment(0.5, 1.5, &shape, &CPU, DType::F32), "t1");
    time_err(tree.increment(-0.1, 0.5, &shape, &CPU, DType::F32), "t0");
    time_err(
        tree.increment_each(&[0.1, 0.2], &[0.3, f64::INFINITY], &shape, &CPU, DType::F32),
        "t1",
    );
    // t0 == t1: zeros
    let z = tree.increment(0.4, 0.4, &shape, &CPU, DType::F32).unwrap();
    assert_eq!(host(&z), vec![0.0; 4]);
    let shape_err = |r: sde_core::Result<Tensor>| {
        assert!(
            matches!(r, Err(Error::ShapeMismatch { .. })),
            "expected ShapeMismatch, got {r:?}"
        )
    };
    shape_err(tree.increment_each(&[0.1], &[0.3, 0.4], &shape, &CPU, DType::F32));
    shape_err(tree.increment_rows(&[0], &[0.1, 0.1], &[0.3, 0.4], &shape, &CPU, DType::F32));
    shape_err(tree.increment(0.1, 0.2, &Shape::from((0, 2)), &CPU, DType::F32));
    shape_err(tree.increment(0.1, 0.2, &Shape::from(()), &CPU, DType::F32));
    assert!(matches!(
        tree.increment(0.1, 0.2, &shape, &CPU, DType::U32),
        Err(Error::Unsupported(_))
    ));
    let param = |r: sde_core::Result<BrownianTree>, name: &str| match r {
        Err(Error::InvalidParameter { name: n, .. }) => assert_eq!(n, name),
        other => panic!("expected InvalidParameter({name}), got {other:?}"),
    };
    param(BrownianTree::new(0, 1.0, 1.0), "t_max");
    param(BrownianTree::new(0, 0.0, f64::NAN), "t_max");
    param(BrownianTree::new(0, f64::NEG_INFINITY, 1.0), "t_max");
    param(tree.clone().with_tol(0.0), "tol");
    param(tree.clone().with_tol(f64::NAN), "tol");
    param(tree.clone().with_tol(1e-300), "tol");
    assert_eq!(tree.clone().with_tol(0.5).unwrap().depth(), 1);
    assert_eq!(tree.depth(), 20);
}

/// The adapter's draws are the normalised increments (standard normals), split into equal
/// sub-intervals when several draws share a step, and its misuse is an error.
#[test]
fn noise_source_gives_normalised_increments() {
    let tree = BrownianTree::new(4, 0.0, 1.0).unwrap();
    let mut noise = BrownianNoise::new(tree.clone());
    let shape = Shape::from((B, 1));
    assert!(matches!(
        noise.randn(&shape, &CPU, DType::F32),
        Err(Error::Unsupported(_))
    ));
    noise.set_interval(0.8, 0.79).unwrap();
    let z = host(&noise.randn(&shape, &CPU, DType::F64).unwrap());
    let (m, v) = mean_var(&z);
    assert!(m.abs() < 5.0 / (B as f64).sqrt() && (v - 1.0).abs() < 5.0 * (2.0 / B as f64).sqrt());
    let dw = inc(&tree, 0.8, 0.79, (B, 1));
    assert!(z.iter().zip(&dw).all(|(z, w)| (z * 0.1 - w).abs() < 1e-12));
    assert!(matches!(
        noise.randn(&shape, &CPU, DType::F64),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        noise.rand_uniform(&shape, &CPU, DType::F64),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        noise.set_interval(0.5, 0.5),
        Err(Error::InvalidParameter { name: "t_next", .. })
    ));
    assert!(matches!(
        noise.set_interval(0.5, 1.5),
        Err(Error::BrownianTime {
            which: "t_next",
            ..
        })
    ));
    assert!(matches!(
        BrownianNoise::new(tree.clone()).with_draws_per_interval(0),
        Err(Error::InvalidParameter { .. })
    ));

    // Two draws per step: √(Δ/2)(z₁ + z₂) = ΔW, and z₁, z₂ are uncorrelated.
    let mut two = BrownianNoise::new(tree.clone())
        .with_draws_per_interval(2)
        .unwrap();
    two.set_interval(0.5, 0.3).unwrap();
    let z1 = host(&two.randn(&shape, &CPU, DType::F64).unwrap());
    let z2 = host(&two.randn(&shape, &CPU, DType::F64).unwrap());
    let dw = inc(&tree, 0.5, 0.3, (B, 1));
    let s = 0.1f64.sqrt();
    assert!(z1
        .iter()
        .zip(&z2)
        .zip(&dw)
        .all(|((a, b), w)| (s * (a + b) - w).abs() < 1e-12));
    assert!(corr(&z1, &z2).abs() < 4.0 / (B as f64).sqrt());
}
