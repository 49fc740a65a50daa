//! Training arguments with HF `TrainingArguments`' names and defaults.

use serde::{Deserialize, Serialize};

/// Learning-rate schedule (`lr_scheduler_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    /// Linear warmup, then linear decay to 0 (HF's default).
    #[default]
    Linear,
    /// Linear warmup, then half a cosine to 0.
    Cosine,
    /// Constant (no warmup).
    Constant,
    /// Linear warmup, then constant.
    ConstantWithWarmup,
}

/// Optimizer (`optim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Optim {
    /// AdamW with decoupled weight decay (torch.optim.AdamW).
    #[default]
    #[serde(alias = "adamw_torch", alias = "adamw_torch_fused")]
    Adamw,
    /// SGD with optional momentum.
    Sgd,
}

/// Numeric precision of the forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Full fp32.
    #[default]
    Fp32,
    /// fp16 compute in the linear layers with dynamic loss scaling; fp32 parameters (CUDA only,
    /// as in HF Trainer).
    Fp16,
    /// bf16 compute in the linear layers; fp32 parameters (CUDA and CPU).
    Bf16,
}

impl Precision {
    /// The dtype linear layers compute in (`None`: fp32).
    pub fn compute_kind(self) -> Option<tch::Kind> {
        match self {
            Precision::Fp32 => None,
            Precision::Fp16 => Some(tch::Kind::Half),
            Precision::Bf16 => Some(tch::Kind::BFloat16),
        }
    }
}

/// When to evaluate or save (`eval_strategy`, `save_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Never.
    No,
    /// Every `*_steps` optimizer steps.
    Steps,
    /// At the end of every epoch.
    #[default]
    Epoch,
}

fn d_lr() -> f64 {
    5e-5
}
fn d_epochs() -> f64 {
    3.0
}
fn d_bs() -> usize {
    8
}
fn d_one() -> usize {
    1
}
fn d_beta1() -> f64 {
    0.9
}
fn d_beta2() -> f64 {
    0.999
}
fn d_eps() -> f64 {
    1e-8
}
fn d_clip() -> f64 {
    1.0
}
fn d_seed() -> u64 {
    42
}
fn d_log() -> usize {
    50
}
fn d_steps() -> usize {
    500
}
fn d_true() -> bool {
    true
}
fn d_metric() -> String {
    "loss".into()
}

/// The trainer's settings. Field names and defaults follow HF `TrainingArguments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingArgs {
    /// Epochs (fractions allowed).
    #[serde(default = "d_epochs")]
    #[serde(alias = "epochs")]
    pub num_train_epochs: f64,
    /// Total optimizer steps; overrides the epochs when set.
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Peak learning rate.
    #[serde(default = "d_lr")]
    pub learning_rate: f64,
    /// Rows per training batch.
    #[serde(default = "d_bs")]
    #[serde(alias = "batch_size")]
    pub per_device_train_batch_size: usize,
    /// Rows per evaluation batch.
    #[serde(default = "d_bs")]
    #[serde(alias = "eval_batch_size")]
    pub per_device_eval_batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "d_one")]
    #[serde(alias = "grad_accumulation")]
    pub gradient_accumulation_steps: usize,
    /// Decoupled weight decay (not applied to biases and LayerNorm weights).
    #[serde(default)]
    pub weight_decay: f64,
    /// AdamW β1.
    #[serde(default = "d_beta1")]
    pub adam_beta1: f64,
    /// AdamW β2.
    #[serde(default = "d_beta2")]
    pub adam_beta2: f64,
    /// AdamW ε.
    #[serde(default = "d_eps")]
    pub adam_epsilon: f64,
    /// SGD momentum.
    #[serde(default)]
    pub momentum: f64,
    /// Optimizer.
    #[serde(default)]
    pub optim: Optim,
    /// Schedule.
    #[serde(default)]
    #[serde(alias = "scheduler")]
    pub lr_scheduler_type: Scheduler,
    /// Warmup as a fraction of the total steps.
    #[serde(default)]
    pub warmup_ratio: f64,
    /// Warmup steps (wins over the ratio when > 0).
    #[serde(default)]
    pub warmup_steps: usize,
    /// Gradient clipping by total norm (0 disables).
    #[serde(default = "d_clip")]
    pub max_grad_norm: f64,
    /// Precision.
    #[serde(default)]
    pub precision: Precision,
    /// Recompute each layer's activations in the backward pass (less memory, more time).
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Seed of data order, dropout and initialisation.
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// When to evaluate.
    #[serde(default)]
    pub eval_strategy: Strategy,
    /// Evaluation interval with `eval_strategy = "steps"`.
    #[serde(default = "d_steps")]
    pub eval_steps: usize,
    /// When to save a checkpoint.
    #[serde(default)]
    pub save_strategy: Strategy,
    /// Save interval with `save_strategy = "steps"`.
    #[serde(default = "d_steps")]
    pub save_steps: usize,
    /// Checkpoints kept (the best is always kept); `None` keeps all.
    #[serde(default)]
    pub save_total_limit: Option<usize>,
    /// Log the training loss every N optimizer steps.
    #[serde(default = "d_log")]
    pub logging_steps: usize,
    /// Load the best checkpoint when training ends.
    #[serde(default = "d_true")]
    pub load_best_model_at_end: bool,
    /// Metric that picks the best checkpoint: `loss` (eval loss) or a metric name (`accuracy`, `f1`, ...).
    #[serde(default = "d_metric")]
    pub metric_for_best_model: String,
    /// Whether larger is better; default: false for loss, true otherwise.
    #[serde(default)]
    pub greater_is_better: Option<bool>,
    /// Stop after this many evaluations without improvement.
    #[serde(default)]
    pub early_stopping_patience: Option<usize>,
    /// Minimum improvement that resets the patience.
    #[serde(default)]
    pub early_stopping_threshold: f64,
    /// Group rows of similar length into batches (less padding).
    #[serde(default)]
    pub group_by_length: bool,
    /// Batches prepared ahead on a background thread.
    #[serde(default = "d_prefetch")]
    pub prefetch_batches: usize,
    /// Seconds a collective may wait for the other ranks of a distributed run before failing
    /// (HF's `ddp_timeout`, torch's default of 30 minutes).
    #[serde(default = "d_ddp_timeout")]
    pub ddp_timeout: u64,
    /// The c10d backend of a distributed run: `"gloo"` or `"nccl"` (HF's `ddp_backend`; unset:
    /// NCCL on CUDA, Gloo on the CPU).
    #[serde(default)]
    pub ddp_backend: Option<String>,
    /// The gradient buffer is all-reduced in buckets of this many MiB (DDP's `bucket_cap_mb`).
    #[serde(default = "d_bucket")]
    pub ddp_bucket_cap_mb: f64,
}

fn d_prefetch() -> usize {
    4
}
fn d_ddp_timeout() -> u64 {
    1800
}
fn d_bucket() -> f64 {
    25.0
}

impl Default for TrainingArgs {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl TrainingArgs {
    /// Whether a larger value of the selection metric is better.
    pub fn greater_is_better(&self) -> bool {
        self.greater_is_better.unwrap_or(!matches!(
            self.metric_for_best_model.trim_start_matches("eval_"),
            "loss"
        ))
    }

    /// Warmup steps for `total` optimizer steps.
    pub fn warmup_for(&self, total: usize) -> usize {
        if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (self.warmup_ratio * total as f64).ceil() as usize
        }
    }

    /// Checks values that would make training meaningless.
    pub fn validate(&self) -> Result<(), String> {
        if self.per_device_train_batch_size == 0 || self.per_device_eval_batch_size == 0 {
            return Err("batch sizes must be at least 1".into());
        }
        if self.gradient_accumulation_steps == 0 {
            return Err("gradient_accumulation_steps must be at least 1".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate >= 0.0) {
            return Err(format!(
                "learning_rate {} is not a non-negative number",
                self.learning_rate
            ));
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return Err(format!(
                "warmup_ratio {} is outside 0..=1",
                self.warmup_ratio
            ));
        }
        if self.max_steps.is_none() && self.num_train_epochs <= 0.0 {
            return Err("num_train_epochs must be positive (or set max_steps)".into());
        }
        if self.logging_steps == 0 || self.eval_steps == 0 || self.save_steps == 0 {
            return Err("logging_steps, eval_steps and save_steps must be at least 1".into());
        }
        if let Some(b) = &self.ddp_backend {
            peftkit_distributed::Backend::parse(b)
                .map_err(|_| format!("ddp_backend `{b}`: expected \"gloo\" or \"nccl\""))?;
        }
        if self.ddp_timeout == 0 {
            return Err("ddp_timeout must be at least 1 second".into());
        }
        if !(self.ddp_bucket_cap_mb.is_finite() && self.ddp_bucket_cap_mb > 0.0) {
            return Err(format!(
                "ddp_bucket_cap_mb {} is not a positive number",
                self.ddp_bucket_cap_mb
            ));
        }
        if self.load_best_model_at_end && self.eval_strategy == Strategy::No {
            return Err("load_best_model_at_end needs an eval_strategy other than \"no\"".into());
        }
        Ok(())
    }
}

/// The learning rate multiplier of optimizer step `step` (0-based) out of `total`, as the
/// `LambdaLR` schedules of transformers compute it.
pub fn lr_factor(kind: Scheduler, step: usize, warmup: usize, total: usize) -> f64 {
    let (s, w, t) = (step as f64, warmup as f64, total.max(1) as f64);
    if !matches!(kind, Scheduler::Constant) && step < warmup {
        return s / w.max(1.0);
    }
    match kind {
        Scheduler::Constant | Scheduler::ConstantWithWarmup => 1.0,
        Scheduler::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
        Scheduler::Cosine => {
            let progress = (s - w) / (t - w).max(1.0);
            (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_transformers() {
        // get_linear_schedule_with_warmup(opt, 2, 10): lambda(s)
        let lin: Vec<f64> = (0..11)
            .map(|s| lr_factor(Scheduler::Linear, s, 2, 10))
            .collect();
        assert_eq!(lin[..3], [0.0, 0.5, 1.0]);
        assert!((lin[6] - 0.5).abs() < 1e-12);
        assert_eq!(lin[10], 0.0);
        // no warmup: the first step uses the full rate.
        assert_eq!(lr_factor(Scheduler::Linear, 0, 0, 4), 1.0);
        assert_eq!(lr_factor(Scheduler::Linear, 1, 0, 4), 0.75);
        let cos = lr_factor(Scheduler::Cosine, 6, 2, 10);
        assert!((cos - 0.5).abs() < 1e-12, "{cos}");
        assert_eq!(lr_factor(Scheduler::ConstantWithWarmup, 1, 4, 10), 0.25);
        assert_eq!(lr_factor(Scheduler::Constant, 0, 4, 10), 1.0);
    }

    #[test]
    fn defaults_are_hf_defaults() {
        let a = TrainingArgs::default();
        assert_eq!(
            (
                a.learning_rate,
                a.num_train_epochs,
                a.per_device_train_batch_size
            ),
            (5e-5, 3.0, 8)
        );
        assert_eq!(
            (a.adam_beta1, a.adam_beta2, a.adam_epsilon, a.max_grad_norm),
            (0.9, 0.999, 1e-8, 1.0)
        );
        assert!(!a.greater_is_better());
        assert_eq!(a.warmup_for(100), 0);
        let b = TrainingArgs {
            warmup_ratio: 0.06,
            metric_for_best_model: "accuracy".into(),
            ..a
        };
        assert_eq!(b.warmup_for(100), 6);
        assert!(b.greater_is_better());
        assert!(
            serde_json::from_str::<TrainingArgs>(r#"{"learning_rat": 1}"#)
                .unwrap_err()
                .to_string()
                .contains("unknown field `learning_rat`")
        );
    }
}
