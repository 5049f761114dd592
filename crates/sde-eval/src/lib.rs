//! # sde-eval
//!
//! Sample-quality metrics of the paper's tables, with pytorch-fid parity, and the machinery to
//! evaluate a sampler on tens of thousands of samples:
//!
//! - [`frechet_distance`] (FID) from [`GaussianStats`], accumulated by the streaming
//!   [`FeatureStats`] (running mean and co-moment in f64, exact Chan merges across shards);
//!   tr √(Σ₁Σ₂) through symmetric eigendecompositions ([`linalg`]);
//! - [`kid`] (unbiased polynomial-kernel MMD² over subsets, torch-fidelity's estimator),
//!   [`inception_score`] (splits, streaming [`InceptionScoreAccumulator`]) and
//!   [`precision_recall`] (Kynkäänniemi et al. 2019);
//! - [`FidInceptionV3`]: pytorch-fid's Inception-v3 (pool3 features, 1008-class logits,
//!   intermediate blocks), loading its released weight file in either `torch.save` format;
//! - [`FeatureExtractor`]: any network in place of Inception; reference statistics saved and
//!   loaded ([`GaussianStats::save`] / [`GaussianStats::load`], our safetensors layout or
//!   pytorch-fid's `.npz`);
//! - [`sample_sharded`]: K samples in shards with per-sample seeds (independent of batch and
//!   shard size), each shard written atomically, a killed run resumed; [`Summary`] records
//!   the metrics with n, seeds and the checkpoint's and feature network's sha256;
//! - [`bits_per_dim_sharded`]: bits/dim of a data set through the probability-flow ODE
//!   (8-bit uniform dequantisation, per-sample seeds, resumable shards), mean ± standard error;
//! - [`DigitClassifier`]: a small MNIST CNN with committed weights, the feature space of the
//!   MNIST reproduction ([`digit_report`]: class shares, confident share, Fréchet distance and
//!   KID against the test set beside the train-vs-test floor).
//!
//! Nothing in the workspace depends on this crate but examples and benches.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use sde_eval::{frechet_distance, GaussianStats};
//! let a = Tensor::new(&[[0f32, 1.], [1., 0.], [2., 2.], [0., 0.]], &Device::Cpu)?;
//! let sa = GaussianStats::from_features(&a)?;
//! assert!(frechet_distance(&sa, &sa)?.abs() < 1e-12);
//! # Ok::<(), sde_eval::Error>(())
//! ```
#![warn(missing_docs)]

mod bpd;
pub mod digits;
mod error;
mod features;
mod frechet;
pub mod inception;
mod inception_score;
mod kid;
pub mod linalg;
mod npz;
mod precision_recall;
mod shards;
mod stats;
mod stats_io;
mod summary;

pub use bpd::{bits_per_dim_sharded, BitsPerDim, BpdPlan, Dequantization, ShardedBitsPerDim};
pub use digits::{
    digit_report, digit_report_with, train_digit_classifier, DigitClassifier, DigitReport,
    DigitReportOptions, DigitTrainOptions, DigitTrainReport,
};
pub use error::{Error, Result};
pub use features::{FeatureExtractor, Features, FnExtractor};
pub use frechet::{frechet_distance, GaussianStats};
pub use inception::{FidInceptionV3, InceptionOutput};
pub use inception_score::{inception_score, InceptionScoreAccumulator};
pub use kid::{kid, polynomial_mmd2, KidOptions, MeanStd};
pub use precision_recall::{precision_recall, PrecisionRecall};
pub use shards::{sample_sharded, sample_sharded_rank, Progress, ShardPlan, ShardedFeatures};
pub use stats::FeatureStats;
pub use stats_io::StatsFormat;
pub use summary::{Metrics, Summary};
