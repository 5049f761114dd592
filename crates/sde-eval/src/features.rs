//! Pluggable feature networks: the metrics see only features (and, for the Inception Score,
//! class logits), so any network can stand in for Inception-v3 (e.g. an MNIST classifier).

use candle_core::Tensor;

use crate::error::Result;
use crate::inception::{FidInceptionV3, NUM_CLASSES, POOL3_DIM};

/// What a feature network returns for a batch of images.
#[derive(Debug, Clone)]
pub struct Features {
    /// Features `[B, dim]` (FID, KID, precision/recall).
    pub features: Tensor,
    /// Class logits `[B, classes]` (Inception Score), where the network has a classifier.
    pub logits: Option<Tensor>,
}

/// Images → features (and optional logits). Implemented by [`FidInceptionV3`]; implement it
/// for another network to compute the same metrics in its feature space.
pub trait FeatureExtractor {
    /// Feature dimension d.
    fn dim(&self) -> usize;
    /// Number of classes of the logits, or `None` without a classifier.
    fn num_classes(&self) -> Option<usize>;
    /// Features of images `[B, C, H, W]` with values in [0, 1].
    fn extract(&self, images: &Tensor) -> Result<Features>;
    /// A short name for summaries (`"pytorch-fid-inception-v3"`).
    fn name(&self) -> String;
    /// sha256 of the weight file the network was loaded from, where known: two FIDs are
    /// comparable only when this matches.
    fn weights_sha256(&self) -> Option<String>;
}

impl FeatureExtractor for FidInceptionV3 {
    fn dim(&self) -> usize {
        POOL3_DIM
    }

    fn num_classes(&self) -> Option<usize> {
        Some(NUM_CLASSES)
    }

    /// pool3 features and `fc` logits of pytorch-fid's network.
    fn extract(&self, images: &Tensor) -> Result<Features> {
        let out = self.forward(images)?;
        Ok(Features {
            features: out.pool3,
            logits: Some(out.logits),
        })
    }

    fn name(&self) -> String {
        "pytorch-fid-inception-v3".into()
    }

    fn weights_sha256(&self) -> Option<String> {
        self.weights_sha256().map(str::to_string)
    }
}

/// A feature extractor from a closure `images → Features`, with its dimension, classes,
/// name and weight hash given.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use sde_eval::{FeatureExtractor, Features, FnExtractor};
/// // Per-channel means as 3-d "features".
/// let f = FnExtractor::new("channel-mean", 3, None, |x: &Tensor| {
///     Ok(Features { features: x.mean(3)?.mean(2)?, logits: None })
/// });
/// let x = Tensor::ones((2, 3, 4, 4), candle_core::DType::F32, &Device::Cpu)?;
/// assert_eq!(f.extract(&x)?.features.dims(), &[2, 3]);
/// # Ok::<(), sde_eval::Error>(())
/// ```
pub struct FnExtractor<F> {
    name: String,
    dim: usize,
    classes: Option<usize>,
    weights_sha256: Option<String>,
    f: F,
}

impl<F: Fn(&Tensor) -> Result<Features>> FnExtractor<F> {
    /// Wraps `f`, which must return `[B, dim]` features (and `[B, classes]` logits when
    /// `classes` is `Some`).
    pub fn new(name: impl Into<String>, dim: usize, classes: Option<usize>, f: F) -> Self {
        Self {
            name: name.into(),
            dim,
            classes,
            weights_sha256: None,
            f,
        }
    }

    /// Records the sha256 of the weights behind `f`.
    pub fn with_weights_sha256(mut self, sha: impl Into<String>) -> Self {
        self.weights_sha256 = Some(sha.into());
        self
    }
}

impl<F: Fn(&Tensor) -> Result<Features>> FeatureExtractor for FnExtractor<F> {
    fn dim(&self) -> usize {
        self.dim
    }
    fn num_classes(&self) -> Option<usize> {
        self.classes
    }
    fn extract(&self, images: &Tensor) -> Result<Features> {
        (self.f)(images)
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn weights_sha256(&self) -> Option<String> {
        self.weights_sha256.clone()
    }
}
