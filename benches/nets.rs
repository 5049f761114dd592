//! NCSN++ (VE) and DDPM++ (VP) CIFAR-10 presets on the CPU: forward, and forward + input vjp
//! (what the likelihood's divergence estimator needs). Baselines: `shared/baselines/`.
//!
//! Short profile: `cargo bench --bench nets` (sample size 10, ~2 s per case).

use std::time::Duration;

use candle_core::{Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use score_nets::{NcsnPp, NcsnPpConfig};

fn build(cfg: NcsnPpConfig) -> NcsnPp {
    scoresde::report::bench_network(cfg).expect("network builds")
}

fn inputs(b: usize, positional: bool) -> (Tensor, Tensor) {
    scoresde::report::bench_network_inputs(b, positional).expect("inputs")
}

fn vjp(net: &NcsnPp, x: &Tensor, l: &Tensor, v: &Tensor) -> Tensor {
    let xv = Var::from_tensor(x).unwrap();
    let y = net.forward(xv.as_tensor(), l).unwrap();
    let g = (y * v).unwrap().sum_all().unwrap().backward().unwrap();
    g.get(xv.as_tensor()).unwrap().clone()
}

fn bench(c: &mut Criterion) {
    score_nets::retain_freed_memory();
    let filter = std::env::var("NETS_BENCH_ONLY").unwrap_or_default();
    for (name, cfg, positional) in [
        (
            "ncsnpp_ve",
            NcsnPpConfig::cifar10_ncsnpp_continuous(),
            false,
        ),
        ("ddpmpp_vp", NcsnPpConfig::cifar10_ddpmpp_continuous(), true),
    ] {
        if !filter.is_empty() && !name.contains(&filter) {
            continue;
        }
        let net = build(cfg);
        let mut g = c.benchmark_group(format!("cpu_{name}_32x32"));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for b in [1usize, 8] {
            let (x, l) = inputs(b, positional);
            let v = x.sin().unwrap();
            g.bench_function(format!("forward_b{b}"), |bn| {
                bn.iter(|| net.forward(&x, &l).unwrap())
            });
            g.bench_function(format!("forward_vjp_b{b}"), |bn| {
                bn.iter(|| vjp(&net, &x, &l, &v))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
