//! `summary.json`: the numbers of one evaluation with everything needed to tell whether two
//! of them are comparable (n, seeds, checkpoint and feature-network hashes).

use std::path::Path;

use crate::bpd::BitsPerDim;
use crate::error::Result;
use crate::kid::MeanStd;
use crate::precision_recall::PrecisionRecall;

/// The metrics of one evaluation (those computed; the others `None`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    /// FID against the reference statistics.
    pub fid: Option<f64>,
    /// Inception Score, mean ± std over `is_splits` splits.
    pub inception_score: Option<MeanStd>,
    /// Number of Inception Score splits.
    pub is_splits: Option<usize>,
    /// KID, mean ± std over subsets.
    pub kid: Option<MeanStd>,
    /// KID subset size and number of subsets.
    pub kid_subsets: Option<(usize, usize)>,
    /// Improved precision and recall.
    pub precision_recall: Option<PrecisionRecall>,
    /// bits/dim of a data set through the probability-flow ODE ([`crate::bits_per_dim_sharded`]).
    #[serde(default)]
    pub bits_per_dim: Option<BitsPerDim>,
}

/// Everything `summary.json` records.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Number of generated samples n (FID is biased upwards at small n: compare equal n only).
    pub n: u64,
    /// Seed of the per-sample noise streams.
    pub seed: u64,
    /// Seed of the KID subset draws, if KID was computed.
    pub kid_seed: Option<u64>,
    /// sha256 of the sampled checkpoint, if any.
    pub checkpoint_sha256: Option<String>,
    /// Feature network name.
    pub extractor: String,
    /// sha256 of the feature network's weight file: FIDs are comparable only when equal (and
    /// comparable with papers only for pytorch-fid's released file).
    pub extractor_weights_sha256: Option<String>,
    /// What the samples were compared with (a statistics file or an image folder), and the
    /// number of reference samples where known.
    pub reference: Option<String>,
    /// Reference sample count.
    pub reference_n: Option<u64>,
    /// The metrics.
    pub metrics: Metrics,
    /// Free-form notes (sampler settings, …).
    pub notes: Vec<String>,
}

impl Summary {
    /// Writes pretty JSON atomically (temporary file and rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        score_nets::checkpoint::write_atomically(path, &bytes)?;
        Ok(())
    }

    /// Reads a summary written by [`Summary::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| crate::error::file_err(path, e.to_string()))?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}
