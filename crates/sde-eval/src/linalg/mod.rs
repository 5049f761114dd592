//! Dense f64 linear algebra for the metrics: a symmetric eigensolver and tr√(Σ₁Σ₂).

mod eigen;

pub use eigen::{symmetric_eigen, symmetric_eigenvalues, SymmetricEigen};

use candle_core::{Device, Tensor};

use crate::error::Result;

/// Row-major `a (m × k) · b (k × n)` in f64, through candle's CPU GEMM.
pub(crate) fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Result<Vec<f64>> {
    let ta = Tensor::from_slice(a, (m, k), &Device::Cpu)?;
    let tb = Tensor::from_slice(b, (k, n), &Device::Cpu)?;
    Ok(ta.matmul(&tb)?.flatten_all()?.to_vec1::<f64>()?)
}

/// tr √(Σ₁ Σ₂) for symmetric positive semi-definite Σ₁, Σ₂ (row-major n × n).
///
/// Σ₁Σ₂ is similar to S = Σ₁^{1/2} Σ₂ Σ₁^{1/2}, which is symmetric PSD, so
/// tr √(Σ₁Σ₂) = Σᵢ √λᵢ(S). With Σ₁ = Q Λ Qᵀ, S is in turn similar to
/// Λ^{1/2} (Qᵀ Σ₂ Q) Λ^{1/2}, which is what is decomposed (two GEMMs and two symmetric
/// eigendecompositions, no complex arithmetic; scipy's `sqrtm` of the non-symmetric product,
/// which pytorch-fid uses, gives the same value up to rounding). Eigenvalues below zero are
/// rounding errors of a PSD matrix and count as zero.
///
/// ```
/// // Σ₁ = diag(1, 4), Σ₂ = diag(9, 1): √(Σ₁Σ₂) = diag(3, 2).
/// let t = sde_eval::linalg::trace_sqrt_product(&[1., 0., 0., 4.], &[9., 0., 0., 1.], 2)?;
/// assert!((t - 5.0).abs() < 1e-12);
/// # Ok::<(), sde_eval::Error>(())
/// ```
pub fn trace_sqrt_product(sigma1: &[f64], sigma2: &[f64], n: usize) -> Result<f64> {
    let e1 = symmetric_eigen(sigma1, n)?;
    // The eigenvectors of e1 as rows of Qᵀ (column-major Q read row-major is Qᵀ).
    let qt = &e1.vectors;
    // M = Qᵀ Σ₂ Q: Qᵀ (n×n, row-major = e1.vectors) times Σ₂, then times Q.
    // Σ₂ is symmetric, so (Qᵀ Σ₂) Q = Qᵀ Σ₂ (Qᵀ)ᵀ; form Q row-major by transposing.
    let mut q = vec![0.0; n * n];
    for r in 0..n {
        for c in 0..n {
            q[r * n + c] = qt[c * n + r];
        }
    }
    let sym = symmetrised(sigma2, n);
    let qts = matmul(qt, &sym, n, n, n)?;
    let m = matmul(&qts, &q, n, n, n)?;
    let root: Vec<f64> = e1.values.iter().map(|&l| l.max(0.0).sqrt()).collect();
    let mut s = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            // Symmetrise M against rounding as well.
            let mij = 0.5 * (m[i * n + j] + m[j * n + i]);
            s[i * n + j] = root[i] * mij * root[j];
        }
    }
    let values = symmetric_eigenvalues(&s, n)?;
    Ok(values.iter().map(|&l| l.max(0.0).sqrt()).sum())
}

fn symmetrised(a: &[f64], n: usize) -> Vec<f64> {
    let mut s = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            s[i * n + j] = 0.5 * (a[i * n + j] + a[j * n + i]);
        }
    }
    s
}
