//! # sde-train
//!
//! Training for score-based SDE models (Song et al., ICLR 2021).
#![warn(missing_docs)]

mod checkpoint;
mod data;
mod datasets;
mod discrete;
mod ema;
mod error;
mod importance;
mod loss;
mod optim;
mod parallel;
mod ssm;
mod trainer;
mod transforms;

pub use checkpoint::{
    load_checkpoint, load_weights, save_checkpoint, write_atomic, Checkpoint, RngState, Weights,
    CHECKPOINT_FORMAT,
};
pub use data::{BatchSource, ShuffledBatches, Toy2d, ToyBatches};
pub use datasets::{
    image_grid, load_cifar10, load_cifar10_dir, load_idx, load_image_folder, load_mnist_images,
    load_mnist_labels, resize_center_crop, CIFAR10_RECORD,
};
pub use discrete::{draw_labels, DdpmLoss, SmldLoss};
pub use ema::Ema;
pub use error::{Error, Result};
pub use importance::ImportanceSampler;
pub use loss::{SdeLoss, SdeLossOptions, TrainingLoss};
pub use optim::{named_vars, Adam, AdamConfig, StepStats};
pub use parallel::GradientReducer;
pub use ssm::{Projection, SlicedScoreMatching, SsmOptions};
pub use trainer::{
    latest_checkpoint, HookInfo, HookSchedule, StepRecord, TrainConfig, TrainSummary, Trainer,
};
pub use transforms::{inverse_scaler, random_flip, scaler, uniform_dequantize};
