//! Weights in and out: strict loading, safetensors, and the reference's own checkpoints.
//!
//! Parameter names are the reference PyTorch `state_dict` keys (`all_modules.4.Conv_0.weight`,
//! `NIN_0.W` of shape `[in, out]`, the `sigmas` buffer), so one loader serves both files.
//!
//! * [`StrictWeights`]: a [`candle_nn::VarBuilder`] backend that records every parameter a
//!   network reads and reports **all** missing, unused, mis-shaped and mis-typed tensors at
//!   once ([`crate::Error::WeightMismatch`]); the reference loads with `strict=False` and
//!   silently ignores them.
//! * [`read_safetensors`] / [`save_safetensors`] / [`save_varmap`]: safetensors files, written
//!   atomically (temporary file, `fsync`, `rename`).
//! * [`load_reference_checkpoint`]: the `checkpoint_*.pth` files of the reference's training
//!   loop (`torch.save` of `{'model', 'ema', 'optimizer', 'step'}`), model or EMA weights;
//!   [`parameter_order`] gives the order of the EMA's positional list.
//! * [`load_torch_state_dict`]: a bare `torch.save(state_dict)` in the zip or the legacy
//!   (pre-1.6) serialisation (pytorch-fid's Inception weights).
//!
//! A missing, truncated, corrupt or foreign file is [`crate::Error::Checkpoint`], never a
//! panic.

mod order;
mod safetensors_io;
mod state_dict;
mod strict;
mod torch;

pub use order::parameter_order;
pub use safetensors_io::{
    read_safetensors, save_safetensors, save_varmap, write_atomically, SafetensorsContents,
};
pub use state_dict::{load_torch_state_dict, TorchFormat};
pub use strict::{DTypePolicy, StrictWeights, WeightReport};
pub use torch::{load_reference_checkpoint, CheckpointWeights, ReferenceCheckpoint};
