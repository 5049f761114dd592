//! Trains the MNIST digit classifier whose weights `sde-eval` embeds
//! (`crates/sde-eval/data/digit_classifier.safetensors`, [`sde_eval::DigitClassifier::embedded`]):
//! a small seeded CNN on the 4,000 MNIST-5k train images, deterministic for a seed, with its
//! accuracy on the 1,000 held-out test images. Never tuned on generated samples: the MNIST
//! examples only read its features.
//!
//! `cargo run --release --example train_digit_classifier -- --install` regenerates the
//! committed weights (a few minutes on 2 cores); `--quick` is a CI-sized run.

use std::collections::HashMap;
use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use sde_eval::{train_digit_classifier, DigitClassifier, DigitTrainOptions};
use sde_train::{mnist5k, Split};

#[derive(Parser, Debug)]
#[command(
    about = "Train the MNIST-5k digit classifier used as the feature network of the MNIST reproduction"
)]
struct Args {
    /// Optimisation steps.
    #[arg(long, default_value_t = DigitTrainOptions::default().steps)]
    steps: usize,
    /// Images per step.
    #[arg(long, default_value_t = DigitTrainOptions::default().batch_size)]
    batch: usize,
    /// Peak learning rate (cosine decay to 0).
    #[arg(long, default_value_t = DigitTrainOptions::default().lr)]
    lr: f64,
    /// Largest random shift of a training image, in pixels.
    #[arg(long, default_value_t = DigitTrainOptions::default().max_shift)]
    max_shift: f64,
    /// Largest random rotation, in degrees.
    #[arg(long, default_value_t = DigitTrainOptions::default().max_rotation)]
    max_rotation: f64,
    /// Largest random relative scaling.
    #[arg(long, default_value_t = DigitTrainOptions::default().max_scale)]
    max_scale: f64,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = DigitTrainOptions::default().weight_decay)]
    weight_decay: f64,
    /// Hold out the last N train images and report the accuracy on them (for choosing
    /// settings without looking at the test split; the weights are then not the committed ones).
    #[arg(long, default_value_t = 0)]
    validation: usize,
    /// Seed of the initialisation, shuffling and shifts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory for digit_classifier.safetensors and summary.json.
    #[arg(long, default_value = "target/examples/train_digit_classifier")]
    out: PathBuf,
    /// Also write the weights to crates/sde-eval/data/digit_classifier.safetensors (the
    /// embedded copy).
    #[arg(long)]
    install: bool,
    /// A CI-sized run (30 steps; the accuracy is then far below the committed weights').
    #[arg(long)]
    quick: bool,
}

fn main() -> Result<(), Box<dyn Error>> {
    // reuse freed tensor buffers instead of page-faulting new ones in (glibc)
    score_nets::retain_freed_memory();
    let a = Args::parse();
    // Small tensors: one candle thread is faster than two on a shared machine (set
    // CANDLE_NUM_THREADS to override); the result does not depend on it.
    scoresde::toy::single_threaded_candle();
    let (train_x, train_y) = mnist5k(Split::Train)?;
    let n_fit = train_y
        .len()
        .checked_sub(a.validation)
        .filter(|&n| n > 0)
        .ok_or("--validation must be below the 4,000 train images")?;
    let (val_x, val_y) = (
        train_x.narrow(0, n_fit, a.validation)?,
        train_y[n_fit..].to_vec(),
    );
    let (train_x, train_y) = (train_x.narrow(0, 0, n_fit)?, train_y[..n_fit].to_vec());
    let (test_x, test_y) = mnist5k(Split::Test)?;
    let opts = DigitTrainOptions {
        steps: if a.quick { a.steps.min(30) } else { a.steps },
        batch_size: a.batch,
        lr: a.lr,
        max_shift: a.max_shift,
        max_rotation: a.max_rotation,
        max_scale: a.max_scale,
        weight_decay: a.weight_decay,
        progress: !a.quick,
        ..Default::default()
    };
    println!(
        "training the digit classifier: {} steps of {} on {} MNIST-5k train images (seed {})",
        opts.steps,
        opts.batch_size,
        train_y.len(),
        a.seed
    );
    let t0 = Instant::now();
    let (net, report) = train_digit_classifier(&train_x, &train_y, &opts, a.seed)?;
    let wall = t0.elapsed().as_secs_f64();
    let validation_accuracy = if a.validation > 0 {
        let v = net.accuracy(&val_x, &val_y)?;
        println!(
            "validation accuracy {v:.4} on the last {} train images (test split not looked at)",
            a.validation
        );
        Some(v)
    } else {
        None
    };
    // A validation run chooses settings: it does not look at the test split.
    let test_accuracy = if a.validation == 0 {
        Some(net.accuracy(&test_x, &test_y)?)
    } else {
        None
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let k = (report.losses.len() / 2).clamp(1, 50);
    let (first, last) = (
        mean(&report.losses[..k]),
        mean(&report.losses[report.losses.len() - k..]),
    );
    println!(
        "{:.1} s; loss {first:.4} (first {k} steps) -> {last:.4} (last {k}); train accuracy {:.4}",
        wall, report.train_accuracy,
    );
    if let Some(t) = test_accuracy {
        println!("test accuracy {t:.4} on {} images", test_y.len());
    }
    std::fs::create_dir_all(&a.out)?;
    let meta: HashMap<String, String> = [
        (
            "format".to_string(),
            "sde-eval-digit-classifier-v1".to_string(),
        ),
        ("seed".to_string(), a.seed.to_string()),
        ("options".to_string(), serde_json::to_string(&opts)?),
        (
            "train_accuracy".to_string(),
            report.train_accuracy.to_string(),
        ),
        ("test_accuracy".to_string(), format!("{test_accuracy:?}")),
        (
            "data".to_string(),
            "MNIST-5k (sde_train::mnist5k): 4,000 train / 1,000 test".to_string(),
        ),
    ]
    .into_iter()
    .collect();
    let weights = a.out.join("digit_classifier.safetensors");
    net.save(&weights, Some(meta.clone()))?;
    let reloaded = DigitClassifier::load(&weights, &candle_core::Device::Cpu)?;
    let sha = reloaded.weights_sha256().unwrap_or_default();
    if a.install {
        let dst = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("crates/sde-eval/data/digit_classifier.safetensors");
        std::fs::copy(&weights, &dst)?;
        println!("installed as {}", dst.display());
    }
    let summary = serde_json::json!({
        "test_accuracy": test_accuracy,
        "validation_accuracy": validation_accuracy,
        "n_validation": a.validation,
        "n_test": test_y.len(),
        "train_accuracy": report.train_accuracy,
        "n_train": report.n_train,
        "epochs": report.epochs,
        "loss_first": first,
        "loss_last": last,
        "steps": opts.steps,
        "seed": a.seed,
        "options": opts,
        "wall_seconds": wall,
        "weights": weights.display().to_string(),
        "weights_sha256": sha,
        "weights_bytes": std::fs::metadata(&weights)?.len(),
    });
    scoresde::report::write_summary(&a.out, &summary)?;
    println!(
        "weights: {} (sha256 {sha}); summary: {}",
        weights.display(),
        a.out.join("summary.json").display()
    );
    Ok(())
}
