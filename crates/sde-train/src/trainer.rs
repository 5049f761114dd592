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
use crate::loss::TrainingLoss;
use crate::optim::{Adam, AdamConfig};
use crate::parallel::GradientReducer;

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

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookSchedule {
    /// After every k-th step (k ≥ 1).
    Every(u64),
    /// After each checkpoint is written.
    OnCheckpoint,
}

/// What a hook sees.
pub struct HookInfo<'i> {
    /// Steps done.
    pub step: u64,
    /// The last training loss.
    pub loss: Option<f64>,
    /// The checkpoint just written ([`HookSchedule::OnCheckpoint`]).
    pub checkpoint: Option<&'i Path>,
    /// The model's variables (holding the EMA weights if the hook asked for them).
    pub varmap: &'i VarMap,
}

type HookFn<'a> = Box<dyn FnMut(&HookInfo<'_>) -> Result<()> + 'a>;

struct Hook<'a> {
    schedule: HookSchedule,
    use_ema: bool,
    f: HookFn<'a>,
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
    pub fn new(model: &'a M, varmap: &VarMap, loss: L, config: TrainConfig) -> Result<Self> {
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

    /// Installs the data-parallel gradient all-reduce.
    pub fn with_reducer(mut self, reducer: impl GradientReducer + 'a) -> Self {
        self.reducer = Some(Box::new(reducer));
        self
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
        let loss_t = self.loss.loss(self.model, batch, true, &mut self.rng)?;
        let loss = loss_t.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !loss.is_finite() {
            return Err(Error::NonFinite {
                what: format!("training loss at step {}", self.step + 1),
            });
        }
        let grads = loss_t.backward()?;
        let mut g = self.adam.collect_grads(&grads)?;
        drop(grads);
        if let Some(r) = self.reducer.as_mut() {
            r.all_reduce(&mut g)?;
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
    /// generator keyed by `(seed, step)` so that evaluating never perturbs training.
    pub fn eval_loss(&mut self, batch: &Tensor) -> Result<f64> {
        let mut rng = self.eval_rng();
        let (model, loss) = (self.model, &self.loss);
        self.ema.with_ema_weights(|| {
            let l = loss.loss(model, batch, false, &mut rng)?;
            Ok(l.to_dtype(DType::F64)?.to_scalar::<f64>()?)
        })
    }

    fn eval_rng(&self) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed ^ EVAL_SEED_XOR);
        rng.set_stream(self.step);
        rng
    }

    fn write_log(&mut self, line: serde_json::Value) -> Result<()> {
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
        let bar = ProgressBar::new(n);
        if self.config.progress {
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
            let batch = data.batch(self.step, &mut self.rng)?;
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
            let snap = self.config.snapshot_freq;
            if self.checkpoint_dir.is_some() && (due(s, snap) || s == n) {
                let path = self.checkpoint_path(s);
                self.save_checkpoint(&path)?;
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
            config: serde_json::to_value(&self.config)?,
        })
    }

    /// Writes the training state to `path` atomically ([`save_checkpoint`]).
    pub fn save_checkpoint(&self, path: impl AsRef<Path>) -> Result<()> {
        save_checkpoint(path, &self.checkpoint()?)
    }

    /// Restores the exact training state from `path`: weights, EMA, Adam moments, step and
    /// RNG. The checkpoint's `ema_decay`, `optim`, `seed` and `extra` must equal this run's
    /// (`n_iters`, frequencies and the progress bar may change); any difference, and any
    /// missing, extra or wrongly shaped tensor, is [`Error::CheckpointMismatch`].
    pub fn resume(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let ckpt = load_checkpoint(path)?;
        let mine = serde_json::to_value(&self.config)?;
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

/// The checkpoint with the highest step in `dir` (`checkpoint_<step>.safetensors`), if any.
pub fn latest_checkpoint(dir: impl AsRef<Path>) -> Result<Option<PathBuf>> {
    let dir = dir.as_ref();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let step = name
            .strip_prefix("checkpoint_")
            .and_then(|s| s.strip_suffix(".safetensors"))
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(s) = step {
            let better = match &best {
                Some((b, _)) => s > *b,
                None => true,
            };
            if better {
                best = Some((s, entry.path()));
            }
        }
    }
    Ok(best.map(|(_, p)| p))
}
