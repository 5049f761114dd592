//! One step of every predictor and corrector against the reference's `update_fn`
//! (`sde_{ve,vp,subvp}.safetensors`, `pred.*` / `corr.*`), with the analytic score of
//! N(0.3, 0.6²) data and the recorded noise replayed in draw order.
//!
//! Tolerance (vectors README): |got − want| ≤ 1e-5 · max|want| + 1e-5 · |want|.
//! About t = 1e-5: the reference's VP / sub-VP `marginal_prob` std there is float32
//! `sqrt(1 - exp(2 lmc))` (~0.5% off); sde-core uses expm1 and is more accurate. Every quantity
//! compared here either does not divide by that std (predictors, Langevin) or multiplies a tiny
//! step by it (ALD: ε = 2α (r σ)², σ ≈ 4.5e-3 at t = 1e-5, so a 0.5% error in σ moves x by
//! ~1e-3 · 0.5% · |z| ≈ 2e-5 at most, below 1e-5 · max|want| ≈ 4e-5): no element is skipped.

mod pc_common;

use candle_core::Tensor;
use pc_common::{assert_close, load, Replay};
use sde_core::analytic::GaussianScore;
use sde_core::{AncestralSde, Sde, SubVpSde, VeSde, VpSde};
use sde_solvers::corrector::{AnnealedLangevinDynamics, Corrector, LangevinCorrector};
use sde_solvers::predictor::{
    AncestralSamplingPredictor, EulerMaruyamaPredictor, Predictor, ReverseDiffusionPredictor,
};

const RTOL: f64 = 1e-5;

fn check_pred<S: Sde, P: Predictor<S>>(
    tag: &str,
    v: &std::collections::HashMap<String, Tensor>,
    sde: &S,
    name: &str,
    p: P,
) {
    let score = GaussianScore::isotropic(sde, 0.3, 0.6).unwrap();
    let mut noise = Replay::new(vec![v[&format!("pred.{name}.noise")].clone()]);
    let up = p.update(sde, &score, &v["x"], &v["t"], &mut noise).unwrap();
    assert_eq!(noise.used(), 1, "{tag} {name}: one draw");
    assert_close(
        &format!("{tag} pred.{name}.x_mean"),
        &up.x_mean,
        &v[&format!("pred.{name}.x_mean")],
        RTOL,
    );
    assert_close(
        &format!("{tag} pred.{name}.x"),
        &up.x,
        &v[&format!("pred.{name}.x")],
        RTOL,
    );
}

fn check_corr<S: Sde, C: Corrector<S>>(
    tag: &str,
    v: &std::collections::HashMap<String, Tensor>,
    sde: &S,
    name: &str,
    c: C,
) {
    let score = GaussianScore::isotropic(sde, 0.3, 0.6).unwrap();
    let mut noise = Replay::stacked(&v[&format!("corr.{name}.noise")]);
    let up = c.update(sde, &score, &v["x"], &v["t"], &mut noise).unwrap();
    assert_eq!(noise.used(), noise.len(), "{tag} {name}: every draw used");
    assert_close(
        &format!("{tag} corr.{name}.x_mean"),
        &up.x_mean,
        &v[&format!("corr.{name}.x_mean")],
        RTOL,
    );
    assert_close(
        &format!("{tag} corr.{name}.x"),
        &up.x,
        &v[&format!("corr.{name}.x")],
        RTOL,
    );
}

fn common<S: Sde>(tag: &str, file: &str, sde: &S) -> std::collections::HashMap<String, Tensor> {
    let v = load(file);
    // The analytic score itself (sanity of the oracle the steps use).
    let score = GaussianScore::isotropic(sde, 0.3, 0.6).unwrap();
    use sde_core::ScoreFn;
    assert_close(
        &format!("{tag} score"),
        &score.score(&v["x"], &v["t"]).unwrap(),
        &v["score"],
        RTOL,
    );
    check_pred(
        tag,
        &v,
        sde,
        "reverse_diffusion",
        ReverseDiffusionPredictor::new(false),
    );
    check_pred(
        tag,
        &v,
        sde,
        "reverse_diffusion_pf",
        ReverseDiffusionPredictor::new(true),
    );
    check_pred(
        tag,
        &v,
        sde,
        "euler_maruyama",
        EulerMaruyamaPredictor::new(false),
    );
    v
}

fn with_correctors<S: AncestralSde>(
    tag: &str,
    v: &std::collections::HashMap<String, Tensor>,
    sde: &S,
) {
    check_pred(
        tag,
        v,
        sde,
        "ancestral_sampling",
        AncestralSamplingPredictor,
    );
    check_corr(
        tag,
        v,
        sde,
        "langevin",
        LangevinCorrector::new(0.16, 1).unwrap(),
    );
    check_corr(
        tag,
        v,
        sde,
        "langevin_2steps",
        LangevinCorrector::new(0.16, 2).unwrap(),
    );
    check_corr(
        tag,
        v,
        sde,
        "ald",
        AnnealedLangevinDynamics::new(0.16, 1).unwrap(),
    );
}

#[test]
fn ve_steps_match_reference() {
    let sde = VeSde::new(0.01, 50.0, 1000).unwrap();
    let v = common("ve", "sde_ve.safetensors", &sde);
    with_correctors("ve", &v, &sde);
}

#[test]
fn vp_steps_match_reference() {
    let sde = VpSde::new(0.1, 20.0, 1000).unwrap();
    let v = common("vp", "sde_vp.safetensors", &sde);
    with_correctors("vp", &v, &sde);
}

/// sub-VP: the reference has no Langevin / ALD / ancestral vectors (it crashes, see the README);
/// the predictors it runs must match. Langevin and ALD run here (α from the shared β table) and
/// are checked against VP's in `pc_subvp_langevin_uses_vp_alphas`.
#[test]
fn subvp_steps_match_reference() {
    let sde = SubVpSde::new(0.1, 20.0, 1000).unwrap();
    common("subvp", "sde_subvp.safetensors", &sde);
}

#[test]
fn subvp_langevin_uses_vp_alphas() {
    // With the same score and noise, sub-VP's Langevin step equals VP's: α_i = 1 − β_i is the
    // shared DDPM table and the step size depends on nothing else of the SDE.
    let v = load("sde_vp.safetensors");
    let vp = VpSde::default();
    let sub = SubVpSde::default();
    let score = GaussianScore::isotropic(&vp, 0.3, 0.6).unwrap();
    let c = LangevinCorrector::new(0.16, 1).unwrap();
    let mut n1 = Replay::stacked(&v["corr.langevin.noise"]);
    let mut n2 = Replay::stacked(&v["corr.langevin.noise"]);
    let a = c.update(&vp, &score, &v["x"], &v["t"], &mut n1).unwrap();
    let b = c.update(&sub, &score, &v["x"], &v["t"], &mut n2).unwrap();
    assert_close("subvp vs vp langevin", &b.x, &a.x, 1e-7);
    assert_close(
        "subvp langevin vs reference vp",
        &b.x,
        &v["corr.langevin.x"],
        RTOL,
    );
}

#[test]
fn corrector_parameters_are_validated() {
    assert!(LangevinCorrector::new(0.0, 1).is_err());
    assert!(LangevinCorrector::new(-0.1, 1).is_err());
    assert!(LangevinCorrector::new(f64::NAN, 1).is_err());
    assert!(LangevinCorrector::new(0.16, 0).is_err());
    assert!(AnnealedLangevinDynamics::new(0.16, 0).is_err());
    assert!(AnnealedLangevinDynamics::new(f64::INFINITY, 1).is_err());
    assert!(LangevinCorrector::new(0.16, 3).is_ok());
}
