//! NCSN++ / DDPM++ parity with the reference PyTorch network (`net_ncsnpp_ve.*`,
//! `net_ddpmpp_vp.*`): same weights (PyTorch `state_dict` names), same inputs and labels, outputs
//! and every module's activation compared at the README's tolerances.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use score_nets::{NcsnPp, NcsnPpConfig};

fn path(name: &str) -> String {
    format!("{}/../../testvectors/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn max_abs(a: &Tensor) -> f64 {
    a.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

struct Case {
    net: NcsnPp,
    io: HashMap<String, Tensor>,
}

fn load(name: &str) -> Case {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path(&format!("{name}.json"))).unwrap())
            .unwrap();
    let cfg = NcsnPpConfig::from_reference_json(&json["config"]).unwrap();
    let weights =
        candle_core::safetensors::load(path(&format!("{name}.weights.safetensors")), &Device::Cpu)
            .unwrap();
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let net = NcsnPp::new(cfg, vb).unwrap();
    let io = candle_core::safetensors::load(path(&format!("{name}.io.safetensors")), &Device::Cpu)
        .unwrap();
    Case { net, io }
}

/// Compares the output and every recorded activation with `tol * max|want|`.
fn check(name: &str, rel_tol: f64) {
    let Case { net, io } = load(name);
    let (out, acts) = net
        .forward_with_activations(&io["x"], &io["labels"])
        .unwrap();
    let mut want_acts: Vec<(&String, &Tensor)> =
        io.iter().filter(|(k, _)| k.starts_with("act.")).collect();
    want_acts.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(
        acts.len(),
        want_acts.len(),
        "{name}: number of module calls"
    );
    for ((got_name, got), (key, want)) in acts.iter().zip(&want_acts) {
        let want_name = &key[8..];
        assert_eq!(got_name, want_name, "{name}: call order");
        let err = max_abs(&(got - *want).unwrap()) / max_abs(want);
        assert!(
            err <= rel_tol,
            "{name}: {key}: relative error {err:e} > {rel_tol:e}"
        );
    }
    let want = &io["output"];
    let err = max_abs(&(&out - want).unwrap()) / max_abs(want);
    assert!(
        err <= rel_tol,
        "{name}: output relative error {err:e} > {rel_tol:e}"
    );
    // the same against the float64 run
    let err64 =
        max_abs(&(out.to_dtype(DType::F64).unwrap() - &io["output_f64"]).unwrap()) / max_abs(want);
    assert!(
        err64 <= rel_tol,
        "{name}: output vs f64 relative error {err64:e}"
    );
    eprintln!("{name}: max err / max|out| = {err:.3e} (vs f64 {err64:.3e})");
}

#[test]
fn ncsnpp_ve_matches_reference() {
    check("net_ncsnpp_ve", 1e-4);
}

#[test]
fn ddpmpp_vp_matches_reference() {
    check("net_ddpmpp_vp", 2e-5);
    // the sinusoidal embedding of the labels the network received
    let Case { io, .. } = load("net_ddpmpp_vp");
    let e = score_nets::layers::get_timestep_embedding(&io["labels"], 16).unwrap();
    let err = max_abs(&(&e - &io["temb_input"]).unwrap());
    assert!(err <= 1e-5, "temb_input: {err:e}");
}

/// Through `sde_core::ScoreModelFn` (`get_score_fn`): labels from `t` and output scaling per SDE.
#[test]
fn score_fn_matches_reference_score() {
    use sde_core::{ScoreFn, ScoreModelFn, VeSde, VpSde};
    let ve = VeSde::new(0.01, 50.0, 1000).unwrap();
    let vp = VpSde::new(0.1, 20.0, 1000).unwrap();
    for name in ["net_ncsnpp_ve", "net_ddpmpp_vp"] {
        let Case { net, io } = load(name);
        let (t, x) = (&io["t"], &io["x"]);
        let score = if name.contains("ve") {
            ScoreModelFn::new(&ve, &net, true).score(x, t).unwrap()
        } else {
            ScoreModelFn::new(&vp, &net, true).score(x, t).unwrap()
        };
        let want = &io["score"];
        let err = max_abs(&(&score - want).unwrap()) / max_abs(want);
        let tol = if name.contains("ve") { 1e-4 } else { 2e-5 };
        assert!(err <= tol, "{name}: score relative error {err:e}");
    }
}

/// Input-gradient (the likelihood's vjp) through the whole network: autograd against a central
/// finite difference of the output along a random direction.
#[test]
fn input_vjp_matches_finite_difference() {
    let Case { net, io } = load("net_ddpmpp_vp");
    let x = io["x"].to_dtype(DType::F64).unwrap();
    // f64 network: reload the weights in f64
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path("net_ddpmpp_vp.json")).unwrap())
            .unwrap();
    let cfg = NcsnPpConfig::from_reference_json(&json["config"]).unwrap();
    let weights =
        candle_core::safetensors::load(path("net_ddpmpp_vp.weights.safetensors"), &Device::Cpu)
            .unwrap();
    let net64 = NcsnPp::new(
        cfg,
        VarBuilder::from_tensors(weights, DType::F64, &Device::Cpu),
    )
    .unwrap();
    drop(net);
    let labels = io["labels"].to_dtype(DType::F64).unwrap();
    let v = (x.ones_like().unwrap() * 0.5).unwrap().sin().unwrap(); // fixed cotangent
    let d = x.cos().unwrap(); // fixed direction
    let var = candle_core::Var::from_tensor(&x).unwrap();
    let y = net64.forward(var.as_tensor(), &labels).unwrap();
    let grads = (y * &v).unwrap().sum_all().unwrap().backward().unwrap();
    let g = grads.get(var.as_tensor()).unwrap();
    let vjp_d = (g * &d)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let h = 1e-4;
    let f = |s: f64| {
        let xs = (&x + (&d * s).unwrap()).unwrap();
        (net64.forward(&xs, &labels).unwrap() * &v)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let fd = (f(h) - f(-h)) / (2.0 * h);
    assert!(
        (vjp_d - fd).abs() <= 1e-6 * fd.abs().max(1.0),
        "vjp {vjp_d} vs fd {fd}"
    );
}
