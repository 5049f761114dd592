//! Image datasets on disk: CIFAR-10 binary batches, MNIST IDX files and folders of PNG/JPEG
//! images (resized and center-cropped). Pixels come back as `f32` in [0, 1], `[N, C, H, W]`;
//! apply [`crate::scaler`] for the model's range.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::imageops::FilterType;

use crate::error::{Error, Result};

fn data_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| data_err(path, format!("cannot read: {e}")))
}

/// Bytes per CIFAR-10 record: 1 label byte + 3 × 32 × 32 pixel bytes (R, G, B planes).
pub const CIFAR10_RECORD: usize = 1 + 3 * 32 * 32;

/// Images `[N, 3, 32, 32]` (f32 in [0, 1]) and labels of CIFAR-10 binary files
/// (`data_batch_{1..5}.bin`, `test_batch.bin`: records of 1 label byte in 0..10 followed by
/// the 1024 red, 1024 green and 1024 blue bytes of a 32 × 32 image, row-major).
pub fn load_cifar10(files: &[impl AsRef<Path>]) -> Result<(Tensor, Vec<u8>)> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let path = f.as_ref();
        let bytes = read(path)?;
        if bytes.is_empty() || bytes.len() % CIFAR10_RECORD != 0 {
            return Err(data_err(
                path,
                format!(
                    "CIFAR-10 binary files hold records of {CIFAR10_RECORD} bytes; this one has {} bytes",
                    bytes.len()
                ),
            ));
        }
        for (i, rec) in bytes.chunks_exact(CIFAR10_RECORD).enumerate() {
            let label = rec[0];
            if label >= 10 {
                return Err(data_err(
                    path,
                    format!("record {i} has label {label}, expected 0..10"),
                ));
            }
            labels.push(label);
            pixels.extend(rec[1..].iter().map(|&p| p as f32 / 255.0));
        }
    }
    let n = labels.len();
    if n == 0 {
        return Err(Error::InvalidParameter {
            name: "files",
            value: 0.0,
            reason: "no CIFAR-10 files given",
        });
    }
    Ok((
        Tensor::from_vec(pixels, (n, 3, 32, 32), &Device::Cpu)?,
        labels,
    ))
}

/// The five training batches (`train = true`) or the test batch of an extracted
/// `cifar-10-batches-bin` directory.
pub fn load_cifar10_dir(dir: impl AsRef<Path>, train: bool) -> Result<(Tensor, Vec<u8>)> {
    let dir = dir.as_ref();
    let files: Vec<PathBuf> = if train {
        (1..=5)
            .map(|i| dir.join(format!("data_batch_{i}.bin")))
            .collect()
    } else {
        vec![dir.join("test_batch.bin")]
    };
    load_cifar10(&files)
}

/// An IDX file (the MNIST format): magic `0x00 0x00 <type> <ndims>`, then `ndims` big-endian
/// `u32` sizes, then the data. Only unsigned bytes (type `0x08`) are supported. Returns the
/// dims and the bytes.
pub fn load_idx(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<u8>)> {
    let path = path.as_ref();
    parse_idx(&read(path)?, path)
}

/// [`load_idx`] of bytes already in memory; `path` names them in errors.
pub(crate) fn parse_idx(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    if bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b {
        return Err(data_err(
            path,
            "gzip-compressed: decompress it first (gunzip)",
        ));
    }
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(data_err(path, "not an IDX file (bad magic number)"));
    }
    if bytes[2] != 0x08 {
        return Err(data_err(
            path,
            format!(
                "IDX element type 0x{:02x} is not supported (only 0x08, unsigned byte)",
                bytes[2]
            ),
        ));
    }
    let ndims = bytes[3] as usize;
    let header = 4 + 4 * ndims;
    if ndims == 0 || bytes.len() < header {
        return Err(data_err(
            path,
            format!("IDX header truncated ({ndims} dims)"),
        ));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| data_err(path, "IDX dims overflow"))?;
    if bytes.len() - header != count {
        return Err(data_err(
            path,
            format!(
                "IDX dims {dims:?} need {count} data bytes, the file has {}",
                bytes.len() - header
            ),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// MNIST images (`train-images-idx3-ubyte`): `[N, 1, H, W]`, f32 in [0, 1].
pub fn load_mnist_images(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let (dims, data) = load_idx(path)?;
    let &[n, h, w] = dims.as_slice() else {
        return Err(data_err(
            path,
            format!("MNIST images need 3 IDX dims, got {dims:?}"),
        ));
    };
    let v: Vec<f32> = data.iter().map(|&p| p as f32 / 255.0).collect();
    Ok(Tensor::from_vec(v, (n, 1, h, w), &Device::Cpu)?)
}

/// MNIST labels (`train-labels-idx1-ubyte`), each in 0..10.
pub fn load_mnist_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let (dims, data) = load_idx(path)?;
    if dims.len() != 1 {
        return Err(data_err(
            path,
            format!("MNIST labels need 1 IDX dim, got {dims:?}"),
        ));
    }
    if let Some((i, l)) = data.iter().enumerate().find(|(_, &l)| l >= 10) {
        return Err(data_err(path, format!("label {i} is {l}, expected 0..10")));
    }
    Ok(data)
}

/// Resizes so that the short side is `size` (bilinear, as `tf.image.resize`), then crops the
/// central `size × size` square: an RGB image `[3, size, size]` in [0, 1].
pub fn resize_center_crop(img: &image::DynamicImage, size: usize) -> Result<Tensor> {
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 || size == 0 {
        return Err(Error::InvalidParameter {
            name: "size",
            value: size as f64,
            reason: "image and target size must be non-empty",
        });
    }
    let s = size as f64;
    let scale = s / (w.min(h) as f64);
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(size as u32),
        ((h as f64 * scale).round() as u32).max(size as u32),
    );
    let resized = image::imageops::resize(&rgb, nw, nh, FilterType::Triangle);
    let (x0, y0) = ((nw - size as u32) / 2, (nh - size as u32) / 2);
    let crop = image::imageops::crop_imm(&resized, x0, y0, size as u32, size as u32).to_image();
    let mut v = vec![0f32; 3 * size * size];
    for (x, y, p) in crop.enumerate_pixels() {
        for c in 0..3 {
            v[c * size * size + y as usize * size + x as usize] = p.0[c] as f32 / 255.0;
        }
    }
    Ok(Tensor::from_vec(v, (3, size, size), &Device::Cpu)?)
}

/// Every PNG / JPEG file in `dir` (sorted by name, not recursive), resized and center-cropped
/// to `size × size` ([`resize_center_crop`]): `[N, 3, size, size]` in [0, 1].
pub fn load_image_folder(dir: impl AsRef<Path>, size: usize) -> Result<Tensor> {
    let dir = dir.as_ref();
    let rd =
        std::fs::read_dir(dir).map_err(|e| data_err(dir, format!("cannot list folder: {e}")))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for e in rd {
        let p = e
            .map_err(|e| data_err(dir, format!("cannot list folder: {e}")))?
            .path();
        let ext = p
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if matches!(ext.as_str(), "png" | "jpg" | "jpeg") {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(data_err(dir, "no .png / .jpg / .jpeg files in the folder"));
    }
    let imgs = files
        .iter()
        .map(|p| {
            let img =
                image::open(p).map_err(|e| data_err(p, format!("cannot decode image: {e}")))?;
            resize_center_crop(&img, size)?
                .unsqueeze(0)
                .map_err(Error::from)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&imgs, 0)?)
}

/// Writes images `x: [B, C, H, W]` (C = 1 or 3, float values in [0, 1], clamped) as one PNG
/// file: a grid with `nrow` images per row and 2 pixels of black padding
/// (`torchvision.utils.make_grid` + `save_image`, as the reference's sampling snapshots),
/// written atomically. The in-memory tiling of host values for the examples is
/// `scoresde::plot::image_grid`.
#[doc(alias = "save_image")]
#[doc(alias = "make_grid")]
#[doc(alias = "image_grid")]
pub fn save_image_grid(x: &Tensor, nrow: usize, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    if x.rank() != 4 {
        return Err(Error::ShapeMismatch {
            what: "save_image_grid input x",
            expected: "[B, C, H, W] (rank 4)".into(),
            got: format!("{:?}", x.dims()),
        });
    }
    if !x.dtype().is_float() {
        return Err(Error::ShapeMismatch {
            what: "save_image_grid input x dtype",
            expected: "a float dtype (values in [0, 1])".into(),
            got: format!("{:?}", x.dtype()),
        });
    }
    let (b, c, h, w) = x.dims4()?;
    if !(c == 1 || c == 3) || b == 0 || nrow == 0 {
        return Err(Error::ShapeMismatch {
            what: "save_image_grid input",
            expected: "[B ≥ 1, 1 or 3, H, W] and nrow ≥ 1".into(),
            got: format!("{:?}, nrow {nrow}", x.dims()),
        });
    }
    let pad = 2usize;
    let cols = nrow.min(b);
    let rows = b.div_ceil(cols);
    let (gw, gh) = (cols * (w + pad) + pad, rows * (h + pad) + pad);
    let v = x
        .to_dtype(candle_core::DType::F32)?
        .clamp(0f32, 1f32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut img = image::RgbImage::new(gw as u32, gh as u32);
    for i in 0..b {
        let (r, col) = (i / cols, i % cols);
        let (ox, oy) = (pad + col * (w + pad), pad + r * (h + pad));
        for y in 0..h {
            for xx in 0..w {
                let mut px = [0u8; 3];
                for (k, p) in px.iter_mut().enumerate() {
                    let ch = if c == 1 { 0 } else { k };
                    let val = v[((i * c + ch) * h + y) * w + xx];
                    *p = (val * 255.0 + 0.5).clamp(0.0, 255.0) as u8;
                }
                img.put_pixel((ox + xx) as u32, (oy + y) as u32, image::Rgb(px));
            }
        }
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .map_err(|e| data_err(path, format!("cannot encode PNG: {e}")))?;
    crate::checkpoint::write_atomic(path, buf.get_ref())
}
