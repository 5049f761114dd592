//! Sharded evaluation: results independent of batch and shard size; a killed run resumes
//! to exactly the uninterrupted result; statistics files round-trip.

use std::cell::Cell;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use sde_core::noise::{NoiseSource, PerSampleNoise};
use sde_eval::{
    sample_sharded, sample_sharded_rank, Error, FeatureExtractor, Features, FnExtractor,
    GaussianStats, Progress, ShardPlan, StatsFormat, Summary,
};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sde_eval_{name}_{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    d
}

/// A toy "sampler": images 0.5 + 0.1 z from the per-sample noise.
fn sampler(noise: &mut PerSampleNoise, b: usize) -> sde_eval::Result<Tensor> {
    let z = noise.randn(&(b, 3, 4, 4).into(), &Device::Cpu, DType::F32)?;
    Ok(z.affine(0.1, 0.5)?)
}

/// Per-channel means and maxima as 6-d features, channel means × 10 as 3 logits (row-wise
/// operations only, so features do not depend on the batch a sample is in).
fn extractor() -> impl FeatureExtractor {
    FnExtractor::new("toy", 6, Some(3), |x: &Tensor| {
        let mean = x.mean(3)?.mean(2)?;
        let max = x.max(3)?.max(2)?;
        Ok(Features {
            features: Tensor::cat(&[&mean, &max], 1)?,
            logits: Some((mean * 10.0)?),
        })
    })
    .with_weights_sha256("00")
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn results_do_not_depend_on_batch_or_shard_size() {
    let ex = extractor();
    let mut runs = Vec::new();
    for (i, (shard, batch)) in [(10u64, 4usize), (25, 7), (57, 57), (1, 1)]
        .into_iter()
        .enumerate()
    {
        let dir = tmp(&format!("inv{i}"));
        let plan = ShardPlan::new(57, shard, batch, 11).unwrap();
        let out = sample_sharded(&dir, &plan, &ex, sampler, Progress::Hidden).unwrap();
        let feats = out.features().unwrap();
        let stats = GaussianStats::from_feature_stats(&out.feature_stats().unwrap()).unwrap();
        let is = out.inception_score(3).unwrap();
        runs.push((bits(&feats), stats, is));
        std::fs::remove_dir_all(&dir).ok();
    }
    let (f0, s0, is0) = &runs[0];
    for (f, s, is) in &runs[1..] {
        assert!(f == f0, "features differ");
        for (a, b) in s.sigma.iter().zip(&s0.sigma).chain(s.mu.iter().zip(&s0.mu)) {
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1e-6), "{a} vs {b}");
        }
        assert_eq!(is, is0);
    }
    // A different seed gives different samples.
    let dir = tmp("inv_seed");
    let other = sample_sharded(
        &dir,
        &ShardPlan::new(57, 10, 4, 12).unwrap(),
        &ex,
        sampler,
        Progress::Hidden,
    )
    .unwrap();
    assert!(bits(&other.features().unwrap()) != *f0);
    std::fs::remove_dir_all(&dir).ok();
}

/// Data-parallel evaluation: ranks 0..R each draw their block of shards into one folder (here
/// one after another; under MPI at once), then one call reads all of them, sampling nothing.
#[test]
fn the_union_of_rank_shards_equals_the_one_process_run() {
    let ex = extractor();
    let plan = ShardPlan::new(57, 10, 4, 11).unwrap();
    let one_dir = tmp("rank_one");
    let want = bits(
        &sample_sharded(&one_dir, &plan, &ex, sampler, Progress::Hidden)
            .unwrap()
            .features()
            .unwrap(),
    );
    std::fs::remove_dir_all(&one_dir).ok();
    for world in [1usize, 2, 3, 4, 8] {
        // The blocks partition the 6 shards (ranks beyond 6 get none).
        let blocks: Vec<_> = (0..world)
            .map(|r| plan.rank_shards(r, world).unwrap())
            .collect();
        assert_eq!(blocks.first().unwrap().start, 0);
        assert_eq!(blocks.last().unwrap().end, plan.n_shards());
        assert!(
            blocks.windows(2).all(|w| w[0].end == w[1].start),
            "{blocks:?}"
        );
        let dir = tmp(&format!("ranks{world}"));
        let mut drawn = 0;
        for rank in 0..world {
            drawn += sample_sharded_rank(&dir, &plan, &ex, sampler, Progress::Hidden, rank, world)
                .unwrap();
        }
        assert_eq!(drawn, 57);
        // A second pass on any rank draws nothing: its shards are on disk.
        assert_eq!(
            sample_sharded_rank(&dir, &plan, &ex, sampler, Progress::Hidden, 0, world).unwrap(),
            0
        );
        let never = |_: &mut PerSampleNoise, _: usize| -> sde_eval::Result<Tensor> {
            panic!("every shard is on disk")
        };
        let all = sample_sharded(&dir, &plan, &ex, never, Progress::Hidden).unwrap();
        assert!(bits(&all.features().unwrap()) == want, "R = {world}");
        std::fs::remove_dir_all(&dir).ok();
    }
    assert!(plan.rank_shards(2, 2).is_err());
    assert!(plan.rank_shards(0, 0).is_err());
}

#[test]
fn a_killed_run_resumes_to_the_uninterrupted_result() {
    let ex = extractor();
    let plan = ShardPlan::new(40, 8, 3, 5).unwrap();
    let whole_dir = tmp("whole");
    let whole = sample_sharded(&whole_dir, &plan, &ex, sampler, Progress::Hidden).unwrap();
    let want = bits(&whole.features().unwrap());

    // "Kill" the run in its 8th sampler call (third shard): the sampler fails there.
    let dir = tmp("killed");
    let calls = Cell::new(0);
    let dying = |n: &mut PerSampleNoise, b: usize| {
        calls.set(calls.get() + 1);
        if calls.get() == 8 {
            return Err(Error::User {
                what: "sampler",
                source: "killed".into(),
            });
        }
        sampler(n, b)
    };
    assert!(sample_sharded(&dir, &plan, &ex, dying, Progress::Hidden).is_err());
    // Two whole shards were written (3 calls each), and no partial third one.
    let names = |d: &PathBuf| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&dir),
        [
            "plan.json",
            "shard_000000.safetensors",
            "shard_000001.safetensors"
        ]
    );
    // A leftover temporary file of a writer killed mid-write, and a damaged shard.
    std::fs::write(dir.join(".shard_000002.safetensors.tmp.999"), b"partial").unwrap();
    std::fs::write(dir.join("shard_000001.safetensors"), b"damaged").unwrap();
    // Resume with a larger batch: only the missing and damaged shards are sampled.
    let calls = Cell::new(0usize);
    let counting = |n: &mut PerSampleNoise, b: usize| {
        calls.set(calls.get() + b);
        sampler(n, b)
    };
    let resumed = sample_sharded(
        &dir,
        &ShardPlan {
            batch_size: 8,
            ..plan.clone()
        },
        &ex,
        counting,
        Progress::Hidden,
    )
    .unwrap();
    assert_eq!(
        calls.get(),
        40 - 8,
        "shard 0 is reused, the other four sampled"
    );
    assert!(bits(&resumed.features().unwrap()) == want);
    assert_eq!(
        resumed.feature_stats().unwrap(),
        whole.feature_stats().unwrap()
    );
    // A folder of another plan is refused.
    let other = ShardPlan::new(40, 10, 3, 5).unwrap();
    assert!(matches!(
        sample_sharded(&dir, &other, &ex, sampler, Progress::Hidden),
        Err(Error::File { .. })
    ));
    // Bad plans.
    assert!(matches!(
        ShardPlan::new(0, 1, 1, 0),
        Err(Error::InvalidParameter {
            name: "n_samples",
            ..
        })
    ));
    assert!(matches!(
        ShardPlan::new(1, 0, 1, 0),
        Err(Error::InvalidParameter {
            name: "shard_size",
            ..
        })
    ));
    // A sampler returning the wrong batch is an error naming the samples.
    let dir2 = tmp("wrong");
    let short = |n: &mut PerSampleNoise, b: usize| sampler(n, b.saturating_sub(1).max(1));
    let err = sample_sharded(
        &dir2,
        &ShardPlan::new(4, 4, 4, 0).unwrap(),
        &ex,
        short,
        Progress::Hidden,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                what: "sampler output",
                ..
            }
        ),
        "{err}"
    );
    for d in [whole_dir, dir, dir2] {
        std::fs::remove_dir_all(&d).ok();
    }
}

#[test]
fn statistics_files_round_trip() {
    let dir = tmp("stats");
    std::fs::create_dir_all(&dir).unwrap();
    let x = Tensor::new(
        &[[1f32, 2., 0.5], [3., 6., -1.], [5., 4., 2.], [0., 1., 1.]],
        &Device::Cpu,
    )
    .unwrap();
    let s = GaussianStats::from_features(&x).unwrap();
    let st = dir.join("ref.safetensors");
    s.save(&st, StatsFormat::Safetensors).unwrap();
    assert_eq!(GaussianStats::load(&st).unwrap(), s);
    let npz = dir.join("ref.npz");
    s.save(&npz, StatsFormat::Npz).unwrap();
    let back = GaussianStats::load(&npz).unwrap();
    assert_eq!(
        (back.mu.clone(), back.sigma.clone(), back.n),
        (s.mu.clone(), s.sigma.clone(), None)
    );
    // np.savez_compressed layout (deflated entries), as pytorch-fid's --save-stats writes:
    // zipfile.ZIP_DEFLATED of mu.npy = [0.5, -1.25, 2.0] and a 3x3 sigma (<f8).
    let c = GaussianStats::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testvectors/fid/stats_small.compressed.npz"
    ))
    .unwrap();
    assert_eq!(c.mu, vec![0.5, -1.25, 2.0]);
    assert_eq!(
        c.sigma,
        vec![2.0, 0.5, 0.0, 0.5, 1.0, -0.25, 0.0, -0.25, 3.0]
    );
    // Raw features under `pool_3` (the reference implementation's stats files).
    let pool = dir.join("pool.npz");
    Tensor::write_npz(&[("pool_3", &x)], &pool).unwrap();
    let p = GaussianStats::load(&pool).unwrap();
    assert_eq!(p.n, Some(4));
    for (a, b) in p.sigma.iter().zip(&s.sigma) {
        assert!((a - b).abs() < 1e-12);
    }
    // Wrong keys and garbage are errors naming the file.
    let bad = dir.join("bad.npz");
    Tensor::write_npz(&[("m", &x)], &bad).unwrap();
    assert!(matches!(GaussianStats::load(&bad), Err(Error::File { .. })));
    std::fs::write(dir.join("junk.safetensors"), b"junk").unwrap();
    assert!(matches!(
        GaussianStats::load(dir.join("junk.safetensors")),
        Err(Error::File { .. })
    ));
    // summary.json round trip.
    let sum = Summary {
        n: 4,
        seed: 1,
        kid_seed: None,
        checkpoint_sha256: Some("ab".into()),
        extractor: "toy".into(),
        extractor_weights_sha256: None,
        reference: Some("ref.npz".into()),
        reference_n: None,
        metrics: sde_eval::Metrics {
            fid: Some(1.5),
            ..Default::default()
        },
        notes: vec![],
    };
    sum.save(dir.join("summary.json")).unwrap();
    assert_eq!(Summary::load(dir.join("summary.json")).unwrap(), sum);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_folder_of_another_model_or_sampler_is_refused() {
    let ex = extractor();
    let dir = tmp("model_tag");
    let plan = ShardPlan {
        model: Some("checkpoint a; sampler pc".into()),
        ..ShardPlan::new(6, 3, 3, 0).unwrap()
    };
    sample_sharded(&dir, &plan, &ex, sampler, Progress::Hidden).unwrap();
    // The same plan resumes (nothing to draw) ...
    let never = |_: &mut PerSampleNoise, _: usize| -> sde_eval::Result<Tensor> {
        Err(Error::User {
            what: "sampler",
            source: "must not be called".into(),
        })
    };
    sample_sharded(&dir, &plan, &ex, never, Progress::Hidden).unwrap();
    // ... another model or sampler in the same folder is an error naming plan.json.
    let other = ShardPlan {
        model: Some("checkpoint a; sampler ode".into()),
        ..plan.clone()
    };
    let err = sample_sharded(&dir, &other, &ex, sampler, Progress::Hidden).unwrap_err();
    assert!(
        matches!(&err, Error::File { path, .. } if path.ends_with("plan.json")),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
