//! Repeats one network evaluation for profiling (`perf record`, `valgrind`) and prints wall and
//! CPU seconds (user + sys of the process, all threads) per iteration.
//!
//! `cargo run --release --example nets_profile -- <ncsnpp|ddpmpp> <fwd|vjp> <batch> <iters>`

use std::time::Instant;

use candle_core::Var;
use score_nets::NcsnPpConfig;
use scoresde::report::cpu_seconds;

fn main() {
    // reuse freed tensor buffers instead of page-faulting new ones in (glibc)
    score_nets::retain_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let net = args.get(1).map(String::as_str).unwrap_or("ncsnpp");
    let mode = args.get(2).map(String::as_str).unwrap_or("fwd");
    let b: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let iters: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(5);
    let (cfg, positional) = match net {
        "ddpmpp" => (NcsnPpConfig::cifar10_ddpmpp_continuous(), true),
        _ => (NcsnPpConfig::cifar10_ncsnpp_continuous(), false),
    };
    let model = scoresde::report::bench_network(cfg).unwrap();
    let (x, l) = scoresde::report::bench_network_inputs(b, positional).unwrap();
    let v = x.sin().unwrap();
    let run = || {
        if mode == "vjp" {
            let xv = Var::from_tensor(&x).unwrap();
            let y = model.forward(xv.as_tensor(), &l).unwrap();
            let g = (y * &v).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(xv.as_tensor()).unwrap().sum_all().unwrap();
        } else {
            model.forward(&x, &l).unwrap().sum_all().unwrap();
        }
    };
    run();
    let (t0, c0) = (Instant::now(), cpu_seconds().unwrap_or(0.0));
    for _ in 0..iters {
        run();
    }
    let wall = t0.elapsed().as_secs_f64() / iters as f64;
    let cpu = (cpu_seconds().unwrap_or(0.0) - c0) / iters as f64;
    println!(
        "{net} {mode} b{b}: wall {:.1} ms, cpu {:.1} ms per iteration",
        wall * 1e3,
        cpu * 1e3
    );
}
