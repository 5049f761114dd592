//! The analytic oracles against independent truth: candle autograd of their log densities,
//! finite differences, normalisation on a grid, and each other.

use candle_core::{DType, Device, Shape, Tensor, Var};
use rand::SeedableRng;
use sde_core::analytic::{GaussianMixture, GaussianMixtureScore, GaussianScore};
use sde_core::{time_tensor, ScoreFn, Sde, SubVpSde, VeSde, VpSde};

fn host(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn mixture() -> GaussianMixture {
    GaussianMixture::new(
        vec![0.5, 0.3, 0.2],
        vec![vec![1.0, -1.0], vec![-2.0, 0.5], vec![0.0, 3.0]],
        vec![vec![0.3, 0.6], vec![0.5], vec![1.0, 0.2]],
    )
    .unwrap()
}

fn points(b: usize, seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let g = GaussianMixture::new(vec![1.0], vec![vec![0.0, 0.0]], vec![vec![2.5]]).unwrap();
    g.sample(&Shape::from((b, 2)), &Device::Cpu, DType::F64, &mut rng)
        .unwrap()
}

fn check_against_autograd<S: Sde + Clone>(sde: S, name: &str) {
    let oracle = GaussianMixtureScore::new(sde, mixture());
    let x = points(64, 1);
    for t in [1e-3, 0.1, 0.5, 1.0] {
        let tt = time_tensor(t, 64, &Device::Cpu, DType::F64).unwrap();
        // ∇ₓ Σ_b log p_t(x_b) by candle autograd of the tensor-op density
        let xv = Var::from_tensor(&x).unwrap();
        let lp = oracle.log_prob_tensor(xv.as_tensor(), &tt).unwrap();
        let grads = lp.sum_all().unwrap().backward().unwrap();
        let auto = host(grads.get(xv.as_tensor()).unwrap());
        let fused = host(&oracle.score(&x, &tt).unwrap());
        for (a, f) in auto.iter().zip(&fused) {
            assert!(
                (a - f).abs() <= 1e-9 * (1.0 + a.abs()),
                "{name} t={t}: autograd {a} vs fused {f}"
            );
        }
        // the host log density equals the tensor one
        let l1 = oracle.log_prob(&x, &tt).unwrap();
        let l2 = host(&lp);
        for (a, b) in l1.iter().zip(&l2) {
            assert!((a - b).abs() < 1e-10 * (1.0 + a.abs()));
        }
    }
}

#[test]
fn gmm_score_is_the_autograd_gradient_of_its_log_density() {
    check_against_autograd(VeSde::default(), "VE");
    check_against_autograd(VpSde::default(), "VP");
    check_against_autograd(SubVpSde::default(), "sub-VP");
}

#[test]
fn gmm_vjp_matches_finite_differences_of_the_score() {
    let sde = VpSde::default();
    let oracle = GaussianMixtureScore::new(&sde, mixture());
    let x = points(8, 2);
    let v = points(8, 3);
    let t = time_tensor(0.05, 8, &Device::Cpu, DType::F64).unwrap();
    let (_, vjp) = oracle.score_with_vjp(&x, &t, &v).unwrap();
    // J is symmetric, so vᵀJ = J v = d/dh s(x + h v) at h = 0 (central difference)
    let h = 1e-5;
    let sp = oracle
        .score(&(&x + (&v * h).unwrap()).unwrap(), &t)
        .unwrap();
    let sm = oracle
        .score(&(&x - (&v * h).unwrap()).unwrap(), &t)
        .unwrap();
    let fd = host(&((sp - sm).unwrap() / (2.0 * h)).unwrap());
    for (a, b) in host(&vjp).iter().zip(&fd) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "vjp {a} vs fd {b}");
    }
    // and the default autograd vjp of the ScoreFn trait agrees with the closed form
    let closure = |x: &Tensor, t: &Tensor| -> sde_core::Result<Tensor> {
        let xv = x.clone();
        let lp = oracle.log_prob_tensor(&xv, t)?;
        let _ = lp;
        // a score written with tensor ops only: the Gaussian score of one component
        let g = GaussianScore::isotropic(&sde, 0.2, 0.7)?;
        g.score(x, t)
    };
    let (_, auto) = closure.score_with_vjp(&x, &t, &v).unwrap();
    let g = GaussianScore::isotropic(&sde, 0.2, 0.7).unwrap();
    let (_, exact) = g.score_with_vjp(&x, &t, &v).unwrap();
    for (a, b) in host(&auto).iter().zip(&host(&exact)) {
        assert!(
            (a - b).abs() < 1e-6 * (1.0 + b.abs()),
            "autograd vjp {a} vs closed form {b}"
        );
    }
}

#[test]
fn gmm_density_integrates_to_one_at_every_time() {
    let gmm = GaussianMixture::new(
        vec![0.7, 0.3],
        vec![vec![-1.0], vec![2.0]],
        vec![vec![0.4], vec![0.8]],
    )
    .unwrap();
    let sde = VpSde::default();
    let oracle = GaussianMixtureScore::new(&sde, gmm.clone());
    let n = 20_001;
    let (lo, hi) = (-12.0, 12.0);
    let h = (hi - lo) / (n - 1) as f64;
    let grid: Vec<f64> = (0..n).map(|i| lo + i as f64 * h).collect();
    let x = Tensor::from_vec(grid, (n, 1), &Device::Cpu).unwrap();
    let p0: f64 = gmm
        .log_prob(&x)
        .unwrap()
        .iter()
        .map(|l| l.exp())
        .sum::<f64>()
        * h;
    assert!((p0 - 1.0).abs() < 1e-9, "∫ p_0 = {p0}");
    for t in [0.01, 0.3, 1.0] {
        let tt = time_tensor(t, n, &Device::Cpu, DType::F64).unwrap();
        let pt: f64 = oracle
            .log_prob(&x, &tt)
            .unwrap()
            .iter()
            .map(|l| l.exp())
            .sum::<f64>()
            * h;
        assert!((pt - 1.0).abs() < 1e-9, "∫ p_t = {pt} at t = {t}");
    }
}

#[test]
fn gaussian_and_one_component_mixture_agree() {
    // Two independent implementations: tensor-op GaussianScore and the fused mixture loop.
    let sde = VeSde::default();
    let mu = Tensor::new(&[0.5f64, -0.3], &Device::Cpu).unwrap();
    let sd = Tensor::new(&[0.7f64, 0.2], &Device::Cpu).unwrap();
    let g = GaussianScore::new(&sde, mu, sd).unwrap();
    let m = GaussianMixtureScore::new(
        &sde,
        GaussianMixture::new(vec![1.0], vec![vec![0.5, -0.3]], vec![vec![0.7, 0.2]]).unwrap(),
    );
    let x = points(32, 5);
    for t in [0.0, 0.2, 0.9] {
        let tt = time_tensor(t, 32, &Device::Cpu, DType::F64).unwrap();
        for (a, b) in host(&g.score(&x, &tt).unwrap())
            .iter()
            .zip(&host(&m.score(&x, &tt).unwrap()))
        {
            assert!((a - b).abs() < 1e-10 * (1.0 + a.abs()));
        }
        for (a, b) in host(&g.log_prob(&x, &tt).unwrap())
            .iter()
            .zip(&m.log_prob(&x, &tt).unwrap())
        {
            assert!((a - b).abs() < 1e-10 * (1.0 + a.abs()));
        }
    }
    for (a, b) in host(&g.log_prob_data(&x).unwrap())
        .iter()
        .zip(&m.mixture().log_prob(&x).unwrap())
    {
        assert!((a - b).abs() < 1e-10 * (1.0 + a.abs()));
    }
}

#[test]
fn gmm_samples_follow_the_weights_and_classify_back() {
    let gmm = GaussianMixture::ring(8, 4.0, 0.2).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let x = gmm
        .sample(
            &Shape::from((16_000, 2)),
            &Device::Cpu,
            DType::F32,
            &mut rng,
        )
        .unwrap();
    let labels = gmm.classify(&x).unwrap();
    let mut counts = [0usize; 8];
    for l in labels {
        counts[l] += 1;
    }
    for c in counts {
        // 2000 expected, binomial sd ≈ 42
        assert!((c as i64 - 2000).abs() < 200, "{counts:?}");
    }
}

#[test]
fn image_shaped_data_work_too() {
    let sde = VpSde::default();
    let g = GaussianScore::isotropic(&sde, 0.3, 0.6).unwrap();
    let x = Tensor::zeros((2, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let t = time_tensor(0.5, 2, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(g.score(&x, &t).unwrap().dims(), &[2, 1, 4, 4]);
    let gmm = GaussianMixture::new(
        vec![1.0, 1.0],
        vec![vec![0.0; 16], vec![1.0; 16]],
        vec![vec![0.5], vec![0.5]],
    )
    .unwrap();
    let m = GaussianMixtureScore::new(&sde, gmm);
    assert_eq!(m.score(&x, &t).unwrap().dims(), &[2, 1, 4, 4]);
    assert_eq!(m.log_prob_tensor(&x, &t).unwrap().dims(), &[2]);
}

/// The truth computes in f64 whatever the input dtype: on float32 inputs it returns the f64
/// results rounded once to float32.
#[test]
fn truth_is_computed_in_f64_whatever_the_input_dtype() {
    let sde = VpSde::default();
    let x64 = points(50, 3);
    let x32 = x64.to_dtype(DType::F32).unwrap();
    let x64 = x32.to_dtype(DType::F64).unwrap(); // the same (f32-representable) points
    let t32 = time_tensor(0.37, 50, &Device::Cpu, DType::F32).unwrap();
    let t64 = t32.to_dtype(DType::F64).unwrap();
    let gauss = GaussianScore::isotropic(&sde, 0.3, 0.6).unwrap();
    let mix = GaussianMixtureScore::new(&sde, mixture());
    let pairs = [
        (
            gauss.score(&x32, &t32).unwrap(),
            gauss.score(&x64, &t64).unwrap(),
        ),
        (
            mix.score(&x32, &t32).unwrap(),
            mix.score(&x64, &t64).unwrap(),
        ),
        (
            gauss.log_prob(&x32, &t32).unwrap(),
            gauss.log_prob(&x64, &t64).unwrap(),
        ),
        (
            mix.log_prob_tensor(&x32, &t32).unwrap(),
            mix.log_prob_tensor(&x64, &t64).unwrap(),
        ),
    ];
    for (i, (got, want)) in pairs.iter().enumerate() {
        assert_eq!(got.dtype(), DType::F32, "case {i}");
        let want: Vec<f32> = host(want).iter().map(|&v| v as f32).collect();
        let got: Vec<f32> = host(got).iter().map(|&v| v as f32).collect();
        assert_eq!(got, want, "case {i}");
    }
}
