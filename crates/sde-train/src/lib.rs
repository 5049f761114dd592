//! # sde-train
//!
//! Training for score-based generative models through SDEs (Song et al., ICLR 2021), on candle:
//!
//! - **Losses** ([`TrainingLoss`]): continuous-time weighted denoising score matching
//!   ([`SdeLoss`], `get_sde_loss_fn`) with λ(t) = σ(t)² or g(t)² and optional importance
//!   sampling of t ([`ImportanceSampler`]); the discrete SMLD ([`SmldLoss`]) and DDPM
//!   ([`DdpmLoss`]) losses; sliced score matching ([`SlicedScoreMatching`]). Generic over any
//!   [`sde_core::Sde`] and any [`sde_core::ScoreModel`]; all randomness from a
//!   [`sde_core::noise::NoiseSource`]; each has a `loss_from_draws` taking explicit draws.
//! - **Optimisation**: [`Adam`] (torch semantics, warm-up, gradient-norm clipping) and [`Ema`]
//!   (the reference's `num_updates` warm-up), both checkpointable.
//! - **The loop** ([`Trainer`]): progress bar, JSON-lines log, EMA evaluation loss, hooks every
//!   k steps and at checkpoints (sample and write a PNG with [`save_image_grid`] there), and a
//!   gradient all-reduce seam ([`GradientReducer`]) for data-parallel training.
//! - **Checkpoints** ([`save_checkpoint`], [`Trainer::resume`]): safetensors with model, EMA,
//!   Adam moments, step, RNG state and config; atomic writes; resumption is bit-exact on CPU;
//!   damaged or mismatched files are typed errors.
//! - **Data**: 2-D toy distributions ([`Toy2d`]), CIFAR-10 binary, MNIST IDX, image folders,
//!   seeded shuffling ([`ShuffledBatches`]), flips, the reference's scalers, dequantisation.
//!
//! Train a small network on 8 Gaussians for a few steps, checkpoint, and resume exactly:
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{Module, VarBuilder, VarMap};
//! use sde_core::{ScoreModel, VpSde};
//! use sde_train::{SdeLoss, SdeLossOptions, Toy2d, ToyBatches, TrainConfig, Trainer};
//!
//! // Any network implementing sde_core::ScoreModel (score-nets' Mlp, NcsnPp, ...).
//! struct Net { l1: candle_nn::Linear, l2: candle_nn::Linear }
//! impl ScoreModel for Net {
//!     fn forward_t(&self, x: &Tensor, labels: &Tensor, _mode: sde_core::Mode<'_>) -> sde_core::Result<Tensor> {
//!         let t = (labels.unsqueeze(1)? / 999.0)?; // VP labels are 999 t
//!         let h = self.l1.forward(&Tensor::cat(&[x, &t], 1)?)?.tanh()?;
//!         Ok(self.l2.forward(&h)?)
//!     }
//! }
//! let build = |vm: &VarMap| -> candle_core::Result<Net> {
//!     let vb = VarBuilder::from_varmap(vm, DType::F32, &Device::Cpu);
//!     Ok(Net { l1: candle_nn::linear(3, 32, vb.pp("l1"))?, l2: candle_nn::linear(32, 2, vb.pp("l2"))? })
//! };
//! let sde = VpSde::default();
//! let options = SdeLossOptions { reduce_mean: true, ..Default::default() };
//! let config = TrainConfig { n_iters: 20, progress: false, ..Default::default() };
//! let dir = std::env::temp_dir().join(format!("sde-train-doc-{}", std::process::id()));
//!
//! let vm = VarMap::new();
//! let net = build(&vm)?;
//! let mut trainer = Trainer::new(&net, &vm, SdeLoss::new(&sde, options.clone())?, config.clone())?
//!     .with_checkpoint_dir(&dir)?;
//! let run = trainer.run(&mut ToyBatches::new(Toy2d::EightGaussians, 64), None)?;
//! assert_eq!(run.losses.len(), 20);
//!
//! // Later (another process): rebuild, resume, continue to 30 steps.
//! let vm2 = VarMap::new();
//! let net2 = build(&vm2)?;
//! let config2 = TrainConfig { n_iters: 30, ..config };
//! let mut resumed = Trainer::new(&net2, &vm2, SdeLoss::new(&sde, options)?, config2)?;
//! resumed.resume(&run.checkpoints[0])?;
//! assert_eq!(resumed.step(), 20);
//! assert_eq!(resumed.run(&mut ToyBatches::new(Toy2d::EightGaussians, 64), None)?.losses.len(), 10);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

mod checkpoint;
mod data;
mod datasets;
mod discrete;
mod ema;
mod error;
mod hooks;
mod importance;
mod loss;
mod mnist5k;
#[cfg(feature = "mpi")]
mod mpi_reducer;
#[cfg(feature = "nccl")]
mod nccl_reducer;
mod optim;
mod parallel;
mod ssm;
mod trainer;
mod transforms;

pub use checkpoint::{
    latest_checkpoint, load_checkpoint, load_weights, remove_stale_temp_files, save_checkpoint,
    write_atomic, Checkpoint, RngState, Weights, CHECKPOINT_FORMAT,
};
pub use data::{BatchSource, ShuffledBatches, Toy2d, ToyBatches};
pub use datasets::{
    load_cifar10, load_cifar10_dir, load_idx, load_image_folder, load_mnist_images,
    load_mnist_labels, resize_center_crop, save_image_grid, CIFAR10_RECORD,
};
pub use discrete::{draw_labels, DdpmLoss, SmldLoss};
pub use ema::Ema;
pub use error::{Error, Result};
pub use hooks::{HookInfo, HookSchedule};
pub use importance::ImportanceSampler;
pub use loss::{SdeLoss, SdeLossOptions, TrainingLoss};
pub use mnist5k::{mnist5k, Split, MNIST5K_README};
#[cfg(feature = "mpi")]
pub use mpi;
#[cfg(feature = "mpi")]
pub use mpi_reducer::MpiReducer;
#[cfg(feature = "nccl")]
pub use nccl_reducer::{nccl_id_via_file, NcclReducer};
pub use optim::{named_vars, Adam, AdamConfig, LrDecay, StepStats};
pub use parallel::{
    buffer_dtype, data_rng, eval_noise, step_noise, GradientReducer, LaunchEnv, ShardedBatches,
    SingleProcess,
};
pub use ssm::{Projection, SlicedScoreMatching, SsmOptions};
pub use trainer::{StepRecord, TrainConfig, TrainSummary, Trainer};
pub use transforms::{inverse_scaler, random_flip, scaler, uniform_dequantize};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
