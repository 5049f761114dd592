//! Data-parallel training: R ranks train like one process on the concatenated batch, replicas
//! stay bit-identical, checkpoints resume exactly, sharded batches partition the global batch.
//!
//! In-process tests run R ranks as threads over [`ThreadReducer`] (a shared-memory all-reduce
//! with MPI's reduce-then-broadcast order), so the trainer's data-parallel logic is tested by
//! plain `cargo test`. With feature `mpi` the same runs go through `mpirun -n 2` on this test
//! binary itself (`mpi_worker`), including a rank killed mid-run:
//! `cargo test -p sde-train --features mpi --test data_parallel`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use score_nets::{init::seeded_var_builder, Mlp, MlpConfig};
use sde_core::VpSde;
use sde_train::{
    data_rng, latest_checkpoint, named_vars, BatchSource, Error, GradientReducer, HookSchedule,
    LaunchEnv, SdeLoss, SdeLossOptions, ShardedBatches, ShuffledBatches, SingleProcess, Toy2d,
    TrainConfig, Trainer,
};

const SEED: u64 = 7;
const GLOBAL_BATCH: usize = 32;

/// A shared-memory all-reduce between threads: every rank deposits its flat buffer, then each
/// sums the deposits in rank order 0..R (so every rank gets the same bits, as after MPI's
/// reduce + broadcast) and divides by R.
#[derive(Clone)]
struct ThreadReducer {
    rank: usize,
    world: usize,
    slots: Arc<Mutex<Vec<Vec<f32>>>>,
    barrier: Arc<Barrier>,
}

fn thread_reducers(world: usize) -> Vec<ThreadReducer> {
    let slots = Arc::new(Mutex::new(vec![Vec::new(); world]));
    let barrier = Arc::new(Barrier::new(world));
    (0..world)
        .map(|rank| ThreadReducer {
            rank,
            world,
            slots: slots.clone(),
            barrier: barrier.clone(),
        })
        .collect()
}

impl GradientReducer for ThreadReducer {
    fn all_reduce(&mut self, grads: &mut [Tensor]) -> sde_train::Result<()> {
        self.all_reduce_step(grads, 0.0).map(|_| ())
    }

    fn all_reduce_step(&mut self, grads: &mut [Tensor], loss: f64) -> sde_train::Result<f64> {
        // f32 sums, as MpiReducer does for f32 gradients.
        let mut flat: Vec<f32> = Vec::new();
        for g in grads.iter() {
            flat.extend(g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        }
        flat.push(loss as f32);
        self.slots.lock().unwrap()[self.rank] = flat.clone();
        self.barrier.wait();
        let sum: Vec<f32> = {
            let slots = self.slots.lock().unwrap();
            (0..flat.len())
                .map(|i| {
                    let mut s = 0f32;
                    for r in slots.iter() {
                        s += r[i];
                    }
                    s
                })
                .collect()
        };
        self.barrier.wait();
        let mut off = 0;
        for g in grads.iter_mut() {
            let n = g.elem_count();
            let mean: Vec<f32> = sum[off..off + n]
                .iter()
                .map(|&v| (v as f64 / self.world as f64) as f32)
                .collect();
            *g = Tensor::from_vec(mean, g.shape(), g.device())?.to_dtype(g.dtype())?;
            off += n;
        }
        Ok(sum[off] as f64 / self.world as f64)
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn barrier(&mut self) -> sde_train::Result<()> {
        self.barrier.wait();
        Ok(())
    }
}

/// What a run leaves: its losses, its final weights (sorted by name) and its checkpoints.
#[derive(Debug, Clone, PartialEq)]
struct RunResult {
    losses: Vec<f64>,
    weights: Vec<(String, Vec<f32>)>,
}

fn weights(vm: &VarMap) -> Vec<(String, Vec<f32>)> {
    named_vars(vm)
        .into_iter()
        .map(|(n, v)| {
            let w = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (n, w)
        })
        .collect()
}

fn dataset() -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED ^ 0xDA7A);
    Toy2d::EightGaussians
        .sample(4096, &Device::Cpu, DType::F32, &mut rng)
        .unwrap()
}

fn config(steps: u64) -> TrainConfig {
    TrainConfig {
        n_iters: steps,
        snapshot_freq: 2,
        log_freq: 0,
        seed: SEED,
        progress: false,
        optim: sde_train::AdamConfig {
            lr: 1e-3,
            warmup: 0,
            ..Default::default()
        },
        extra: serde_json::json!({ "test": "data_parallel" }),
        ..Default::default()
    }
}

/// One rank of a data-parallel run of `steps` steps (resuming from `ckpt`'s latest checkpoint
/// if it has one); `hook` runs after every step (a kill switch for the failure test).
fn train_rank(
    reducer: impl GradientReducer,
    steps: u64,
    ckpt: Option<&Path>,
    mut hook: impl FnMut(u64, usize),
) -> sde_train::Result<RunResult> {
    let (rank, world) = (reducer.rank(), reducer.world_size());
    let dev = Device::Cpu;
    let sde = VpSde::default();
    let vm = VarMap::new();
    let cfg = MlpConfig {
        hidden: 32,
        ..MlpConfig::vp(2)
    };
    let net = Mlp::new(&cfg, seeded_var_builder(&vm, SEED, DType::F32, &dev)).unwrap();
    let whole = ShuffledBatches::new(dataset(), GLOBAL_BATCH, SEED)?;
    // `rank % world`: the negative control below poses as rank 1 of 1 to shift its noise.
    let mut data = ShardedBatches::new(whole, rank % world, world)?;
    let options = SdeLossOptions {
        reduce_mean: true,
        ..Default::default()
    };
    let mut trainer = Trainer::new(&net, &vm, SdeLoss::new(&sde, options)?, config(steps))?;
    if let Some(dir) = ckpt {
        trainer = trainer.with_checkpoint_dir(dir)?;
    }
    let mut trainer = trainer.with_data_parallel(reducer);
    trainer.add_hook(HookSchedule::Every(1), false, move |info| {
        hook(info.step, rank);
        Ok(())
    })?;
    if let Some(last) = ckpt.map(latest_checkpoint).transpose()?.flatten() {
        trainer.resume(last)?;
    }
    let summary = trainer.run(&mut data, None)?;
    Ok(RunResult {
        losses: summary.losses,
        weights: weights(&vm),
    })
}

/// R ranks as threads; the results in rank order.
fn train_threads(world: usize, steps: u64, ckpt: Option<&Path>) -> Vec<RunResult> {
    std::thread::scope(|s| {
        let handles: Vec<_> = thread_reducers(world)
            .into_iter()
            .map(|r| s.spawn(move || train_rank(r, steps, ckpt, |_, _| {}).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn initial_weights() -> Vec<(String, Vec<f32>)> {
    let vm = VarMap::new();
    let cfg = MlpConfig {
        hidden: 32,
        ..MlpConfig::vp(2)
    };
    let _net = Mlp::new(
        &cfg,
        seeded_var_builder(&vm, SEED, DType::F32, &Device::Cpu),
    )
    .unwrap();
    weights(&vm)
}

fn max_abs_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|((na, va), (nb, vb))| {
            assert_eq!(na, nb);
            va.iter().zip(vb).map(|(x, y)| (x - y).abs())
        })
        .fold(0.0, f32::max)
}

/// `R` ranks must equal one process up to f32 summation order: the gradients of a batch mean
/// are summed in another order (each rank sums its 16 samples inside the backward's matrix
/// products, then the reducer adds the two means), a relative change of ~B·2⁻²⁴ ≈ 2e-6 per step.
/// Adam's update lr·m̂/(√v̂ + ε) is scale-free, so it changes by the same relative amount: over
/// 5 steps the weights differ by ≲ 5·lr·1e-5 = 5e-8. The bound allows 1e-3 of how far the
/// weights moved (≈ 5·lr = 5e-3): a wrong shard, or the same noise on both ranks, moves them
/// differently by about the movement itself (checked below).
fn assert_close_to_one_process(one: &RunResult, other: &RunResult, what: &str) -> (f32, f32) {
    let moved = max_abs_diff(&one.weights, &initial_weights());
    let diff = max_abs_diff(&one.weights, &other.weights);
    assert!(moved > 1e-3, "{what}: the weights barely moved ({moved})");
    assert!(
        diff <= 1e-3 * moved,
        "{what}: weights differ by {diff} from one process (moved {moved})"
    );
    assert_eq!(one.losses.len(), other.losses.len());
    for (a, b) in one.losses.iter().zip(&other.losses) {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "{what}: losses {a} vs {b}");
    }
    (diff, moved)
}

#[test]
fn two_and_four_ranks_train_like_one_process_on_the_concatenated_batch() {
    let one = train_rank(SingleProcess, 5, None, |_, _| {}).unwrap();
    for world in [2, 4] {
        let ranks = train_threads(world, 5, None);
        for r in &ranks[1..] {
            assert_eq!(
                r, &ranks[0],
                "replicas of a {world}-rank run must be bit-identical"
            );
        }
        let (diff, moved) = assert_close_to_one_process(&one, &ranks[0], &format!("R = {world}"));
        eprintln!("R = {world}: max weight difference {diff:e}, weights moved {moved:e}");
    }
}

/// The negative control of the bound above: a rank that trains on the whole batch instead of
/// its shard (so the data is doubled and the noise offsets wrong) is far outside it.
#[test]
fn a_rank_on_the_wrong_rows_is_outside_the_bound() {
    let one = train_rank(SingleProcess, 5, None, |_, _| {}).unwrap();
    // One process that draws the noise of rank 1's samples for the whole batch.
    struct Rank1Noise;
    impl GradientReducer for Rank1Noise {
        fn all_reduce(&mut self, _: &mut [Tensor]) -> sde_train::Result<()> {
            Ok(())
        }
        fn rank(&self) -> usize {
            1
        }
    }
    let shifted = train_rank(Rank1Noise, 5, None, |_, _| {}).unwrap();
    let moved = max_abs_diff(&one.weights, &initial_weights());
    let diff = max_abs_diff(&one.weights, &shifted.weights);
    assert!(
        diff > 1e-2 * moved,
        "shifted noise: {diff} vs moved {moved}"
    );
}

#[test]
fn an_unsharded_source_is_refused_with_more_than_one_rank() {
    let errors: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = thread_reducers(2)
            .into_iter()
            .map(|reducer| {
                s.spawn(move || {
                    let vm = VarMap::new();
                    let net = Mlp::new(
                        &MlpConfig::vp(2),
                        seeded_var_builder(&vm, SEED, DType::F32, &Device::Cpu),
                    )
                    .unwrap();
                    let sde = VpSde::default();
                    let loss = SdeLoss::new(&sde, SdeLossOptions::default()).unwrap();
                    let mut t = Trainer::new(&net, &vm, loss, config(2))
                        .unwrap()
                        .with_data_parallel(reducer);
                    let mut data = ShuffledBatches::new(dataset(), GLOBAL_BATCH, SEED).unwrap();
                    t.run(&mut data, None).unwrap_err().to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for e in errors {
        assert!(e.contains("ShardedBatches"), "{e}");
    }
}

#[test]
fn sharded_batches_with_flips_partition_the_global_batch() {
    let images = Tensor::arange(0f32, 64.0 * 8.0, &Device::Cpu)
        .unwrap()
        .reshape((64, 1, 2, 4))
        .unwrap();
    let whole = || {
        ShuffledBatches::new(images.clone(), 16, SEED)
            .unwrap()
            .with_random_flip(true)
    };
    for step in [0u64, 3, 9] {
        let global = whole().batch(step, &mut data_rng(SEED, step)).unwrap();
        let parts: Vec<Tensor> = (0..4)
            .map(|r| {
                let mut s = ShardedBatches::new(whole(), r, 4).unwrap();
                assert_eq!(s.shard(), Some((r, 4)));
                s.batch(step, &mut data_rng(SEED, step)).unwrap()
            })
            .collect();
        let joined = Tensor::cat(&parts, 0).unwrap();
        assert_eq!(
            joined.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            global.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    // A global batch that does not split evenly is a typed error naming the step.
    let mut s = ShardedBatches::new(whole(), 0, 3).unwrap();
    let e = s.batch(5, &mut data_rng(SEED, 5)).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("step 5"), "{e}");
    assert!(ShardedBatches::new(whole(), 2, 2).is_err());
    assert!(ShardedBatches::new(whole(), 0, 0).is_err());
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sde-dp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_two_rank_run_resumes_exactly_and_on_one_process_up_to_round_off() {
    let dir = tmp_dir("resume");
    let full = train_threads(2, 6, None);
    // Stop after 4 steps (checkpoints at 2 and 4), then continue to 6 on two ranks.
    let first = dir.join("two");
    train_threads(2, 4, Some(&first));
    assert!(first.join("checkpoint_4.safetensors").exists());
    let resumed = train_threads(2, 6, Some(&first));
    assert_eq!(
        resumed[0].weights, full[0].weights,
        "same world size: exact"
    );
    assert_eq!(resumed[0].losses, full[0].losses[4..].to_vec());
    // The 2-rank checkpoint of step 4 continued by one process.
    let second = dir.join("one");
    std::fs::create_dir_all(&second).unwrap();
    std::fs::copy(
        first.join("checkpoint_4.safetensors"),
        second.join("checkpoint_4.safetensors"),
    )
    .unwrap();
    let one = train_rank(SingleProcess, 6, Some(&second), |_, _| {}).unwrap();
    let moved = max_abs_diff(&full[0].weights, &initial_weights());
    let diff = max_abs_diff(&full[0].weights, &one.weights);
    assert!(diff <= 1e-3 * moved, "2 → 1 ranks: {diff} (moved {moved})");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plain_and_data_parallel_checkpoints_do_not_mix() {
    let dir = tmp_dir("mix");
    train_rank(SingleProcess, 2, Some(&dir), |_, _| {}).unwrap();
    let ckpt = dir.join("checkpoint_2.safetensors");
    let vm = VarMap::new();
    let net = Mlp::new(
        &MlpConfig {
            hidden: 32,
            ..MlpConfig::vp(2)
        },
        seeded_var_builder(&vm, SEED, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let sde = VpSde::default();
    let options = SdeLossOptions {
        reduce_mean: true,
        ..Default::default()
    };
    let mut plain =
        Trainer::new(&net, &vm, SdeLoss::new(&sde, options).unwrap(), config(4)).unwrap();
    let e = plain.resume(&ckpt).unwrap_err();
    assert!(matches!(e, Error::CheckpointMismatch { .. }), "{e}");
    assert!(e.to_string().contains("data-parallel"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn launch_env_reads_the_launchers_variables() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let none = LaunchEnv::from_vars(env(&[])).unwrap();
    assert_eq!((none.rank, none.world_size, none.local_rank), (0, 1, 0));
    let ompi = LaunchEnv::from_vars(env(&[
        ("OMPI_COMM_WORLD_RANK", "3"),
        ("OMPI_COMM_WORLD_SIZE", "8"),
        ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ("SLURM_PROCID", "5"),
        ("SLURM_NTASKS", "9"),
    ]))
    .unwrap();
    assert_eq!((ompi.rank, ompi.world_size, ompi.local_rank), (3, 8, 1));
    let slurm = LaunchEnv::from_vars(env(&[("SLURM_PROCID", "5"), ("SLURM_NTASKS", "9")])).unwrap();
    assert_eq!((slurm.rank, slurm.world_size, slurm.local_rank), (5, 9, 0));
    let torchrun = LaunchEnv::from_vars(env(&[
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", "1"),
    ]))
    .unwrap();
    assert_eq!((torchrun.rank, torchrun.world_size), (1, 2));
    assert!(LaunchEnv::from_vars(env(&[("RANK", "2"), ("WORLD_SIZE", "2")])).is_err());
    assert!(LaunchEnv::from_vars(env(&[("RANK", "x"), ("WORLD_SIZE", "2")])).is_err());
}

#[cfg(feature = "mpi")]
mod mpi_runs {
    //! `mpirun -n 2` on this test binary: the driver tests start `mpi_worker` under MPI with
    //! its instructions in the environment, and compare what the ranks wrote.

    use super::*;
    use std::process::Command;

    const DIR: &str = "SDE_DP_TEST_DIR";
    const STEPS: &str = "SDE_DP_TEST_STEPS";
    const ABORT_AFTER: &str = "SDE_DP_TEST_ABORT_AFTER";

    /// One MPI rank (run only by the driver tests, under `mpirun`).
    #[test]
    #[ignore = "started by the MPI driver tests under mpirun"]
    fn mpi_worker() {
        let dir = PathBuf::from(std::env::var(DIR).expect("started by a driver test"));
        let steps: u64 = std::env::var(STEPS).unwrap().parse().unwrap();
        let abort_after: Option<u64> = std::env::var(ABORT_AFTER).ok().map(|s| s.parse().unwrap());
        let universe = sde_train::mpi::initialize().expect("MPI initialises once");
        let reducer = sde_train::MpiReducer::new(universe.world());
        let gather = sde_train::MpiReducer::new(universe.world());
        let rank = reducer.rank();
        let ckpt = dir.join("ckpt");
        let result = train_rank(reducer, steps, Some(&ckpt), |step, rank| {
            if Some(step) == abort_after && rank == 1 {
                std::process::abort();
            }
        });
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                eprintln!("rank {rank}: {e}");
                gather.abort(1)
            }
        };
        let flat: Vec<f32> = result.weights.iter().flat_map(|(_, w)| w.clone()).collect();
        let tensors = [
            ("weights", Tensor::new(flat, &Device::Cpu).unwrap()),
            ("losses", Tensor::new(result.losses, &Device::Cpu).unwrap()),
        ];
        candle_core::safetensors::save(
            &tensors.into_iter().collect(),
            dir.join(format!("rank{rank}.safetensors")),
        )
        .unwrap();
        // Sharded sampling: 10 samples over the ranks by per-sample streams, gathered on 0.
        let (lo, hi) = (rank as u64 * 10 / 2, (rank as u64 + 1) * 10 / 2);
        let mut noise = sde_core::noise::PerSampleNoise::new(SEED).with_offset(lo);
        let x = sde_core::noise::NoiseSource::randn(
            &mut noise,
            &((hi - lo) as usize, 3).into(),
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        if let Some(all) = gather.gather_rows(&x).unwrap() {
            candle_core::safetensors::save(
                &[("samples".to_string(), all)].into_iter().collect(),
                dir.join("gathered.safetensors"),
            )
            .unwrap();
        }
    }

    /// `mpirun -n 2` of `mpi_worker`; whether it succeeded.
    fn mpirun(dir: &Path, steps: u64, abort_after: Option<u64>) -> bool {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new("mpirun");
        cmd.args(["-n", "2", "--oversubscribe"]);
        // Open MPI refuses to start as root without this flag (CI containers run as root).
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if root {
            cmd.arg("--allow-run-as-root");
        }
        cmd.arg(exe)
            .args([
                "mpi_runs::mpi_worker",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env(DIR, dir)
            .env(STEPS, steps.to_string())
            .env("RAYON_NUM_THREADS", "1");
        match abort_after {
            Some(a) => cmd.env(ABORT_AFTER, a.to_string()),
            None => cmd.env_remove(ABORT_AFTER),
        };
        let out = cmd
            .output()
            .expect("mpirun must be installed for feature `mpi` (see .ci/run)");
        // A run that should fail (a killed rank) prints Open MPI's abort report: keep it quiet.
        if !out.status.success() && abort_after.is_none() {
            eprintln!(
                "mpirun exited with {}:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.status.success()
    }

    fn read_rank(dir: &Path, rank: usize) -> (Vec<f32>, Vec<f64>) {
        let t = candle_core::safetensors::load(
            dir.join(format!("rank{rank}.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        (
            t["weights"].to_vec1::<f32>().unwrap(),
            t["losses"].to_vec1::<f64>().unwrap(),
        )
    }

    #[test]
    fn two_mpi_ranks_train_like_one_process_and_a_killed_rank_resumes_identically() {
        let dir = tmp_dir("mpi");
        // Uninterrupted: 6 steps on two MPI ranks.
        let whole = dir.join("whole");
        std::fs::create_dir_all(&whole).unwrap();
        assert!(mpirun(&whole, 6, None), "the 2-rank run failed");
        let (w0, l0) = read_rank(&whole, 0);
        let (w1, l1) = read_rank(&whole, 1);
        assert_eq!(w0, w1, "MPI replicas must be bit-identical");
        assert_eq!(l0, l1);
        // Against one process on the concatenated batch.
        let one = train_rank(SingleProcess, 6, None, |_, _| {}).unwrap();
        let mpi = RunResult {
            losses: l0.clone(),
            weights: {
                let mut off = 0;
                one.weights
                    .iter()
                    .map(|(n, w)| {
                        let v = w0[off..off + w.len()].to_vec();
                        off += w.len();
                        (n.clone(), v)
                    })
                    .collect()
            },
        };
        let (diff, moved) = assert_close_to_one_process(&one, &mpi, "mpirun -n 2");
        eprintln!("mpirun -n 2: max weight difference {diff:e}, weights moved {moved:e}");
        // Gathered sharded samples equal one process's draw of all 10.
        let gathered =
            candle_core::safetensors::load(whole.join("gathered.safetensors"), &Device::Cpu)
                .unwrap()["samples"]
                .clone();
        let mut noise = sde_core::noise::PerSampleNoise::new(SEED);
        let all = sde_core::noise::NoiseSource::randn(
            &mut noise,
            &(10, 3).into(),
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        assert_eq!(
            gathered.to_vec2::<f32>().unwrap(),
            all.to_vec2::<f32>().unwrap()
        );

        // Rank 1 dies after step 3; checkpoints are every 2 steps, so step 2's is the last.
        let killed = dir.join("killed");
        std::fs::create_dir_all(&killed).unwrap();
        assert!(
            !mpirun(&killed, 6, Some(3)),
            "mpirun must fail when a rank dies"
        );
        assert_eq!(
            latest_checkpoint(killed.join("ckpt")).unwrap(),
            Some(killed.join("ckpt").join("checkpoint_2.safetensors"))
        );
        // The same command again resumes from step 2 and finishes identically.
        assert!(mpirun(&killed, 6, None), "the relaunch failed");
        let (k0, kl) = read_rank(&killed, 0);
        assert_eq!(
            k0, w0,
            "resumed run must end with the uninterrupted run's weights"
        );
        assert_eq!(kl, l0[2..].to_vec(), "and take the same steps 3..6");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
