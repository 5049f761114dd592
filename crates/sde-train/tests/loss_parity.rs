//! Loss values against the reference (`losses.safetensors`, made by `losses.get_sde_loss_fn`,
//! `get_smld_loss_fn` and `get_ddpm_loss_fn` with analytic "models" and saved draws).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use sde_core::analytic::GaussianScore;
use sde_core::{mul_batch, to_host_f64, ScoreFn, ScoreModel, Sde, SubVpSde, VeSde, VpSde};
use sde_train::{DdpmLoss, SdeLoss, SdeLossOptions, SmldLoss};

const MU0: f64 = 0.3;
const S0: f64 = 0.6;

fn vectors() -> HashMap<String, Tensor> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testvectors/losses.safetensors"
    );
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// VE continuous: labels are σ(t); returns the exact score of N(μ0, s0²) perturbed by σ:
/// −(x − μ0)/(s0² + σ²).
struct VeExact;
impl ScoreModel for VeExact {
    fn forward_t(
        &self,
        x: &Tensor,
        sigma: &Tensor,
        _mode: sde_core::Mode<'_>,
    ) -> sde_core::Result<Tensor> {
        let var = sigma.sqr()?.affine(1.0, S0 * S0)?;
        let r = x.affine(1.0, -MU0)?.neg()?;
        mul_batch(&var.recip()?, &r)
    }
}

/// VP / sub-VP continuous: labels are 999 t; returns −std(t) · score(x, t).
struct NoiseExact<S: Sde + Clone>(S);
impl<S: Sde + Clone> ScoreModel for NoiseExact<S> {
    fn forward_t(
        &self,
        x: &Tensor,
        labels: &Tensor,
        _mode: sde_core::Mode<'_>,
    ) -> sde_core::Result<Tensor> {
        let t = labels.affine(1.0 / 999.0, 0.0)?;
        let score = GaussianScore::isotropic(self.0.clone(), MU0, S0)?.score(x, &t)?;
        let std = self.0.marginal_coeffs(&t)?.1;
        mul_batch(&std.neg()?, &score)
    }
}

/// SMLD: i64 labels index the descending σ list; returns the exact score.
struct SmldExact(Vec<f64>);
impl ScoreModel for SmldExact {
    fn forward_t(
        &self,
        x: &Tensor,
        labels: &Tensor,
        _mode: sde_core::Mode<'_>,
    ) -> sde_core::Result<Tensor> {
        assert_eq!(labels.dtype(), DType::I64);
        let var: Vec<f64> = to_host_f64(labels)?
            .iter()
            .map(|&l| S0 * S0 + self.0[l as usize].powi(2))
            .collect();
        let var = sde_core::from_host_f64(var, x.device(), x.dtype())?;
        mul_batch(&var.recip()?, &x.affine(1.0, -MU0)?.neg()?)
    }
}

/// DDPM: labels index ᾱ; returns −√(1 − ᾱ) · score of N(√ᾱ μ0, ᾱ s0² + 1 − ᾱ).
struct DdpmExact(Vec<f64>);
impl ScoreModel for DdpmExact {
    fn forward_t(
        &self,
        x: &Tensor,
        labels: &Tensor,
        _mode: sde_core::Mode<'_>,
    ) -> sde_core::Result<Tensor> {
        let l = to_host_f64(labels)?;
        let ab: Vec<f64> = l.iter().map(|&l| self.0[l as usize]).collect();
        let mean = sde_core::from_host_f64(
            ab.iter().map(|a| a.sqrt() * MU0).collect(),
            x.device(),
            x.dtype(),
        )?;
        let coef = sde_core::from_host_f64(
            ab.iter()
                .map(|a| (1.0 - a).sqrt() / (a * S0 * S0 + 1.0 - a))
                .collect(),
            x.device(),
            x.dtype(),
        )?;
        let ones = x.ones_like()?;
        let centred = (x - mul_batch(&mean, &ones)?)?;
        mul_batch(&coef, &centred)
    }
}

fn scalar(t: &Tensor) -> f64 {
    to_host_f64(t).unwrap()[0]
}

fn assert_close(got: f64, want: f64, what: &str) {
    let tol = 1e-5 * want.abs() + 1e-7;
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, want {want} (rel err {:e})",
        (got - want).abs() / want.abs()
    );
}

fn check_sde<S: Sde + Clone, M: ScoreModel>(
    v: &HashMap<String, Tensor>,
    name: &str,
    sde: S,
    model: &M,
) {
    let batch = &v["batch"];
    for rm in [false, true] {
        for lw in [false, true] {
            let key = format!("sde_loss.{name}.reduce_mean_{}.lw_{}", rm as u8, lw as u8);
            let loss = SdeLoss::new(
                sde.clone(),
                SdeLossOptions {
                    reduce_mean: rm,
                    likelihood_weighting: lw,
                    ..Default::default()
                },
            )
            .unwrap();
            let got = loss
                .loss_from_draws(
                    model,
                    batch,
                    &v[&format!("{key}.u")],
                    &v[&format!("{key}.z")],
                    sde_core::Mode::Eval,
                )
                .unwrap();
            assert_eq!(got.dims(), &[] as &[usize]);
            assert_close(scalar(&got), scalar(&v[&format!("{key}.loss")]), &key);
        }
    }
}

#[test]
fn continuous_dsm_matches_reference() {
    let v = vectors();
    check_sde(&v, "ve", VeSde::default(), &VeExact);
    check_sde(&v, "vp", VpSde::default(), &NoiseExact(VpSde::default()));
    check_sde(
        &v,
        "subvp",
        SubVpSde::default(),
        &NoiseExact(SubVpSde::default()),
    );
}

#[test]
fn smld_and_ddpm_match_reference() {
    let v = vectors();
    let batch = &v["batch"];
    let ve = VeSde::default();
    let mut desc = ve.discrete_sigmas().to_vec();
    desc.reverse();
    let vp = VpSde::default();
    for rm in [false, true] {
        let key = format!("smld_loss.reduce_mean_{}", rm as u8);
        let got = SmldLoss::new(&ve, rm)
            .loss_from_draws(
                &SmldExact(desc.clone()),
                batch,
                &v[&format!("{key}.labels")],
                &v[&format!("{key}.z")],
                sde_core::Mode::Eval,
            )
            .unwrap();
        assert_close(scalar(&got), scalar(&v[&format!("{key}.loss")]), &key);

        let key = format!("ddpm_loss.reduce_mean_{}", rm as u8);
        let got = DdpmLoss::new(&vp, rm)
            .loss_from_draws(
                &DdpmExact(vp.alphas_cumprod()),
                batch,
                &v[&format!("{key}.labels")],
                &v[&format!("{key}.z")],
                sde_core::Mode::Eval,
            )
            .unwrap();
        assert_close(scalar(&got), scalar(&v[&format!("{key}.loss")]), &key);
    }
}

#[test]
fn bad_draws_are_errors() {
    let v = vectors();
    let batch = &v["batch"];
    let ve = VeSde::default();
    let loss = SdeLoss::new(&ve, SdeLossOptions::default()).unwrap();
    let u = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    let z = batch.zeros_like().unwrap();
    assert!(matches!(
        loss.loss_from_draws(&VeExact, batch, &u, &z, sde_core::Mode::Eval),
        Err(sde_train::Error::ShapeMismatch { .. })
    ));
    let labels = Tensor::new(&[0i64, 1, 2, 1000], &Device::Cpu).unwrap();
    assert!(matches!(
        SmldLoss::new(&ve, false).loss_from_draws(
            &VeExact,
            batch,
            &labels,
            &z,
            sde_core::Mode::Eval
        ),
        Err(sde_train::Error::InvalidParameter { name: "labels", .. })
    ));
    assert!(SdeLoss::new(
        &ve,
        SdeLossOptions {
            eps: 0.0,
            ..Default::default()
        }
    )
    .is_err());
    assert!(SdeLoss::new(
        &ve,
        SdeLossOptions {
            importance_sampling: true,
            ..Default::default()
        }
    )
    .is_err());
}
