//! The fast host paths against the plain ones: `BlockNoise` against the standard normal and
//! uniform laws (and thread-count independence), and `FastMixtureScore` (float32 kernel)
//! against the f64 truth `GaussianMixtureScore`.

use candle_core::{DType, Device, Shape, Tensor};
use rand::SeedableRng;
use sde_core::analytic::{FastMixtureScore, GaussianMixture, GaussianMixtureScore};
use sde_core::noise::{BlockNoise, NoiseSource};
use sde_core::{time_tensor, ScoreFn, Sde, SubVpSde, VeSde, VpSde};

mod common;
use common::host;

/// Kolmogorov–Smirnov distance between the sample `v` and the CDF `cdf`.
fn ks(mut v: Vec<f64>, cdf: impl Fn(f64) -> f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len() as f64;
    v.iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = cdf(x);
            (f - i as f64 / n).abs().max((f - (i + 1) as f64 / n).abs())
        })
        .fold(0.0, f64::max)
}

/// Φ(x) through erfc's continued-fraction-free approximation (Abramowitz & Stegun 7.1.26,
/// absolute error below 1.5e-7: far below the KS threshold used here).
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erfc = poly * (-z * z).exp();
    if x >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    }
}

#[test]
fn block_noise_follows_the_standard_normal_and_uniform_laws() {
    let n = 200_000;
    let mut src = BlockNoise::new(11);
    let z = host(
        &src.randn(&Shape::from(n), &Device::Cpu, DType::F32)
            .unwrap(),
    );
    // KS 1% critical value: 1.63 / √n ≈ 0.0036
    let d = ks(z.clone(), normal_cdf);
    assert!(d < 1.63 / (n as f64).sqrt(), "normal KS distance {d}");
    let mean = z.iter().sum::<f64>() / n as f64;
    let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
    assert!(mean.abs() < 4.0 / (n as f64).sqrt(), "mean {mean}");
    assert!(
        (var - 1.0).abs() < 4.0 * (2.0 / n as f64).sqrt(),
        "var {var}"
    );
    let u = host(
        &src.rand_uniform(&Shape::from(n), &Device::Cpu, DType::F64)
            .unwrap(),
    );
    assert!(u.iter().all(|&v| (0.0..1.0).contains(&v)));
    let d = ks(u, |x| x.clamp(0.0, 1.0));
    assert!(d < 1.63 / (n as f64).sqrt(), "uniform KS distance {d}");
    assert_eq!(src.draws(), 2);
}

#[test]
fn block_noise_float32_normals_have_normal_moments_tails_and_no_pair_structure() {
    let n = 400_000;
    let z = host(
        &BlockNoise::new(12)
            .randn(&Shape::from(n), &Device::Cpu, DType::F32)
            .unwrap(),
    );
    let nf = n as f64;
    let moment = |k: i32| z.iter().map(|v| v.powi(k)).sum::<f64>() / nf;
    // E z³ = 0 (sd √(15/n)), E z⁴ = 3 (sd √(96/n)): 4 sd bounds
    assert!(
        moment(3).abs() < 4.0 * (15.0 / nf).sqrt(),
        "skew {}",
        moment(3)
    );
    assert!(
        (moment(4) - 3.0).abs() < 4.0 * (96.0 / nf).sqrt(),
        "kurtosis {}",
        moment(4)
    );
    // P(|z| > 3) = 0.0026998 and P(|z| > 4) = 6.334e-5, within 4 sd of the binomial count
    for (c, p) in [(3.0, 0.0026998), (4.0, 6.334e-5)] {
        let got = z.iter().filter(|v| v.abs() > c).count() as f64 / nf;
        assert!(
            (got - p).abs() < 4.0 * (p * (1.0 - p) / nf).sqrt(),
            "P(|z| > {c}) = {got}, want {p}"
        );
    }
    // neighbours at the offsets the kernel pairs and lanes values (1, 8, 16) are uncorrelated
    for lag in [1, 8, 16] {
        let c = z.iter().zip(&z[lag..]).map(|(a, b)| a * b).sum::<f64>() / nf;
        assert!(c.abs() < 4.0 / nf.sqrt(), "lag-{lag} correlation {c}");
    }
    // Box–Muller pairs (z[i], z[i + 8]) within a chunk of 16: r² ~ χ²₂, whose CDF is 1 − e^(−x/2)
    let r2: Vec<f64> = z
        .chunks_exact(16)
        .flat_map(|c| (0..8).map(move |l| c[l] * c[l] + c[l + 8] * c[l + 8]))
        .collect();
    let m = r2.len() as f64;
    let d = ks(r2, |x| 1.0 - (-x.max(0.0) / 2.0).exp());
    assert!(d < 1.63 / m.sqrt(), "pair radius KS distance {d}");
    // float64 normals (ziggurat) follow the law too
    let z64 = host(
        &BlockNoise::new(13)
            .randn(&Shape::from(200_000), &Device::Cpu, DType::F64)
            .unwrap(),
    );
    let d = ks(z64, normal_cdf);
    assert!(d < 1.63 / (200_000f64).sqrt(), "f64 normal KS distance {d}");
}

#[test]
fn block_noise_depends_on_the_seed_and_draw_only() {
    // 270 003 values: 66 blocks, the last one partial; large enough to be split over threads
    let shape = Shape::from((90_001, 3));
    let draw = |threads: usize, seed: u64| {
        let mut s = BlockNoise::new(seed).with_threads(threads);
        let a = host(&s.randn(&shape, &Device::Cpu, DType::F32).unwrap());
        let b = host(&s.randn(&shape, &Device::Cpu, DType::F32).unwrap());
        (a, b)
    };
    let (a1, b1) = draw(1, 5);
    for threads in [2, 3, 8] {
        let (a, b) = draw(threads, 5);
        assert!(a == a1 && b == b1, "{threads} threads changed the values");
    }
    // successive draws and other seeds differ; blocks are not copies of each other
    assert_ne!(a1, b1);
    assert_ne!(a1, draw(1, 6).0);
    let blk = BlockNoise::BLOCK;
    assert_ne!(a1[..100], a1[blk..blk + 100]);
}

#[test]
fn block_noise_seeds_samplers_like_any_source() {
    // f64 draws are drawn as f64 (not widened f32 values)
    let z = host(
        &BlockNoise::new(1)
            .randn(&Shape::from(1000), &Device::Cpu, DType::F64)
            .unwrap(),
    );
    assert!(z.iter().any(|v| (*v as f32) as f64 != *v));
    let r = host(
        &BlockNoise::new(1)
            .rademacher(&Shape::from(1000), &Device::Cpu, DType::F32)
            .unwrap(),
    );
    assert!(r.iter().all(|v| *v == 1.0 || *v == -1.0));
    assert!(BlockNoise::new(1)
        .randn(&Shape::from(4), &Device::Cpu, DType::U8)
        .is_err());
}

fn check_f32_path(sde: impl Sde + Clone, name: &str) {
    let gmm = GaussianMixture::new(
        vec![0.5, 0.3, 0.2],
        vec![vec![1.0, -1.0], vec![-2.0, 0.5], vec![0.0, 3.0]],
        vec![vec![0.3, 0.6], vec![0.5], vec![1.0, 0.2]],
    )
    .unwrap();
    let oracle = FastMixtureScore::new(sde.clone(), gmm.clone());
    let truth = GaussianMixtureScore::new(sde.clone(), gmm.clone());
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    // 40 003 points, with a partial last block
    let b = 40_003;
    let shape = Shape::from((b, 2));
    for t in [1e-5, 1e-3, 0.1, 0.5, 1.0] {
        // points of p_t itself, x = a x₀ + σ z, where a sampler evaluates the score
        let t32 = time_tensor(t, b, &Device::Cpu, DType::F32).unwrap();
        let (a, s) = sde
            .marginal_coeffs(&t32.to_dtype(DType::F64).unwrap())
            .unwrap();
        let x0 = gmm
            .sample(&shape, &Device::Cpu, DType::F64, &mut rng)
            .unwrap();
        let z = rng.randn(&shape, &Device::Cpu, DType::F64).unwrap();
        let x = (sde_core::mul_batch(&a, &x0).unwrap() + sde_core::mul_batch(&s, &z).unwrap())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        // the f64 truth on the same (f32-representable) points and times
        let exact = host(
            &truth
                .score(
                    &x.to_dtype(DType::F64).unwrap(),
                    &t32.to_dtype(DType::F64).unwrap(),
                )
                .unwrap(),
        );
        let fast = oracle.score(&x, &t32).unwrap();
        assert_eq!(fast.dtype(), DType::F32);
        let fast = host(&fast);
        // the truth takes float32 input too: computed in f64, rounded once
        let exact32 = host(&truth.score(&x, &t32).unwrap());
        assert!(exact32
            .iter()
            .zip(&exact)
            .all(|(a, e)| (*a as f32) == (*e as f32)));
        let scale = exact.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let mut worst = 0.0f64;
        for (e, f) in exact.iter().zip(&fast) {
            worst = worst.max((e - f).abs() / (e.abs() + 1e-3 * scale));
        }
        // float32 arithmetic: a few ulps, amplified where two components share a point
        assert!(worst < 1e-4, "{name} t={t}: worst relative error {worst}");
        // the vjp (the likelihood's divergence) on the same path, against the f64 closed form
        let v = rng.rademacher(&shape, &Device::Cpu, DType::F32).unwrap();
        let (s32, j32) = oracle.score_with_vjp(&x, &t32, &v).unwrap();
        let (_, j64) = truth
            .score_with_vjp(
                &x.to_dtype(DType::F64).unwrap(),
                &t32.to_dtype(DType::F64).unwrap(),
                &v.to_dtype(DType::F64).unwrap(),
            )
            .unwrap();
        assert_eq!(host(&s32), fast, "score_with_vjp's score is the score");
        let (j32, j64) = (host(&j32), host(&j64));
        let jscale = j64.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let mut worst = 0.0f64;
        for (e, f) in j64.iter().zip(&j32) {
            worst = worst.max((e - f).abs() / (e.abs() + 1e-3 * jscale));
        }
        assert!(
            worst < 1e-3,
            "{name} t={t}: vjp worst relative error {worst}"
        );
    }
    // mixed times: constants per run of equal times
    let x = rng.randn(&shape, &Device::Cpu, DType::F32).unwrap();
    let tv: Vec<f32> = (0..b)
        .map(|i| 0.01 + 0.9 * (i % 97) as f32 / 97.0)
        .collect();
    let tm = Tensor::from_vec(tv, b, &Device::Cpu).unwrap();
    let a = host(&oracle.score(&x, &tm).unwrap());
    let e = host(
        &truth
            .score(
                &x.to_dtype(DType::F64).unwrap(),
                &tm.to_dtype(DType::F64).unwrap(),
            )
            .unwrap(),
    );
    let scale = e.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (a, e) in a.iter().zip(&e) {
        assert!(
            (a - e).abs() <= 1e-4 * (e.abs() + 1e-2 * scale),
            "{a} vs {e}"
        );
    }
}

/// The tolerance of `FastMixtureScore`'s doc: float32 evaluation of the closed form against the
/// f64 truth at points of p_t, over the three SDEs and t from 1e-5 to 1.
#[test]
fn fast_mixture_score_matches_the_f64_truth() {
    check_f32_path(VeSde::default(), "VE");
    check_f32_path(VpSde::default(), "VP");
    check_f32_path(SubVpSde::default(), "sub-VP");
}

#[test]
fn f32_score_propagates_nan_and_checks_times() {
    let oracle = FastMixtureScore::new(
        VeSde::default(),
        GaussianMixture::ring(8, 4.0, 0.2).unwrap(),
    );
    let mut v = vec![0.5f32; 2 * 64];
    v[7] = f32::NAN;
    let x = Tensor::from_vec(v, (64, 2), &Device::Cpu).unwrap();
    let t = time_tensor(0.5, 64, &Device::Cpu, DType::F32).unwrap();
    let s = host(&oracle.score(&x, &t).unwrap());
    assert!(s[6].is_nan() || s[7].is_nan());
    assert!(s[..6].iter().all(|v| v.is_finite()));
    let bad_t = time_tensor(1.5, 64, &Device::Cpu, DType::F32).unwrap();
    assert!(oracle.score(&x, &bad_t).is_err());
    let bad_x = Tensor::zeros((64, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(oracle.score(&bad_x, &t).is_err());
}

/// `b` float32 2-D points N(0, scale² I) and a Rademacher probe, from `seed`.
fn points_and_probe(b: usize, scale: f64, seed: u64) -> (Tensor, Tensor) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let shape = Shape::from((b, 2));
    let x = (rng.randn(&shape, &Device::Cpu, DType::F32).unwrap() * scale).unwrap();
    let v = rng.rademacher(&shape, &Device::Cpu, DType::F32).unwrap();
    (x, v)
}

#[test]
fn f32_score_of_a_point_does_not_depend_on_its_batch() {
    let oracle = FastMixtureScore::new(
        VpSde::default(),
        GaussianMixture::ring(8, 4.0, 0.2).unwrap(),
    );
    let b = 100; // six blocks of 16 and four single points
    let (x, v) = points_and_probe(b, 4.0, 8);
    let shared = time_tensor(0.2, b, &Device::Cpu, DType::F32).unwrap();
    let mixed = Tensor::from_vec(
        (0..b)
            .map(|i| if i % 3 == 0 { 0.2f32 } else { 0.7 })
            .collect::<Vec<_>>(),
        b,
        &Device::Cpu,
    )
    .unwrap();
    for t in [&shared, &mixed] {
        let (s_all, j_all) = oracle.score_with_vjp(&x, t, &v).unwrap();
        for i in [0, 5, 17, 63, 97, 99] {
            let one = |z: &Tensor| z.narrow(0, i, 1).unwrap();
            let (s1, j1) = oracle.score_with_vjp(&one(&x), &one(t), &one(&v)).unwrap();
            assert_eq!(host(&s1), host(&one(&s_all)), "score of point {i}");
            assert_eq!(host(&j1), host(&one(&j_all)), "vjp of point {i}");
        }
    }
}

/// Bits of the fast and exact mixture scores (with vjps) and of large `BlockNoise` and
/// `PerSampleNoise` draws, all big enough to be split over threads, hashed (FNV-1a).
fn threaded_results_hash() -> u64 {
    let gmm = GaussianMixture::ring(8, 4.0, 0.2).unwrap();
    let fast = FastMixtureScore::new(VeSde::default(), gmm.clone());
    let exact = GaussianMixtureScore::new(VeSde::default(), gmm);
    // 100 003 points × 8 components × 2 dims: split into tasks, a partial last block
    let b = 100_003;
    let (x, v) = points_and_probe(b, 3.0, 9);
    let t = time_tensor(0.3, b, &Device::Cpu, DType::F32).unwrap();
    let mixed = Tensor::from_vec(
        (0..b)
            .map(|i| 0.01 + (i % 89) as f32 * 0.01)
            .collect::<Vec<_>>(),
        b,
        &Device::Cpu,
    )
    .unwrap();
    let mut values = Vec::new();
    for t in [&t, &mixed] {
        let (s, j) = fast.score_with_vjp(&x, t, &v).unwrap();
        values.extend(host(&s).into_iter().chain(host(&j)));
        let (s, j) = exact.score_with_vjp(&x, t, &v).unwrap();
        values.extend(host(&s).into_iter().chain(host(&j)));
    }
    let shape = Shape::from((300_001, 2));
    for dtype in [DType::F32, DType::F64] {
        let mut src = BlockNoise::new(5);
        values.extend(host(&src.randn(&shape, &Device::Cpu, dtype).unwrap()));
        values.extend(host(
            &src.rand_uniform(&shape, &Device::Cpu, dtype).unwrap(),
        ));
        let mut src = sde_core::noise::PerSampleNoise::new(5);
        values.extend(host(&src.randn(&shape, &Device::Cpu, dtype).unwrap()));
    }
    values.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
        (h ^ v.to_bits()).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Run by [`results_do_not_depend_on_the_thread_count`] in a child process.
#[test]
#[ignore = "run by results_do_not_depend_on_the_thread_count with a set thread count"]
fn threaded_results_probe() {
    println!("HASH {:016x}", threaded_results_hash());
}

/// The kernels' pool size is fixed per process (candle reads `RAYON_NUM_THREADS` once), so
/// this test runs [`threaded_results_probe`] in child processes on 1 and 3 threads and compares
/// their hashes with this process's.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let here = threaded_results_hash();
    let exe = std::env::current_exe().unwrap();
    for threads in ["1", "3"] {
        let out = std::process::Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "threaded_results_probe",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("RAYON_NUM_THREADS", threads)
            .env_remove("CANDLE_NUM_THREADS")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let hash = stdout
            .lines()
            .find_map(|l| l.split("HASH ").nth(1).map(str::trim))
            .unwrap_or_else(|| panic!("no hash from the child on {threads} threads: {stdout}"));
        assert_eq!(
            hash,
            format!("{here:016x}"),
            "{threads} threads changed the results"
        );
    }
}

#[test]
fn to_host_f64_reads_views_and_dtypes() {
    let base = Tensor::arange(0f32, 12.0, &Device::Cpu)
        .unwrap()
        .reshape((3, 4))
        .unwrap();
    let views = [
        base.clone(),
        base.narrow(0, 1, 2).unwrap(),      // contiguous with an offset
        base.t().unwrap(),                  // strided
        base.to_dtype(DType::F64).unwrap(), // f64
        base.to_dtype(DType::F16).unwrap(), // other dtypes through candle
        base.narrow(1, 1, 2).unwrap(),      // strided rows
    ];
    for v in &views {
        assert_eq!(
            sde_core::to_host_f64(v).unwrap(),
            host(v),
            "{:?}",
            v.layout()
        );
    }
}
