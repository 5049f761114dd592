//! The training loop (`run_lib.train` + `losses.get_step_fn`): loss, backward, gradient
//! all-reduce, Adam with warm-up and clipping, EMA; logging, evaluation, hooks and checkpoints.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sde_core::ScoreModel;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_checkpoint, match_tensors, save_checkpoint, Checkpoint, RngState};
use crate::data::BatchSource;
use crate::ema::Ema;
use crate::error::{check_param, Error, Result};
use crate::hooks::{Hook, HookInfo, HookSchedule};
use crate::loss::TrainingLoss;
use crate::optim::{Adam, AdamConfig};
use crate::parallel::{data_rng, eval_noise, step_noise, GradientReducer};

/// Settings of a training run (`config.training` + `config.optim` of the reference).
/// Defaults: 1000 steps, log every 50, no eval, no checkpoints, EMA decay 0.999, the reference
/// Adam settings ([`AdamConfig`]), seed 0, progress bar on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[doc(alias = "config.training")]
pub struct TrainConfig {
    /// Total optimisation steps (`n_iters`).
    pub n_iters: u64,
    /// Write a JSON log line (and update the bar's message) every `log_freq` steps; 0: never.
    pub log_freq: u64,
    /// Evaluation loss (EMA weights, `train = false`) every `eval_freq` steps; 0: never.
    pub eval_freq: u64,
    /// Checkpoint every `snapshot_freq` steps and at the end (needs a checkpoint directory);
    /// 0: only at the end.
    pub snapshot_freq: u64,
    /// EMA decay (0.999 for VP / sub-VP, 0.9999 for VE in the paper).
    pub ema_decay: f64,
    /// Optimiser settings.
    pub optim: AdamConfig,
    /// Seed of the training generator (ChaCha8, stream 0).
    pub seed: u64,
    /// Show an indicatif progress bar.
    pub progress: bool,
    /// Anything else that identifies the run (model and loss config): saved in checkpoints and
    /// required to match on resume.
    pub extra: serde_json::Value,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            n_iters: 1000,
            log_freq: 50,
            eval_freq: 0,
            snapshot_freq: 0,
            ema_decay: 0.999,
            optim: AdamConfig::default(),
            seed: 0,
            progress: true,
            extra: serde_json::Value::Null,
        }
    }
}

/// What one training step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepRecord {
    /// The step number after the update (1 for the first step).
    pub step: u64,
    /// The mini-batch loss before the update.
    pub loss: f64,
    /// The learning rate used.
    pub lr: f64,
    /// The gradient norm before clipping.
    pub grad_norm: f64,
}

/// Results of [`Trainer::run`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// Training losses of the steps run by this call, in order.
    pub losses: Vec<f64>,
    /// `(step, eval loss)` pairs.
    pub eval_losses: Vec<(u64, f64)>,
    /// Checkpoints written.
    pub checkpoints: Vec<PathBuf>,
}

/// Trains a [`ScoreModel`] whose variables live in a [`VarMap`] with any [`TrainingLoss`]:
/// per step, batch → loss → backward → all-reduce ([`GradientReducer`]) → Adam (warm-up,
/// clipping) → EMA, all randomness from one checkpointed ChaCha8 generator.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{Module, VarBuilder, VarMap};
/// use sde_core::{ScoreModel, VpSde};
/// use sde_train::{SdeLoss, SdeLossOptions, ToyBatches, Toy2d, TrainConfig, Trainer};
///
/// struct Net(candle_nn::Linear);
/// impl ScoreModel for Net {
///     fn forward_t(&self, x: &Tensor, _labels: &Tensor, _mode: sde_core::Mode<'_>) -> sde_core::Result<Tensor> {
///         Ok(self.0.forward(x)?)
///     }
/// }
/// let vm = VarMap::new();
/// let net = Net(candle_nn::linear(2, 2, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?);
/// let sde = VpSde::default();
/// let loss = SdeLoss::new(&sde, SdeLossOptions::default())?;
/// let config = TrainConfig { n_iters: 5, progress: false, ..Default::default() };
/// let mut trainer = Trainer::new(&net, &vm, loss, config)?;
/// let summary = trainer.run(&mut ToyBatches::new(Toy2d::EightGaussians, 16), None)?;
/// assert_eq!(summary.losses.len(), 5);
/// assert_eq!(trainer.step(), 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Trainer<'a, M: ?Sized, L> {
    model: &'a M,
    varmap: VarMap,
    loss: L,
    adam: Adam,
    ema: Ema,
    rng: ChaCha8Rng,
    step: u64,
    config: TrainConfig,
    log: Option<BufWriter<File>>,
    log_path: Option<PathBuf>,
    checkpoint_dir: Option<PathBuf>,
    hooks: Vec<Hook<'a>>,
    reducer: Option<Box<dyn GradientReducer + 'a>>,
    /// Per-sample noise and sharded data ([`Trainer::with_data_parallel`]).
    data_parallel: bool,
    last_loss: Option<f64>,
}

impl<M: ?Sized, L> std::fmt::Debug for Trainer<'_, M, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("step", &self.step)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// `k > 0` and `k` divides `step` (`u64::is_multiple_of` needs Rust 1.87; MSRV is 1.80).
#[allow(clippy::manual_is_multiple_of)]
fn due(step: u64, k: u64) -> bool {
    k > 0 && step % k == 0
}

/// Seed offset of the evaluation generator (independent of the training stream).
const EVAL_SEED_XOR: u64 = 0x5EED_0E7A_1000_0001;

impl<'a, M: ScoreModel + ?Sized, L: TrainingLoss> Trainer<'a, M, L> {
    /// A trainer at step 0 for `model`, whose variables are those of `varmap`.
    ///
    /// On glibc it first raises the allocator's thresholds once per process
    /// (`score_nets::retain_freed_memory`), so that each step reuses the previous step's freed
    /// buffers instead of page-faulting new ones in: ~1.4x faster CPU steps for image networks,
    /// at the cost of resident memory staying at its peak.
    pub fn new(model: &'a M, varmap: &VarMap, loss: L, config: TrainConfig) -> Result<Self> {
        sde_kernels::memory::retain_freed_memory();
        check_param(
            "ema_decay",
            config.ema_decay,
            (0.0..=1.0).contains(&config.ema_decay),
            "must lie in [0, 1]",
        )?;
        let adam = Adam::new(varmap, config.optim.clone())?;
        if adam.vars().is_empty() {
            return Err(Error::InvalidParameter {
                name: "varmap",
                value: 0.0,
                reason: "has no variables: build the model from this VarMap first",
            });
        }
        let ema = Ema::new(varmap, config.ema_decay)?;
        Ok(Self {
            model,
            varmap: varmap.clone(),
            loss,
            adam,
            ema,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            step: 0,
            config,
            log: None,
            log_path: None,
            checkpoint_dir: None,
            hooks: Vec::new(),
            reducer: None,
            data_parallel: false,
            last_loss: None,
        })
    }

    /// Appends JSON lines (`{"step", "loss", "lr", "grad_norm"}` and `{"step", "eval_loss"}`)
    /// to `path`.
    pub fn with_log(mut self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        self.log = Some(BufWriter::new(f));
        self.log_path = Some(path);
        Ok(self)
    }

    /// Writes `checkpoint_<step>.safetensors` into `dir` (created if needed), after removing
    /// the temporary files a run killed mid-write left there
    /// ([`crate::remove_stale_temp_files`]).
    pub fn with_checkpoint_dir(mut self, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        crate::checkpoint::remove_stale_temp_files(&dir)?;
        self.checkpoint_dir = Some(dir);
        Ok(self)
    }

    /// Installs a gradient all-reduce and keeps the single-stream noise of a plain run (a test
    /// seam; data-parallel training uses [`with_data_parallel`](Self::with_data_parallel)).
    pub fn with_reducer(mut self, reducer: impl GradientReducer + 'a) -> Self {
        self.reducer = Some(Box::new(reducer));
        self
    }

    /// Trains as rank `reducer.rank()` of `reducer.world_size()` data-parallel replicas:
    ///
    /// - the batch source must give this rank's rows of every global batch
    ///   ([`crate::ShardedBatches`]) and receives [`data_rng`]`(seed, step)`, the same on every
    ///   rank;
    /// - the loss draws from [`step_noise`]`(seed, step, r·B_local)`, per global sample, so R
    ///   ranks draw what one process draws for the whole batch;
    /// - gradients and the loss are averaged by the reducer before clipping and Adam, and the
    ///   finiteness checks run after the reduction (all ranks stop together);
    /// - only rank 0 logs, shows the bar and writes checkpoints; every rank meets at a barrier
    ///   after each snapshot step, and every rank resumes from the same file.
    ///
    /// With [`crate::SingleProcess`] this is the one-process run that R ranks reproduce up to
    /// f32 summation order. Checkpoints record the world size; see `docs/training.md`.
    pub fn with_data_parallel(mut self, reducer: impl GradientReducer + 'a) -> Self {
        self.reducer = Some(Box::new(reducer));
        self.data_parallel = true;
        self
    }

    /// This replica's rank (0 without a reducer).
    pub fn rank(&self) -> usize {
        self.reducer.as_ref().map_or(0, |r| r.rank())
    }

    /// Number of replicas (1 without a reducer).
    pub fn world_size(&self) -> usize {
        self.reducer.as_ref().map_or(1, |r| r.world_size())
    }

    /// Adds a hook (e.g. sample with `sde-solvers` and write a PNG grid). With `use_ema` the
    /// model holds the EMA weights while the hook runs.
    pub fn add_hook(
        &mut self,
        schedule: HookSchedule,
        use_ema: bool,
        f: impl FnMut(&HookInfo<'_>) -> Result<()> + 'a,
    ) -> Result<()> {
        if schedule == HookSchedule::Every(0) {
            return Err(Error::InvalidParameter {
                name: "HookSchedule::Every",
                value: 0.0,
                reason: "must be at least 1",
            });
        }
        self.hooks.push(Hook {
            schedule,
            use_ema,
            f: Box::new(f),
        });
        Ok(())
    }

    /// Steps done.
    pub fn step(&self) -> u64 {
        self.step
    }
    /// The run's settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }
    /// The EMA.
    pub fn ema(&self) -> &Ema {
        &self.ema
    }
    /// Mutable EMA access (e.g. [`Ema::with_ema_weights`]).
    pub fn ema_mut(&mut self) -> &mut Ema {
        &mut self.ema
    }
    /// The optimiser.
    pub fn optimizer(&self) -> &Adam {
        &self.adam
    }
    /// The model's variables.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }
    /// The training generator (batches and loss draws come from it).
    pub fn rng_mut(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// One step on `batch`: loss (train mode), backward, all-reduce, Adam, EMA
    /// (`step_fn(state, batch)` with `train = True`).
    #[doc(alias = "step_fn")]
    pub fn train_step(&mut self, batch: &Tensor) -> Result<StepRecord> {
        let loss_t = if self.data_parallel {
            let first = (self.rank() * batch.dim(0)?) as u64;
            let mut noise = step_noise(self.config.seed, self.step, first);
            self.loss.loss(self.model, batch, true, &mut noise)?
        } else {
            self.loss.loss(self.model, batch, true, &mut self.rng)?
        };
        let local = loss_t.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let non_finite = |step: u64, what: &str| Error::NonFinite {
            what: format!("training loss at step {step}{what}"),
        };
        // Data-parallel ranks check after the reduction, so that all of them stop together.
        if !self.data_parallel && !local.is_finite() {
            return Err(non_finite(self.step + 1, ""));
        }
        let grads = loss_t.backward()?;
        let mut g = self.adam.collect_grads(&grads)?;
        drop(grads);
        let loss = match self.reducer.as_mut() {
            Some(r) => r.all_reduce_step(&mut g, local)?,
            None => local,
        };
        if !loss.is_finite() {
            return Err(non_finite(self.step + 1, " (mean over the ranks)"));
        }
        let stats = self.adam.step(&g)?;
        self.ema.update()?;
        self.step += 1;
        self.last_loss = Some(loss);
        Ok(StepRecord {
            step: self.step,
            loss,
            lr: stats.lr,
            grad_norm: stats.grad_norm,
        })
    }

    /// The evaluation loss on `batch` with the EMA weights and `train = false`, drawing from a
    /// generator keyed by `(seed, step)` so that evaluating never perturbs training. Under
    /// [`with_data_parallel`](Self::with_data_parallel) it is collective: every rank passes its
    /// shard, draws [`eval_noise`] per global sample, and gets the mean over the ranks.
    pub fn eval_loss(&mut self, batch: &Tensor) -> Result<f64> {
        let (model, loss) = (self.model, &self.loss);
        if !self.data_parallel {
            let mut rng = self.eval_rng();
            return self.ema.with_ema_weights(|| {
                let l = loss.loss(model, batch, false, &mut rng)?;
                Ok(l.to_dtype(DType::F64)?.to_scalar::<f64>()?)
            });
        }
        let first = (self.rank() * batch.dim(0)?) as u64;
        let mut noise = eval_noise(self.config.seed, self.step, first);
        let local = self.ema.with_ema_weights(|| {
            let l = loss.loss(model, batch, false, &mut noise)?;
            Ok(l.to_dtype(DType::F64)?.to_scalar::<f64>()?)
        })?;
        match self.reducer.as_mut() {
            Some(r) => r.all_reduce_step(&mut [], local),
            None => Ok(local),
        }
    }

    fn eval_rng(&self) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed ^ EVAL_SEED_XOR);
        rng.set_stream(self.step);
        rng
    }

    fn write_log(&mut self, line: serde_json::Value) -> Result<()> {
        if self.rank() != 0 {
            return Ok(());
        }
        if let Some(log) = self.log.as_mut() {
            let path = self.log_path.clone().unwrap_or_default();
            serde_json::to_writer(&mut *log, &line)?;
            log.write_all(b"\n").map_err(|e| Error::io(&path, e))?;
            log.flush().map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    fn run_hooks(&mut self, checkpoint: Option<&Path>) -> Result<()> {
        let step = self.step;
        for i in 0..self.hooks.len() {
            let due = match self.hooks[i].schedule {
                HookSchedule::Every(k) => checkpoint.is_none() && due(step, k),
                HookSchedule::OnCheckpoint => checkpoint.is_some(),
            };
            if !due {
                continue;
            }
            let info = HookInfo {
                step,
                loss: self.last_loss,
                checkpoint,
                varmap: &self.varmap,
            };
            let hook = &mut self.hooks[i];
            if hook.use_ema {
                let f = &mut hook.f;
                self.ema.with_ema_weights(|| f(&info))?;
            } else {
                (hook.f)(&info)?;
            }
        }
        Ok(())
    }

    /// Trains until `config.n_iters` steps are done (continuing from the current step), with
    /// the progress bar, logging, evaluation on `eval` batches, hooks and checkpoints.
    pub fn run(
        &mut self,
        data: &mut dyn BatchSource,
        mut eval: Option<&mut dyn BatchSource>,
    ) -> Result<TrainSummary> {
        let n = self.config.n_iters;
        let (rank, world) = (self.rank(), self.world_size());
        if self.data_parallel && world > 1 && data.shard() != Some((rank, world)) {
            return Err(Error::ShapeMismatch {
                what: "data-parallel batch source (Trainer::run)",
                expected: format!("rank {rank}'s shard of {world} (wrap it in ShardedBatches)"),
                got: format!("{:?}", data.shard()),
            });
        }
        let bar = ProgressBar::new(n);
        if self.config.progress && rank == 0 {
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}] {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
        } else {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_position(self.step);
        let mut summary = TrainSummary {
            losses: Vec::new(),
            eval_losses: Vec::new(),
            checkpoints: Vec::new(),
        };
        while self.step < n {
            let batch = if self.data_parallel {
                data.batch(self.step, &mut data_rng(self.config.seed, self.step))?
            } else {
                data.batch(self.step, &mut self.rng)?
            };
            let rec = self.train_step(&batch)?;
            summary.losses.push(rec.loss);
            let s = self.step;
            let c = &self.config;
            if due(s, c.log_freq) {
                bar.set_message(format!("loss {:.4}", rec.loss));
                self.write_log(serde_json::json!({
                    "step": s, "loss": rec.loss, "lr": rec.lr, "grad_norm": rec.grad_norm
                }))?;
            }
            if let Some(ev) = eval.as_deref_mut() {
                if due(s, self.config.eval_freq) {
                    let mut erng = self.eval_rng();
                    let eb = ev.batch(s, &mut erng)?;
                    let el = self.eval_loss(&eb)?;
                    summary.eval_losses.push((s, el));
                    self.write_log(serde_json::json!({ "step": s, "eval_loss": el }))?;
                }
            }
            self.run_hooks(None)?;
            let snapshot = due(s, self.config.snapshot_freq) || s == n;
            if snapshot && self.checkpoint_dir.is_some() && rank == 0 {
                self.save_checkpoint(self.checkpoint_path(s))?;
            }
            // No rank passes a snapshot step before rank 0's file is on disk (the schedule is
            // the config's, so the same on ranks without a checkpoint directory).
            if snapshot && self.data_parallel {
                if let Some(r) = self.reducer.as_mut() {
                    r.barrier()?;
                }
            }
            if snapshot && self.checkpoint_dir.is_some() {
                let path = self.checkpoint_path(s);
                self.run_hooks(Some(&path))?;
                summary.checkpoints.push(path);
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(summary)
    }

    /// `<checkpoint_dir>/checkpoint_<step>.safetensors`.
    pub fn checkpoint_path(&self, step: u64) -> PathBuf {
        self.checkpoint_dir
            .clone()
            .unwrap_or_default()
            .join(format!("checkpoint_{step}.safetensors"))
    }

    /// The full training state.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let model = self
            .adam
            .vars()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect();
        let (m, v) = self
            .adam
            .moments()
            .map(|(n, m, v)| ((n.to_string(), m.clone()), (n.to_string(), v.clone())))
            .unzip();
        Ok(Checkpoint {
            step: self.step,
            model,
            ema: self.ema.shadow().to_vec(),
            ema_decay: self.ema.decay(),
            ema_num_updates: self.ema.num_updates(),
            adam_step: self.adam.n_steps(),
            adam_m: m,
            adam_v: v,
            rng: RngState::of(&self.rng),
            config: self.checkpoint_config()?,
        })
    }

    /// The run's config as checkpoints record it: [`TrainConfig`], plus
    /// `"data_parallel": {"world_size": R}` for a data-parallel run.
    fn checkpoint_config(&self) -> Result<serde_json::Value> {
        let mut config = serde_json::to_value(&self.config)?;
        if let (true, Some(obj)) = (self.data_parallel, config.as_object_mut()) {
            obj.insert(
                "data_parallel".into(),
                serde_json::json!({ "world_size": self.world_size() }),
            );
        }
        Ok(config)
    }

    /// Writes the training state to `path` atomically ([`save_checkpoint`]).
    pub fn save_checkpoint(&self, path: impl AsRef<Path>) -> Result<()> {
        save_checkpoint(path, &self.checkpoint()?)
    }

    /// Restores the exact training state from `path`: weights, EMA, Adam moments, step and
    /// RNG. The checkpoint's `ema_decay`, `optim`, `seed` and `extra` must equal this run's
    /// (`n_iters`, frequencies and the progress bar may change); any difference, and any
    /// missing, extra or wrongly shaped tensor, is [`Error::CheckpointMismatch`]. A plain
    /// checkpoint cannot resume a data-parallel run or the reverse (their noise streams differ);
    /// a data-parallel one may resume on another world size (rank 0 prints a warning: the run
    /// continues up to f32 summation order, see `docs/training.md`).
    pub fn resume(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let ckpt = load_checkpoint(path)?;
        let mine = self.checkpoint_config()?;
        let old_world = ckpt
            .config
            .get("data_parallel")
            .map(|d| d["world_size"].clone());
        match (&old_world, self.data_parallel) {
            (Some(_), false) | (None, true) => {
                return Err(Error::CheckpointMismatch {
                    path: path.to_path_buf(),
                    what: format!(
                        "checkpoint is {}, this run is {} (their noise streams differ)",
                        if old_world.is_some() {
                            "data-parallel"
                        } else {
                            "plain"
                        },
                        if self.data_parallel {
                            "data-parallel"
                        } else {
                            "plain"
                        },
                    ),
                })
            }
            (Some(w), true) if *w != serde_json::json!(self.world_size()) && self.rank() == 0 => {
                eprintln!(
                    "warning: {} was written by {w} rank(s), resuming on {}: same data and \
                     noise per sample, gradient sums in another order (f32 round-off)",
                    path.display(),
                    self.world_size()
                );
            }
            _ => {}
        }
        for key in ["ema_decay", "optim", "seed", "extra"] {
            let (a, b) = (ckpt.config.get(key), mine.get(key));
            if a != b {
                return Err(Error::CheckpointMismatch {
                    path: path.to_path_buf(),
                    what: format!(
                        "config `{key}` differs: checkpoint {}, this run {}",
                        a.map_or("missing".into(), |v| v.to_string()),
                        b.map_or("missing".into(), |v| v.to_string())
                    ),
                });
            }
        }
        let expected: Vec<_> = self
            .adam
            .vars()
            .iter()
            .map(|(n, v)| (n.clone(), v.dims().to_vec(), v.dtype(), v.device().clone()))
            .collect();
        let model = match_tensors(path, "model", &ckpt.model, &expected)?;
        let ema = match_tensors(path, "ema", &ckpt.ema, &expected)?;
        let m = match_tensors(path, "adam.m", &ckpt.adam_m, &expected)?;
        let v = match_tensors(path, "adam.v", &ckpt.adam_v, &expected)?;
        self.adam.set_state(ckpt.adam_step, m, v)?;
        self.ema.set_state(ckpt.ema_num_updates, ema)?;
        for ((_, var), t) in self.adam.vars().iter().zip(model) {
            var.set(&t)?;
        }
        self.rng = ckpt.rng.restore();
        self.step = ckpt.step;
        self.last_loss = None;
        Ok(())
    }
}
