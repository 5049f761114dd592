//! Streaming feature statistics: the running mean and covariance of a feature stream in f64,
//! merged exactly across batches and shards (Chan, Golub & LeVeque 1979).

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::linalg::matmul;

/// Host f64 copy of a `[N, d]` feature tensor, checked for finiteness.
pub(crate) fn host_matrix(x: &Tensor, what: &'static str) -> Result<(usize, usize, Vec<f64>)> {
    let (n, d) = x.dims2().map_err(|_| Error::ShapeMismatch {
        what,
        expected: "[N, d]".into(),
        got: format!("{:?}", x.dims()),
    })?;
    if !x.dtype().is_float() {
        return Err(Error::ShapeMismatch {
            what,
            expected: "a float dtype".into(),
            got: format!("{:?}", x.dtype()),
        });
    }
    let v = x
        .to_dtype(DType::F64)?
        .to_device(&candle_core::Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    if let Some(i) = v.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            what: format!("{what} row {} column {}", i / d.max(1), i % d.max(1)),
        });
    }
    Ok((n, d, v))
}

/// Running statistics of d-dimensional features: count n, mean μ and co-moment
/// M₂ = Σᵢ (xᵢ − μ)(xᵢ − μ)ᵀ, all in f64, so that 50 000 Inception features never need to be
/// held at once.
///
/// A batch is reduced to its own (n_b, μ_b, M₂,b) (a centred GEMM), then merged by Chan et al.'s
/// pairwise update: with δ = μ_b − μ_a and n = n_a + n_b,
/// μ = μ_a + δ n_b / n, M₂ = M₂,a + M₂,b + δδᵀ n_a n_b / n.
/// The merge is exact algebra, so statistics of shards merged in any grouping equal those of
/// one pass up to rounding (~1e-15 relative). The covariance is M₂ / (n − 1), as `np.cov`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f32, 2.], [3., 6.], [5., 4.]], &Device::Cpu)?;
/// let mut s = sde_eval::FeatureStats::new(2);
/// s.update(&x.narrow(0, 0, 1)?)?;
/// s.update(&x.narrow(0, 1, 2)?)?;
/// assert_eq!(s.mean(), &[3.0, 4.0]);
/// assert_eq!(s.covariance()?, vec![4.0, 2.0, 2.0, 4.0]);
/// # Ok::<(), sde_eval::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    d: usize,
    n: u64,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl FeatureStats {
    /// Empty statistics of `d`-dimensional features.
    pub fn new(d: usize) -> Self {
        Self {
            d,
            n: 0,
            mean: vec![0.0; d],
            m2: vec![0.0; d * d],
        }
    }

    /// Statistics from their parts (`m2` row-major d × d), e.g. read back from a file.
    pub fn from_parts(n: u64, mean: Vec<f64>, m2: Vec<f64>) -> Result<Self> {
        let d = mean.len();
        if m2.len() != d * d {
            return Err(Error::ShapeMismatch {
                what: "FeatureStats co-moment",
                expected: format!("{d}x{d}"),
                got: format!("{} entries", m2.len()),
            });
        }
        Ok(Self { d, n, mean, m2 })
    }

    /// Feature dimension d.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// Number of features seen.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Running mean μ.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// Co-moment M₂ = Σ (x − μ)(x − μ)ᵀ, row-major.
    pub fn comoment(&self) -> &[f64] {
        &self.m2
    }

    /// Sample covariance M₂ / (n − 1), row-major (`np.cov(x, rowvar=False)`). Needs n ≥ 2.
    pub fn covariance(&self) -> Result<Vec<f64>> {
        if self.n < 2 {
            return Err(Error::NotEnoughSamples {
                what: "a sample covariance",
                need: 2,
                got: self.n as usize,
            });
        }
        let s = 1.0 / (self.n - 1) as f64;
        Ok(self.m2.iter().map(|v| v * s).collect())
    }

    /// Adds a batch `x: [B, d]` (any float dtype, any device). An empty batch is a no-op;
    /// a wrong width or a non-finite feature is an error and leaves `self` unchanged.
    pub fn update(&mut self, x: &Tensor) -> Result<()> {
        let (b, d, v) = host_matrix(x, "features")?;
        if d != self.d {
            return Err(Error::ShapeMismatch {
                what: "features",
                expected: format!("[B, {}]", self.d),
                got: format!("{:?}", x.dims()),
            });
        }
        self.update_host(&v, b)
    }

    /// [`FeatureStats::update`] on a host row-major `[b, d]` f64 buffer.
    pub fn update_host(&mut self, x: &[f64], b: usize) -> Result<()> {
        let d = self.d;
        if x.len() != b * d {
            return Err(Error::ShapeMismatch {
                what: "features",
                expected: format!("{b}x{d} = {} values", b * d),
                got: format!("{} values", x.len()),
            });
        }
        if b == 0 {
            return Ok(());
        }
        let mut mean = vec![0.0; d];
        for row in x.chunks_exact(d) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= b as f64);
        // Centred rows, transposed: xcᵀ is [d, b], so M₂,b = xcᵀ xc.
        let mut xct = vec![0.0; d * b];
        for (i, row) in x.chunks_exact(d).enumerate() {
            for (j, v) in row.iter().enumerate() {
                xct[j * b + i] = v - mean[j];
            }
        }
        let mut xc = vec![0.0; b * d];
        for (i, row) in xc.chunks_exact_mut(d).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = xct[j * b + i];
            }
        }
        let m2 = matmul(&xct, &xc, d, b, d)?;
        self.merge(&Self {
            d,
            n: b as u64,
            mean,
            m2,
        })
    }

    /// Merges the statistics of another, disjoint set of features (Chan et al.).
    pub fn merge(&mut self, other: &Self) -> Result<()> {
        if other.d != self.d {
            return Err(Error::ShapeMismatch {
                what: "FeatureStats::merge",
                expected: format!("dimension {}", self.d),
                got: format!("dimension {}", other.d),
            });
        }
        if other.n == 0 {
            return Ok(());
        }
        if self.n == 0 {
            *self = other.clone();
            return Ok(());
        }
        let (na, nb) = (self.n as f64, other.n as f64);
        let n = na + nb;
        let delta: Vec<f64> = other
            .mean
            .iter()
            .zip(&self.mean)
            .map(|(b, a)| b - a)
            .collect();
        let w = na * nb / n;
        let d = self.d;
        for i in 0..d {
            let row = &mut self.m2[i * d..(i + 1) * d];
            let orow = &other.m2[i * d..(i + 1) * d];
            let di = delta[i] * w;
            for ((m, o), dj) in row.iter_mut().zip(orow).zip(&delta) {
                *m += o + di * dj;
            }
        }
        for (m, dl) in self.mean.iter_mut().zip(&delta) {
            *m += dl * nb / n;
        }
        self.n += other.n;
        Ok(())
    }
}
