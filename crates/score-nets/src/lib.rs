//! # score-nets
//!
//! Score networks for scoresde-rs in Candle: NCSN++ and DDPM++ (the paper's `ncsnpp` model with
//! its whole configuration surface), the original DDPM network, and a small MLP for
//! low-dimensional data. Every network implements [`sde_core::ScoreModel`], so
//! [`sde_core::ScoreModelFn`] turns it into a score function with the right time labels.
//! Parameter names follow the reference PyTorch `state_dict`, so its checkpoints load strictly.
#![warn(missing_docs)]

pub mod checkpoint;
mod config;
mod ddpm;
mod error;
pub mod init;
pub mod layers;
mod mlp;
mod ncsnpp;

pub use config::*;
pub use ddpm::*;
pub use error::{Error, Result};
pub use mlp::*;
pub use ncsnpp::*;
