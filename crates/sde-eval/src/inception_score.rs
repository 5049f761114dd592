//! Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) ‖ p(y)), over splits.

use candle_core::Tensor;

use crate::error::{invalid, Error, Result};
use crate::kid::MeanStd;
use crate::stats::host_matrix;

/// Streaming Inception Score over `n_total` samples in `splits` splits (split s holds global
/// samples ⌊s n/S⌋ .. ⌊(s+1) n/S⌋, torch-fidelity's `isc_features_to_metric` without its
/// shuffle). Per split, with p = softmax(logits) in f64 and the split's marginal
/// p̄ = mean_x p(·|x):
/// IS_s = exp( (1/n_s) Σ_x Σ_y p(y|x) log p(y|x) − Σ_y p̄(y) log p̄(y) ),
/// which is exp(mean_x KL(p(y|x) ‖ p̄)); only Σ_x p and Σ_x Σ_y p log p are kept, so the logits
/// of 50 000 samples never sit in memory and rows may arrive in any order of batches.
#[derive(Debug, Clone)]
pub struct InceptionScoreAccumulator {
    n_total: u64,
    splits: usize,
    classes: usize,
    sum_p: Vec<Vec<f64>>,
    sum_plogp: Vec<f64>,
    counts: Vec<u64>,
}

impl InceptionScoreAccumulator {
    /// For `n_total` samples of `classes` logits in `splits` splits (each split non-empty:
    /// `1 ≤ splits ≤ n_total`).
    pub fn new(n_total: u64, splits: usize, classes: usize) -> Result<Self> {
        if splits == 0 || splits as u64 > n_total {
            return Err(invalid(
                "splits",
                splits,
                format!("must be in [1, n_total = {n_total}]"),
            ));
        }
        if classes < 2 {
            return Err(invalid("classes", classes, "must be at least 2"));
        }
        Ok(Self {
            n_total,
            splits,
            classes,
            sum_p: vec![vec![0.0; classes]; splits],
            sum_plogp: vec![0.0; splits],
            counts: vec![0; splits],
        })
    }

    fn split_of(&self, i: u64) -> usize {
        // Largest s with ⌊s n / S⌋ ≤ i.
        let (n, s) = (self.n_total as u128, self.splits as u128);
        let mut k = ((i as u128 * s) / n) as usize;
        while k + 1 < self.splits && ((k as u128 + 1) * n / s) as u64 <= i {
            k += 1;
        }
        while k > 0 && ((k as u128) * n / s) as u64 > i {
            k -= 1;
        }
        k
    }

    /// Adds logits `[B, classes]` of global samples `first .. first + B`.
    pub fn update(&mut self, first: u64, logits: &Tensor) -> Result<()> {
        let (b, c, v) = host_matrix(logits, "Inception Score logits")?;
        if c != self.classes {
            return Err(Error::ShapeMismatch {
                what: "Inception Score logits",
                expected: format!("[B, {}]", self.classes),
                got: format!("{:?}", logits.dims()),
            });
        }
        if first + b as u64 > self.n_total {
            return Err(invalid(
                "first",
                first,
                format!(
                    "samples {first}..{} exceed n_total = {}",
                    first + b as u64,
                    self.n_total
                ),
            ));
        }
        for (r, row) in v.chunks_exact(c).enumerate() {
            let s = self.split_of(first + r as u64);
            // log-softmax, stably.
            let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = mx + row.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
            let mut plogp = 0.0;
            for (acc, x) in self.sum_p[s].iter_mut().zip(row) {
                let lp = x - lse;
                let p = lp.exp();
                *acc += p;
                plogp += p * lp;
            }
            self.sum_plogp[s] += plogp;
            self.counts[s] += 1;
        }
        Ok(())
    }

    /// Mean and `np.std` of the per-split scores. Every sample must have been added once
    /// (counted per split); otherwise [`Error::NotEnoughSamples`].
    pub fn finish(&self) -> Result<MeanStd> {
        let mut scores = Vec::with_capacity(self.splits);
        for s in 0..self.splits {
            let n = self.n_total as u128;
            let lo = (s as u128 * n / self.splits as u128) as u64;
            let hi = ((s as u128 + 1) * n / self.splits as u128) as u64;
            if self.counts[s] != hi - lo {
                return Err(Error::NotEnoughSamples {
                    what: "an Inception Score split",
                    need: (hi - lo) as usize,
                    got: self.counts[s] as usize,
                });
            }
            let ns = self.counts[s] as f64;
            let marg: f64 = self.sum_p[s]
                .iter()
                .map(|&sp| {
                    let q = sp / ns;
                    if q > 0.0 {
                        q * q.ln()
                    } else {
                        0.0
                    }
                })
                .sum();
            scores.push((self.sum_plogp[s] / ns - marg).exp());
        }
        Ok(MeanStd::of(&scores))
    }
}

/// Inception Score of `logits: [N, classes]` (the 1008-class Inception `fc` outputs) in
/// `splits` splits of consecutive rows; see [`InceptionScoreAccumulator`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// // Two samples, each certain of a different class: p̄ is uniform over 2 classes, IS = 2.
/// let l = Tensor::new(&[[50f32, 0., 0.], [0., 50., 0.]], &Device::Cpu)?;
/// let is = sde_eval::inception_score(&l, 1)?;
/// assert!((is.mean - 2.0).abs() < 1e-9 && is.std == 0.0);
/// # Ok::<(), sde_eval::Error>(())
/// ```
pub fn inception_score(logits: &Tensor, splits: usize) -> Result<MeanStd> {
    let (n, c) = logits.dims2().map_err(|_| Error::ShapeMismatch {
        what: "Inception Score logits",
        expected: "[N, classes]".into(),
        got: format!("{:?}", logits.dims()),
    })?;
    let mut acc = InceptionScoreAccumulator::new(n as u64, splits, c)?;
    acc.update(0, logits)?;
    acc.finish()
}
