//! Sharded, resumable bits/dim over a data set: the same layout as [`crate::sample_sharded`]
//! (per-sample seeds, shards written atomically, a killed run resumed), for the held-out
//! likelihoods of the paper's tables.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sde_core::noise::PerSampleNoise;
use sde_core::{ScoreFn, Sde};
use sde_solvers::likelihood::{bits_per_dim, dequantize_levels, DataRange, Likelihood};
use sde_solvers::ode::{ErrorNorm, OdeMethod};

use crate::error::{file_err, invalid, Error, Result};
use crate::shards::Progress;

/// How quantised data become continuous before the likelihood is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Dequantization {
    /// Uniform dequantisation of the `bit_depth`-bit levels
    /// ([`sde_solvers::likelihood::dequantize_levels`]): level k becomes
    /// lo + (hi − lo)(k + u)/2^bits with u ~ U[0, 1), so the continuous bits/dim bound the
    /// discrete model's (Theis et al. 2016; the reference's `uniform_dequantization = True`
    /// evaluation data set).
    Uniform,
    /// The data are used as they are (already continuous data).
    None,
}

/// What to evaluate: bits/dim of `n_data` data points, each `n_repeats` times (the reference's
/// `bpd_num_repeats`, fresh dequantisation noise and Hutchinson probes per repeat), in shards
/// of `shard_size` evaluations, each computed in batches of at most `batch_size`.
///
/// Evaluation j (repeat r = j / n_data of data point i = j mod n_data) draws its dequantisation
/// noise and probes from `PerSampleNoise::new(seed)` positioned at j, so its value depends on
/// (seed, j) and the data point only: batch and shard sizes do not change any number (with a
/// likelihood whose steps are per sample, see [`bits_per_dim_sharded`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BpdPlan {
    /// Number of data points N.
    pub n_data: u64,
    /// Evaluations per data point R (`bpd_num_repeats`; 1 is one pass).
    pub n_repeats: u64,
    /// Evaluations per shard file (part of the on-disk layout: keep it when resuming).
    pub shard_size: u64,
    /// Data points per likelihood call (memory bound; does not change results).
    pub batch_size: usize,
    /// Seed of the per-evaluation noise streams.
    pub seed: u64,
    /// Bits per value of the quantised data (8 for images).
    pub bit_depth: u32,
    /// The range `(lo, hi)` of the data as the model sees them ((0, 1), or (−1, 1) for
    /// centred data): fixes the bits/dim offset `bit_depth − log₂(hi − lo)`.
    pub data_range: (f64, f64),
    /// How the data are made continuous.
    pub dequantization: Dequantization,
    /// Identifies the score model (e.g. its checkpoint's sha256): a resumed run must match.
    pub model: Option<String>,
}

impl BpdPlan {
    /// One pass of uniformly dequantised 8-bit data in `data_range` (the reference's
    /// evaluation: [`DataRange::ZeroOne`] or [`DataRange::MinusOneOne`]); checks
    /// `n_data ≥ 1`, `shard_size ≥ 1`, `batch_size ≥ 1`.
    pub fn new(
        n_data: u64,
        shard_size: u64,
        batch_size: usize,
        seed: u64,
        data_range: DataRange,
    ) -> Result<Self> {
        let p = Self {
            n_data,
            n_repeats: 1,
            shard_size,
            batch_size,
            seed,
            bit_depth: 8,
            data_range: data_range.bounds(),
            dequantization: Dequantization::Uniform,
            model: None,
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks every field: counts ≥ 1, `bit_depth` in 1..=32, finite `lo < hi`.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("n_data", self.n_data),
            ("n_repeats", self.n_repeats),
            ("shard_size", self.shard_size),
            ("batch_size", self.batch_size as u64),
        ] {
            if v == 0 {
                return Err(invalid(name, 0, "must be at least 1"));
            }
        }
        if self.n_data.checked_mul(self.n_repeats).is_none() {
            return Err(invalid(
                "n_repeats",
                self.n_repeats,
                "n_data · n_repeats overflows",
            ));
        }
        if self.bit_depth == 0 || self.bit_depth > 32 {
            return Err(invalid("bit_depth", self.bit_depth, "must lie in 1..=32"));
        }
        let (lo, hi) = self.data_range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(invalid(
                "data_range",
                format!("({lo}, {hi})"),
                "needs finite lo < hi",
            ));
        }
        Ok(())
    }

    /// Total evaluations N · R.
    pub fn n_evaluations(&self) -> u64 {
        self.n_data * self.n_repeats
    }

    /// Number of shards ⌈N R / shard_size⌉.
    pub fn n_shards(&self) -> u64 {
        self.n_evaluations().div_ceil(self.shard_size)
    }

    /// Global evaluation range of shard `k`.
    pub fn shard_range(&self, k: u64) -> (u64, u64) {
        let lo = k * self.shard_size;
        (lo, (lo + self.shard_size).min(self.n_evaluations()))
    }
}

/// bits/dim over a data set: the mean over data points (each averaged over its repeats) and
/// its standard error, what `summary.json` records.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BitsPerDim {
    /// Mean bits/dim b̄ = (1/N) Σᵢ bᵢ, bᵢ the mean of data point i over its R repeats.
    pub mean: f64,
    /// Standard error s/√N of the mean, s the sample standard deviation of the bᵢ (n − 1);
    /// it covers the data, dequantisation and probe noise together.
    pub std_err: f64,
    /// s, the spread of the per-point bits/dim.
    pub std: f64,
    /// Number of data points N.
    pub n: u64,
    /// Repeats R per data point.
    pub n_repeats: u64,
    /// Elements D of one data point.
    pub dim: usize,
    /// Drift evaluations of all ODE solves together, each on a whole batch (each costs K
    /// vector–Jacobian products): the one number here that depends on the batching.
    pub nfe: u64,
    /// Seed of the per-evaluation noise.
    pub seed: u64,
    /// Bit depth and data range the offset was computed for.
    pub bit_depth: u32,
    /// The data range the model saw.
    pub data_range: (f64, f64),
    /// The dequantisation applied.
    pub dequantization: Dequantization,
}

/// The layout record `bpd_plan.json` of an evaluation folder.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct BpdRecord {
    n_data: u64,
    n_repeats: u64,
    shard_size: u64,
    seed: u64,
    bit_depth: u32,
    data_range: (f64, f64),
    dequantization: Dequantization,
    model: Option<String>,
    likelihood: String,
}

fn shard_path(dir: &Path, k: u64) -> PathBuf {
    dir.join(format!("bpd_{k:06}.safetensors"))
}

/// A shard's per-evaluation bits/dim (f64), its NFE and D, if it holds `rows` values.
fn read_shard(path: &Path, rows: usize) -> Option<(Vec<f64>, u64, usize)> {
    let t = candle_core::safetensors::load(path, &Device::Cpu).ok()?;
    let b = t.get("bpd")?;
    if b.dims() != [rows] || b.dtype() != DType::F64 {
        return None;
    }
    let info = t.get("info")?.to_vec1::<i64>().ok()?;
    let (nfe, dim) = match info.as_slice() {
        [nfe, dim] if *nfe >= 0 && *dim > 0 => (*nfe as u64, *dim as usize),
        _ => return None,
    };
    let v = b.to_vec1::<f64>().ok()?;
    v.iter().all(|x| x.is_finite()).then_some((v, nfe, dim))
}

/// The result of [`bits_per_dim_sharded`]: shards on disk, read back on demand.
#[derive(Debug, Clone)]
pub struct ShardedBitsPerDim {
    dir: PathBuf,
    plan: BpdPlan,
}

/// bits/dim of `plan.n_data` data points into `dir` (created if needed), resuming a previous
/// run there: shards on disk are kept, missing or damaged ones computed.
///
/// For evaluation j of data point i (batches never straddle a repeat), the pipeline is that of
/// the reference's `run_lib.evaluate` likelihood loop:
/// 1. `data(i, b)` returns data points i..i + b, `[b, ...]`, quantised values in
///    `plan.data_range` (pixel / 255 for [0, 1], or after the centring scaler for [−1, 1]);
/// 2. [`Dequantization::Uniform`]: x = [`dequantize_levels`]`(x, bit_depth, data_range)`
///    (first draw of the per-sample noise);
/// 3. log p_ε(x) by [`Likelihood::log_likelihood`] (its Hutchinson probes are the next draws);
/// 4. bpd = −log p / (D ln 2) + bit_depth − log₂(hi − lo) ([`bits_per_dim`]; for 8-bit data
///    it equals the reference's `bpd + 7 − inverse_scaler(−1)`).
///
/// Each shard `bpd_NNNNNN.safetensors` (`bpd` f64 per evaluation, `info` = [nfe, D]) is written
/// by a temporary file and a rename, so a killed run leaves only whole shards. A folder made for
/// another plan, model or likelihood setting is [`Error::File`].
///
/// Batch-size independence needs each sample's ODE steps to be its own: RK45 with the
/// scipy-compatible [`ErrorNorm::Batch`] picks steps for the whole batch, so it is refused
/// unless `batch_size = 1`; use [`ErrorNorm::PerSample`] (or a fixed-step method). Values are
/// then bit-identical across batch sizes whenever the score acts row by row bit for bit (the
/// analytic scores; a network's matrix kernels may round differently at another batch size,
/// in the last bits).
pub fn bits_per_dim_sharded<S, F, D>(
    dir: impl AsRef<Path>,
    plan: &BpdPlan,
    likelihood: &Likelihood<'_, S, F>,
    mut data: D,
    progress: Progress,
) -> Result<ShardedBitsPerDim>
where
    S: Sde + ?Sized,
    F: ScoreFn + ?Sized,
    D: FnMut(u64, usize) -> Result<Tensor>,
{
    plan.validate()?;
    if let OdeMethod::Rk45(o) = &likelihood.options().method {
        if o.error_norm == ErrorNorm::Batch && plan.batch_size > 1 {
            return Err(invalid(
                "batch_size",
                plan.batch_size,
                "RK45 with ErrorNorm::Batch steps all samples of a batch together, so each \
                 value would depend on the batch: use ErrorNorm::PerSample (or batch_size = 1)",
            ));
        }
    }
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e.to_string()))?;
    let record = BpdRecord {
        n_data: plan.n_data,
        n_repeats: plan.n_repeats,
        shard_size: plan.shard_size,
        seed: plan.seed,
        bit_depth: plan.bit_depth,
        data_range: plan.data_range,
        dequantization: plan.dequantization,
        model: plan.model.clone(),
        likelihood: format!("{:?}", likelihood.options()),
    };
    let plan_path = dir.join("bpd_plan.json");
    if plan_path.exists() {
        let old: BpdRecord = serde_json::from_slice(&std::fs::read(&plan_path)?)
            .map_err(|e| file_err(&plan_path, format!("unreadable plan: {e}")))?;
        if old != record {
            return Err(file_err(
                &plan_path,
                format!(
                    "this folder holds another bits/dim evaluation ({}); delete it or use \
                     another folder (wanted {})",
                    serde_json::to_string(&old)?,
                    serde_json::to_string(&record)?
                ),
            ));
        }
    } else {
        score_nets::checkpoint::write_atomically(&plan_path, &serde_json::to_vec_pretty(&record)?)?;
    }
    let todo: Vec<u64> = (0..plan.n_shards())
        .filter(|&k| {
            let (lo, hi) = plan.shard_range(k);
            read_shard(&shard_path(dir, k), (hi - lo) as usize).is_none()
        })
        .collect();
    let done: u64 = plan.n_evaluations()
        - todo
            .iter()
            .map(|&k| {
                let (lo, hi) = plan.shard_range(k);
                hi - lo
            })
            .sum::<u64>();
    let bar = match progress {
        Progress::Bar => indicatif::ProgressBar::new(plan.n_evaluations()),
        Progress::Hidden => indicatif::ProgressBar::hidden(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} data points ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("bits/dim");
    bar.set_position(done);
    for k in todo {
        let (lo, hi) = plan.shard_range(k);
        let mut values = Vec::with_capacity((hi - lo) as usize);
        let (mut nfe, mut dim) = (0u64, 0usize);
        let mut j = lo;
        while j < hi {
            // A batch stays within one repeat, so it is a contiguous run of data points.
            let i = j % plan.n_data;
            let b = ((hi - j).min(plan.n_data - i) as usize).min(plan.batch_size);
            let x = data(i, b)?;
            if x.dims().first() != Some(&b) || x.rank() < 2 {
                return Err(Error::ShapeMismatch {
                    what: "bits/dim data",
                    expected: format!("[{b}, ...] (data points {i}..{})", i + b as u64),
                    got: format!("{:?}", x.dims()),
                });
            }
            let mut noise = PerSampleNoise::new(plan.seed).with_offset(j);
            let x = match plan.dequantization {
                Dequantization::Uniform => {
                    dequantize_levels(&x, plan.bit_depth, plan.data_range, &mut noise)?
                }
                Dequantization::None => x,
            };
            let out = likelihood.log_likelihood(&x, &mut noise)?;
            let bpd = bits_per_dim(&out.log_p, out.dim(), plan.bit_depth, plan.data_range)?;
            let v = bpd.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            if let Some(bad) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::NonFinite {
                    what: format!("bits/dim of data point {}", i + bad as u64),
                });
            }
            values.extend(v);
            nfe += out.nfe as u64;
            dim = out.dim();
            j += b as u64;
            bar.inc(b as u64);
        }
        let n = values.len();
        let bpd = Tensor::from_vec(values, n, &Device::Cpu)?;
        let info = Tensor::new(&[nfe as i64, dim as i64], &Device::Cpu)?;
        let meta: HashMap<String, String> = [
            ("first".to_string(), lo.to_string()),
            ("count".to_string(), (hi - lo).to_string()),
            ("seed".to_string(), plan.seed.to_string()),
        ]
        .into_iter()
        .collect();
        score_nets::checkpoint::save_safetensors(
            [("bpd", &bpd), ("info", &info)],
            Some(meta),
            shard_path(dir, k),
        )?;
    }
    bar.finish_and_clear();
    Ok(ShardedBitsPerDim {
        dir: dir.to_path_buf(),
        plan: plan.clone(),
    })
}

impl ShardedBitsPerDim {
    /// The plan the shards follow.
    pub fn plan(&self) -> &BpdPlan {
        &self.plan
    }

    fn shards(&self) -> Result<(Vec<f64>, u64, usize)> {
        let mut all = Vec::with_capacity(self.plan.n_evaluations() as usize);
        let (mut nfe, mut dim) = (0, 0);
        for k in 0..self.plan.n_shards() {
            let (lo, hi) = self.plan.shard_range(k);
            let p = shard_path(&self.dir, k);
            let (v, n, d) = read_shard(&p, (hi - lo) as usize).ok_or_else(|| {
                file_err(
                    &p,
                    "missing or damaged shard (run bits_per_dim_sharded again)",
                )
            })?;
            all.extend(v);
            nfe += n;
            dim = d;
        }
        Ok((all, nfe, dim))
    }

    /// bits/dim of every evaluation, `[R · N]`, repeat-major (evaluation j is repeat j / N of
    /// data point j mod N).
    pub fn values(&self) -> Result<Vec<f64>> {
        Ok(self.shards()?.0)
    }

    /// Per data point bits/dim, averaged over the repeats, `[N]`.
    pub fn per_point(&self) -> Result<Vec<f64>> {
        let v = self.values()?;
        Ok(per_point(&v, self.plan.n_data, self.plan.n_repeats))
    }

    /// Mean ± standard error over the data points ([`BitsPerDim`]).
    pub fn summary(&self) -> Result<BitsPerDim> {
        let (v, nfe, dim) = self.shards()?;
        let p = per_point(&v, self.plan.n_data, self.plan.n_repeats);
        let n = p.len() as f64;
        let mean = p.iter().sum::<f64>() / n;
        let std = if p.len() > 1 {
            (p.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Ok(BitsPerDim {
            mean,
            std_err: std / n.sqrt(),
            std,
            n: self.plan.n_data,
            n_repeats: self.plan.n_repeats,
            dim,
            nfe,
            seed: self.plan.seed,
            bit_depth: self.plan.bit_depth,
            data_range: self.plan.data_range,
            dequantization: self.plan.dequantization,
        })
    }
}

fn per_point(v: &[f64], n: u64, r: u64) -> Vec<f64> {
    let n = n as usize;
    (0..n)
        .map(|i| (0..r as usize).map(|k| v[k * n + i]).sum::<f64>() / r as f64)
        .collect()
}
