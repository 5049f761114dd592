//! One call from a reference config (`ReferenceConfig`): the parity vectors' configs give the
//! right network, SDE, label convention and sampling settings, whole file or `config` member;
//! keys outside the reference's schema, non-objects, missing or mistyped keys and
//! `attn_resolutions` off the resolution ladder are typed errors naming the culprit.

use std::path::PathBuf;

use score_nets::{
    DdpmConfig, Error, NcsnPpConfig, NetworkConfig, ReferenceConfig, ReferenceSde, SamplingSettings,
};
use sde_core::Sde;
use serde_json::{json, Value};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testvectors/");

fn file(name: &str) -> Value {
    let p = PathBuf::from(DIR).join(name);
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn config_err(r: score_nets::Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(Error::Config(m)) => m,
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

#[test]
fn parity_configs_give_network_sde_convention_and_sampling() {
    for (name, sde, eps) in [
        ("net_ncsnpp_ve.json", "ve", 1e-5),
        ("net_ddpmpp_vp.json", "vp", 1e-3),
        ("net_ddpm_vp.json", "vp", 1e-3),
    ] {
        let whole = file(name);
        let from_file = ReferenceConfig::from_json(&whole).unwrap();
        let from_member = ReferenceConfig::from_json(&whole["config"]).unwrap();
        assert_eq!(
            from_file, from_member,
            "{name}: whole file == `config` member"
        );
        let r = from_file;
        match (name, r.network().unwrap()) {
            ("net_ncsnpp_ve.json", NetworkConfig::NcsnPp(c)) => {
                assert_eq!(c, NcsnPpConfig::small_ncsnpp_ve(), "{name}")
            }
            ("net_ddpmpp_vp.json", NetworkConfig::NcsnPp(c)) => {
                assert_eq!(c, NcsnPpConfig::small_ddpmpp_vp(), "{name}")
            }
            ("net_ddpm_vp.json", NetworkConfig::Ddpm(c)) => {
                assert_eq!(c, DdpmConfig::small_test(), "{name}")
            }
            (n, other) => panic!("{n}: wrong network {other:?}"),
        }
        match (sde, r.sde().unwrap()) {
            ("ve", ReferenceSde::Ve(s)) => {
                assert_eq!((s.sigma_min(), s.sigma_max(), s.n()), (0.01, 50.0, 1000))
            }
            ("vp", ReferenceSde::Vp(s)) => {
                assert_eq!((s.beta_min(), s.beta_max(), s.n()), (0.1, 20.0, 1000))
            }
            (want, got) => panic!("{name}: expected {want}, got {got:?}"),
        }
        assert!(r.continuous().unwrap(), "{name}");
        assert_eq!(
            r.sampling().unwrap(),
            SamplingSettings {
                method: None,
                predictor: None,
                corrector: None,
                snr: 0.16,
                n_steps_each: 1,
                noise_removal: true,
                probability_flow: false,
                sampling_eps: eps,
            },
            "{name}"
        );
    }
}

#[test]
fn sampling_names_and_sub_vp_are_read() {
    let mut v = file("net_ddpmpp_vp.json")["config"].clone();
    v["training"]["sde"] = "subvpsde".into();
    v["training"]["continuous"] = false.into();
    v["sampling"]["method"] = "pc".into();
    v["sampling"]["predictor"] = "reverse_diffusion".into();
    v["sampling"]["corrector"] = "langevin".into();
    v["sampling"]["snr"] = 0.27.into();
    let r = ReferenceConfig::from_json(&v).unwrap();
    assert!(matches!(r.sde().unwrap(), ReferenceSde::SubVp(_)));
    assert!(!r.continuous().unwrap());
    let s = r.sampling().unwrap();
    assert_eq!(s.method, Some(score_nets::SamplingMethod::Pc));
    assert_eq!(
        s.predictor,
        Some(score_nets::PredictorName::ReverseDiffusion)
    );
    assert_eq!(s.corrector, Some(score_nets::CorrectorName::Langevin));
    assert_eq!(s.snr, 0.27);
    v["sampling"]["predictor"] = "reverse_difusion".into();
    let m = config_err(ReferenceConfig::from_json(&v).unwrap().sampling());
    assert!(m.contains("config.sampling.predictor"), "{m}");
}

#[test]
fn keys_outside_the_schema_are_rejected_known_unused_ones_accepted() {
    let base = file("net_ncsnpp_ve.json")["config"].clone();
    // Known to the reference but unused here: accepted.
    let mut known = base.clone();
    known["training"]["continuouse"] = true.into(); // sic, configs/ve/ncsn/*.py
    known["model"]["sigma_begin"] = 50.into();
    known["data"]["category"] = "bedroom".into();
    known["optim"]["amsgrad"] = false.into();
    let r = ReferenceConfig::from_json(&known).unwrap();
    assert_eq!(
        NcsnPpConfig::from_reference_json(&known).unwrap(),
        match r.network().unwrap() {
            NetworkConfig::NcsnPp(c) => c,
            other => panic!("{other:?}"),
        }
    );
    // Misspelt keys, at every level: an error naming the key (not the CIFAR-10 preset).
    for (path, key) in [
        (vec!["model"], "nff"),
        (vec!["data"], "img_size"),
        (vec!["training"], "sdee"),
        (vec![], "modle"),
    ] {
        let mut v = base.clone();
        let mut obj = &mut v;
        for p in &path {
            obj = &mut obj[*p];
        }
        obj[key] = 1.into();
        let want = std::iter::once("config")
            .chain(path.iter().copied())
            .chain([key])
            .collect::<Vec<_>>()
            .join(".");
        for m in [
            config_err(NcsnPpConfig::from_reference_json(&v)),
            config_err(ReferenceConfig::from_json(&json!({ "config": v.clone() }))),
        ] {
            assert!(m.contains(&format!("`{want}`")), "{want}: {m}");
        }
    }
}

#[test]
fn non_objects_missing_and_mistyped_keys_are_typed_errors() {
    let base = file("net_ncsnpp_ve.json")["config"].clone();
    for bad in [json!([]), json!("config"), json!(3), Value::Null] {
        let m = config_err(NcsnPpConfig::from_reference_json(&bad));
        assert!(m.contains("expected a JSON object"), "{m}");
        assert!(DdpmConfig::from_reference_json(&bad).is_err());
    }
    let m = config_err(ReferenceConfig::from_json(&json!({ "config": [1] })));
    assert!(m.contains("`config` member"), "{m}");
    let m = config_err(ReferenceConfig::from_json(&json!({ "model": 3 })));
    assert!(m.contains("config.model") && m.contains("object"), "{m}");
    let m = config_err(ReferenceConfig::from_json(&json!({ "data": {} })));
    assert!(m.contains("no `model` section"), "{m}");

    let mut v = base.clone();
    v["model"].as_object_mut().unwrap().remove("nf");
    let m = config_err(NcsnPpConfig::from_reference_json(&v));
    assert!(m.contains("missing `config.model.nf`"), "{m}");
    let mut v = base.clone();
    v["model"]["ch_mult"] = "1,2,2".into();
    let m = config_err(NcsnPpConfig::from_reference_json(&v));
    assert!(m.contains("config.model.ch_mult"), "{m}");
    let mut v = base.clone();
    v["model"]["progressive"] = "output_skipp".into();
    let m = config_err(NcsnPpConfig::from_reference_json(&v));
    assert!(m.contains("config.model.progressive"), "{m}");
    // The wrong network.
    let m = config_err(DdpmConfig::from_reference_json(&base));
    assert!(m.contains("not `ddpm`"), "{m}");
    let mut v = base.clone();
    v["model"]["name"] = "ncsnv2".into();
    let m = config_err(ReferenceConfig::from_json(&v).unwrap().network());
    assert!(m.contains("ncsnv2"), "{m}");
    let mut v = base.clone();
    v["training"]["sde"] = "vesd".into();
    let m = config_err(ReferenceConfig::from_json(&v).unwrap().sde());
    assert!(m.contains("vesd"), "{m}");
}

#[test]
fn attn_resolutions_off_the_ladder_are_rejected() {
    // small presets: resolutions 16, 8, 4 (NCSN++) and 16, 8 (DDPM)
    let c = NcsnPpConfig {
        attn_resolutions: vec![8, 12],
        ..NcsnPpConfig::small_ncsnpp_ve()
    };
    let m = config_err(c.validate());
    assert!(m.contains("attn_resolutions contains 12"), "{m}");
    let c = DdpmConfig {
        attn_resolutions: vec![32],
        ..DdpmConfig::small_test()
    };
    let m = config_err(c.validate());
    assert!(m.contains("attn_resolutions contains 32"), "{m}");
    // through the reference config too
    let mut v = file("net_ddpm_vp.json");
    v["config"]["model"]["attn_resolutions"] = json!([5]);
    let m = config_err(DdpmConfig::from_reference_json(&v));
    assert!(m.contains("attn_resolutions contains 5"), "{m}");
    // the presets' ladders accept their own levels, and no attention at all
    for r in [vec![], vec![16], vec![4, 8, 16]] {
        NcsnPpConfig {
            attn_resolutions: r,
            ..NcsnPpConfig::small_ncsnpp_ve()
        }
        .validate()
        .unwrap();
    }
}
