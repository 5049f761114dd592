//! The convolution kernels against plain f64 loops over their definitions.

use super::*;

pub(crate) use crate::test_util::values;

fn cast<T: Float>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&a| T::from_f64(a)).collect()
}

/// The input index `(b, c, iy, ix)` that tap `(u, v)` of output `(i, j)` reads, if inside.
fn tap(g: &Conv2dGeom, i: usize, j: usize, u: usize, v: usize) -> Option<(usize, usize)> {
    let iy = (g.stride * i + u) as isize - g.pad as isize;
    let ix = (g.stride * j + v) as isize - g.pad as isize;
    (iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w)
        .then_some((iy as usize, ix as usize))
}

/// Every (b, o, i, j, c, u, v, input index) of the convolution sum.
fn terms(g: &Conv2dGeom, mut f: impl FnMut([usize; 7], usize)) {
    let (ho, wo) = g.out_hw();
    for b in 0..g.b {
        for o in 0..g.o {
            for i in 0..ho {
                for j in 0..wo {
                    for c in 0..g.c {
                        for u in 0..g.kh {
                            for v in 0..g.kw {
                                if let Some((iy, ix)) = tap(g, i, j, u, v) {
                                    let xi = ((b * g.c + c) * g.h + iy) * g.w + ix;
                                    f([b, o, i, j, c, u, v], xi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn y_index(g: &Conv2dGeom, [b, o, i, j, ..]: [usize; 7]) -> usize {
    let (ho, wo) = g.out_hw();
    ((b * g.o + o) * ho + i) * wo + j
}

fn w_index(g: &Conv2dGeom, [_, o, _, _, c, u, v]: [usize; 7]) -> usize {
    ((o * g.c + c) * g.kh + u) * g.kw + v
}

pub(crate) fn naive_conv(x: &[f64], w: &[f64], bias: Option<&[f64]>, g: &Conv2dGeom) -> Vec<f64> {
    let (ho, wo) = g.out_hw();
    let mut y = vec![0.0; g.output_len()];
    if let Some(bias) = bias {
        for (k, yv) in y.iter_mut().enumerate() {
            *yv = bias[(k / (ho * wo)) % g.o];
        }
    }
    terms(g, |t, xi| y[y_index(g, t)] += w[w_index(g, t)] * x[xi]);
    y
}

pub(crate) fn naive_input_grad(gy: &[f64], w: &[f64], g: &Conv2dGeom) -> Vec<f64> {
    let mut gx = vec![0.0; g.input_len()];
    terms(g, |t, xi| gx[xi] += w[w_index(g, t)] * gy[y_index(g, t)]);
    gx
}

fn naive_kernel_grad(x: &[f64], gy: &[f64], g: &Conv2dGeom) -> Vec<f64> {
    let mut gw = vec![0.0; g.kernel_len()];
    terms(g, |t, xi| gw[w_index(g, t)] += gy[y_index(g, t)] * x[xi]);
    gw
}

/// max |a − b| / max(1, max |b|).
pub(crate) fn rel_err<T: Float>(a: &[T], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(p, q)| (p.as_f64() - q).abs())
        .fold(0.0, f64::max)
        / scale
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn geom(
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: (usize, usize),
    pad: usize,
    stride: usize,
) -> Conv2dGeom {
    Conv2dGeom {
        b,
        c,
        h,
        w,
        o,
        kh: k.0,
        kw: k.1,
        pad,
        stride,
    }
}

fn check_all<T: Float>(g: Conv2dGeom, tol: f64) {
    let x = values(g.input_len(), 1);
    let w = values(g.kernel_len(), 2);
    let bias = values(g.o, 3);
    let gy = values(g.output_len(), 4);
    let (xt, wt, bt, gyt) = (
        cast::<T>(&x),
        cast::<T>(&w),
        cast::<T>(&bias),
        cast::<T>(&gy),
    );
    for with_bias in [false, true] {
        let b64 = with_bias.then_some(&bias[..]);
        let bt = with_bias.then_some(&bt[..]);
        let want = naive_conv(&x, &w, b64, &g);
        let e = rel_err(&conv2d_im2col(&xt, &wt, bt, &g), &want);
        assert!(e < tol, "{g:?} im2col forward (bias {with_bias}): {e}");
        let e = rel_err(&conv2d(&xt, &wt, bt, &g), &want);
        assert!(e < tol, "{g:?} forward (bias {with_bias}): {e}");
    }
    let want = naive_input_grad(&gy, &w, &g);
    let e = rel_err(&conv2d_input_grad_im2col(&gyt, &wt, &g), &want);
    assert!(e < tol, "{g:?} im2col input gradient: {e}");
    let e = rel_err(&conv2d_input_grad(&gyt, &wt, &g), &want);
    assert!(e < tol, "{g:?} input gradient: {e}");
    let e = rel_err(
        &conv2d_kernel_grad(&xt, &gyt, &g),
        &naive_kernel_grad(&x, &gy, &g),
    );
    assert!(e < tol, "{g:?} kernel gradient: {e}");
    let (ho, wo) = g.out_hw();
    let mut want = vec![0.0; g.o];
    for (k, v) in gy.iter().enumerate() {
        want[(k / (ho * wo)) % g.o] += v;
    }
    let e = rel_err(&channel_sum(&gyt, g.b, g.o, ho * wo), &want);
    assert!(e < tol, "{g:?} bias gradient: {e}");
}

/// Odd sizes, strides 1 to 3, paddings 0 to 2, 1x1 (direct) and non-square kernels, single
/// channels, empty batches and channel counts; batches of one (GEMM columns split over the
/// threads) and of several images (one image per thread).
fn shapes() -> Vec<Conv2dGeom> {
    vec![
        geom(1, 3, 8, 8, 5, (3, 3), 1, 1),
        geom(2, 4, 9, 7, 3, (3, 3), 1, 1),
        geom(3, 5, 7, 6, 4, (3, 3), 0, 1),
        geom(3, 6, 9, 10, 6, (3, 3), 1, 2),
        geom(2, 2, 11, 9, 3, (4, 4), 0, 2),
        geom(1, 3, 10, 13, 2, (2, 3), 2, 3),
        geom(4, 8, 5, 5, 16, (1, 1), 0, 1),
        geom(2, 3, 6, 7, 4, (1, 1), 1, 2),
        geom(1, 1, 1, 1, 1, (1, 1), 0, 1),
        geom(1, 1, 3, 3, 1, (3, 3), 0, 1),
        geom(1, 40, 12, 15, 9, (3, 3), 1, 1),
        geom(5, 2, 3, 3, 2, (3, 3), 1, 1),
        geom(0, 3, 8, 8, 4, (3, 3), 1, 1),
        geom(0, 3, 5, 5, 4, (3, 3), 1, 2),
        geom(2, 0, 6, 6, 3, (3, 3), 1, 1),
        geom(2, 3, 6, 6, 0, (3, 3), 1, 1),
        geom(2, 3, 9, 9, 3, (3, 3), 1, 1),
    ]
}

#[test]
fn f32_kernels_match_f64_loops() {
    for g in shapes() {
        check_all::<f32>(g, 2e-5);
    }
}

#[test]
fn f64_kernels_match_f64_loops() {
    for g in shapes() {
        check_all::<f64>(g, 1e-12);
    }
}

#[test]
fn a_large_single_image_splits_its_gemm_columns_and_stays_exact() {
    // 1 image, N = 576 columns ≥ 128: the column-split GEMM when there are several threads
    for g in [
        geom(1, 16, 24, 24, 32, (1, 1), 0, 1),
        geom(1, 8, 24, 24, 12, (3, 3), 1, 1),
        geom(1, 8, 48, 48, 12, (3, 3), 1, 2),
    ] {
        check_all::<f32>(g, 2e-5);
    }
}

#[test]
fn the_geometry_reports_its_sizes() {
    let g = geom(2, 3, 9, 10, 6, (3, 3), 1, 2);
    assert_eq!(g.out_hw(), (5, 5));
    assert_eq!(
        (g.input_len(), g.output_len(), g.kernel_len()),
        (540, 300, 162)
    );
    assert!(g.is_valid());
    assert!(!geom(1, 1, 2, 2, 1, (3, 3), 0, 1).is_valid());
    assert!(!geom(1, 1, 4, 4, 1, (3, 3), 0, 0).is_valid());
}

#[test]
#[should_panic(expected = "values")]
fn a_short_input_is_refused() {
    let g = geom(1, 2, 4, 4, 2, (3, 3), 1, 1);
    let _ = conv2d(&[0f32; 31], &[0f32; 36], None, &g);
}

#[test]
#[should_panic(expected = "invalid geometry")]
fn a_kernel_larger_than_the_padded_input_is_refused() {
    let g = geom(1, 1, 2, 2, 1, (3, 3), 0, 1);
    let _ = conv2d(&[0f32; 4], &[0f32; 9], None, &g);
}
