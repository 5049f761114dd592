//! Independent truth for the SDEs: the variance ODE, the discrete chains, closed-form prior
//! densities, and proptest invariants over random parameters.

use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;
use sde_core::{time_tensor, Sde, SubVpSde, VeSde, VpSde};

fn scalar(t: &Tensor) -> f64 {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()[0]
}

/// (f_t, g(t)) of a linear-drift SDE: f(x, t) = f_t x, read at x = 1.
fn coeffs<S: Sde>(sde: &S, t: f64) -> (f64, f64) {
    let x = Tensor::ones((1, 1), DType::F64, &Device::Cpu).unwrap();
    let tt = time_tensor(t, 1, &Device::Cpu, DType::F64).unwrap();
    let (f, g) = sde.sde(&x, &tt).unwrap();
    (scalar(&f), scalar(&g))
}

fn marginal<S: Sde>(sde: &S, t: f64) -> (f64, f64) {
    let x = Tensor::ones((1, 1), DType::F64, &Device::Cpu).unwrap();
    let tt = time_tensor(t, 1, &Device::Cpu, DType::F64).unwrap();
    let (m, s) = sde.marginal_prob(&x, &tt).unwrap();
    (scalar(&m), scalar(&s))
}

/// Integrates dm/dt = f_t m and dΣ/dt = 2 f_t Σ + g² with classical RK4 from t = 0
/// (m = 1, Σ = std(0)²) and checks m and √Σ against `marginal_prob` along the way.
fn check_variance_ode<S: Sde>(sde: &S, name: &str) {
    let rhs = |t: f64, m: f64, v: f64| {
        let (f, g) = coeffs(sde, t);
        (f * m, 2.0 * f * v + g * g)
    };
    let (_, s0) = marginal(sde, 0.0);
    let (mut m, mut v) = (1.0, s0 * s0);
    let steps = 2000;
    let h = 1.0 / steps as f64;
    for i in 0..steps {
        let t = i as f64 * h;
        let k1 = rhs(t, m, v);
        let k2 = rhs(t + h / 2.0, m + h / 2.0 * k1.0, v + h / 2.0 * k1.1);
        let k3 = rhs(t + h / 2.0, m + h / 2.0 * k2.0, v + h / 2.0 * k2.1);
        let k4 = rhs(t + h, m + h * k3.0, v + h * k3.1);
        m += h / 6.0 * (k1.0 + 2.0 * k2.0 + 2.0 * k3.0 + k4.0);
        v += h / 6.0 * (k1.1 + 2.0 * k2.1 + 2.0 * k3.1 + k4.1);
        if (i + 1) % 200 == 0 {
            let t = (i + 1) as f64 * h;
            let (mm, ss) = marginal(sde, t);
            assert!(
                (m - mm).abs() <= 1e-8 * mm.abs().max(1e-3),
                "{name} mean at t={t}: ode {m} vs {mm}"
            );
            assert!(
                (v.sqrt() - ss).abs() <= 1e-7 * ss,
                "{name} std at t={t}: ode {} vs {ss}",
                v.sqrt()
            );
        }
    }
}

#[test]
fn marginal_std_solves_the_variance_ode() {
    check_variance_ode(&VeSde::default(), "VE");
    check_variance_ode(&VpSde::default(), "VP");
    check_variance_ode(&SubVpSde::default(), "sub-VP");
    check_variance_ode(&VpSde::new(0.5, 3.0, 10).unwrap(), "VP small");
}

/// Chains x_{i+1} = x_i + f_i(x_i) + G_i z_i over all N steps, propagating the mean coefficient
/// c and the variance v exactly (f_i is linear in x), and returns (c, v) after the last step.
fn chain<S: Sde>(sde: &S) -> (Vec<f64>, Vec<f64>) {
    let n = sde.n();
    let (mut c, mut v) = (1.0f64, 0.0f64);
    let (mut cs, mut vs) = (vec![], vec![]);
    for i in 0..n {
        // a time whose discrete index is exactly i
        let t = if i + 1 == n {
            1.0
        } else {
            (i as f64 + 0.25) / (n - 1) as f64
        };
        let x = Tensor::ones((1, 1), DType::F64, &Device::Cpu).unwrap();
        let tt = time_tensor(t, 1, &Device::Cpu, DType::F64).unwrap();
        let (f, g) = sde.discretize(&x, &tt).unwrap();
        let a = 1.0 + scalar(&f);
        let g = scalar(&g);
        c *= a;
        v = a * a * v + g * g;
        cs.push(c);
        vs.push(v);
    }
    (cs, vs)
}

#[test]
fn ve_smld_chain_reproduces_the_discrete_marginals() {
    let sde = VeSde::new(0.01, 50.0, 100).unwrap();
    let (c, v) = chain(&sde);
    for (i, (ci, vi)) in c.iter().zip(&v).enumerate() {
        assert_eq!(*ci, 1.0);
        let s = sde.discrete_sigmas()[i];
        assert!((vi.sqrt() - s).abs() <= 1e-12 * s, "step {i}");
    }
    // and the last discrete marginal is the continuous one at T
    let (_, std1) = marginal(&sde, 1.0);
    assert!((v[99].sqrt() - std1).abs() < 1e-9 * std1);
}

#[test]
fn vp_ddpm_chain_reproduces_the_discrete_and_continuous_marginals() {
    let sde = VpSde::new(0.1, 20.0, 1000).unwrap();
    let (c, v) = chain(&sde);
    let (sa, s1m) = (sde.sqrt_alphas_cumprod(), sde.sqrt_1m_alphas_cumprod());
    for i in 0..1000 {
        assert!(
            (c[i] - sa[i]).abs() <= 1e-12,
            "mean coefficient at step {i}"
        );
        assert!((v[i].sqrt() - s1m[i]).abs() <= 1e-10, "std at step {i}");
    }
    // The DDPM chain discretises the VP SDE: ln c_i = ½ Σ_j ln(1 − β_j) = −½ Σ β_j − ¼ Σ β_j² − …,
    // while the continuous ln m(t) = −½ ∫ β. The Riemann sum matches the integral to O(1/N) and
    // the quadratic term is the rest.
    let betas = sde.discrete_betas();
    for i in [99, 499, 999] {
        let t = (i + 1) as f64 / 1000.0;
        let (m, s) = marginal(&sde, t);
        let quad: f64 = betas[..=i].iter().map(|b| b * b).sum();
        let gap = (c[i].ln() - m.ln()).abs();
        assert!(
            gap <= 0.5 * quad + 0.01 * m.ln().abs().max(0.01),
            "mean {i}: {} vs {m}",
            c[i]
        );
        assert!(
            (v[i].sqrt() - s).abs() < 1e-2,
            "std {i}: {} vs {s}",
            v[i].sqrt()
        );
    }
}

#[test]
fn subvp_default_em_chain_approaches_the_marginal() {
    let sde = SubVpSde::new(0.1, 20.0, 2000).unwrap();
    let (c, v) = chain(&sde);
    let (m, s) = marginal(&sde, 1.0);
    assert!((c[1999] - m).abs() < 1e-3 * 10.0 * m + 1e-6);
    assert!((v[1999].sqrt() - s).abs() < 5e-3);
}

#[test]
fn prior_logp_is_the_gaussian_log_density() {
    let z = Tensor::new(
        &[[[0.5f64, -1.0], [2.0, 0.25]], [[0.0, 0.0], [3.0, -3.0]]],
        &Device::Cpu,
    )
    .unwrap();
    let zs: Vec<Vec<f64>> = (0..2)
        .map(|b| z.get(b).unwrap().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let closed = |sigma: f64| -> Vec<f64> {
        zs.iter()
            .map(|zb| {
                zb.iter()
                    .map(|v| {
                        -0.5 * (2.0 * std::f64::consts::PI * sigma * sigma).ln()
                            - v * v / (2.0 * sigma * sigma)
                    })
                    .sum()
            })
            .collect()
    };
    let got = |lp: Tensor| lp.to_vec1::<f64>().unwrap();
    for (g, w) in got(VeSde::default().prior_logp(&z).unwrap())
        .iter()
        .zip(closed(50.0))
    {
        assert!((g - w).abs() < 1e-12);
    }
    for (g, w) in got(VpSde::default().prior_logp(&z).unwrap())
        .iter()
        .zip(closed(1.0))
    {
        assert!((g - w).abs() < 1e-12);
    }
    for (g, w) in got(SubVpSde::default().prior_logp(&z).unwrap())
        .iter()
        .zip(closed(1.0))
    {
        assert!((g - w).abs() < 1e-12);
    }
}

#[test]
fn prior_sampling_has_the_prior_std_and_is_reproducible() {
    use rand::SeedableRng;
    let sde = VeSde::default();
    let shape = candle_core::Shape::from((4000, 5));
    let mut r1 = rand::rngs::StdRng::seed_from_u64(3);
    let mut r2 = rand::rngs::StdRng::seed_from_u64(3);
    let a = sde
        .prior_sampling(&shape, &Device::Cpu, DType::F32, &mut r1)
        .unwrap();
    let b = sde
        .prior_sampling(&shape, &Device::Cpu, DType::F32, &mut r2)
        .unwrap();
    assert_eq!(
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    let var = scalar(
        &a.to_dtype(DType::F64)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap(),
    );
    // 20 000 draws: the sample variance is within ~3% of σ_max² = 2500 (5 standard errors)
    assert!((var / 2500.0 - 1.0).abs() < 0.05, "{var}");
}

fn std_and_mean(sde: &dyn Fn(f64) -> (f64, f64), t: f64) -> (f64, f64) {
    sde(t)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn ve_invariants(sigma_min in 1e-3f64..1.0, ratio in 1.5f64..1e4, t1 in 1e-5f64..1.0, t2 in 1e-5f64..1.0, n in 1usize..2000) {
        let sde = VeSde::new(sigma_min, sigma_min * ratio, n).unwrap();
        let f = |t| marginal(&sde, t);
        let (lo, hi) = if t1 < t2 { (t1, t2) } else { (t2, t1) };
        let (_, s_lo) = std_and_mean(&f, lo);
        let (_, s_hi) = std_and_mean(&f, hi);
        prop_assert!(s_lo > 0.0 && s_lo <= s_hi);
        check_finite(&sde, hi)?;
    }

    #[test]
    fn vp_invariants(beta_min in 1e-3f64..2.0, extra in 0.0f64..30.0, t1 in 1e-5f64..1.0, t2 in 1e-5f64..1.0) {
        let sde = VpSde::new(beta_min, beta_min + extra, 1000).unwrap();
        let (lo, hi) = if t1 < t2 { (t1, t2) } else { (t2, t1) };
        let (m_lo, s_lo) = marginal(&sde, lo);
        let (m_hi, s_hi) = marginal(&sde, hi);
        prop_assert!(s_lo > 0.0 && s_lo <= s_hi && s_hi < 1.0);
        prop_assert!(m_hi > 0.0 && m_hi <= m_lo && m_lo <= 1.0);
        // variance preserving: m² + std² = 1
        prop_assert!((m_lo * m_lo + s_lo * s_lo - 1.0).abs() < 1e-12);
        check_finite(&sde, lo)?;
    }

    #[test]
    fn subvp_invariants(beta_min in 1e-3f64..2.0, extra in 0.0f64..30.0, t1 in 1e-5f64..1.0, t2 in 1e-5f64..1.0) {
        let sde = SubVpSde::new(beta_min, beta_min + extra, 1000).unwrap();
        let vp = VpSde::new(beta_min, beta_min + extra, 1000).unwrap();
        let (lo, hi) = if t1 < t2 { (t1, t2) } else { (t2, t1) };
        let (m_lo, s_lo) = marginal(&sde, lo);
        let (_, s_hi) = marginal(&sde, hi);
        let (_, s_vp) = marginal(&vp, lo);
        prop_assert!(s_lo > 0.0 && s_lo <= s_hi);
        prop_assert!(m_lo > 0.0 && m_lo <= 1.0);
        // the sub-VP variance lies below the VP variance: std_sub = std_vp² ≤ std_vp
        prop_assert!(s_lo <= s_vp);
        check_finite(&sde, lo)?;
    }
}

fn check_finite<S: Sde>(sde: &S, t: f64) -> Result<(), TestCaseError> {
    let x = Tensor::new(&[[1.5f32, -2.0, 0.0]], &Device::Cpu).unwrap();
    let tt = time_tensor(t, 1, &Device::Cpu, DType::F32).unwrap();
    let (f, g) = sde.sde(&x, &tt).unwrap();
    let (fd, gd) = sde.discretize(&x, &tt).unwrap();
    let (m, s) = sde.marginal_prob(&x, &tt).unwrap();
    for v in [f, g, fd, gd, m, s] {
        prop_assert!(sde_core::ensure_finite(&v, || "value".into()).is_ok());
    }
    Ok(())
}
