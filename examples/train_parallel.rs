//! Data-parallel denoising score matching of the score-nets MLP on 8 Gaussians (VP SDE), then
//! sharded sampling across the same ranks.
//!
//! Each of the R ranks trains on its B/R rows of every global batch of B
//! (`ShardedBatches`) with per-sample noise (`Trainer::with_data_parallel`), the gradients are
//! averaged over MPI, and rank 0 writes the checkpoints; then every rank samples its block of
//! shards (`ShardPlan::rank_shards`, per-sample seeds) with the reverse-diffusion sampler and
//! rank 0 gathers them and scores them against the true mixture. The result equals a
//! one-process run up to f32 summation order, whatever R.
//!
//! One process:   `cargo run --release --example train_parallel`
//! Four ranks:    `cargo build --release --example train_parallel --features mpi`
//!                `mpirun -n 4 target/release/examples/train_parallel`
//! Relaunching with the same `--checkpoints` folder resumes from its last checkpoint.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use clap::Parser;
use rand::SeedableRng;
use score_nets::{init::seeded_var_builder, Mlp, MlpConfig};
use sde_core::noise::PerSampleNoise;
use sde_core::VpSde;
use sde_eval::ShardPlan;
use sde_solvers::corrector::NoCorrector;
use sde_solvers::pc::PcSampler;
use sde_solvers::predictor::ReverseDiffusionPredictor;
use sde_train::{
    latest_checkpoint, GradientReducer, SdeLoss, SdeLossOptions, ShardedBatches, ShuffledBatches,
    Toy2d, TrainConfig, Trainer,
};

#[derive(Parser, Debug)]
#[command(about = "Data-parallel DSM training of a 2-D MLP (launch with mpirun for R > 1)")]
struct Args {
    /// Optimisation steps.
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    /// Global batch B (split into B/R per rank; a multiple of R).
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Hidden width of the MLP.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// Points in the training set (drawn once from the mixture).
    #[arg(long, default_value_t = 65536)]
    dataset: usize,
    /// Samples to draw after training (0: none).
    #[arg(long, default_value_t = 4096)]
    samples: u64,
    /// Checkpoint folder (every 500 steps and at the end; resumed from if it has one).
    #[arg(long)]
    checkpoints: Option<PathBuf>,
    /// Run seed (weights, data order, noise).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() {
    // reuse freed tensor buffers instead of page-faulting new ones in (glibc)
    score_nets::retain_freed_memory();
    let args = Args::parse();
    #[cfg(feature = "mpi")]
    let universe = sde_train::mpi::initialize().expect("MPI initialises once");
    #[cfg(feature = "mpi")]
    let (reducer, gather) = {
        let g = sde_train::MpiReducer::new(universe.world());
        (
            sde_train::MpiReducer::new(universe.world()),
            move |x: &Tensor| g.gather_rows(x),
        )
    };
    #[cfg(not(feature = "mpi"))]
    let (reducer, gather) = (
        sde_train::SingleProcess,
        |x: &Tensor| -> sde_train::Result<Option<Tensor>> { Ok(Some(x.clone())) },
    );
    let rank = reducer.rank();
    if let Err(e) = run(&args, reducer, gather) {
        eprintln!("rank {rank}: {e}");
        // Under MPI, end every rank: the others would wait in the next collective forever.
        #[cfg(feature = "mpi")]
        sde_train::mpi::topology::Communicator::abort(&universe.world(), 1);
        #[cfg(not(feature = "mpi"))]
        std::process::exit(1);
    }
}

fn run(
    args: &Args,
    reducer: impl GradientReducer,
    gather: impl Fn(&Tensor) -> sde_train::Result<Option<Tensor>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let (rank, world) = (reducer.rank(), reducer.world_size());
    let dev = Device::Cpu;
    let sde = VpSde::default();
    let vm = VarMap::new();
    let cfg = MlpConfig {
        hidden: args.hidden,
        ..MlpConfig::vp(2)
    };
    let net = Mlp::new(&cfg, seeded_var_builder(&vm, args.seed, DType::F32, &dev))?;
    // Every rank draws the same dataset and shuffles it with the same seed; it keeps its rows.
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ 0xDA7A);
    let data = Toy2d::EightGaussians.sample(args.dataset, &dev, DType::F32, &mut rng)?;
    let whole = ShuffledBatches::new(data, args.batch, args.seed)?;
    let mut batches = ShardedBatches::new(whole, rank, world)?;
    let options = SdeLossOptions {
        reduce_mean: true,
        ..Default::default()
    };
    let config = TrainConfig {
        n_iters: args.steps,
        snapshot_freq: 500,
        log_freq: 100,
        seed: args.seed,
        optim: sde_train::AdamConfig {
            lr: 1e-3,
            warmup: 100,
            ..Default::default()
        },
        extra: serde_json::json!({ "example": "train_parallel", "hidden": args.hidden, "batch": args.batch }),
        ..Default::default()
    };
    let mut trainer = Trainer::new(&net, &vm, SdeLoss::new(&sde, options)?, config)?;
    if let Some(dir) = &args.checkpoints {
        trainer = trainer.with_checkpoint_dir(dir)?;
    }
    let mut trainer = trainer.with_data_parallel(reducer);
    if let Some(last) = args
        .checkpoints
        .as_ref()
        .map(latest_checkpoint)
        .transpose()?
        .flatten()
    {
        trainer.resume(&last)?;
        if rank == 0 {
            println!("resumed from {} (step {})", last.display(), trainer.step());
        }
    }
    if rank == 0 {
        let params: usize = sde_train::named_vars(&vm)
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum();
        println!(
            "{params} parameters: one all-reduce of {} f32 values per step",
            params + 1
        );
    }
    let start = Instant::now();
    let done = trainer.step();
    let summary = trainer.run(&mut batches, None)?;
    let secs = start.elapsed().as_secs_f64();
    if rank == 0 {
        let steps = args.steps - done;
        println!(
            "trained {steps} steps of global batch {} on {world} rank(s) in {secs:.2} s \
             ({:.1} steps/s, {:.0} samples/s); last loss {:.4}",
            args.batch,
            steps as f64 / secs,
            (steps as usize * args.batch) as f64 / secs,
            summary.losses.last().copied().unwrap_or(f64::NAN),
        );
    }
    if args.samples == 0 {
        return Ok(());
    }
    // Sharded sampling with the EMA weights: rank r draws its block of shards, rank 0 gathers.
    trainer.ema_mut().swap()?;
    let sampler = PcSampler::new(ReverseDiffusionPredictor::new(false), NoCorrector);
    let plan = ShardPlan::new(args.samples, 256, 256, args.seed)?;
    let start = Instant::now();
    let mut local = Vec::new();
    for k in plan.rank_shards(rank, world)? {
        let (lo, hi) = plan.shard_range(k);
        let mut noise = PerSampleNoise::new(plan.seed).with_offset(lo);
        let b = (hi - lo) as usize;
        let out = sampler.sample_model(&sde, &net, true, (b, 2), &dev, DType::F32, &mut noise)?;
        local.push(out.x);
    }
    let local = if local.is_empty() {
        Tensor::zeros((0, 2), DType::F32, &dev)?
    } else {
        Tensor::cat(&local, 0)?
    };
    if let Some(all) = gather(&local)? {
        let mixture = Toy2d::EightGaussians
            .mixture()
            .ok_or("8 Gaussians has a mixture")?;
        let logp = mixture.log_prob(&all)?;
        let mut counts = [0usize; 8];
        for k in mixture.classify(&all)? {
            counts[k] += 1;
        }
        println!(
            "{} samples from {world} rank(s) in {:.2} s: mean log p = {:.3}, per mode {counts:?}",
            all.dim(0)?,
            start.elapsed().as_secs_f64(),
            logp.iter().sum::<f64>() / logp.len() as f64,
        );
    }
    Ok(())
}
