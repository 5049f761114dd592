//! Sharded, resumable evaluation: K samples generated in shards with per-sample seeds, their
//! features written shard by shard (atomically), so a killed run resumes where it stopped and
//! the result does not depend on the batch size or the shard size.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sde_core::noise::PerSampleNoise;

use crate::error::{file_err, invalid, Error, Result};
use crate::features::FeatureExtractor;
use crate::inception_score::InceptionScoreAccumulator;
use crate::kid::MeanStd;
use crate::stats::FeatureStats;

/// What to sample: `n_samples` images under `seed`, in shards of `shard_size` samples, each
/// generated in batches of at most `batch_size`.
///
/// Sample i is always drawn by the sampler from `PerSampleNoise::new(seed)` positioned at
/// offset i, so a sample's value depends on (seed, i) only: `batch_size` and `shard_size` may
/// change between runs without changing any number (the shard size is part of the on-disk
/// layout, so a resumed run must keep it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    /// Total number of samples K.
    pub n_samples: u64,
    /// Samples per shard file.
    pub shard_size: u64,
    /// Samples per sampler call (memory bound; does not change results).
    pub batch_size: usize,
    /// Seed of the per-sample noise streams.
    pub seed: u64,
    /// Identifies what draws the samples (e.g. the checkpoint's sha256 and the sampler's
    /// settings): a resumed run must match, so that shards of another model or sampler are
    /// never mixed in. `None` from [`ShardPlan::new`].
    pub model: Option<String>,
}

impl ShardPlan {
    /// Checks `n_samples ≥ 1`, `shard_size ≥ 1`, `batch_size ≥ 1`.
    pub fn new(n_samples: u64, shard_size: u64, batch_size: usize, seed: u64) -> Result<Self> {
        if n_samples == 0 {
            return Err(invalid("n_samples", 0, "must be at least 1"));
        }
        if shard_size == 0 {
            return Err(invalid("shard_size", 0, "must be at least 1"));
        }
        if batch_size == 0 {
            return Err(invalid("batch_size", 0, "must be at least 1"));
        }
        Ok(Self {
            n_samples,
            shard_size,
            batch_size,
            seed,
            model: None,
        })
    }

    /// Number of shards ⌈K / shard_size⌉.
    pub fn n_shards(&self) -> u64 {
        self.n_samples.div_ceil(self.shard_size)
    }

    /// Global sample range of shard `k`.
    pub fn shard_range(&self, k: u64) -> (u64, u64) {
        let lo = k * self.shard_size;
        (lo, (lo + self.shard_size).min(self.n_samples))
    }

    /// The shards rank `rank` of `world` draws in a data-parallel evaluation: the contiguous
    /// block [⌊r·S/R⌋, ⌊(r+1)·S/R⌋) of the S shards (empty when R > S for some ranks). The
    /// blocks of ranks 0..R partition 0..S.
    pub fn rank_shards(&self, rank: usize, world: usize) -> Result<std::ops::Range<u64>> {
        if world == 0 {
            return Err(invalid("world", 0, "must be at least 1"));
        }
        if rank >= world {
            return Err(invalid("rank", rank, "must be below the world size"));
        }
        let s = self.n_shards() as u128;
        let (r, w) = (rank as u128, world as u128);
        Ok(((r * s / w) as u64)..(((r + 1) * s / w) as u64))
    }
}

/// Whether to draw a progress bar on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// An indicatif bar over the samples.
    Bar,
    /// Nothing printed (tests, logs).
    Hidden,
}

/// The layout record `plan.json` of an evaluation folder: a resumed run must match it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct PlanRecord {
    n_samples: u64,
    shard_size: u64,
    seed: u64,
    extractor: String,
    extractor_weights_sha256: Option<String>,
    dim: usize,
    classes: Option<usize>,
    #[serde(default)]
    model: Option<String>,
}

fn shard_path(dir: &Path, k: u64) -> PathBuf {
    dir.join(format!("shard_{k:06}.safetensors"))
}

/// Reads shard `k` if it exists and holds `rows` rows of `dim` features (and `classes`
/// logits); `None` if it is absent or damaged (it is then regenerated).
fn read_shard(
    path: &Path,
    rows: usize,
    dim: usize,
    classes: Option<usize>,
) -> Option<(Tensor, Option<Tensor>)> {
    let t = candle_core::safetensors::load(path, &Device::Cpu).ok()?;
    let f = t.get("features")?;
    if f.dims() != [rows, dim] {
        return None;
    }
    let l = match classes {
        Some(c) => {
            let l = t.get("logits")?;
            if l.dims() != [rows, c] {
                return None;
            }
            Some(l.clone())
        }
        None => None,
    };
    Some((f.clone(), l))
}

/// Features of a finished sharded run, read back shard by shard.
#[derive(Debug, Clone)]
pub struct ShardedFeatures {
    dir: PathBuf,
    plan: ShardPlan,
    dim: usize,
    classes: Option<usize>,
}

/// Samples and featurises `plan.n_samples` images into `dir` (created if needed), resuming a
/// previous run there: shards already on disk are kept, missing ones generated.
///
/// `sampler(noise, b)` must return `b` images `[b, C, H, W]` in [0, 1], drawing all its
/// randomness from `noise` (a [`PerSampleNoise`] under `plan.seed` positioned at the batch's
/// first global sample, e.g. `PcSampler::sample(.., noise)`). Each shard is written to
/// `shard_NNNNNN.safetensors` (`features` f32 `[n, d]`, `logits` f32 `[n, classes]`) by a
/// temporary file and a rename, so a killed run leaves only whole shards; leftover temporary
/// files are ignored. A folder made for another plan (sample count, shard size, seed,
/// [`ShardPlan::model`]) or feature network is [`Error::File`] (delete it, or use another
/// folder).
pub fn sample_sharded<E, S>(
    dir: impl AsRef<Path>,
    plan: &ShardPlan,
    extractor: &E,
    sampler: S,
    progress: Progress,
) -> Result<ShardedFeatures>
where
    E: FeatureExtractor + ?Sized,
    S: FnMut(&mut PerSampleNoise, usize) -> Result<Tensor>,
{
    let all = 0..plan.n_shards();
    sample_shards(dir.as_ref(), plan, extractor, sampler, progress, all).map(|(f, _)| f)
}

/// One rank's part of a data-parallel [`sample_sharded`]: rank `rank` of `world` samples the
/// missing shards of its block ([`ShardPlan::rank_shards`]) into `dir`, a folder every rank
/// sees. Once every rank has returned (a barrier, e.g. `MpiReducer`'s), any rank calls
/// [`sample_sharded`] on the same folder and plan: it finds every shard on disk, samples
/// nothing, and gives the features of all `n_samples`, bit-identical to a one-process run
/// because sample i depends on `(seed, i)` only. A killed rank's shards are resumed the same
/// way. Returns the number of samples this call drew.
pub fn sample_sharded_rank<E, S>(
    dir: impl AsRef<Path>,
    plan: &ShardPlan,
    extractor: &E,
    sampler: S,
    progress: Progress,
    rank: usize,
    world: usize,
) -> Result<u64>
where
    E: FeatureExtractor + ?Sized,
    S: FnMut(&mut PerSampleNoise, usize) -> Result<Tensor>,
{
    let block = plan.rank_shards(rank, world)?;
    sample_shards(dir.as_ref(), plan, extractor, sampler, progress, block).map(|(_, n)| n)
}

/// Samples in shards `ks`.
fn samples_in(plan: &ShardPlan, ks: impl Iterator<Item = u64>) -> u64 {
    ks.map(|k| plan.shard_range(k))
        .map(|(lo, hi)| hi - lo)
        .sum()
}

/// [`sample_sharded`] restricted to the shards of `block` (the result covers the whole plan;
/// its reads fail for shards outside `block` that are not on disk), and the samples drawn.
fn sample_shards<E, S>(
    dir: &Path,
    plan: &ShardPlan,
    extractor: &E,
    mut sampler: S,
    progress: Progress,
    block: std::ops::Range<u64>,
) -> Result<(ShardedFeatures, u64)>
where
    E: FeatureExtractor + ?Sized,
    S: FnMut(&mut PerSampleNoise, usize) -> Result<Tensor>,
{
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e.to_string()))?;
    let record = PlanRecord {
        n_samples: plan.n_samples,
        shard_size: plan.shard_size,
        seed: plan.seed,
        extractor: extractor.name(),
        extractor_weights_sha256: extractor.weights_sha256(),
        dim: extractor.dim(),
        classes: extractor.num_classes(),
        model: plan.model.clone(),
    };
    let plan_path = dir.join("plan.json");
    if plan_path.exists() {
        let old: PlanRecord = serde_json::from_slice(&std::fs::read(&plan_path)?)
            .map_err(|e| file_err(&plan_path, format!("unreadable plan: {e}")))?;
        if old != record {
            return Err(file_err(
                &plan_path,
                format!(
                    "this folder holds another evaluation ({}); delete it or use another folder \
                     (wanted {})",
                    serde_json::to_string(&old)?,
                    serde_json::to_string(&record)?
                ),
            ));
        }
    } else {
        score_nets::checkpoint::write_atomically(&plan_path, &serde_json::to_vec_pretty(&record)?)?;
    }
    let (dim, classes) = (record.dim, record.classes);
    let todo: Vec<u64> = block
        .clone()
        .filter(|&k| {
            let (lo, hi) = plan.shard_range(k);
            read_shard(&shard_path(dir, k), (hi - lo) as usize, dim, classes).is_none()
        })
        .collect();
    let in_block = samples_in(plan, block);
    let drawn = samples_in(plan, todo.iter().copied());
    let done = in_block - drawn;
    let bar = match progress {
        Progress::Bar => indicatif::ProgressBar::new(in_block),
        Progress::Hidden => indicatif::ProgressBar::hidden(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} samples ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("sampling");
    bar.set_position(done);
    for k in todo {
        let (lo, hi) = plan.shard_range(k);
        let mut feats = Vec::new();
        let mut logits = Vec::new();
        let mut first = lo;
        while first < hi {
            let b = ((hi - first) as usize).min(plan.batch_size);
            let mut noise = PerSampleNoise::new(plan.seed).with_offset(first);
            let images = sampler(&mut noise, b)?;
            if images.dims().first() != Some(&b) {
                return Err(Error::ShapeMismatch {
                    what: "sampler output",
                    expected: format!("[{b}, C, H, W] (samples {first}..{})", first + b as u64),
                    got: format!("{:?}", images.dims()),
                });
            }
            let out = extractor.extract(&images)?;
            if out.features.dims() != [b, dim] {
                return Err(Error::ShapeMismatch {
                    what: "extracted features",
                    expected: format!("[{b}, {dim}]"),
                    got: format!("{:?}", out.features.dims()),
                });
            }
            feats.push(out.features.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
            if let Some(c) = classes {
                let l = out.logits.ok_or_else(|| Error::ShapeMismatch {
                    what: "extracted logits",
                    expected: format!("[{b}, {c}]"),
                    got: "none".into(),
                })?;
                if l.dims() != [b, c] {
                    return Err(Error::ShapeMismatch {
                        what: "extracted logits",
                        expected: format!("[{b}, {c}]"),
                        got: format!("{:?}", l.dims()),
                    });
                }
                logits.push(l.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
            }
            first += b as u64;
            bar.inc(b as u64);
        }
        let f = Tensor::cat(&feats, 0)?;
        let mut entries: Vec<(&str, &Tensor)> = vec![("features", &f)];
        let l = if classes.is_some() {
            Some(Tensor::cat(&logits, 0)?)
        } else {
            None
        };
        if let Some(l) = &l {
            entries.push(("logits", l));
        }
        let meta: HashMap<String, String> = [
            ("first".to_string(), lo.to_string()),
            ("count".to_string(), (hi - lo).to_string()),
            ("seed".to_string(), plan.seed.to_string()),
        ]
        .into_iter()
        .collect();
        score_nets::checkpoint::save_safetensors(entries, Some(meta), shard_path(dir, k))?;
    }
    bar.finish_and_clear();
    let features = ShardedFeatures {
        dir: dir.to_path_buf(),
        plan: plan.clone(),
        dim,
        classes,
    };
    Ok((features, drawn))
}

impl ShardedFeatures {
    /// The plan the shards follow.
    pub fn plan(&self) -> &ShardPlan {
        &self.plan
    }

    fn shard(&self, k: u64) -> Result<(Tensor, Option<Tensor>)> {
        let (lo, hi) = self.plan.shard_range(k);
        let p = shard_path(&self.dir, k);
        read_shard(&p, (hi - lo) as usize, self.dim, self.classes)
            .ok_or_else(|| file_err(&p, "missing or damaged shard (run sample_sharded again)"))
    }

    /// Streaming mean and covariance of all features, shard by shard in sample order.
    pub fn feature_stats(&self) -> Result<FeatureStats> {
        let mut s = FeatureStats::new(self.dim);
        for k in 0..self.plan.n_shards() {
            s.update(&self.shard(k)?.0)?;
        }
        Ok(s)
    }

    /// Inception Score over all samples in `splits` splits of consecutive samples, streamed.
    pub fn inception_score(&self, splits: usize) -> Result<MeanStd> {
        let c = self.classes.ok_or_else(|| {
            invalid(
                "splits",
                splits,
                "the feature network has no classifier logits",
            )
        })?;
        let mut acc = InceptionScoreAccumulator::new(self.plan.n_samples, splits, c)?;
        for k in 0..self.plan.n_shards() {
            let (lo, _) = self.plan.shard_range(k);
            let l = self
                .shard(k)?
                .1
                .ok_or_else(|| file_err(&shard_path(&self.dir, k), "no logits"))?;
            acc.update(lo, &l)?;
        }
        acc.finish()
    }

    /// All features `[K, d]` in sample order (for KID and precision/recall, which need the
    /// whole set: K × d × 4 bytes).
    pub fn features(&self) -> Result<Tensor> {
        let parts: Vec<Tensor> = (0..self.plan.n_shards())
            .map(|k| self.shard(k).map(|s| s.0))
            .collect::<Result<_>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }
}
