//! im2col and its adjoint (col2im) for one image: the lowering of a convolution to a GEMM.
//!
//! Row `(c·kh + u)·kw + v` of the `[C·kh·kw, Ho·Wo]` matrix holds, for every output position
//! `(oy, ox)`, the input sample `x[c, s·oy + u − p, s·ox + v − p]` (zero outside the image), so
//! that `y = W · cols` with `W` the `[O, C·kh·kw]` kernel matrix.

use super::Conv2dGeom as Geom;
use crate::float::Float;

/// The output columns `lo..hi` whose input column `s·ox + v − p` for kernel column `v` lies
/// inside the image (the others read padding).
fn inside_columns(g: &Geom, v: usize) -> (usize, usize) {
    let (w, p, s) = (g.w as isize, g.pad as isize, g.stride);
    let wo = g.out_hw().1;
    let lo = ((p - v as isize).max(0) as usize).div_ceil(s).min(wo);
    let hi = if w + p - (v as isize) <= 0 {
        0
    } else {
        ((w + p - v as isize) as usize).div_ceil(s).min(wo)
    };
    (lo, hi.max(lo))
}

/// im2col of one image `x: [C, H, W]` into `cols: [C·kh·kw, Ho·Wo]` (row `(c·kh + u)·kw + v`).
pub(super) fn im2col_image<T: Float>(x: &[T], g: &Geom, cols: &mut [T]) {
    let (ho, wo) = g.out_hw();
    let n = ho * wo;
    let (h, p, s) = (g.h as isize, g.pad as isize, g.stride);
    for ci in 0..g.c {
        let xc = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for u in 0..g.kh {
            for v in 0..g.kw {
                let row = (ci * g.kh + u) * g.kw + v;
                let dst = &mut cols[row * n..(row + 1) * n];
                let (lo, hi) = inside_columns(g, v);
                for oy in 0..ho {
                    let iy = (oy * s) as isize + u as isize - p;
                    let d = &mut dst[oy * wo..(oy + 1) * wo];
                    if iy < 0 || iy >= h {
                        d.fill(T::zero());
                        continue;
                    }
                    let xr = &xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    d[..lo].fill(T::zero());
                    d[hi..].fill(T::zero());
                    let ix0 = (lo * s) as isize + v as isize - p;
                    if s == 1 {
                        let ix0 = ix0 as usize;
                        d[lo..hi].copy_from_slice(&xr[ix0..ix0 + (hi - lo)]);
                    } else {
                        for (k, dv) in d[lo..hi].iter_mut().enumerate() {
                            *dv = xr[ix0 as usize + k * s];
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col_image`]: adds every entry of `cols: [C·kh·kw, Ho·Wo]` to the input
/// sample it was copied from, `gx: [C, H, W]` (zeroed first).
pub(super) fn col2im_image<T: Float>(cols: &[T], g: &Geom, gx: &mut [T]) {
    let (ho, wo) = g.out_hw();
    let n = ho * wo;
    let (h, p, s) = (g.h as isize, g.pad as isize, g.stride);
    gx.fill(T::zero());
    for ci in 0..g.c {
        let gc = &mut gx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for u in 0..g.kh {
            for v in 0..g.kw {
                let row = (ci * g.kh + u) * g.kw + v;
                let src = &cols[row * n..(row + 1) * n];
                let (lo, hi) = inside_columns(g, v);
                for oy in 0..ho {
                    let iy = (oy * s) as isize + u as isize - p;
                    if iy < 0 || iy >= h {
                        continue;
                    }
                    let gr = &mut gc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let sr = &src[oy * wo + lo..oy * wo + hi];
                    let ix0 = ((lo * s) as isize + v as isize - p) as usize;
                    if s == 1 {
                        for (a, &b) in gr[ix0..ix0 + (hi - lo)].iter_mut().zip(sr) {
                            *a += b;
                        }
                    } else {
                        for (k, &b) in sr.iter().enumerate() {
                            gr[ix0 + k * s] += b;
                        }
                    }
                }
            }
        }
    }
}
