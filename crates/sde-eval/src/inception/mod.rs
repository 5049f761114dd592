//! Inception-v3 in its FID variant, as pytorch-fid builds it (`pytorch_fid.inception`):
//! torchvision's Inception-v3 (1008 classes, no aux classifier, no `transform_input`) with the
//! `FIDInceptionA` / `C` / `E_1` / `E_2` blocks of the TensorFlow graph the FID paper used.

mod blocks;
mod weights;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
pub use blocks::BN_EPS;
use blocks::{
    max_pool_3x3_s2, spatial_mean, BasicConv2d, InceptionA, InceptionB, InceptionC, InceptionD,
    InceptionE, Params, PoolKind,
};
pub use weights::{load_compact, load_pth, sha256_file, StateDict};

/// Side of the network's input (`F.interpolate(size=(299, 299))`).
pub const INPUT_SIZE: usize = 299;
/// Dimension of the pool3 features FID uses.
pub const POOL3_DIM: usize = 2048;
/// Classes of the `fc` layer of the FID weights (1008, the TensorFlow graph's; IS uses them).
pub const NUM_CLASSES: usize = 1008;
/// Number of entries of pytorch-fid's weight file (`pt_inception-2015-12-05-6726825d.pth`).
pub const NUM_WEIGHTS: usize = 566;

/// Everything one forward pass gives.
#[derive(Debug, Clone)]
pub struct InceptionOutput {
    /// pytorch-fid's output blocks 0, 1, 2 (after the first max pool `[B, 64, 73, 73]`, after
    /// the second `[B, 192, 35, 35]`, after Mixed_6e `[B, 768, 17, 17]`), for diagnosis.
    pub blocks: [Tensor; 3],
    /// Block 3: the 2048-d pool3 features `[B, 2048]` (FID, KID, precision/recall).
    pub pool3: Tensor,
    /// `fc(pool3)`: the 1008-class logits `[B, 1008]` (Inception Score).
    pub logits: Tensor,
}

/// pytorch-fid's `InceptionV3(output_blocks=[0, 1, 2, 3], resize_input=True,
/// normalize_input=True, use_fid_inception=True)` plus its `fc` layer, in eval mode
/// (BatchNorm with running statistics, eps = 0.001, folded into the convolutions; f32).
#[derive(Debug, Clone)]
pub struct FidInceptionV3 {
    block0: [BasicConv2d; 3],
    block1: [BasicConv2d; 2],
    mixed_5: [InceptionA; 3],
    mixed_6a: InceptionB,
    mixed_6: [InceptionC; 4],
    mixed_7a: InceptionD,
    mixed_7b: InceptionE,
    mixed_7c: InceptionE,
    fc_weight_t: Tensor,
    fc_bias: Tensor,
    device: Device,
    weights_sha256: Option<String>,
}

impl FidInceptionV3 {
    /// Builds the network from a state dict with exactly pytorch-fid's keys (566 entries):
    /// a missing or mis-shaped entry is [`Error::ShapeMismatch`], entries the network does not
    /// use are an error too (a different network's file), as `load_state_dict(strict=True)`.
    pub fn from_state_dict(sd: &HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        let mut p = Params::new(sd, device);
        let p = &mut p;
        let c =
            |p: &mut Params<'_>, n: &str, i, o, k, s, pad| BasicConv2d::load(p, n, i, o, k, s, pad);
        let net = Self {
            block0: [
                c(p, "Conv2d_1a_3x3", 3, 32, (3, 3), 2, (0, 0))?,
                c(p, "Conv2d_2a_3x3", 32, 32, (3, 3), 1, (0, 0))?,
                c(p, "Conv2d_2b_3x3", 32, 64, (3, 3), 1, (1, 1))?,
            ],
            block1: [
                c(p, "Conv2d_3b_1x1", 64, 80, (1, 1), 1, (0, 0))?,
                c(p, "Conv2d_4a_3x3", 80, 192, (3, 3), 1, (0, 0))?,
            ],
            mixed_5: [
                InceptionA::load(p, "Mixed_5b", 192, 32)?,
                InceptionA::load(p, "Mixed_5c", 256, 64)?,
                InceptionA::load(p, "Mixed_5d", 288, 64)?,
            ],
            mixed_6a: InceptionB::load(p, "Mixed_6a", 288)?,
            mixed_6: [
                InceptionC::load(p, "Mixed_6b", 768, 128)?,
                InceptionC::load(p, "Mixed_6c", 768, 160)?,
                InceptionC::load(p, "Mixed_6d", 768, 160)?,
                InceptionC::load(p, "Mixed_6e", 768, 192)?,
            ],
            mixed_7a: InceptionD::load(p, "Mixed_7a", 768)?,
            mixed_7b: InceptionE::load(p, "Mixed_7b", 1280, PoolKind::Average)?,
            mixed_7c: InceptionE::load(p, "Mixed_7c", 2048, PoolKind::Max)?,
            fc_weight_t: Tensor::zeros(1, DType::F32, device)?,
            fc_bias: Tensor::zeros(1, DType::F32, device)?,
            device: device.clone(),
            weights_sha256: None,
        };
        let (w, b) = p.linear("fc", NUM_CLASSES, POOL3_DIM)?;
        let unused = p.unused();
        if !unused.is_empty() {
            return Err(Error::ShapeMismatch {
                what: "Inception weights",
                expected: "only pytorch-fid's FID Inception entries".into(),
                got: format!("{} unused entries: {}", unused.len(), unused.join(", ")),
            });
        }
        Ok(Self {
            fc_weight_t: w,
            fc_bias: b,
            ..net
        })
    }

    /// Loads pytorch-fid's weight file (`pt_inception-2015-12-05-6726825d.pth`, zip or legacy
    /// `torch.save`), or a safetensors file: the compact layout of the test vectors when it
    /// has `.codes_2bit` entries (any other safetensors file is read the same way: entries
    /// without codes are taken as they are). Records the file's sha256.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let sd = if path.extension().is_some_and(|e| e == "safetensors") {
            load_compact(path)?
        } else {
            load_pth(path)?
        };
        let mut net = Self::from_state_dict(&sd, device)?;
        net.weights_sha256 = Some(sha256_file(path)?);
        Ok(net)
    }

    /// sha256 of the file [`FidInceptionV3::load`] read (`None` from a state dict).
    pub fn weights_sha256(&self) -> Option<&str> {
        self.weights_sha256.as_deref()
    }

    /// pytorch-fid's input transform: `F.interpolate(x, size=(299, 299), mode='bilinear',
    /// align_corners=False)`, then `2x − 1`. `x: [B, 3, H, W]` in [0, 1] (not clamped).
    pub fn preprocess(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4().map_err(|_| Error::ShapeMismatch {
            what: "Inception input",
            expected: "[B, 3, H, W]".into(),
            got: format!("{:?}", x.dims()),
        })?;
        if c != 3 || h == 0 || w == 0 {
            return Err(Error::ShapeMismatch {
                what: "Inception input",
                expected: "[B, 3, H, W] with H, W ≥ 1".into(),
                got: format!("{:?}", x.dims()),
            });
        }
        if !x.dtype().is_float() {
            return Err(Error::ShapeMismatch {
                what: "Inception input",
                expected: "a float dtype (images in [0, 1])".into(),
                got: format!("{:?}", x.dtype()),
            });
        }
        let x = x
            .to_dtype(DType::F32)?
            .to_device(&self.device)?
            .contiguous()?;
        let r = x.upsample_bilinear2d(INPUT_SIZE, INPUT_SIZE, false)?;
        Ok(r.affine(2.0, -1.0)?)
    }

    /// The forward pass on images `x: [B, 3, H, W]` in [0, 1]: blocks 0–2, pool3 and logits.
    /// A NaN or infinite input is [`Error::NonFinite`]; an empty batch gives empty outputs.
    pub fn forward(&self, x: &Tensor) -> Result<InceptionOutput> {
        let x = self.preprocess(x)?;
        let total = x.sum_all()?.to_scalar::<f32>()?;
        if !total.is_finite() {
            return Err(Error::NonFinite {
                what: "Inception input images".into(),
            });
        }
        self.forward_preprocessed(&x)
    }

    /// The forward pass on already preprocessed input `[B, 3, 299, 299]` in [−1, 1].
    pub fn forward_preprocessed(&self, x: &Tensor) -> Result<InceptionOutput> {
        let mut h = x.clone();
        for l in &self.block0 {
            h = l.forward(&h)?;
        }
        let b0 = max_pool_3x3_s2(&h)?;
        let mut h = b0.clone();
        for l in &self.block1 {
            h = l.forward(&h)?;
        }
        let b1 = max_pool_3x3_s2(&h)?;
        let mut h = b1.clone();
        for m in &self.mixed_5 {
            h = m.forward(&h)?;
        }
        h = self.mixed_6a.forward(&h)?;
        for m in &self.mixed_6 {
            h = m.forward(&h)?;
        }
        let b2 = h.clone();
        h = self.mixed_7a.forward(&h)?;
        h = self.mixed_7b.forward(&h)?;
        h = self.mixed_7c.forward(&h)?;
        let pool3 = spatial_mean(&h)?;
        let logits = pool3
            .matmul(&self.fc_weight_t)?
            .broadcast_add(&self.fc_bias)?;
        Ok(InceptionOutput {
            blocks: [b0, b1, b2],
            pool3,
            logits,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}
