//! Improved precision and recall (Kynkäänniemi et al. 2019): k-NN balls around each feature
//! approximate the support of the real and of the generated distribution.

use candle_core::Tensor;

use crate::error::{invalid, Error, Result};
use crate::linalg::matmul;
use crate::stats::host_matrix;

/// Precision (fraction of generated samples inside the real manifold) and recall (fraction of
/// real samples inside the generated manifold).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PrecisionRecall {
    /// Precision ∈ [0, 1].
    pub precision: f64,
    /// Recall ∈ [0, 1].
    pub recall: f64,
}

/// Rows processed per distance block (bounds memory at `BLOCK × n` f64).
const BLOCK: usize = 1024;

fn sq_norms(v: &[f64], d: usize) -> Vec<f64> {
    v.chunks_exact(d)
        .map(|r| r.iter().map(|x| x * x).sum())
        .collect()
}

fn transpose(v: &[f64], n: usize, d: usize) -> Vec<f64> {
    let mut t = vec![0.0; n * d];
    for i in 0..n {
        for j in 0..d {
            t[j * n + i] = v[i * d + j];
        }
    }
    t
}

/// Squared distances of rows `a[lo..hi]` to every row of `b` (`bt` = bᵀ), row-major.
fn sq_dists(
    a: &[f64],
    an: &[f64],
    lo: usize,
    hi: usize,
    bt: &[f64],
    bn: &[f64],
    d: usize,
) -> Result<Vec<f64>> {
    let m = hi - lo;
    let n = bn.len();
    let dots = matmul(&a[lo * d..hi * d], bt, m, d, n)?;
    Ok(dots
        .chunks_exact(n)
        .enumerate()
        .flat_map(|(i, row)| {
            let ai = an[lo + i];
            row.iter()
                .zip(bn)
                .map(move |(dot, bj)| (ai + bj - 2.0 * dot).max(0.0))
        })
        .collect())
}

/// Squared distance of each row of `v` to its k-th nearest other row (the ball radius²).
fn knn_radii(v: &[f64], n: usize, d: usize, k: usize) -> Result<Vec<f64>> {
    let nrm = sq_norms(v, d);
    let vt = transpose(v, n, d);
    let mut radii = Vec::with_capacity(n);
    for lo in (0..n).step_by(BLOCK) {
        let hi = (lo + BLOCK).min(n);
        let dist = sq_dists(v, &nrm, lo, hi, &vt, &nrm, d)?;
        for (i, row) in dist.chunks_exact(n).enumerate() {
            let mut r: Vec<f64> = row
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != lo + i)
                .map(|(_, &x)| x)
                .collect();
            let (_, kth, _) = r.select_nth_unstable_by(k - 1, f64::total_cmp);
            radii.push(*kth);
        }
    }
    Ok(radii)
}

/// Fraction of rows of `q` inside at least one ball (centre row of `c`, radius² `radii`).
fn coverage(q: &[f64], nq: usize, c: &[f64], nc: usize, radii: &[f64], d: usize) -> Result<f64> {
    let qn = sq_norms(q, d);
    let cn = sq_norms(c, d);
    let ct = transpose(c, nc, d);
    let mut inside = 0usize;
    for lo in (0..nq).step_by(BLOCK) {
        let hi = (lo + BLOCK).min(nq);
        let dist = sq_dists(q, &qn, lo, hi, &ct, &cn, d)?;
        inside += dist
            .chunks_exact(nc)
            .filter(|row| row.iter().zip(radii).any(|(x, r)| x <= r))
            .count();
    }
    Ok(inside as f64 / nq as f64)
}

/// Improved precision and recall of generated features `fake: [M, d]` against real features
/// `real: [N, d]` with k-nearest-neighbour radii (the paper uses k = 3):
/// precision = (1/M) Σ_f 1[∃ r: ‖f − r‖ ≤ NN_k(r)], recall likewise with the roles swapped,
/// where NN_k(r) is the distance of r to its k-th nearest neighbour in its own set.
/// Needs `1 ≤ k < min(N, M)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let real = Tensor::new(&[[0f32], [1.], [2.], [3.]], &Device::Cpu)?;
/// let fake = Tensor::new(&[[0.5f32], [2.5], [100.], [101.]], &Device::Cpu)?;
/// let pr = sde_eval::precision_recall(&real, &fake, 1)?;
/// assert_eq!(pr.precision, 0.5); // 100 and 101 are outside every real ball
/// assert_eq!(pr.recall, 1.0); // 0.5's and 2.5's balls (radius 2) cover every real point
/// # Ok::<(), sde_eval::Error>(())
/// ```
pub fn precision_recall(real: &Tensor, fake: &Tensor, k: usize) -> Result<PrecisionRecall> {
    let (nr, d, rv) = host_matrix(real, "precision/recall real features")?;
    let (nf, df, fv) = host_matrix(fake, "precision/recall fake features")?;
    if df != d {
        return Err(Error::ShapeMismatch {
            what: "precision/recall fake features",
            expected: format!("[M, {d}] (the width of the real features)"),
            got: format!("[{nf}, {df}]"),
        });
    }
    if k == 0 || k >= nr.min(nf) {
        return Err(invalid(
            "k",
            k,
            format!(
                "must be in [1, min(N, M) − 1 = {}]",
                nr.min(nf).saturating_sub(1)
            ),
        ));
    }
    let real_radii = knn_radii(&rv, nr, d, k)?;
    let fake_radii = knn_radii(&fv, nf, d, k)?;
    Ok(PrecisionRecall {
        precision: coverage(&fv, nf, &rv, nr, &real_radii, d)?,
        recall: coverage(&rv, nr, &fv, nf, &fake_radii, d)?,
    })
}
