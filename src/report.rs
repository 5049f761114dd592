//! Small helpers the examples share: progress bars that hide themselves when stderr is not a
//! terminal, the `summary.json` writer, host copies of tensors and pixel-art upscaling of tiny
//! image grids.

use std::io::IsTerminal;
use std::path::Path;

use candle_core::{DType, Tensor};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar of `len` steps with a message, drawn on stderr only when stderr is a terminal
/// (so CI logs and tests stay clean).
pub fn progress(len: u64, msg: impl Into<String>) -> ProgressBar {
    let pb = if std::io::stderr().is_terminal() {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>28} [{bar:30}] {pos}/{len} {elapsed_precise}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg.into());
    pb
}

/// A spinner for work without a step count (it ticks on its own).
pub fn spinner(msg: impl Into<String>) -> ProgressBar {
    let pb = if std::io::stderr().is_terminal() {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    pb.set_message(msg.into());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// Writes `value` as pretty JSON to `dir/summary.json`.
pub fn write_summary(dir: &Path, value: &serde_json::Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("summary.json"), text)
}

/// All elements of `x` as host f64 values, row-major.
pub fn host(x: &Tensor) -> candle_core::Result<Vec<f64>> {
    x.to_dtype(DType::F64)?.flatten_all()?.to_vec1()
}

/// Mean of a slice (0 for an empty one).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Enlarges an image by an integer `factor` with nearest-neighbour sampling, so an 8×8 image
/// stays crisp in a viewer.
pub fn upscale(img: &RgbImage, factor: u32) -> RgbImage {
    let f = factor.max(1);
    image::imageops::resize(
        img,
        img.width() * f,
        img.height() * f,
        image::imageops::FilterType::Nearest,
    )
}

/// The median wall time of `n` calls of `f` in milliseconds, after `warm` untimed calls (the
/// bench binaries' figure; `n` ≥ 1).
pub fn median_ms(mut f: impl FnMut(), n: usize, warm: usize) -> f64 {
    for _ in 0..warm {
        f();
    }
    let mut ts: Vec<f64> = (0..n.max(1))
        .map(|_| {
            let t0 = std::time::Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    ts[ts.len() / 2]
}

/// CPU time (user + system, all threads) of this process so far in seconds, from
/// `/proc/self/stat` (10 ms resolution; `None` where there is no procfs). On a shared machine
/// the wall time depends on the load, the CPU time much less: the bench binaries report both.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// A CIFAR-10 preset with seeded initial weights reloaded as constants (no parameter
/// gradients, as in a likelihood evaluation): what the network benches time.
pub fn bench_network(cfg: score_nets::NcsnPpConfig) -> score_nets::Result<score_nets::NcsnPp> {
    use candle_core::Device;
    let dev = Device::Cpu;
    let vm = candle_nn::VarMap::new();
    score_nets::NcsnPp::new(
        cfg.clone(),
        score_nets::init::seeded_var_builder(&vm, 0, DType::F32, &dev),
    )?;
    let ts: std::collections::HashMap<String, Tensor> = vm
        .data()
        .lock()
        .map_err(|_| score_nets::Error::Input("poisoned VarMap lock".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    score_nets::NcsnPp::new(
        cfg,
        candle_nn::VarBuilder::from_tensors(ts, DType::F32, &dev),
    )
}

/// Seeded bench inputs of a 32x32 RGB network at batch `b`: x ~ N(0, I) and time labels
/// (positional-embedding labels 100 + 80 i for DDPM++, σ-like labels 0.5 + i for NCSN++).
pub fn bench_network_inputs(b: usize, positional: bool) -> sde_core::Result<(Tensor, Tensor)> {
    use rand::SeedableRng;
    let dev = candle_core::Device::Cpu;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let x =
        sde_core::noise::NoiseSource::randn(&mut rng, &(b, 3, 32, 32).into(), &dev, DType::F32)?;
    let l: Vec<f32> = (0..b)
        .map(|i| {
            if positional {
                100.0 + 80.0 * i as f32
            } else {
                0.5 + i as f32
            }
        })
        .collect();
    Ok((x, Tensor::new(l, &dev)?))
}
