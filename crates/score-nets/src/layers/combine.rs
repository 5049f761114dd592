//! `Combine` (progressive-input skip connections).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::common::Conv2d;
use crate::Result;

/// How a [`Combine`] merges the projected pyramid with the features (`progressive_combine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CombineMethod {
    /// Channel concatenation `[Conv_0(x), y]` (doubles the channels).
    Cat,
    /// Sum `Conv_0(x) + y` (the paper's configs).
    #[default]
    Sum,
}

/// `layerspp.Combine`: $h = \mathrm{Conv\_0}(x)$ (1x1, `dim1 → dim2`), then `cat([h, y])` or
/// `h + y`. Parameters `Conv_0.{weight, bias}`.
#[derive(Debug, Clone)]
pub struct Combine {
    conv_0: Conv2d,
    method: CombineMethod,
}

impl Combine {
    /// Creates or loads the block under `vb`.
    pub fn new(dim1: usize, dim2: usize, method: CombineMethod, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv_0: Conv2d::conv1x1(dim1, dim2, 1.0, vb.pp("Conv_0"))?,
            method,
        })
    }

    /// `x: [B, dim1, H, W]`, `y: [B, dim2, H, W]`.
    pub fn forward(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let h = self.conv_0.forward(x)?;
        Ok(match self.method {
            CombineMethod::Cat => Tensor::cat(&[&h, y], 1)?,
            CombineMethod::Sum => (h + y)?,
        })
    }
}
