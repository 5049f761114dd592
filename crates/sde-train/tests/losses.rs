//! Importance sampling, sliced score matching and gradients of every loss.

mod common;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use sde_core::analytic::GaussianScore;
use sde_core::noise::NoiseSource;
use sde_core::{mul_batch, to_host_f64, ScoreFn, ScoreModel, Sde, SubVpSde, VeSde, VpSde};
use sde_train::{
    DdpmLoss, ImportanceSampler, Projection, SdeLoss, SdeLossOptions, SlicedScoreMatching,
    SmldLoss, SsmOptions, TrainingLoss,
};

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

#[test]
fn importance_cdf_matches_vp_closed_form() {
    // VP: g²/σ² = β / (1 − e^{−B}), B(t) = ∫_0^t β = β0 t + ½ (β1 − β0) t²,
    // so ∫ g²/σ² dt = log(e^{B} − 1) + C.
    let sde = VpSde::default();
    let eps = 1e-5;
    let s = ImportanceSampler::new(&sde, eps, 4096).unwrap();
    let big_f = |t: f64| {
        let b = 0.1 * t + 0.5 * 19.9 * t * t;
        b.exp_m1().ln()
    };
    let z = big_f(1.0) - big_f(eps);
    assert!(
        (s.normalizer() - z).abs() < 1e-4 * z,
        "{} vs {z}",
        s.normalizer()
    );
    for (t, f) in s.grid().iter().zip(s.cdf()).step_by(97) {
        let want = (big_f(*t) - big_f(eps)) / z;
        assert!((f - want).abs() < 2e-5, "t = {t}: cdf {f} vs {want}");
    }
}

#[test]
fn importance_is_uniform_for_ve() {
    // VE: g²/σ² = 2 log(σ_max/σ_min) is constant, so q is uniform and every weight is 1.
    let sde = VeSde::default();
    let s = ImportanceSampler::new(&sde, 1e-3, 512).unwrap();
    for u in [0.0, 0.1, 0.37, 0.5, 0.99, 1.0] {
        let (t, w) = s.sample_one(u);
        assert!((t - (1e-3 + u * (1.0 - 1e-3))).abs() < 1e-9, "u {u}: t {t}");
        assert!((w - 1.0).abs() < 1e-9, "w {w}");
    }
}

/// VP continuous exact model (−σ · score) for N(0.3, 0.6²) data.
struct NoiseExact<S: Sde + Clone>(S);
impl<S: Sde + Clone> ScoreModel for NoiseExact<S> {
    fn forward_t(
        &self,
        x: &Tensor,
        labels: &Tensor,
        _mode: sde_core::Mode<'_>,
    ) -> sde_core::Result<Tensor> {
        let t = labels.affine(1.0 / 999.0, 0.0)?;
        let score = GaussianScore::isotropic(self.0.clone(), 0.3, 0.6)?.score(x, &t)?;
        let std = self.0.marginal_coeffs(&t)?.1;
        mul_batch(&std.neg()?, &score)
    }
}

fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (
        m,
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0),
    )
}

#[test]
fn importance_sampling_is_unbiased_with_lower_variance() {
    let sde = SubVpSde::default();
    let model = NoiseExact(sde.clone());
    let mut r = rng(3);
    let n = 20_000;
    let batch = r
        .randn(&(n, 2).into(), &Device::Cpu, DType::F64)
        .unwrap()
        .affine(0.6, 0.3)
        .unwrap();
    let opts = SdeLossOptions {
        likelihood_weighting: true,
        eps: 1e-3,
        ..Default::default()
    };
    let uni = SdeLoss::new(&sde, opts.clone()).unwrap();
    let is = SdeLoss::new(
        &sde,
        SdeLossOptions {
            importance_sampling: true,
            ..opts
        },
    )
    .unwrap();
    let draw = |r: &mut rand::rngs::StdRng| {
        let u = r.rand_uniform(&n.into(), &Device::Cpu, DType::F64).unwrap();
        let z = r.randn(&(n, 2).into(), &Device::Cpu, DType::F64).unwrap();
        (u, z)
    };
    let (u, z) = draw(&mut r);
    let a = to_host_f64(
        &uni.per_sample_from_draws(&model, &batch, &u, &z, sde_core::Mode::Eval)
            .unwrap(),
    )
    .unwrap();
    let (u, z) = draw(&mut r);
    let b = to_host_f64(
        &is.per_sample_from_draws(&model, &batch, &u, &z, sde_core::Mode::Eval)
            .unwrap(),
    )
    .unwrap();
    let (ma, va) = mean_var(&a);
    let (mb, vb) = mean_var(&b);
    let se = (va / n as f64 + vb / n as f64).sqrt();
    assert!(
        (ma - mb).abs() < 4.0 * se,
        "uniform {ma} vs importance {mb} (se {se})"
    );
    assert!(vb < 0.2 * va, "variance: importance {vb} vs uniform {va}");
}

/// A score c · s*(x, t) for N(0.3, 0.6²) data under VE.
struct Scaled(f64);
impl ScoreModel for Scaled {
    fn forward_t(
        &self,
        x: &Tensor,
        sigma: &Tensor,
        _mode: sde_core::Mode<'_>,
    ) -> sde_core::Result<Tensor> {
        let var = sigma.sqr()?.affine(1.0, 0.36)?;
        let r = x.affine(1.0, -0.3)?.neg()?;
        Ok(mul_batch(&var.recip()?, &r)?.affine(self.0, 0.0)?)
    }
}

#[test]
fn sliced_score_matching_closed_form_and_minimiser() {
    let sde = VeSde::new(0.01, 5.0, 1000).unwrap();
    let mut r = rng(5);
    let b = 8;
    let batch = r
        .randn(&(b, 3).into(), &Device::Cpu, DType::F64)
        .unwrap()
        .affine(0.6, 0.3)
        .unwrap();
    for projection in [Projection::Gaussian, Projection::Rademacher] {
        for vr in [false, true] {
            let ssm = SlicedScoreMatching::new(
                &sde,
                SsmOptions {
                    projection,
                    variance_reduction: vr,
                    ..Default::default()
                },
            )
            .unwrap();
            let u = r.rand_uniform(&b.into(), &Device::Cpu, DType::F64).unwrap();
            let z = r.randn(&(b, 3).into(), &Device::Cpu, DType::F64).unwrap();
            let v = r.randn(&(b, 3).into(), &Device::Cpu, DType::F64).unwrap();
            let got = to_host_f64(
                &ssm.per_sample_from_draws(&Scaled(1.0), &batch, &u, &z, &v, sde_core::Mode::Eval)
                    .unwrap(),
            )
            .unwrap();
            // By hand: s = −(x − 0.3)/var, vᵀ∇s v = −‖v‖²/var, λ = σ².
            let (x0, u, z, v) = (
                to_host_f64(&batch).unwrap(),
                to_host_f64(&u).unwrap(),
                to_host_f64(&z).unwrap(),
                to_host_f64(&v).unwrap(),
            );
            for i in 0..b {
                let t = u[i] * (1.0 - 1e-5) + 1e-5;
                let sig = sde.sigma(t);
                let var = 0.36 + sig * sig;
                let (mut jac, mut vs, mut ss) = (0.0, 0.0, 0.0);
                for d in 0..3 {
                    let x = x0[i * 3 + d] + sig * z[i * 3 + d];
                    let s = -(x - 0.3) / var;
                    jac -= v[i * 3 + d].powi(2) / var;
                    vs += v[i * 3 + d] * s;
                    ss += s * s;
                }
                let quad = if vr { ss } else { vs * vs };
                let want = sig * sig * (jac + 0.5 * quad);
                assert!(
                    (got[i] - want).abs() < 1e-9 * want.abs().max(1.0),
                    "{i}: {} vs {want}",
                    got[i]
                );
            }
        }
    }
    // The objective in c, E[c tr∇s + ½ c² ‖s‖²], is minimised at c = 1 (the true score).
    let n = 4000;
    let big = r
        .randn(&(n, 2).into(), &Device::Cpu, DType::F64)
        .unwrap()
        .affine(0.6, 0.3)
        .unwrap();
    let ssm = SlicedScoreMatching::new(
        &sde,
        SsmOptions {
            projection: Projection::Rademacher,
            ..Default::default()
        },
    )
    .unwrap();
    let losses: Vec<f64> = [0.8, 1.0, 1.25]
        .iter()
        .map(|&c| {
            let mut r = rng(9); // common random numbers across c
            to_host_f64(&ssm.loss(&Scaled(c), &big, false, &mut r).unwrap()).unwrap()[0]
        })
        .collect();
    assert!(losses[1] < losses[0] && losses[1] < losses[2], "{losses:?}");
}

fn check_grads<L: TrainingLoss>(loss: &L, what: &str) {
    let (vm, net) = common::tiny_net(1, 16);
    let mut r = rng(11);
    let batch = r.randn(&(16, 2).into(), &Device::Cpu, DType::F32).unwrap();
    let l = loss.loss(&net, &batch, true, &mut r).unwrap();
    let lv = l.to_scalar::<f32>().unwrap();
    assert!(lv.is_finite(), "{what}: loss {lv}");
    let grads = l.backward().unwrap();
    let mut total = 0.0;
    for var in vm.all_vars() {
        let g = grads
            .get(var.as_tensor())
            .expect("every variable has a gradient");
        let g = to_host_f64(g).unwrap();
        assert!(
            g.iter().all(|v| v.is_finite()),
            "{what}: non-finite gradient"
        );
        total += g.iter().map(|v| v * v).sum::<f64>();
    }
    assert!(total > 0.0, "{what}: zero gradient");
}

#[test]
fn every_loss_has_finite_nonzero_gradients() {
    let ve = VeSde::default();
    let vp = VpSde::default();
    let sub = SubVpSde::default();
    for lw in [false, true] {
        for rm in [false, true] {
            let o = SdeLossOptions {
                likelihood_weighting: lw,
                reduce_mean: rm,
                ..Default::default()
            };
            check_grads(&SdeLoss::new(&ve, o.clone()).unwrap(), "ve");
            check_grads(&SdeLoss::new(&vp, o.clone()).unwrap(), "vp");
            check_grads(&SdeLoss::new(&sub, o.clone()).unwrap(), "subvp");
        }
    }
    let o = SdeLossOptions {
        likelihood_weighting: true,
        importance_sampling: true,
        ..Default::default()
    };
    check_grads(&SdeLoss::new(&vp, o).unwrap(), "vp importance");
    let o = SdeLossOptions {
        continuous: false,
        ..Default::default()
    };
    check_grads(&SdeLoss::new(&ve, o.clone()).unwrap(), "ve discrete labels");
    check_grads(&SdeLoss::new(&vp, o).unwrap(), "vp discrete labels");
    check_grads(&SmldLoss::new(&ve, false), "smld");
    check_grads(&DdpmLoss::new(&vp, true), "ddpm");
    for projection in [Projection::Gaussian, Projection::Rademacher] {
        let o = SsmOptions {
            projection,
            n_particles: 2,
            ..Default::default()
        };
        check_grads(&SlicedScoreMatching::new(&vp, o).unwrap(), "ssm");
    }
}

#[test]
fn same_seed_same_loss() {
    let (_vm, net) = common::tiny_net(1, 16);
    let vp = VpSde::default();
    let loss = SdeLoss::new(&vp, SdeLossOptions::default()).unwrap();
    let batch = rng(1)
        .randn(&(8, 2).into(), &Device::Cpu, DType::F32)
        .unwrap();
    let a = loss
        .loss(&net, &batch, true, &mut rng(4))
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let b = loss
        .loss(&net, &batch, true, &mut rng(4))
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let c = loss
        .loss(&net, &batch, true, &mut rng(5))
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(a.to_bits(), b.to_bits());
    assert_ne!(a, c);
}
