//! A small MNIST digit classifier as a [`FeatureExtractor`]: the feature space in which the
//! MNIST reproduction measures its samples (class shares, confidence, Fréchet distance and KID
//! of the penultimate features), as Inception-v3 is for CIFAR-10.
//!
//! The network, [`DigitClassifier`]: conv 5×5 stride 2 (1 → 16, 28² → 14²) · ReLU → conv 3×3
//! stride 2 (16 → 32, 14² → 7²) · ReLU → fc 1568 → 128 · ReLU (the **features**) → fc 128 → 10
//! (the logits). Strided convolutions in place of pooling keep training cheap on a CPU: the
//! convolutions run as one gather (im2col) and one GEMM, whose gradients are a scatter-add and
//! two GEMMs. Weights trained in the repository on the 4,000 MNIST-5k train images
//! (`examples/train_digit_classifier.rs`, [`train_digit_classifier`]) are embedded in the crate
//! ([`DigitClassifier::embedded`]).

mod report;
mod train;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::error::{file_err, invalid, Error, Result};
use crate::features::{FeatureExtractor, Features};

pub use report::{digit_report, digit_report_with, DigitReport, DigitReportOptions};
pub use train::{train_digit_classifier, DigitTrainOptions, DigitTrainReport};

/// Side of the square input images (MNIST: 28).
pub const DIGIT_IMAGE_SIZE: usize = 28;
/// Width of the penultimate features.
pub const DIGIT_FEATURES: usize = 128;
/// Number of classes.
pub const DIGIT_CLASSES: usize = 10;
/// Channels of the two convolutions.
const CONV_CHANNELS: [usize; 2] = [16, 32];
/// (kernel, stride, padding) of the two convolutions.
const CONV_GEOMETRY: [(usize, usize, usize); 2] = [(5, 2, 2), (3, 2, 1)];
/// Flattened width after the second convolution: 32 · 7 · 7.
const FLAT: usize = CONV_CHANNELS[1] * (DIGIT_IMAGE_SIZE / 4) * (DIGIT_IMAGE_SIZE / 4);

/// The committed weights (trained by `examples/train_digit_classifier.rs`; f32 safetensors).
const EMBEDDED_WEIGHTS: &[u8] = include_bytes!("../data/digit_classifier.safetensors");

/// The parameter names and shapes of [`DigitClassifier`] (PyTorch's conventions: conv weights
/// `[out, in, kh, kw]`, linear weights `[out, in]`).
pub fn digit_parameter_shapes() -> Vec<(&'static str, Vec<usize>)> {
    let [c1, c2] = CONV_CHANNELS;
    let [(k1, _, _), (k2, _, _)] = CONV_GEOMETRY;
    vec![
        ("conv1.weight", vec![c1, 1, k1, k1]),
        ("conv1.bias", vec![c1]),
        ("conv2.weight", vec![c2, c1, k2, k2]),
        ("conv2.bias", vec![c2]),
        ("fc1.weight", vec![DIGIT_FEATURES, FLAT]),
        ("fc1.bias", vec![DIGIT_FEATURES]),
        ("fc2.weight", vec![DIGIT_CLASSES, DIGIT_FEATURES]),
        ("fc2.bias", vec![DIGIT_CLASSES]),
    ]
}

/// The MNIST digit classifier (see the [module docs](self)): for images x `[B, 1, 28, 28]` in
/// [0, 1],
///
/// h = ReLU(W₃ vec(ReLU(conv₂(ReLU(conv₁ x)))) + b₃) ∈ ℝ¹²⁸ (the features),
/// logits = W₄ h + b₄ ∈ ℝ¹⁰,
///
/// conv₁ 5×5 with stride 2 and padding 2, conv₂ 3×3 with stride 2 and padding 1 (PyTorch's
/// `Conv2d` arithmetic:
/// y\[o, i, j\] = b\[o\] + Σ_{c,u,v} w\[o, c, u, v\] x\[c, s·i + u − p, s·j + v − p\], zero
/// outside the image).
#[derive(Debug, Clone)]
pub struct DigitClassifier {
    conv1: Conv,
    conv2: Conv,
    fc1: Linear,
    fc2: Linear,
    weights_sha256: Option<String>,
}

/// A strided 2-D convolution computed as im2col (one gather) and one GEMM on activations laid
/// out channel-major, `[C, B, H, W]`, so that no transposes are needed between layers.
#[derive(Debug, Clone)]
struct Conv {
    weight: Tensor,
    bias: Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Conv {
    fn new(
        c_in: usize,
        c_out: usize,
        (k, s, p): (usize, usize, usize),
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints(
            (c_out, c_in, k, k),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let bound = 1.0 / ((c_in * k * k) as f64).sqrt();
        let bias = vb.get_with_hints(
            c_out,
            "bias",
            candle_nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        Ok(Self {
            weight,
            bias,
            kernel: k,
            stride: s,
            padding: p,
        })
    }

    fn out_size(&self, n: usize) -> usize {
        (n + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// For each (c, u, v) row and (b, i, j) column of the im2col matrix, the flat position of
    /// x[c, b, s·i + u − p, s·j + v − p] in `[C, B, H, W]`, or `C·B·H·W` (a zero appended to x)
    /// outside the image.
    fn gather_index(&self, c: usize, b: usize, h: usize, w: usize, dev: &Device) -> Result<Tensor> {
        let (k, s, p) = (self.kernel, self.stride, self.padding as i64);
        let (ho, wo) = (self.out_size(h), self.out_size(w));
        let zero = (c * b * h * w) as u32;
        let mut idx = Vec::with_capacity(c * k * k * b * ho * wo);
        for ci in 0..c {
            for u in 0..k {
                for v in 0..k {
                    for bi in 0..b {
                        for i in 0..ho {
                            let y = (s * i + u) as i64 - p;
                            for j in 0..wo {
                                let x = (s * j + v) as i64 - p;
                                idx.push(
                                    if (0..h as i64).contains(&y) && (0..w as i64).contains(&x) {
                                        (((ci * b + bi) * h + y as usize) * w + x as usize) as u32
                                    } else {
                                        zero
                                    },
                                );
                            }
                        }
                    }
                }
            }
        }
        let n = idx.len();
        Ok(Tensor::from_vec(idx, n, dev)?)
    }

    /// `x: [C, B, H, W]` → `[O, B, H', W']`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (c, b, h, w) = x.dims4()?;
        let o = self.weight.dim(0)?;
        let (ho, wo) = (self.out_size(h), self.out_size(w));
        let ck = c * self.kernel * self.kernel;
        let index = self.gather_index(c, b, h, w, x.device())?;
        let flat = Tensor::cat(
            &[x.flatten_all()?, Tensor::zeros(1, x.dtype(), x.device())?],
            0,
        )?;
        let cols = flat.index_select(&index, 0)?.reshape((ck, b * ho * wo))?;
        Ok(self
            .weight
            .reshape((o, ck))?
            .matmul(&cols)?
            .broadcast_add(&self.bias.reshape((o, 1))?)?
            .reshape((o, b, ho, wo))?)
    }
}

impl DigitClassifier {
    /// The network with its parameters under `vb` (`conv1`, `conv2`, `fc1`, `fc2`, each
    /// `weight` and `bias`): a seeded initialisation
    /// (`score_nets::init::seeded_var_builder`) or loaded weights.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let [c1, c2] = CONV_CHANNELS;
        Ok(Self {
            conv1: Conv::new(1, c1, CONV_GEOMETRY[0], vb.pp("conv1"))?,
            conv2: Conv::new(c1, c2, CONV_GEOMETRY[1], vb.pp("conv2"))?,
            fc1: candle_nn::linear(FLAT, DIGIT_FEATURES, vb.pp("fc1"))?,
            fc2: candle_nn::linear(DIGIT_FEATURES, DIGIT_CLASSES, vb.pp("fc2"))?,
            weights_sha256: None,
        })
    }

    /// The weights committed in the crate (`data/digit_classifier.safetensors`, trained on the
    /// MNIST-5k train split by `examples/train_digit_classifier.rs`; its test accuracy is in
    /// `docs/evaluation.md`), on `device`.
    pub fn embedded(device: &Device) -> Result<Self> {
        Self::from_safetensors_bytes(
            EMBEDDED_WEIGHTS,
            Path::new("<embedded digit_classifier.safetensors>"),
            device,
        )
    }

    /// Loads weights written by [`DigitClassifier::save`]; every parameter must be present
    /// with its shape, and nothing else. Records the file's sha256.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| file_err(path, e.to_string()))?;
        Self::from_safetensors_bytes(&bytes, path, device)
    }

    fn from_safetensors_bytes(bytes: &[u8], path: &Path, device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| file_err(path, format!("not a readable safetensors file: {e}")))?;
        let mut net = Self::from_tensors(tensors, device).map_err(|e| match e {
            Error::ShapeMismatch { .. } => file_err(path, e.to_string()),
            e => e,
        })?;
        net.weights_sha256 = Some(sha256_hex(bytes));
        Ok(net)
    }

    /// Builds the network from named tensors (any float dtype, converted to f32), strictly:
    /// a missing, misshapen or extra entry is [`Error::ShapeMismatch`] naming it.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        let shapes = digit_parameter_shapes();
        let mut problems = Vec::new();
        for (name, shape) in &shapes {
            match tensors.get(*name) {
                None => problems.push(format!("missing `{name}`")),
                Some(t) if t.dims() != shape.as_slice() => problems.push(format!(
                    "`{name}` has shape {:?}, expected {shape:?}",
                    t.dims()
                )),
                Some(t) if !t.dtype().is_float() => {
                    problems.push(format!("`{name}` has dtype {:?}", t.dtype()))
                }
                Some(_) => {}
            }
        }
        for k in tensors.keys() {
            if !shapes.iter().any(|(n, _)| n == k) {
                problems.push(format!("unexpected entry `{k}`"));
            }
        }
        if !problems.is_empty() {
            return Err(Error::ShapeMismatch {
                what: "digit classifier weights",
                expected: "exactly conv1/conv2/fc1/fc2 weight and bias".into(),
                got: problems.join("; "),
            });
        }
        let mut f32s = HashMap::with_capacity(tensors.len());
        for (k, t) in tensors {
            f32s.insert(k, t.to_dtype(DType::F32)?.to_device(device)?);
        }
        Self::new(VarBuilder::from_tensors(f32s, DType::F32, device))
    }

    /// The parameters by name (for [`DigitClassifier::save`]).
    pub fn tensors(&self) -> Vec<(&'static str, Tensor)> {
        let mut out = vec![
            ("conv1.weight", self.conv1.weight.clone()),
            ("conv1.bias", self.conv1.bias.clone()),
            ("conv2.weight", self.conv2.weight.clone()),
            ("conv2.bias", self.conv2.bias.clone()),
            ("fc1.weight", self.fc1.weight().clone()),
        ];
        let bias = |b: Option<&Tensor>, n: &'static str| b.map(|b| (n, b.clone()));
        out.extend(bias(self.fc1.bias(), "fc1.bias"));
        out.push(("fc2.weight", self.fc2.weight().clone()));
        out.extend(bias(self.fc2.bias(), "fc2.bias"));
        out
    }

    /// Writes the weights as f32 safetensors (atomically), with `metadata` (e.g. the training
    /// report).
    pub fn save(
        &self,
        path: impl AsRef<Path>,
        metadata: Option<HashMap<String, String>>,
    ) -> Result<()> {
        let ts: Vec<(&str, Tensor)> = self
            .tensors()
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)))
            .collect::<Result<_>>()?;
        score_nets::checkpoint::save_safetensors(ts.iter().map(|(n, t)| (*n, t)), metadata, path)?;
        Ok(())
    }

    /// The device of the weights.
    pub fn device(&self) -> &Device {
        self.fc2.weight().device()
    }

    /// sha256 of the weight bytes the network was loaded from (`None` for a fresh or trained
    /// network).
    pub fn weights_sha256(&self) -> Option<&str> {
        self.weights_sha256.as_deref()
    }

    /// Checks images `[B, 1, 28, 28]` of a float dtype, finite, in [0, 1], and returns them as
    /// f32 on the network's device.
    pub fn check_images(&self, x: &Tensor) -> Result<Tensor> {
        let s = DIGIT_IMAGE_SIZE;
        match x.dims() {
            [_, 1, h, w] if *h == s && *w == s => {}
            d => {
                return Err(Error::ShapeMismatch {
                    what: "digit classifier input",
                    expected: format!("[B, 1, {s}, {s}] (grayscale MNIST images)"),
                    got: format!("{d:?}"),
                })
            }
        }
        if !x.dtype().is_float() {
            return Err(Error::ShapeMismatch {
                what: "digit classifier input dtype",
                expected: "a float dtype (images in [0, 1])".into(),
                got: format!("{:?}", x.dtype()),
            });
        }
        let x = x.to_dtype(DType::F32)?.to_device(self.device())?;
        if x.dim(0)? == 0 {
            return Ok(x);
        }
        let total = x.sum_all()?.to_scalar::<f32>()?;
        if !total.is_finite() {
            return Err(Error::NonFinite {
                what: "digit classifier input images".into(),
            });
        }
        let lo = x.min_all()?.to_scalar::<f32>()?;
        let hi = x.max_all()?.to_scalar::<f32>()?;
        if lo < 0.0 || hi > 1.0 {
            return Err(invalid(
                "images",
                format!("values in [{lo}, {hi}]"),
                "must lie in [0, 1] (clamp generated samples first)",
            ));
        }
        Ok(x)
    }

    /// The forward pass without input checks (training uses it on augmented batches).
    pub(crate) fn forward_unchecked(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        // [B, 1, H, W] is [1, B, H, W] in memory: channel-major without a copy.
        let (b, _, h, w) = x.dims4()?;
        let x = x.contiguous()?.reshape((1, b, h, w))?;
        let h1 = self.conv1.forward(&x)?.relu()?;
        let h2 = self.conv2.forward(&h1)?.relu()?;
        let h2 = h2.transpose(0, 1)?.flatten_from(1)?;
        let features = self.fc1.forward(&h2)?.relu()?;
        let logits = self.fc2.forward(&features)?;
        Ok((logits, features))
    }

    /// (logits `[B, 10]`, penultimate features `[B, 128]`) of images `x: [B, 1, 28, 28]` in
    /// [0, 1] (checked by [`DigitClassifier::check_images`]).
    pub fn logits_and_features(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = self.check_images(x)?;
        self.forward_unchecked(&x)
    }

    /// Class probabilities softmax(logits) `[B, 10]`.
    pub fn probabilities(&self, x: &Tensor) -> Result<Tensor> {
        let (logits, _) = self.logits_and_features(x)?;
        Ok(candle_nn::ops::softmax_last_dim(&logits)?)
    }

    /// The predicted class argmax logits of each image.
    pub fn predict(&self, x: &Tensor) -> Result<Vec<u8>> {
        let (logits, _) = self.logits_and_features(x)?;
        Ok(logits
            .argmax(1)?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|c| c as u8)
            .collect())
    }

    /// Share of `images` whose predicted class equals `labels`, in batches of 500.
    pub fn accuracy(&self, images: &Tensor, labels: &[u8]) -> Result<f64> {
        let n = images.dim(0)?;
        if labels.len() != n {
            return Err(Error::ShapeMismatch {
                what: "labels",
                expected: format!("{n} labels (one per image)"),
                got: format!("{}", labels.len()),
            });
        }
        if n == 0 {
            return Err(Error::NotEnoughSamples {
                what: "accuracy",
                need: 1,
                got: 0,
            });
        }
        let mut correct = 0usize;
        for lo in (0..n).step_by(500) {
            let b = (n - lo).min(500);
            let pred = self.predict(&images.narrow(0, lo, b)?)?;
            correct += pred
                .iter()
                .zip(&labels[lo..lo + b])
                .filter(|(p, l)| p == l)
                .count();
        }
        Ok(correct as f64 / n as f64)
    }
}

/// Penultimate features (128) and logits (10) of the classifier: Fréchet distance, KID and
/// class shares of MNIST samples in its feature space (valid only between numbers computed
/// with the same weights: compare [`FeatureExtractor::weights_sha256`]).
impl FeatureExtractor for DigitClassifier {
    fn dim(&self) -> usize {
        DIGIT_FEATURES
    }

    fn num_classes(&self) -> Option<usize> {
        Some(DIGIT_CLASSES)
    }

    fn extract(&self, images: &Tensor) -> Result<Features> {
        let (logits, features) = self.logits_and_features(images)?;
        Ok(Features {
            features,
            logits: Some(logits),
        })
    }

    fn name(&self) -> String {
        "mnist5k-digit-classifier".into()
    }

    fn weights_sha256(&self) -> Option<String> {
        self.weights_sha256.clone()
    }
}

/// Lower-case hex sha256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The im2col convolution equals candle's direct `conv2d` (PyTorch's arithmetic) for both
    /// layer geometries, on random data in the channel-major layout.
    #[test]
    fn strided_im2col_convolution_matches_conv2d() -> Result<()> {
        use rand::SeedableRng;
        use sde_core::noise::NoiseSource;
        let dev = Device::Cpu;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (c, o, geo, hw) in [
            (1, 16, CONV_GEOMETRY[0], 28),
            (16, 32, CONV_GEOMETRY[1], 14),
            (2, 3, (3, 1, 1), 5),
        ] {
            let (k, s, p) = geo;
            let vm = candle_nn::VarMap::new();
            let vb = score_nets::init::seeded_var_builder(&vm, 1, DType::F32, &dev);
            let conv = Conv::new(c, o, geo, vb)?;
            let x = rng.randn(&(3, c, hw, hw).into(), &dev, DType::F32)?;
            let want = x
                .conv2d(&conv.weight, p, s, 1, 1)?
                .broadcast_add(&conv.bias.reshape((1, o, 1, 1))?)?;
            let got = conv
                .forward(&x.transpose(0, 1)?.contiguous()?)?
                .transpose(0, 1)?;
            assert_eq!(got.dims(), want.dims(), "k {k} s {s}");
            let err = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err <= 1e-5 * scale, "k {k} s {s}: {err} of {scale}");
        }
        Ok(())
    }
}
