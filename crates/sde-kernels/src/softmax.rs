//! Softmax over the rows of a matrix (the attention weights), forward and backward.
//!
//! $\mathrm{softmax}(s)_j = e^{s_j - m} / \sum_k e^{s_k - m}$ with $m = \max_k s_k$, and the
//! backward $\partial s = y \odot (\partial y - \langle \partial y, y \rangle)$ per row. The
//! exponential is the standard library's (`f32::exp` / `f64::exp`); sums run left to right.
//! Rows are independent tasks ([`crate::parallel::for_each_chunk_run`]), so the result does not
//! depend on the thread count.

use crate::float::Float;
use crate::parallel;

/// Runs `row(i, dst_row)` for the rows of `n` values of a `len`-value output.
fn for_rows<T: Float>(len: usize, n: usize, row: impl Fn(usize, &mut [T]) + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); len];
    if n == 0 {
        return out;
    }
    parallel::for_each_chunk_run(&mut out, n, 8 * len, |rows, run| {
        rows.zip(run.chunks_mut(n)).for_each(|(i, y)| row(i, y))
    });
    out
}

fn check_rows(who: &str, len: usize, n: usize) {
    assert!(
        if n == 0 { len == 0 } else { len % n == 0 },
        "{who}: {len} values are not rows of {n}"
    );
}

/// The softmax of each row of `n` values of `x` (`x.len()` a multiple of `n`; `n = 0` only
/// with an empty `x`). A row of `-inf` gives NaN, as the definition does. Panics on other
/// lengths.
pub fn softmax_rows<T: Float>(x: &[T], n: usize) -> Vec<T> {
    check_rows("softmax_rows", x.len(), n);
    for_rows(x.len(), n, |i, y: &mut [T]| {
        let xr = &x[i * n..(i + 1) * n];
        let m = xr.iter().fold(T::neg_infinity(), |a, &v| a.max(v));
        let mut z = T::zero();
        for (yv, &v) in y.iter_mut().zip(xr) {
            *yv = (v - m).exp();
            z += *yv;
        }
        let inv = T::one() / z;
        y.iter_mut().for_each(|v| *v *= inv);
    })
}

/// The backward of [`softmax_rows`]: from its output `y` and the output gradient `dy` (rows of
/// `n`), the input gradient $y \odot (\partial y - \langle \partial y, y\rangle)$ row by row.
/// Panics if the lengths differ or are not rows of `n`.
pub fn softmax_rows_backward<T: Float>(y: &[T], dy: &[T], n: usize) -> Vec<T> {
    check_rows("softmax_rows_backward", y.len(), n);
    assert_eq!(
        y.len(),
        dy.len(),
        "softmax_rows_backward: y and dy lengths differ"
    );
    for_rows(y.len(), n, |i, dx: &mut [T]| {
        let (yr, gr) = (&y[i * n..(i + 1) * n], &dy[i * n..(i + 1) * n]);
        let dot = yr.iter().zip(gr).fold(T::zero(), |a, (&y, &g)| a + y * g);
        for ((d, &y), &g) in dx.iter_mut().zip(yr).zip(gr) {
            *d = y * (g - dot);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, scale: f64) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * 7919 % 1013) as f64 / 506.5 - 1.0) * scale)
            .collect()
    }

    /// The definition in f64: exp(x_j) / Σ exp(x_k) (no max shift: the test values are small).
    fn naive(x: &[f64], n: usize) -> Vec<f64> {
        x.chunks(n.max(1))
            .flat_map(|r| {
                let z: f64 = r.iter().map(|v| v.exp()).sum();
                r.iter().map(move |v| v.exp() / z)
            })
            .collect()
    }

    /// The Jacobian-vector product by the definition: ∂s_j = Σ_i dy_i ∂y_i/∂s_j,
    /// ∂y_i/∂s_j = y_i (δ_ij − y_j).
    fn naive_backward(y: &[f64], dy: &[f64], n: usize) -> Vec<f64> {
        let mut dx = vec![0.0; y.len()];
        for (r, (yr, gr)) in y.chunks(n.max(1)).zip(dy.chunks(n.max(1))).enumerate() {
            for j in 0..n {
                dx[r * n + j] = (0..n)
                    .map(|i| gr[i] * yr[i] * (f64::from(u8::from(i == j)) - yr[j]))
                    .sum();
            }
        }
        dx
    }

    fn check<T: Float>(rows: usize, n: usize, tol: f64) {
        let x = values(rows * n, 6.0);
        let dy = values(rows * n, 1.5);
        let cast = |v: &[f64]| v.iter().map(|&a| T::from_f64(a)).collect::<Vec<T>>();
        let y = softmax_rows(&cast(&x), n);
        let want = naive(&x, n);
        let err = |a: &[T], b: &[f64]| {
            a.iter()
                .zip(b)
                .map(|(p, q)| (p.as_f64() - q).abs())
                .fold(0.0, f64::max)
        };
        assert!(err(&y, &want) < tol, "{rows}x{n} forward");
        let dx = softmax_rows_backward(&y, &cast(&dy), n);
        assert!(
            err(&dx, &naive_backward(&want, &dy, n)) < tol,
            "{rows}x{n} backward"
        );
    }

    #[test]
    fn rows_match_the_definition() {
        for (rows, n) in [
            (1, 1),
            (3, 7),
            (64, 64),
            (5, 1000),
            (1000, 3),
            (0, 5),
            (0, 0),
        ] {
            check::<f64>(rows, n, 1e-14);
            check::<f32>(rows, n, 1e-6);
        }
    }

    #[test]
    fn large_scores_do_not_overflow() {
        let y = softmax_rows(&[1000.0f32, 999.0, -1000.0], 3);
        let e = (-1.0f64).exp();
        assert!((y[0] as f64 - 1.0 / (1.0 + e)).abs() < 1e-6);
        assert!((y[1] as f64 - e / (1.0 + e)).abs() < 1e-6);
        assert_eq!(y[2], 0.0);
    }

    #[test]
    #[should_panic(expected = "rows of")]
    fn ragged_rows_are_refused() {
        let _ = softmax_rows(&[0f32; 7], 3);
    }
}
