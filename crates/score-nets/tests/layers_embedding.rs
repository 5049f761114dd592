//! Embeddings and seeded init against `layers.safetensors` (reference `layers.get_timestep_embedding`,
//! `layerspp.GaussianFourierProjection`).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use score_nets::init::{default_init, default_init_bound, seeded_var_builder};
use score_nets::layers::{get_timestep_embedding, GaussianFourierProjection};

const LAYERS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testvectors/layers.safetensors"
);

fn load() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(LAYERS, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn timestep_embedding_matches_reference_even_and_odd() {
    let v = load();
    let t = &v["timestep_embedding.t"];
    for (dim, key) in [
        (16, "timestep_embedding.dim16"),
        (15, "timestep_embedding.dim15"),
    ] {
        let got = get_timestep_embedding(t, dim).unwrap();
        let want = &v[key];
        let d = max_abs_diff(&got, want);
        assert!(d <= 2e-6, "dim {dim}: max abs diff {d}");
    }
    // the odd dimension is zero-padded
    let got = get_timestep_embedding(t, 15).unwrap();
    let last = got
        .narrow(1, 14, 1)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap();
    assert_eq!(last.to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn timestep_embedding_rejects_bad_input() {
    let t = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    assert!(get_timestep_embedding(&t, 3).is_err());
    assert!(get_timestep_embedding(&t.unsqueeze(0).unwrap(), 8).is_err());
}

#[test]
fn fourier_projection_matches_reference() {
    let v = load();
    let mut ts = HashMap::new();
    ts.insert("W".to_string(), v["fourier.W"].clone());
    let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
    let fp = GaussianFourierProjection::new(8, 16.0, vb).unwrap();
    let got = fp.forward(&v["fourier.log_sigma"]).unwrap();
    let want = &v["fourier.out"];
    // arguments reach |2 pi W log sigma| ~ 1e3: sin/cos of float32 arguments agree to a few ulps
    // of the argument.
    let d = max_abs_diff(&got, want);
    assert!(d <= 1e-4, "max abs diff {d}");
}

#[test]
fn seeded_var_builder_is_reproducible_and_order_independent() {
    let dev = Device::Cpu;
    let hints = [
        (
            "a.weight",
            (16usize, 8usize),
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        ),
        ("b.weight", (8, 8), Init::Uniform { lo: -0.5, up: 0.5 }),
        ("c.weight", (4, 8), candle_nn::init::DEFAULT_KAIMING_NORMAL),
    ];
    let build = |order: &[usize], seed: u64| {
        let vm = VarMap::new();
        let vb = seeded_var_builder(&vm, seed, DType::F32, &dev);
        for &i in order {
            let (n, s, h) = hints[i];
            vb.get_with_hints(s, n, h).unwrap();
        }
        let data = vm.data().lock().unwrap();
        let mut out: Vec<(String, Vec<f32>)> = data
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    };
    let a = build(&[0, 1, 2], 5);
    let b = build(&[2, 0, 1], 5);
    let c = build(&[0, 1, 2], 6);
    assert_eq!(a, b, "same seed, different order: identical parameters");
    assert_ne!(
        a[0].1, c[0].1,
        "a different seed gives different parameters"
    );
    // the draws follow the hints
    let unif = &a[1].1;
    assert!(unif.iter().all(|x| (-0.5..0.5).contains(x)));
    let n = a[0].1.len() as f32;
    let mean = a[0].1.iter().sum::<f32>() / n;
    let var = a[0].1.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n;
    assert!(
        mean.abs() < 0.3 && (var - 1.0).abs() < 0.4,
        "mean {mean} var {var}"
    );
}

#[test]
fn default_init_is_fan_avg_uniform() {
    // variance_scaling(1, 'fan_avg', 'uniform') for a conv weight (out=12, in=8, 3, 3):
    // fan_in = 72, fan_out = 108, bound = sqrt(3 / 90)
    let s: candle_core::Shape = (12, 8, 3, 3).into();
    let b = default_init_bound(1.0, &s);
    assert!((b - (3.0f64 / 90.0).sqrt()).abs() < 1e-15);
    // init_scale = 0 is replaced by 1e-10
    let b0 = default_init_bound(0.0, &s);
    assert!((b0 - (3e-10f64 / 90.0).sqrt()).abs() < 1e-20);
    match default_init(1.0, &s) {
        Init::Uniform { lo, up } => assert!(lo == -b && up == b),
        _ => panic!("default_init must be uniform"),
    }
    // and drawn weights respect the bound and have the variance scale / fan_avg
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 1, DType::F64, &Device::Cpu);
    let w = vb
        .get_with_hints(s.clone(), "w", default_init(1.0, &s))
        .unwrap();
    let v: Vec<f64> = w.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| x.abs() <= b));
    let var = v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64;
    assert!((var / (1.0 / 90.0) - 1.0).abs() < 0.15, "variance {var}");
}

#[test]
fn fourier_w_is_not_trained() {
    // The reference freezes W (requires_grad = False): a loss through the projection must give
    // no gradient to it, even when it lives in a VarMap.
    use candle_core::{DType, Device, Tensor};
    let vm = candle_nn::VarMap::new();
    let vb = score_nets::init::seeded_var_builder(&vm, 3, DType::F32, &Device::Cpu);
    let proj = score_nets::layers::GaussianFourierProjection::new(4, 16.0, vb.pp("fp")).unwrap();
    let x = Tensor::new(&[0.3f32, -1.2], &Device::Cpu).unwrap();
    let loss = proj.forward(&x).unwrap().sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let vars = vm.all_vars();
    assert_eq!(vars.len(), 1, "W is still a saved variable");
    assert!(
        grads.get(vars[0].as_tensor()).is_none(),
        "W received a gradient"
    );
}
