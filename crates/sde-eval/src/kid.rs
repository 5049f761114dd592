//! Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD² between feature sets
//! under the cubic polynomial kernel, averaged over random subsets as torch-fidelity does.

use candle_core::Tensor;
use rand::Rng;

use crate::error::{invalid, Error, Result};
use crate::linalg::matmul;
use crate::stats::host_matrix;

/// Options of [`kid`], torch-fidelity's defaults: `kid_subsets = 100`,
/// `kid_subset_size = 1000`, `kid_degree = 3`, `kid_gamma = None` (1/d), `kid_coef0 = 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct KidOptions {
    /// Number of random subset pairs (`kid_subsets`).
    pub subsets: usize,
    /// Size m of each subset, drawn without replacement from each set (`kid_subset_size`).
    pub subset_size: usize,
    /// Polynomial degree (`kid_degree`).
    pub degree: u32,
    /// Kernel scale γ; `None` is 1/d (`kid_gamma`).
    pub gamma: Option<f64>,
    /// Kernel offset c (`kid_coef0`).
    pub coef0: f64,
}

impl Default for KidOptions {
    fn default() -> Self {
        Self {
            subsets: 100,
            subset_size: 1000,
            degree: 3,
            gamma: None,
            coef0: 1.0,
        }
    }
}

/// Mean and population standard deviation (`np.std`) of a metric over subsets or splits.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MeanStd {
    /// Mean over the subsets / splits.
    pub mean: f64,
    /// Standard deviation over them (normalised by their number, as `np.std`).
    pub std: f64,
}

impl MeanStd {
    pub(crate) fn of(v: &[f64]) -> Self {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        Self {
            mean,
            std: var.sqrt(),
        }
    }
}

/// Unbiased MMD² of two sets of m features each (row-major `[m, d]` f64), with
/// k(x, y) = (γ x·y + c)^degree, torch-fidelity's `polynomial_mmd` / `mmd2(unbiased)`:
/// MMD² = (Σ_{i≠j} k(xᵢ, xⱼ) + Σ_{i≠j} k(yᵢ, yⱼ)) / (m(m − 1)) − 2 Σ_{i,j} k(xᵢ, yⱼ) / m².
fn mmd2_host(
    x: &[f64],
    y: &[f64],
    m: usize,
    d: usize,
    gamma: f64,
    coef0: f64,
    degree: u32,
) -> Result<f64> {
    let t = |a: &[f64]| {
        let mut at = vec![0.0; a.len()];
        for i in 0..m {
            for j in 0..d {
                at[j * m + i] = a[i * d + j];
            }
        }
        at
    };
    let (xt, yt) = (t(x), t(y));
    let k = |v: f64| (gamma * v + coef0).powi(degree as i32);
    let kxx = matmul(x, &xt, m, d, m)?;
    let kyy = matmul(y, &yt, m, d, m)?;
    let kxy = matmul(x, &yt, m, d, m)?;
    let off_diag = |g: &[f64]| {
        let mut s = 0.0;
        for i in 0..m {
            for j in 0..m {
                if i != j {
                    s += k(g[i * m + j]);
                }
            }
        }
        s
    };
    let sxy: f64 = kxy.iter().map(|&v| k(v)).sum();
    let mf = m as f64;
    Ok((off_diag(&kxx) + off_diag(&kyy)) / (mf * (mf - 1.0)) - 2.0 * sxy / (mf * mf))
}

/// Unbiased polynomial-kernel MMD² between two whole feature sets of equal size `[m, d]`
/// (one "subset" of [`kid`]). `gamma = None` is 1/d.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[0f32, 1.], [1., 0.], [1., 1.]], &Device::Cpu)?;
/// let y = Tensor::new(&[[0f32, 2.], [2., 0.], [2., 2.]], &Device::Cpu)?;
/// let mmd = sde_eval::polynomial_mmd2(&x, &y, 3, None, 1.0)?;
/// assert!(mmd > 0.0);
/// # Ok::<(), sde_eval::Error>(())
/// ```
#[doc(alias = "polynomial_mmd")]
pub fn polynomial_mmd2(
    x: &Tensor,
    y: &Tensor,
    degree: u32,
    gamma: Option<f64>,
    coef0: f64,
) -> Result<f64> {
    let (m, d, xv) = host_matrix(x, "KID features x")?;
    let (my, dy, yv) = host_matrix(y, "KID features y")?;
    if my != m || dy != d {
        return Err(Error::ShapeMismatch {
            what: "polynomial_mmd2 y",
            expected: format!("[{m}, {d}] (the shape of x)"),
            got: format!("[{my}, {dy}]"),
        });
    }
    if m < 2 {
        return Err(Error::NotEnoughSamples {
            what: "the unbiased MMD²",
            need: 2,
            got: m,
        });
    }
    let gamma = check_gamma(gamma, d)?;
    mmd2_host(&xv, &yv, m, d, gamma, coef0, degree)
}

fn check_gamma(gamma: Option<f64>, d: usize) -> Result<f64> {
    let g = gamma.unwrap_or(1.0 / d as f64);
    if !(g.is_finite() && g > 0.0) {
        return Err(invalid("gamma", g, "must be finite and > 0"));
    }
    Ok(g)
}

/// Kernel Inception Distance between feature sets `x: [n₁, d]` and `y: [n₂, d]`
/// (torch-fidelity's `kid_features_to_metric`): for each of `subsets` rounds, m =
/// `subset_size` rows of each set are drawn without replacement with `rng`, and the unbiased
/// MMD² of [`polynomial_mmd2`] is taken; returns the mean and `np.std` over rounds.
/// torch-fidelity draws its subsets with `np.random.RandomState(1234)`; the subsets here come
/// from the caller's `rng`, so values agree in distribution, and exactly when
/// `subset_size = n₁ = n₂` (every subset is the whole set).
///
/// `subset_size` larger than a set, below 2, or `subsets = 0` is
/// [`Error::InvalidParameter`].
pub fn kid<R: Rng + ?Sized>(
    x: &Tensor,
    y: &Tensor,
    opts: &KidOptions,
    rng: &mut R,
) -> Result<MeanStd> {
    let (n1, d, xv) = host_matrix(x, "KID features x")?;
    let (n2, d2, yv) = host_matrix(y, "KID features y")?;
    if d2 != d {
        return Err(Error::ShapeMismatch {
            what: "KID features y",
            expected: format!("[N, {d}] (the width of x)"),
            got: format!("[{n2}, {d2}]"),
        });
    }
    let m = opts.subset_size;
    if m < 2 || m > n1.min(n2) {
        return Err(invalid(
            "subset_size",
            m,
            format!("must be in [2, min(n₁, n₂) = {}]", n1.min(n2)),
        ));
    }
    if opts.subsets == 0 {
        return Err(invalid("subsets", 0, "must be at least 1"));
    }
    let gamma = check_gamma(opts.gamma, d)?;
    let pick = |v: &[f64], n: usize, rng: &mut R| {
        let idx = rand::seq::index::sample(rng, n, m);
        let mut out = Vec::with_capacity(m * d);
        for i in idx.iter() {
            out.extend_from_slice(&v[i * d..(i + 1) * d]);
        }
        out
    };
    let mut mmds = Vec::with_capacity(opts.subsets);
    for _ in 0..opts.subsets {
        let a = pick(&xv, n1, rng);
        let b = pick(&yv, n2, rng);
        mmds.push(mmd2_host(&a, &b, m, d, gamma, opts.coef0, opts.degree)?);
    }
    Ok(MeanStd::of(&mmds))
}
