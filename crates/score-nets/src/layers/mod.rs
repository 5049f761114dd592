//! Building blocks of NCSN++ / DDPM++ (`models/layers.py`, `models/layerspp.py`,
//! `models/up_or_down_sampling.py`), with the parameter names of the PyTorch `state_dict`
//! (`GroupNorm_0.weight`, `Conv_0.bias`, `NIN_0.W` of shape `[in, out]`, `Dense_0.weight`, ...).
//!
//! Every block takes its [`candle_nn::VarBuilder`] already prefixed with the block's path
//! (`vb.pp("all_modules").pp(4)`); built from a [`crate::init::seeded_var_builder`] it draws the
//! reference's initialisation (`default_init`, `init_scale` on the last convolutions).

mod attn;
mod bias;
mod combine;
mod common;
pub mod conv;
mod dropout;
mod embedding;
pub mod fir;
pub mod norm;
mod resample;
mod resnet;

pub use attn::*;
pub use bias::*;
pub use combine::*;
pub use common::*;
pub use dropout::*;
pub use embedding::*;
pub use resample::*;
pub use resnet::*;
