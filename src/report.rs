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
