//! Validation of the inputs of the image networks' forward passes: a typed
//! [`Error::Input`] naming the argument, the expected and the actual value, never a panic or a
//! raw candle message.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// What an image network accepts: `x: [B, channels, image_size, image_size]` of the weights'
/// float `dtype` with `B ≥ 1`, and `labels: [B]` of any numeric dtype with finite values
/// (positive when `positive_labels`, e.g. the σ of NCSN++'s Fourier embedding of log σ).
pub(crate) struct Expected {
    pub(crate) net: &'static str,
    pub(crate) channels: usize,
    pub(crate) image_size: usize,
    pub(crate) dtype: DType,
    pub(crate) positive_labels: bool,
}

/// Checks `x` and `labels` against `e` and returns the labels on the host (f64).
pub(crate) fn check_input(e: &Expected, x: &Tensor, labels: &Tensor) -> Result<Vec<f64>> {
    let (c, s) = (e.channels, e.image_size);
    let net = e.net;
    let d = x.dims();
    if d.len() != 4 || d[1..] != [c, s, s] {
        return Err(Error::Input(format!(
            "{net}: x must have shape [B, {c}, {s}, {s}], got {d:?}"
        )));
    }
    let b = d[0];
    if b == 0 {
        return Err(Error::Input(format!(
            "{net}: x is an empty batch (shape {d:?}); B must be at least 1"
        )));
    }
    if x.dtype() != e.dtype {
        return Err(Error::Input(format!(
            "{net}: x must have the weights' dtype {:?}, got {:?}",
            e.dtype,
            x.dtype()
        )));
    }
    if labels.dims() != [b] {
        return Err(Error::Input(format!(
            "{net}: labels must have shape [{b}] (one per sample of x), got {:?}",
            labels.dims()
        )));
    }
    let host = labels.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    for (i, &l) in host.iter().enumerate() {
        if !l.is_finite() {
            return Err(Error::Input(format!(
                "{net}: labels[{i}] = {l} is not finite"
            )));
        }
        if e.positive_labels && l <= 0.0 {
            return Err(Error::Input(format!(
                "{net}: labels[{i}] = {l}, but the Fourier embedding takes log σ: labels must be \
                 noise levels σ > 0 (σ(t) of a VE SDE)"
            )));
        }
    }
    Ok(host)
}
