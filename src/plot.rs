//! Minimal raster plots written as PNG: scatter plots, vector fields and trajectories of 2-D
//! points, and grids of images. Enough to show samples to a colleague without a plotting stack.

use std::path::Path;

use image::{Rgb, RgbImage};

/// An RGB colour.
pub type Color = [u8; 3];

/// A palette of distinguishable colours.
pub const PALETTE: [Color; 8] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [23, 190, 207],
];

/// Light grey for data shown behind samples.
pub const GREY: Color = [190, 190, 190];

/// A square canvas mapping the data box `[lo, hi]²` to `size × size` pixels (y up).
#[derive(Debug, Clone)]
pub struct Canvas {
    img: RgbImage,
    lo: f64,
    hi: f64,
}

impl Canvas {
    /// A white canvas of `size` pixels for data in `[lo, hi]²`, with a light grid at the integers.
    pub fn new(size: u32, lo: f64, hi: f64) -> Self {
        let mut c = Self {
            img: RgbImage::from_pixel(size, size, Rgb([255, 255, 255])),
            lo,
            hi,
        };
        let mut g = lo.ceil();
        while g <= hi {
            let col = if g == 0.0 {
                [200, 200, 200]
            } else {
                [238, 238, 238]
            };
            c.line((g, lo), (g, hi), col);
            c.line((lo, g), (hi, g), col);
            g += 1.0;
        }
        c
    }

    fn to_px(&self, p: (f64, f64)) -> (f64, f64) {
        let s = self.img.width() as f64;
        let u = (p.0 - self.lo) / (self.hi - self.lo) * s;
        let v = s - (p.1 - self.lo) / (self.hi - self.lo) * s;
        (u, v)
    }

    fn blend(&mut self, x: i64, y: i64, c: Color, alpha: f64) {
        if x < 0 || y < 0 || x >= self.img.width() as i64 || y >= self.img.height() as i64 {
            return;
        }
        let p = self.img.get_pixel_mut(x as u32, y as u32);
        for (ch, &target) in p.0.iter_mut().zip(&c) {
            *ch = (*ch as f64 * (1.0 - alpha) + target as f64 * alpha).round() as u8;
        }
    }

    /// Draws each point (flattened `[x0, y0, x1, y1, …]`) as a disc of `radius` pixels.
    pub fn scatter(&mut self, points: &[f64], color: Color, radius: f64, alpha: f64) {
        for p in points.chunks_exact(2) {
            let (u, v) = self.to_px((p[0], p[1]));
            if !(u.is_finite() && v.is_finite()) {
                continue;
            }
            let r = radius.ceil() as i64;
            for dy in -r..=r {
                for dx in -r..=r {
                    if ((dx * dx + dy * dy) as f64) <= radius * radius {
                        self.blend(u as i64 + dx, v as i64 + dy, color, alpha);
                    }
                }
            }
        }
    }

    /// Draws a straight segment between two data points.
    pub fn line(&mut self, a: (f64, f64), b: (f64, f64), color: Color) {
        let (a, b) = (self.to_px(a), self.to_px(b));
        if !(a.0.is_finite() && a.1.is_finite() && b.0.is_finite() && b.1.is_finite()) {
            return;
        }
        let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).clamp(1, 10_000);
        for i in 0..=steps {
            let s = i as f64 / steps as f64;
            self.blend(
                (a.0 + s * (b.0 - a.0)).round() as i64,
                (a.1 + s * (b.1 - a.1)).round() as i64,
                color,
                1.0,
            );
        }
    }

    /// Draws an arrow from `a` to `b` (data coordinates) with a small head.
    pub fn arrow(&mut self, a: (f64, f64), b: (f64, f64), color: Color) {
        self.line(a, b, color);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len = (dx * dx + dy * dy).sqrt();
        if len == 0.0 || !len.is_finite() {
            return;
        }
        let head = 0.3 * len;
        for ang in [2.6f64, -2.6] {
            let (c, s) = (ang.cos(), ang.sin());
            let hx = (dx * c - dy * s) / len * head;
            let hy = (dx * s + dy * c) / len * head;
            self.line(b, (b.0 + hx, b.1 + hy), color);
        }
    }

    /// Draws a polyline through the given data points.
    pub fn polyline(&mut self, pts: &[(f64, f64)], color: Color) {
        for w in pts.windows(2) {
            self.line(w[0], w[1], color);
        }
    }

    /// The underlying image.
    pub fn image(&self) -> &RgbImage {
        &self.img
    }

    /// Writes the canvas as PNG.
    pub fn save(&self, path: impl AsRef<Path>) -> image::ImageResult<()> {
        self.img.save(path)
    }
}

/// Places canvases side by side (left to right) with a 4-pixel white gutter.
pub fn hstack(panels: &[&Canvas]) -> RgbImage {
    let h = panels.iter().map(|c| c.img.height()).max().unwrap_or(0);
    let w: u32 = panels
        .iter()
        .map(|c| c.img.width() + 4)
        .sum::<u32>()
        .saturating_sub(4);
    let mut out = RgbImage::from_pixel(w.max(1), h.max(1), Rgb([255, 255, 255]));
    let mut x0 = 0;
    for c in panels {
        image::imageops::replace(&mut out, &c.img, x0 as i64, 0);
        x0 += c.img.width() + 4;
    }
    out
}

/// Why [`image_grid`] cannot tile its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridError {
    /// What the grid needs.
    pub expected: String,
    /// What was passed.
    pub got: String,
}

impl std::fmt::Display for GridError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "image_grid: expected {}, got {}",
            self.expected, self.got
        )
    }
}

impl std::error::Error for GridError {}

/// Tiles images given as host `[B, C, H, W]` values in `[0, 1]` (C = 1 or 3) into an in-memory
/// grid with `ncol` columns and a 2-pixel white gutter (to write a tensor of images straight to
/// a PNG, use `sde_train::save_image_grid`). `data` must hold exactly B·C·H·W values, C must be
/// 1 or 3 and `ncol` ≥ 1 ([`GridError`] otherwise); B = 0 gives a blank gutter-only image.
pub fn image_grid(
    data: &[f32],
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    ncol: usize,
) -> Result<RgbImage, GridError> {
    let numel = [b, c, h, w]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if !(c == 1 || c == 3) || ncol == 0 || numel != Some(data.len()) {
        return Err(GridError {
            expected: "[B, C ∈ {1, 3}, H, W] values (B·C·H·W of them) and ncol ≥ 1".into(),
            got: format!(
                "{} values for [{b}, {c}, {h}, {w}], ncol {ncol}",
                data.len()
            ),
        });
    }
    let nrow = b.div_ceil(ncol);
    let pad = 2;
    let gw = (ncol * (w + pad) + pad) as u32;
    let gh = (nrow * (h + pad) + pad) as u32;
    let mut img = RgbImage::from_pixel(gw, gh, Rgb([255, 255, 255]));
    for i in 0..b {
        let (r, col) = (i / ncol, i % ncol);
        for y in 0..h {
            for x in 0..w {
                let mut px = [0u8; 3];
                for (k, p) in px.iter_mut().enumerate() {
                    let ch = if c == 1 { 0 } else { k };
                    let v = data[((i * c + ch) * h + y) * w + x];
                    *p = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                }
                img.put_pixel(
                    (pad + col * (w + pad) + x) as u32,
                    (pad + r * (h + pad) + y) as u32,
                    Rgb(px),
                );
            }
        }
    }
    Ok(img)
}

/// A line chart of `series` (colour, points `(x, y)`) on a `w × h` white image, both axes scaled
/// to the points' joint range with a 5% margin; light grid lines at the integer values of y
/// (decades when y is a log10). Non-finite points and series of fewer than two points are
/// skipped; with nothing to draw the result is a blank frame.
pub fn line_chart(series: &[(Color, &[(f64, f64)])], w: u32, h: u32) -> RgbImage {
    let mut img = RgbImage::from_pixel(w.max(2), h.max(2), Rgb([255, 255, 255]));
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, s)| s.iter().filter(finite).copied())
        .collect();
    let (w, h) = (img.width() as f64, img.height() as f64);
    let frame = [120u8, 120, 120];
    let put = |img: &mut RgbImage, x: f64, y: f64, c: Color| {
        if x >= 0.0 && y >= 0.0 && x < w && y < h {
            img.put_pixel(x as u32, y as u32, Rgb(c));
        }
    };
    if all.len() >= 2 {
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in &all {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        let (dx, dy) = ((x1 - x0).max(1e-12), (y1 - y0).max(1e-12));
        let (x0, x1, y0, y1) = (
            x0 - 0.05 * dx,
            x1 + 0.05 * dx,
            y0 - 0.05 * dy,
            y1 + 0.05 * dy,
        );
        let px = |x: f64| (x - x0) / (x1 - x0) * (w - 1.0);
        let py = |y: f64| (1.0 - (y - y0) / (y1 - y0)) * (h - 1.0);
        let mut g = y0.ceil();
        while g <= y1 {
            for u in 0..w as u32 {
                put(&mut img, u as f64, py(g), [225, 225, 225]);
            }
            g += 1.0;
        }
        for (c, s) in series {
            let pts: Vec<(f64, f64)> = s.iter().filter(finite).copied().collect();
            for seg in pts.windows(2) {
                let (a, b) = ((px(seg[0].0), py(seg[0].1)), (px(seg[1].0), py(seg[1].1)));
                let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
                for k in 0..=n {
                    let t = k as f64 / n as f64;
                    put(&mut img, a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1), *c);
                }
            }
        }
    }
    for u in 0..w as u32 {
        put(&mut img, u as f64, 0.0, frame);
        put(&mut img, u as f64, h - 1.0, frame);
    }
    for v in 0..h as u32 {
        put(&mut img, 0.0, v as f64, frame);
        put(&mut img, w - 1.0, v as f64, frame);
    }
    img
}
