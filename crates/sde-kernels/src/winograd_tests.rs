//! Winograd's F(2x2, 3x3) against im2col + GEMM and against plain f64 loops.

use super::*;
use crate::conv::tests::{geom as g_any, naive_conv, naive_input_grad, rel_err, values};
use crate::conv::{conv2d_im2col, conv2d_input_grad_im2col};

fn geom(b: usize, c: usize, h: usize, w: usize, o: usize) -> Geom {
    g_any(b, c, h, w, o, (3, 3), 1, 1)
}

fn check<T: Float>(g: Geom, tol: f64) {
    let cast = |v: Vec<f64>| v.into_iter().map(T::from_f64).collect::<Vec<T>>();
    let (x64, w64, b64) = (
        values(g.input_len(), 1),
        values(g.kernel_len(), 2),
        values(g.o, 3),
    );
    let (x, w, bias) = (cast(x64.clone()), cast(w64.clone()), cast(b64.clone()));
    assert!(applies(&g), "{g:?}");
    let worst = |a: &[T], b: &[T]| rel_err(a, &b.iter().map(|v| v.as_f64()).collect::<Vec<_>>());
    for (bias, b64) in [(None, None), (Some(&bias[..]), Some(&b64[..]))] {
        let fast = conv3x3(&x, &w, bias, &g);
        let e = worst(&fast, &conv2d_im2col(&x, &w, bias, &g));
        assert!(e < tol, "{g:?} forward vs im2col: {e}");
        let e = rel_err(&fast, &naive_conv(&x64, &w64, b64, &g));
        assert!(e < tol, "{g:?} forward vs loops: {e}");
    }
    let gy64 = values(g.output_len(), 4);
    let gy = cast(gy64.clone());
    let fast = conv3x3_input_grad(&gy, &w, &g);
    let e = worst(&fast, &conv2d_input_grad_im2col(&gy, &w, &g));
    assert!(e < tol, "{g:?} input gradient vs im2col: {e}");
    let e = rel_err(&fast, &naive_input_grad(&gy64, &w64, &g));
    assert!(e < tol, "{g:?} input gradient vs loops: {e}");
}

/// Winograd, im2col + GEMM and the loops agree, on even and odd sizes, one and several images
/// (the several-image path runs one image per thread), empty batches and channel counts,
/// float32 to a few ulps of the output scale and float64 to 1e-13.
#[test]
fn winograd_matches_im2col_and_loops() {
    for g in [
        geom(1, 3, 8, 8, 5),
        geom(2, 4, 9, 7, 3),
        geom(3, 16, 16, 16, 8),
        geom(1, 1, 11, 13, 1),
        geom(4, 8, 8, 10, 8),
        geom(1, 24, 20, 18, 40),
        geom(0, 4, 8, 8, 4),
        geom(2, 0, 8, 8, 3),
        geom(2, 3, 8, 8, 0),
    ] {
        check::<f32>(g, 4e-6);
        check::<f64>(g, 1e-13);
    }
}

#[test]
fn only_3x3_same_convolutions_of_8x8_and_more_apply() {
    assert!(applies(&geom(1, 4, 8, 8, 4)));
    assert!(applies(&geom(1, 4, 7, 9, 4)));
    assert!(
        !applies(&geom(1, 4, 4, 4, 4)),
        "4x4 images take the GEMM path"
    );
    assert!(!applies(&Geom {
        stride: 2,
        ..geom(1, 4, 16, 16, 4)
    }));
    assert!(!applies(&g_any(1, 4, 16, 16, 4, (3, 3), 0, 1)));
    assert!(!applies(&g_any(1, 4, 16, 16, 4, (1, 1), 0, 1)));
}

#[test]
#[should_panic(expected = "not a 3x3")]
fn other_geometries_are_refused() {
    let g = geom(1, 1, 4, 4, 1);
    let _ = conv3x3(&[0f32; 16], &[0f32; 9], None, &g);
}
