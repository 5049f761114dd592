//! Symmetric eigendecomposition: Householder tridiagonalisation followed by the implicit QL
//! algorithm with Wilkinson-like shifts (EISPACK `tred2` / `tql2`, as in JAMA).
//!
//! Why our own and not a crate: the workspace's numerics sit on candle, which has no
//! eigensolver, and the one routine FID needs (a dense real symmetric matrix, n ≤ a few
//! thousand, f64) is ~200 lines of a textbook algorithm with backward error O(ε‖A‖); nalgebra
//! would bring a second linear-algebra stack (nalgebra, simba, matrixmultiply, …) for it. The
//! tests check it against closed forms (diagonal, 2×2 rotations, A v = λ v and VᵀV = I on
//! random matrices, known spectra).

use crate::error::{Error, Result};

/// Eigenvalues and eigenvectors of a real symmetric matrix A = V diag(λ) Vᵀ.
#[derive(Debug, Clone, PartialEq)]
pub struct SymmetricEigen {
    /// Order n.
    pub n: usize,
    /// Eigenvalues λ, ascending.
    pub values: Vec<f64>,
    /// Eigenvectors, column-major: eigenvector j (for `values[j]`) is
    /// `vectors[j * n..(j + 1) * n]`; V is orthogonal.
    pub vectors: Vec<f64>,
}

impl SymmetricEigen {
    /// Eigenvector `j` (unit norm).
    pub fn vector(&self, j: usize) -> &[f64] {
        &self.vectors[j * self.n..(j + 1) * self.n]
    }
}

/// A = V diag(λ) Vᵀ for a symmetric `a` (row-major n × n; only symmetric input is meaningful:
/// the lower triangle is read). Non-finite entries are [`Error::NonFinite`]; a wrong length
/// is [`Error::ShapeMismatch`]; the QL iteration not converging in 60 sweeps per eigenvalue
/// (never seen for finite input) is [`Error::NoConvergence`].
///
/// ```
/// let e = sde_eval::linalg::symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2)?;
/// assert!((e.values[0] - 1.0).abs() < 1e-14 && (e.values[1] - 3.0).abs() < 1e-14);
/// # Ok::<(), sde_eval::Error>(())
/// ```
pub fn symmetric_eigen(a: &[f64], n: usize) -> Result<SymmetricEigen> {
    let (values, vectors) = decompose(a, n, true)?;
    Ok(SymmetricEigen { n, values, vectors })
}

/// The eigenvalues of a symmetric `a` alone, ascending: the same reduction and QL iteration
/// as [`symmetric_eigen`] (bit-identical values) without accumulating the transformations,
/// O(n³) with a constant several times smaller (FID's second decomposition needs no vectors).
///
/// ```
/// let l = sde_eval::linalg::symmetric_eigenvalues(&[2.0, 1.0, 1.0, 2.0], 2)?;
/// assert!((l[0] - 1.0).abs() < 1e-14 && (l[1] - 3.0).abs() < 1e-14);
/// # Ok::<(), sde_eval::Error>(())
/// ```
pub fn symmetric_eigenvalues(a: &[f64], n: usize) -> Result<Vec<f64>> {
    Ok(decompose(a, n, false)?.0)
}

/// (λ ascending, V column-major or empty).
fn decompose(a: &[f64], n: usize, vectors: bool) -> Result<(Vec<f64>, Vec<f64>)> {
    if a.len() != n * n {
        return Err(Error::ShapeMismatch {
            what: "symmetric_eigen matrix",
            expected: format!("{n}x{n} = {} entries", n * n),
            got: format!("{} entries", a.len()),
        });
    }
    if let Some(i) = a.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            what: format!("symmetric matrix entry ({}, {})", i / n, i % n),
        });
    }
    if n == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    // Column-major V, so that the inner loops (over rows k of a column) are contiguous.
    // V starts as A (symmetric, so A's row-major layout read column-major is A itself; the
    // lower triangle is what tred2 reads).
    let mut v = vec![0.0; n * n];
    for r in 0..n {
        for c in 0..n {
            let (i, j) = if r >= c { (r, c) } else { (c, r) };
            v[c * n + r] = a[i * n + j];
        }
    }
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    tred2(n, &mut v, &mut d, &mut e, vectors);
    tql2(n, &mut v, &mut d, &mut e, vectors)?;
    if !vectors {
        v = Vec::new();
    }
    Ok((d, v))
}

/// Householder reduction to tridiagonal form (EISPACK `tred2`): on return `d` holds the
/// diagonal, `e[1..]` the sub-diagonal and, with `vectors`, `v` the orthogonal transformation
/// (without, `v` is left as workspace).
#[allow(clippy::needless_range_loop)]
fn tred2(n: usize, v: &mut [f64], d: &mut [f64], e: &mut [f64], vectors: bool) {
    // V[r][c] at v[c * n + r].
    let at = |r: usize, c: usize| c * n + r;
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
    }
    for i in (1..n).rev() {
        let mut scale = 0.0;
        let mut h = 0.0;
        for k in 0..i {
            scale += d[k].abs();
        }
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
                v[at(j, i)] = 0.0;
            }
        } else {
            for k in 0..i {
                d[k] /= scale;
                h += d[k] * d[k];
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for j in 0..i {
                e[j] = 0.0;
            }
            for j in 0..i {
                f = d[j];
                v[at(j, i)] = f;
                g = e[j] + v[at(j, j)] * f;
                let col = j * n;
                for k in (j + 1)..i {
                    g += v[col + k] * d[k];
                    e[k] += v[col + k] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                let col = j * n;
                for k in j..i {
                    v[col + k] -= f * e[k] + g * d[k];
                }
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    if !vectors {
        // The diagonal the accumulation below would read back: it leaves V(i, i) for i < n − 1
        // untouched until it copies it out, and never writes V(n − 1, n − 1).
        for j in 0..n {
            d[j] = v[at(j, j)];
        }
        e[0] = 0.0;
        return;
    }
    // Accumulate the transformations.
    for i in 0..n - 1 {
        v[at(n - 1, i)] = v[at(i, i)];
        v[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[at(k, i + 1)] / h;
            }
            for j in 0..=i {
                let (ci, cj) = ((i + 1) * n, j * n);
                let mut g = 0.0;
                for k in 0..=i {
                    g += v[ci + k] * v[cj + k];
                }
                for k in 0..=i {
                    v[cj + k] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
        v[at(n - 1, j)] = 0.0;
    }
    v[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
}

/// Implicit QL on the tridiagonal matrix (EISPACK `tql2`), accumulating into `v` when
/// `vectors`; sorts the eigenpairs by ascending eigenvalue.
fn tql2(n: usize, v: &mut [f64], d: &mut [f64], e: &mut [f64], vectors: bool) -> Result<()> {
    const MAX_SWEEPS: usize = 60;
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            let mut sweeps = 0;
            loop {
                sweeps += 1;
                if sweeps > MAX_SWEEPS {
                    return Err(Error::NoConvergence {
                        what: "symmetric_eigen (implicit QL)",
                        reason: format!("eigenvalue {l} not isolated after {MAX_SWEEPS} sweeps"),
                    });
                }
                let g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for di in d.iter_mut().take(n).skip(l + 2) {
                    *di -= h;
                }
                f += h;
                p = d[m];
                let mut c = 1.0;
                let mut c2 = c;
                let mut c3 = c;
                let el1 = e[l + 1];
                let mut s = 0.0;
                let mut s2 = 0.0;
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    let g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    if !vectors {
                        continue;
                    }
                    // Rotate columns i and i + 1 of V (contiguous in column-major storage).
                    let (lo, hi) = v.split_at_mut((i + 1) * n);
                    let col_i = &mut lo[i * n..];
                    let col_i1 = &mut hi[..n];
                    for (a, b) in col_i.iter_mut().zip(col_i1.iter_mut()) {
                        let h = *b;
                        *b = s * *a + c * h;
                        *a = c * *a - s * h;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    // Sort ascending (selection sort keeps the column swaps simple: O(n²) moves).
    for i in 0..n.saturating_sub(1) {
        let mut k = i;
        let mut p = d[i];
        for (j, &dj) in d.iter().enumerate().skip(i + 1) {
            if dj < p {
                k = j;
                p = dj;
            }
        }
        if k != i {
            d.swap(i, k);
            if !vectors {
                continue;
            }
            let (lo, hi) = v.split_at_mut(k * n);
            lo[i * n..(i + 1) * n].swap_with_slice(&mut hi[..n]);
        }
    }
    Ok(())
}
