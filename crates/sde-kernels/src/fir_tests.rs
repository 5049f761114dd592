//! `upfirdn2d` and its adjoint against the definition: zero insertion, padding or cropping into
//! an explicit 2-D signal, a direct 2-D convolution with the outer-product kernel, subsampling.

use super::*;

use crate::test_util::values;

/// Every (output index, input index, weight) of the map for one plane, from the padded signal.
fn terms(
    k: &[f64],
    up: usize,
    down: usize,
    pad: (isize, isize),
    (h, w): (usize, usize),
) -> ((usize, usize), Vec<(usize, usize, f64)>) {
    // position of input sample s in the padded, upsampled signal of length l
    let l = |len: usize| (len * up) as isize + pad.0 + pad.1;
    let (lh, lw) = (l(h), l(w));
    let t = k.len() as isize;
    assert!(
        lh >= t && lw >= t,
        "test case: the padded signal is shorter than the kernel"
    );
    let (ho, wo) = (
        ((lh - t) / down as isize + 1) as usize,
        ((lw - t) / down as isize + 1) as usize,
    );
    // z[p] = index of the input sample at padded position p, if any
    let place = |len: usize, lz: isize| {
        let mut z = vec![None; lz as usize];
        for s in 0..len {
            let p = (s * up) as isize + pad.0;
            if p >= 0 && p < lz {
                z[p as usize] = Some(s);
            }
        }
        z
    };
    let (zh, zw) = (place(h, lh), place(w, lw));
    let kr: Vec<f64> = k.iter().rev().copied().collect();
    let mut out = Vec::new();
    for i in 0..ho {
        for j in 0..wo {
            for (a, &ka) in kr.iter().enumerate() {
                for (b, &kb) in kr.iter().enumerate() {
                    if let (Some(sy), Some(sx)) = (zh[i * down + a], zw[j * down + b]) {
                        out.push((i * wo + j, sy * w + sx, ka * kb));
                    }
                }
            }
        }
    }
    ((ho, wo), out)
}

fn check<T: Float>(
    k: &[f64],
    up: usize,
    down: usize,
    pad: (isize, isize),
    planes: usize,
    hw: (usize, usize),
    tol: f64,
) {
    let op = UpFirDn::new(k, up, down, pad).unwrap();
    let ((ho, wo), terms) = terms(k, up, down, pad, hw);
    assert_eq!(op.out_hw(hw), (ho, wo));
    let (n_in, n_out) = (hw.0 * hw.1, ho * wo);
    let x = values(planes * n_in, 1);
    let g = values(planes * n_out, 2);
    let (mut y, mut gx) = (vec![0.0; planes * n_out], vec![0.0; planes * n_in]);
    for p in 0..planes {
        for &(o, i, kv) in &terms {
            y[p * n_out + o] += kv * x[p * n_in + i];
            gx[p * n_in + i] += kv * g[p * n_out + o];
        }
    }
    let cast = |v: &[f64]| v.iter().map(|&a| T::from_f64(a)).collect::<Vec<T>>();
    let err = |a: &[T], b: &[f64]| {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(p, q)| (p.as_f64() - q).abs())
            .fold(0.0, f64::max)
    };
    let e = err(&op.forward(&cast(&x), planes, hw), &y);
    assert!(
        e < tol,
        "forward {k:?} up {up} down {down} pad {pad:?} {hw:?}: {e}"
    );
    let e = err(&op.adjoint(&cast(&g), planes, hw), &gx);
    assert!(
        e < tol,
        "adjoint {k:?} up {up} down {down} pad {pad:?} {hw:?}: {e}"
    );
}

#[test]
fn upfirdn2d_and_its_adjoint_match_the_definition() {
    let k4 = [0.125, 0.375, 0.375, 0.125];
    let cases: &[(&[f64], usize, usize, (isize, isize), usize, (usize, usize))] = &[
        // upsample_2d / downsample_2d with the [1, 3, 3, 1] kernel
        (&[0.25, 0.75, 0.75, 0.25], 2, 1, (2, 1), 3, (8, 8)),
        (&k4, 1, 2, (1, 1), 2, (8, 8)),
        // odd sizes, a 3-tap asymmetric kernel, factors 3 and 2, a crop
        (&[0.25, 0.5, -0.125], 3, 2, (2, -1), 2, (7, 5)),
        (&[1.0, -2.0], 1, 3, (0, 0), 1, (10, 11)),
        (&k4, 2, 2, (-1, 3), 1, (1, 1)),
        (&[2.0], 1, 1, (0, 0), 1, (3, 4)),
        // more planes than runs
        (&k4, 1, 1, (2, 1), 130, (4, 3)),
        // empty batches
        (&k4, 2, 1, (2, 1), 0, (8, 8)),
    ];
    for &(k, up, down, pad, planes, hw) in cases {
        check::<f64>(k, up, down, pad, planes, hw, 1e-13);
        check::<f32>(k, up, down, pad, planes, hw, 2e-6);
    }
}

#[test]
fn invalid_parameters_are_refused() {
    assert!(UpFirDn::new(&[], 1, 1, (0, 0)).is_none());
    assert!(UpFirDn::new(&[1.0], 0, 1, (0, 0)).is_none());
    assert!(UpFirDn::new(&[1.0], 1, 0, (0, 0)).is_none());
    let op = UpFirDn::new(&[1.0, 1.0, 1.0], 1, 1, (0, 0)).unwrap();
    assert_eq!(op.out_len(2), None);
    assert_eq!(op.out_len(3), Some(1));
}

#[test]
#[should_panic(expected = "values")]
fn a_short_input_is_refused() {
    let op = UpFirDn::new(&[1.0], 1, 1, (0, 0)).unwrap();
    let _ = op.forward(&[0f32; 5], 1, (2, 3));
}
