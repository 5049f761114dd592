//! Hooks of the training loop: what runs after steps and checkpoints ([`crate::Trainer::add_hook`]).

use std::path::Path;

use candle_nn::VarMap;

use crate::error::Result;

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

pub(crate) type HookFn<'a> = Box<dyn FnMut(&HookInfo<'_>) -> Result<()> + 'a>;

pub(crate) struct Hook<'a> {
    pub(crate) schedule: HookSchedule,
    pub(crate) use_ema: bool,
    pub(crate) f: HookFn<'a>,
}
