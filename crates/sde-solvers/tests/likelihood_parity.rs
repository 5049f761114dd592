//! The likelihood against the reference's `get_likelihood_fn` (`likelihood.safetensors`): the
//! same probes give the same NFE (scipy's nfev), bits/dim within 1e-4 of the reference and of
//! the exact ODE solution for that probe, and the same latent.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use sde_core::analytic::GaussianScore;
use sde_core::{Sde, SubVpSde, VeSde, VpSde};
use sde_solvers::likelihood::{Likelihood, LikelihoodOptions};

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testvectors/likelihood.safetensors"
);

fn host(x: &Tensor) -> Vec<f64> {
    x.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// inverse_scaler = (x + 1)/2, so the reference's offset is 7 − inverse_scaler(−1) = 7.
fn case<S: Sde>(sde: &S, name: &str, s: f64) {
    let v: HashMap<String, Tensor> = candle_core::safetensors::load(VECTORS, &Device::Cpu).unwrap();
    let data = &v[&format!("{name}.data")];
    let mu = v[&format!("{name}.mu")].squeeze(0).unwrap(); // the sample shape [C, H, W]
    let score = GaussianScore::new(sde, mu, Tensor::new(s as f32, &Device::Cpu).unwrap()).unwrap();
    let lik = Likelihood::new(sde, &score, LikelihoodOptions::default()).unwrap();
    for probe in ["gaussian", "rademacher"] {
        let p = &v[&format!("{name}.{probe}.probe")];
        let out = lik
            .log_likelihood_with_probes(data, std::slice::from_ref(p))
            .unwrap();
        let want_nfe = v[&format!("{name}.{probe}.nfe")].to_vec1::<i64>().unwrap()[0] as usize;
        assert_eq!(out.nfe, want_nfe, "{name}.{probe}: nfe");
        let bpd = host(
            &out.reference_bits_per_dim(sde_solvers::likelihood::DataRange::MinusOneOne)
                .unwrap(),
        );
        let d_ref = max_abs_diff(&bpd, &host(&v[&format!("{name}.{probe}.bpd")]));
        let d_exact = max_abs_diff(&bpd, &host(&v[&format!("{name}.{probe}.bpd_analytic")]));
        assert!(d_ref < 1e-4, "{name}.{probe}: |bpd - reference| = {d_ref}");
        assert!(
            d_exact < 1e-4,
            "{name}.{probe}: |bpd - analytic| = {d_exact}"
        );
        let z = host(&out.z);
        let z_ref = host(&v[&format!("{name}.{probe}.z")]);
        let z_scale = z_ref.iter().fold(1f64, |m, x| m.max(x.abs()));
        let dz = max_abs_diff(&z, &z_ref);
        assert!(
            dz < 1e-4 * z_scale,
            "{name}.{probe}: |z - reference| = {dz}"
        );
    }
}

#[test]
fn vp_2d_matches_reference() {
    case(&VpSde::new(0.1, 20.0, 1000).unwrap(), "vp_2d", 0.7);
}

#[test]
fn vp_img_matches_reference() {
    case(&VpSde::new(0.1, 20.0, 1000).unwrap(), "vp_img", 0.5);
}

#[test]
fn ve_2d_matches_reference() {
    case(&VeSde::new(0.01, 50.0, 1000).unwrap(), "ve_2d", 0.7);
}

#[test]
fn subvp_2d_matches_reference() {
    case(&SubVpSde::new(0.1, 20.0, 1000).unwrap(), "subvp_2d", 0.7);
}
