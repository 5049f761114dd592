//! The layers of torchvision's Inception-v3 with pytorch-fid's FID blocks: `BasicConv2d`
//! (conv without bias, BatchNorm with eps 0.001 in eval mode, ReLU), `FIDInceptionA`,
//! `InceptionB`, `FIDInceptionC`, `InceptionD`, `FIDInceptionE_1` / `_2`.

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Device, Tensor, D};

use crate::error::{Error, Result};

/// BatchNorm epsilon of torchvision's `BasicConv2d` (`nn.BatchNorm2d(out, eps=0.001)`).
pub const BN_EPS: f64 = 0.001;

/// Strict access to a state dict: records every name read, so that unused entries (a wrong
/// file) are reported, and checks shapes.
pub(crate) struct Params<'a> {
    map: &'a HashMap<String, Tensor>,
    used: HashSet<String>,
    device: Device,
}

impl<'a> Params<'a> {
    pub(crate) fn new(map: &'a HashMap<String, Tensor>, device: &Device) -> Self {
        Self {
            map,
            used: HashSet::new(),
            device: device.clone(),
        }
    }

    /// The f64 host values of `name`, which must have `shape`.
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<(Vec<f64>, Vec<usize>)> {
        let t = self.map.get(name).ok_or_else(|| Error::ShapeMismatch {
            what: "Inception weights",
            expected: format!("an entry `{name}`"),
            got: "none (not pytorch-fid's Inception state dict?)".into(),
        })?;
        if !shape.is_empty() && t.dims() != shape {
            return Err(Error::ShapeMismatch {
                what: "Inception weights",
                expected: format!("`{name}` of shape {shape:?}"),
                got: format!("{:?}", t.dims()),
            });
        }
        self.used.insert(name.to_string());
        let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        if v.iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                what: format!("Inception weight `{name}`"),
            });
        }
        Ok((v, t.dims().to_vec()))
    }

    fn mark(&mut self, name: &str) {
        if self.map.contains_key(name) {
            self.used.insert(name.to_string());
        }
    }

    /// Entries never read.
    pub(crate) fn unused(&self) -> Vec<String> {
        let mut u: Vec<String> = self
            .map
            .keys()
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect();
        u.sort();
        u
    }

    pub(crate) fn linear(
        &mut self,
        name: &str,
        out: usize,
        inp: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (w, _) = self.get(&format!("{name}.weight"), &[out, inp])?;
        let (b, _) = self.get(&format!("{name}.bias"), &[out])?;
        let w = Tensor::from_vec(w, (out, inp), &Device::Cpu)?
            .to_dtype(DType::F32)?
            .t()?
            .contiguous()?
            .to_device(&self.device)?;
        let b = Tensor::from_vec(b, out, &Device::Cpu)?
            .to_dtype(DType::F32)?
            .to_device(&self.device)?;
        Ok((w, b))
    }
}

/// `BasicConv2d`: conv(bias=False) → BatchNorm(eps = 0.001, running statistics) → ReLU, the
/// BatchNorm as the per-channel affine map PyTorch's eval kernel applies.
#[derive(Debug, Clone)]
pub(crate) struct BasicConv2d {
    weight: Tensor,
    scale: Tensor,
    bias: Tensor,
    /// (height, width) zero padding.
    padding: (usize, usize),
    stride: usize,
}

impl BasicConv2d {
    pub(crate) fn load(
        p: &mut Params<'_>,
        name: &str,
        cin: usize,
        cout: usize,
        kernel: (usize, usize),
        stride: usize,
        padding: (usize, usize),
    ) -> Result<Self> {
        let (w, _) = p.get(
            &format!("{name}.conv.weight"),
            &[cout, cin, kernel.0, kernel.1],
        )?;
        let (gamma, _) = p.get(&format!("{name}.bn.weight"), &[cout])?;
        let (beta, _) = p.get(&format!("{name}.bn.bias"), &[cout])?;
        let (mean, _) = p.get(&format!("{name}.bn.running_mean"), &[cout])?;
        let (var, _) = p.get(&format!("{name}.bn.running_var"), &[cout])?;
        p.mark(&format!("{name}.bn.num_batches_tracked"));
        if let Some(i) = var.iter().position(|v| *v + BN_EPS <= 0.0) {
            return Err(Error::InvalidParameter {
                name: "running_var",
                value: var[i].to_string(),
                reason: format!("`{name}.bn.running_var[{i}]` + eps must be > 0"),
            });
        }
        // PyTorch's CPU eval BatchNorm: α = γ/√(var + eps), β' = β − mean·α, y = x·α + β'
        // applied to the conv output (folding α into the weights instead moved pool3 by
        // 1.4e-4 of its scale through the 94 layers).
        let mut alpha = vec![0.0; cout];
        let mut shift = vec![0.0; cout];
        for o in 0..cout {
            alpha[o] = gamma[o] / (var[o] + BN_EPS).sqrt();
            shift[o] = beta[o] - alpha[o] * mean[o];
        }
        let weight = Tensor::from_vec(w, (cout, cin, kernel.0, kernel.1), &Device::Cpu)?
            .to_dtype(DType::F32)?
            .to_device(&p.device)?;
        let scale = Tensor::from_vec(alpha, (1, cout, 1, 1), &Device::Cpu)?
            .to_dtype(DType::F32)?
            .to_device(&p.device)?;
        let bias = Tensor::from_vec(shift, (1, cout, 1, 1), &Device::Cpu)?
            .to_dtype(DType::F32)?
            .to_device(&p.device)?;
        Ok(Self {
            weight,
            scale,
            bias,
            padding,
            stride,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (ph, pw) = self.padding;
        let y = if ph == pw {
            x.conv2d(&self.weight, ph, self.stride, 1, 1)?
        } else {
            x.pad_with_zeros(2, ph, ph)?
                .pad_with_zeros(3, pw, pw)?
                .conv2d(&self.weight, 0, self.stride, 1, 1)?
        };
        Ok(y.broadcast_mul(&self.scale)?
            .broadcast_add(&self.bias)?
            .relu()?)
    }
}

/// `F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)`: TensorFlow's average
/// pool, which divides by the number of in-image taps (4 at corners, 6 on edges, 9 inside).
pub(crate) fn avg_pool_3x3_same(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let sum = x
        .pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .avg_pool2d_with_stride(3, 1)?;
    let taps = |i: usize, n: usize| (i.min(1) + 1 + usize::from(i + 1 < n)) as f32;
    let mut scale = Vec::with_capacity(h * w);
    for i in 0..h {
        for j in 0..w {
            scale.push(9.0 / (taps(i, h) * taps(j, w)));
        }
    }
    let scale = Tensor::from_vec(scale, (1, 1, h, w), x.device())?.to_dtype(x.dtype())?;
    Ok(sum.broadcast_mul(&scale)?)
}

/// `F.max_pool2d(x, 3, stride=1, padding=1)` (padding never wins the max).
pub(crate) fn max_pool_3x3_same(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let ninf = |shape: (usize, usize, usize, usize)| -> Result<Tensor> {
        Ok(Tensor::full(f32::NEG_INFINITY, shape, x.device())?.to_dtype(x.dtype())?)
    };
    let rows = Tensor::cat(&[&ninf((b, c, 1, w))?, x, &ninf((b, c, 1, w))?], 2)?;
    let padded = Tensor::cat(
        &[&ninf((b, c, h + 2, 1))?, &rows, &ninf((b, c, h + 2, 1))?],
        3,
    )?;
    Ok(padded.max_pool2d_with_stride(3, 1)?)
}

/// `max_pool2d(kernel 3, stride 2)`, no padding (torchvision's `maxpool1/2`, InceptionB / D).
pub(crate) fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    Ok(x.max_pool2d_with_stride(3, 2)?)
}

#[allow(clippy::too_many_arguments)] // mirrors BasicConv2d(in, out, kernel_size, stride, padding)
fn conv(
    p: &mut Params<'_>,
    block: &str,
    name: &str,
    cin: usize,
    cout: usize,
    k: (usize, usize),
    stride: usize,
    pad: (usize, usize),
) -> Result<BasicConv2d> {
    BasicConv2d::load(p, &format!("{block}.{name}"), cin, cout, k, stride, pad)
}

fn cat(xs: &[Tensor]) -> Result<Tensor> {
    Ok(Tensor::cat(xs, 1)?)
}

/// pytorch-fid's `FIDInceptionA` (torchvision `InceptionA` with a count_include_pad=False
/// average pool): 64 + 64 + 96 + `pool_features` channels.
#[derive(Debug, Clone)]
pub(crate) struct InceptionA {
    b1x1: BasicConv2d,
    b5x5_1: BasicConv2d,
    b5x5_2: BasicConv2d,
    b3dbl_1: BasicConv2d,
    b3dbl_2: BasicConv2d,
    b3dbl_3: BasicConv2d,
    pool: BasicConv2d,
}

impl InceptionA {
    pub(crate) fn load(
        p: &mut Params<'_>,
        n: &str,
        cin: usize,
        pool_features: usize,
    ) -> Result<Self> {
        Ok(Self {
            b1x1: conv(p, n, "branch1x1", cin, 64, (1, 1), 1, (0, 0))?,
            b5x5_1: conv(p, n, "branch5x5_1", cin, 48, (1, 1), 1, (0, 0))?,
            b5x5_2: conv(p, n, "branch5x5_2", 48, 64, (5, 5), 1, (2, 2))?,
            b3dbl_1: conv(p, n, "branch3x3dbl_1", cin, 64, (1, 1), 1, (0, 0))?,
            b3dbl_2: conv(p, n, "branch3x3dbl_2", 64, 96, (3, 3), 1, (1, 1))?,
            b3dbl_3: conv(p, n, "branch3x3dbl_3", 96, 96, (3, 3), 1, (1, 1))?,
            pool: conv(p, n, "branch_pool", cin, pool_features, (1, 1), 1, (0, 0))?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.b1x1.forward(x)?;
        let b = self.b5x5_2.forward(&self.b5x5_1.forward(x)?)?;
        let c = self
            .b3dbl_3
            .forward(&self.b3dbl_2.forward(&self.b3dbl_1.forward(x)?)?)?;
        let d = self.pool.forward(&avg_pool_3x3_same(x)?)?;
        cat(&[a, b, c, d])
    }
}

/// torchvision's `InceptionB` (grid reduction 35 → 17): 384 + 96 + `cin` channels.
#[derive(Debug, Clone)]
pub(crate) struct InceptionB {
    b3x3: BasicConv2d,
    b3dbl_1: BasicConv2d,
    b3dbl_2: BasicConv2d,
    b3dbl_3: BasicConv2d,
}

impl InceptionB {
    pub(crate) fn load(p: &mut Params<'_>, n: &str, cin: usize) -> Result<Self> {
        Ok(Self {
            b3x3: conv(p, n, "branch3x3", cin, 384, (3, 3), 2, (0, 0))?,
            b3dbl_1: conv(p, n, "branch3x3dbl_1", cin, 64, (1, 1), 1, (0, 0))?,
            b3dbl_2: conv(p, n, "branch3x3dbl_2", 64, 96, (3, 3), 1, (1, 1))?,
            b3dbl_3: conv(p, n, "branch3x3dbl_3", 96, 96, (3, 3), 2, (0, 0))?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.b3x3.forward(x)?;
        let b = self
            .b3dbl_3
            .forward(&self.b3dbl_2.forward(&self.b3dbl_1.forward(x)?)?)?;
        cat(&[a, b, max_pool_3x3_s2(x)?])
    }
}

/// pytorch-fid's `FIDInceptionC` (factorised 7×7 convolutions, count_include_pad=False
/// average pool): 4 × 192 channels.
#[derive(Debug, Clone)]
pub(crate) struct InceptionC {
    b1x1: BasicConv2d,
    b7: [BasicConv2d; 3],
    b7dbl: [BasicConv2d; 5],
    pool: BasicConv2d,
}

impl InceptionC {
    pub(crate) fn load(p: &mut Params<'_>, n: &str, cin: usize, c7: usize) -> Result<Self> {
        let (h, v) = ((1, 7), (7, 1));
        let (ph, pv) = ((0, 3), (3, 0));
        Ok(Self {
            b1x1: conv(p, n, "branch1x1", cin, 192, (1, 1), 1, (0, 0))?,
            b7: [
                conv(p, n, "branch7x7_1", cin, c7, (1, 1), 1, (0, 0))?,
                conv(p, n, "branch7x7_2", c7, c7, h, 1, ph)?,
                conv(p, n, "branch7x7_3", c7, 192, v, 1, pv)?,
            ],
            b7dbl: [
                conv(p, n, "branch7x7dbl_1", cin, c7, (1, 1), 1, (0, 0))?,
                conv(p, n, "branch7x7dbl_2", c7, c7, v, 1, pv)?,
                conv(p, n, "branch7x7dbl_3", c7, c7, h, 1, ph)?,
                conv(p, n, "branch7x7dbl_4", c7, c7, v, 1, pv)?,
                conv(p, n, "branch7x7dbl_5", c7, 192, h, 1, ph)?,
            ],
            pool: conv(p, n, "branch_pool", cin, 192, (1, 1), 1, (0, 0))?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.b1x1.forward(x)?;
        let mut b = x.clone();
        for l in &self.b7 {
            b = l.forward(&b)?;
        }
        let mut c = x.clone();
        for l in &self.b7dbl {
            c = l.forward(&c)?;
        }
        let d = self.pool.forward(&avg_pool_3x3_same(x)?)?;
        cat(&[a, b, c, d])
    }
}

/// torchvision's `InceptionD` (grid reduction 17 → 8): 320 + 192 + `cin` channels.
#[derive(Debug, Clone)]
pub(crate) struct InceptionD {
    b3: [BasicConv2d; 2],
    b7x3: [BasicConv2d; 4],
}

impl InceptionD {
    pub(crate) fn load(p: &mut Params<'_>, n: &str, cin: usize) -> Result<Self> {
        Ok(Self {
            b3: [
                conv(p, n, "branch3x3_1", cin, 192, (1, 1), 1, (0, 0))?,
                conv(p, n, "branch3x3_2", 192, 320, (3, 3), 2, (0, 0))?,
            ],
            b7x3: [
                conv(p, n, "branch7x7x3_1", cin, 192, (1, 1), 1, (0, 0))?,
                conv(p, n, "branch7x7x3_2", 192, 192, (1, 7), 1, (0, 3))?,
                conv(p, n, "branch7x7x3_3", 192, 192, (7, 1), 1, (3, 0))?,
                conv(p, n, "branch7x7x3_4", 192, 192, (3, 3), 2, (0, 0))?,
            ],
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.b3[1].forward(&self.b3[0].forward(x)?)?;
        let mut b = x.clone();
        for l in &self.b7x3 {
            b = l.forward(&b)?;
        }
        cat(&[a, b, max_pool_3x3_s2(x)?])
    }
}

/// Which pool branch an `InceptionE` block uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PoolKind {
    /// `FIDInceptionE_1` (Mixed_7b): average pool without the padded zeros.
    Average,
    /// `FIDInceptionE_2` (Mixed_7c): max pool (a bug of the TensorFlow graph pytorch-fid keeps).
    Max,
}

/// pytorch-fid's `FIDInceptionE_1` / `FIDInceptionE_2`: 320 + 768 + 768 + 192 = 2048 channels.
#[derive(Debug, Clone)]
pub(crate) struct InceptionE {
    b1x1: BasicConv2d,
    b3_1: BasicConv2d,
    b3_2a: BasicConv2d,
    b3_2b: BasicConv2d,
    bdbl_1: BasicConv2d,
    bdbl_2: BasicConv2d,
    bdbl_3a: BasicConv2d,
    bdbl_3b: BasicConv2d,
    pool: BasicConv2d,
    kind: PoolKind,
}

impl InceptionE {
    pub(crate) fn load(p: &mut Params<'_>, n: &str, cin: usize, kind: PoolKind) -> Result<Self> {
        Ok(Self {
            b1x1: conv(p, n, "branch1x1", cin, 320, (1, 1), 1, (0, 0))?,
            b3_1: conv(p, n, "branch3x3_1", cin, 384, (1, 1), 1, (0, 0))?,
            b3_2a: conv(p, n, "branch3x3_2a", 384, 384, (1, 3), 1, (0, 1))?,
            b3_2b: conv(p, n, "branch3x3_2b", 384, 384, (3, 1), 1, (1, 0))?,
            bdbl_1: conv(p, n, "branch3x3dbl_1", cin, 448, (1, 1), 1, (0, 0))?,
            bdbl_2: conv(p, n, "branch3x3dbl_2", 448, 384, (3, 3), 1, (1, 1))?,
            bdbl_3a: conv(p, n, "branch3x3dbl_3a", 384, 384, (1, 3), 1, (0, 1))?,
            bdbl_3b: conv(p, n, "branch3x3dbl_3b", 384, 384, (3, 1), 1, (1, 0))?,
            pool: conv(p, n, "branch_pool", cin, 192, (1, 1), 1, (0, 0))?,
            kind,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.b1x1.forward(x)?;
        let b0 = self.b3_1.forward(x)?;
        let b = cat(&[self.b3_2a.forward(&b0)?, self.b3_2b.forward(&b0)?])?;
        let c0 = self.bdbl_2.forward(&self.bdbl_1.forward(x)?)?;
        let c = cat(&[self.bdbl_3a.forward(&c0)?, self.bdbl_3b.forward(&c0)?])?;
        let pooled = match self.kind {
            PoolKind::Average => avg_pool_3x3_same(x)?,
            PoolKind::Max => max_pool_3x3_same(x)?,
        };
        let d = self.pool.forward(&pooled)?;
        cat(&[a, b, c, d])
    }
}

/// Spatial mean `[B, C, H, W] → [B, C]` (`AdaptiveAvgPool2d(1)` flattened).
pub(crate) fn spatial_mean(x: &Tensor) -> Result<Tensor> {
    Ok(x.mean(D::Minus1)?.mean(D::Minus1)?)
}
