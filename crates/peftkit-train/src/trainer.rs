//! The training loop, evaluation, checkpoints and resume.

use crate::args::{lr_factor, Precision, Strategy, TrainingArgs};
use crate::data::{for_each_batch, Dataset, DeviceBatch};
use crate::ddp::Ddp;
use crate::optim::{FlatOptimizer, OptimConfig};
use crate::state::TrainerState;
use crate::{Result, TrainError};
use peftkit_distributed::ProcessGroup;
use peftkit_eval::{Metrics, MetricsLog};
pub use peftkit_models::TrainModel;
use peftkit_models::{read_safetensors, save_safetensors, write_dir_atomically, LossScaling};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// `trainable params: 1,536 || all params: 124,441,344 || trainable%: 0.0012`, as peft prints it.
pub fn trainable_summary(trainable: i64, all: i64) -> String {
    fn sep(n: i64) -> String {
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }
    format!(
        "trainable params: {} || all params: {} || trainable%: {:.4}",
        sep(trainable),
        sep(all),
        100.0 * trainable as f64 / all.max(1) as f64
    )
}

/// The result of [`Trainer::train`], like HF's `TrainOutput` plus the selection outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOutput {
    /// Optimizer steps taken.
    pub global_step: usize,
    /// Mean training loss over all steps.
    pub train_loss: f64,
    /// Seconds spent training (this process).
    pub train_runtime: f64,
    /// Training rows per second (all ranks of a distributed run together).
    pub train_samples_per_second: f64,
    /// Optimizer steps per second (this process).
    pub train_steps_per_second: f64,
    /// Epochs completed (fractional).
    pub epoch: f64,
    /// The checkpoint with the best metric, if checkpoints were saved.
    pub best_checkpoint: Option<PathBuf>,
    /// Its metric value.
    pub best_metric: Option<f64>,
    /// Whether early stopping ended training.
    pub stopped_early: bool,
    /// Every logged record (training loss every `logging_steps`, every evaluation).
    pub log_history: Vec<serde_json::Value>,
    /// Memory on the model's device during training (HF Trainer's `train_mem_*` metrics);
    /// `None` where the device has no statistics.
    #[serde(default)]
    pub memory: Option<TrainMemory>,
    /// The gradient all-reduce's cost in a distributed run (`None`: one process).
    #[serde(default)]
    pub distributed: Option<crate::ddp::DistributedStats>,
    /// Real and padded tokens of the micro-batches trained on (this process, this run).
    #[serde(default)]
    pub tokens: crate::TokenCounts,
    /// fp16: optimizer steps the loss scaler skipped for non-finite gradients in this run (their
    /// updates were not applied; the scale was halved). 0 in fp32 and bf16.
    #[serde(default)]
    pub skipped_steps: u64,
}

/// Memory on the training device: when training started, its peak during training (evaluations
/// included), and when it ended. On CUDA the bytes held by tensors (`torch.cuda.memory_allocated`);
/// on the CPU the process's resident memory. [`Trainer::train`] resets the device's peak when it
/// starts (on the CPU: the process's high-water mark), so trainers running at the same time in
/// one process see each other's memory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainMemory {
    /// What is counted.
    pub source: peftkit_models::MemorySource,
    /// Bytes in use when training started (the model, optimizer state not yet allocated).
    pub start_bytes: i64,
    /// Peak bytes during training.
    pub peak_bytes: i64,
    /// Bytes in use when training ended.
    pub end_bytes: i64,
}

impl TrainMemory {
    /// What training needed at its peak above what was in use before (`train_mem_*_peaked_delta`
    /// in HF Trainer, measured from the start here).
    pub fn peaked_delta(&self) -> i64 {
        self.peak_bytes - self.start_bytes
    }
}

/// The result of an evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalOutput {
    /// Mean loss.
    pub loss: f64,
    /// Accuracy, F1, confusion matrix...
    pub metrics: Metrics,
    /// Seconds.
    pub runtime: f64,
    /// Rows per second.
    pub samples_per_second: f64,
    /// Predicted class per row.
    pub predictions: Vec<i64>,
}

/// Trains a [`TrainModel`] with HF Trainer's behaviour: AdamW or SGD, warmup and decay schedules,
/// gradient accumulation, clipping, fp16 loss scaling on CUDA, evaluation and checkpoints each
/// epoch or every N steps, the best checkpoint loaded at the end, early stopping, and resume from
/// a checkpoint giving the same result as an uninterrupted run.
pub struct Trainer<'a, M: TrainModel + ?Sized> {
    model: &'a M,
    args: TrainingArgs,
    checkpoint_dir: PathBuf,
    log: Option<MetricsLog>,
    progress: bool,
    /// Stop (as if interrupted) after this many optimizer steps: for tests of resume.
    stop_after: Option<usize>,
    /// The process group of a distributed run.
    group: Option<&'a ProcessGroup>,
}

/// The seed of a micro-batch: `micro` is its index within the optimizer step over all ranks, so a
/// distributed run draws the dropout masks of a single process taking the same global batches.
fn seed_for(seed: u64, step: usize, micro: usize) -> i64 {
    (seed
        .wrapping_mul(1_000_003)
        .wrapping_add((step as u64) << 8)
        .wrapping_add(micro as u64)
        & 0x7fff_ffff_ffff) as i64
}

impl<'a, M: TrainModel + ?Sized> Trainer<'a, M> {
    /// A trainer writing checkpoints under `checkpoint_dir` (`checkpoint-<step>/`).
    pub fn new(model: &'a M, args: TrainingArgs, checkpoint_dir: &Path) -> Result<Self> {
        args.validate().map_err(TrainError::Config)?;
        if args.load_best_model_at_end && args.save_strategy != args.eval_strategy {
            return Err(TrainError::Config(
                "load_best_model_at_end needs save_strategy equal to eval_strategy (as in HF Trainer)".into(),
            ));
        }
        let metric = args.metric_for_best_model.trim_start_matches("eval_");
        if metric != "loss"
            && Metrics::compute(&[0], &[0], &["a".into()])
                .get(metric)
                .is_none()
        {
            return Err(TrainError::Config(format!(
                "metric_for_best_model `{metric}` is unknown (use loss, accuracy, f1, macro_f1, micro_f1, weighted_f1, precision, recall)"
            )));
        }
        if args.precision == Precision::Fp16 && model.device() == Device::Cpu {
            return Err(TrainError::Config(
                "precision \"fp16\" needs a CUDA device (as in HF Trainer); on CPU use \"bf16\" or \"fp32\"".into(),
            ));
        }
        if args.gradient_checkpointing && !model.enable_gradient_checkpointing() {
            return Err(TrainError::Config(
                "gradient_checkpointing: this model does not support it".into(),
            ));
        }
        Ok(Self {
            model,
            args,
            checkpoint_dir: checkpoint_dir.to_path_buf(),
            log: None,
            progress: true,
            stop_after: None,
            group: None,
        })
    }

    /// Trains data-parallel over `group` (HF Trainer under DDP): every rank takes its shard of
    /// each epoch's batches, gradients are averaged over the ranks before clipping, evaluation is
    /// sharded and gathered, the trainable parameters start from rank 0's, and only rank 0 logs
    /// and writes checkpoints. `per_device_train_batch_size` × world size × accumulation is the
    /// global batch; the schedule counts optimizer steps.
    pub fn with_process_group(mut self, group: &'a ProcessGroup) -> Self {
        self.group = Some(group);
        self
    }

    /// Rank 0 (or the only process): the one that logs and writes.
    fn is_main(&self) -> bool {
        self.group.is_none_or(ProcessGroup::is_main)
    }

    /// Appends every log record to this `metrics.jsonl`.
    pub fn with_metrics_log(mut self, path: &Path) -> Result<Self> {
        self.log = Some(MetricsLog::open(path)?);
        Ok(self)
    }

    /// Shows (or hides) the progress bar.
    pub fn with_progress(mut self, show: bool) -> Self {
        self.progress = show;
        self
    }

    /// Stops after `steps` optimizer steps, right after saving, as if the process were killed
    /// there (for testing resume).
    pub fn stop_after(mut self, steps: usize) -> Self {
        self.stop_after = Some(steps);
        self
    }

    /// The arguments.
    pub fn args(&self) -> &TrainingArgs {
        &self.args
    }

    fn record(&mut self, state: &mut TrainerState, record: serde_json::Value) -> Result<()> {
        let main = self.is_main();
        if let Some(log) = self.log.as_mut().filter(|_| main) {
            log.append(&record)?;
        }
        state.log_history.push(record);
        Ok(())
    }

    /// Evaluates the model on `data`: mean loss, metrics, throughput, predictions.
    /// In a distributed run every rank must call it: each evaluates its shard.
    pub fn evaluate(&self, data: &Dataset) -> Result<EvalOutput> {
        crate::eval::evaluate_sharded(
            self.model,
            data,
            self.args.per_device_eval_batch_size,
            self.args.prefetch_batches,
            None,
            self.group,
        )
    }

    /// Trains on `train`, evaluating on `eval` per the strategy; resumes from a checkpoint
    /// directory when given.
    pub fn train(
        &mut self,
        train: &Dataset,
        eval: Option<&Dataset>,
        resume: Option<&Path>,
    ) -> Result<TrainOutput> {
        if train.is_empty() {
            return Err(TrainError::Config("the training set is empty".into()));
        }
        if self.args.eval_strategy != Strategy::No && eval.is_none() {
            return Err(TrainError::Config(
                "eval_strategy is set but there is no evaluation set".into(),
            ));
        }
        let args = self.args.clone();
        let ddp = Ddp::new(self.group, args.ddp_bucket_cap_mb);
        let world = ddp.world();
        let main = ddp.is_main();
        let device = self.model.device();
        let memory_start = peftkit_models::reset_peak_memory(device)
            .and_then(|()| peftkit_models::memory_usage(device))
            .ok();
        let mut opt =
            FlatOptimizer::new(self.model.trainable_parameters(), OptimConfig::from(&args))?;
        if main {
            eprintln!(
                "{}",
                trainable_summary(opt.numel(), self.model.parameter_count())
            );
        }
        let bs = args.per_device_train_batch_size;
        let accum = args.gradient_accumulation_steps;
        // Each rank's share of an epoch's batches (padded to the same count on every rank).
        let micro_per_epoch = train.len().div_ceil(bs).div_ceil(world);
        let updates_per_epoch = micro_per_epoch.div_ceil(accum);
        let total = args
            .max_steps
            .unwrap_or_else(|| (args.num_train_epochs * updates_per_epoch as f64).ceil() as usize)
            .max(1);
        let warmup = args.warmup_for(total);
        let mut state = TrainerState {
            total_steps: total,
            world_size: world,
            ..Default::default()
        };
        if let Some(dir) = resume {
            state = self.load_checkpoint(dir, &mut opt)?;
            if state.world_size != world {
                return Err(TrainError::Checkpoint(format!(
                    "{}: the checkpoint was written by a run of {} rank(s), this one has {world}: resume with the same number of ranks (the global batch and the data order depend on it)",
                    dir.display(),
                    state.world_size
                )));
            }
            if state.total_steps != total {
                return Err(TrainError::Checkpoint(format!(
                    "{}: the checkpoint is from a run of {} steps, this one has {total} (different data or arguments)",
                    dir.display(),
                    state.total_steps
                )));
            }
            if main {
                eprintln!(
                    "resuming from {} at step {}",
                    dir.display(),
                    state.global_step
                );
            }
        }
        // DDP starts every replica from rank 0's parameters.
        ddp.broadcast_from_main(opt.buffer())?;
        let bar = indicatif::ProgressBar::new(total as u64);
        if !self.progress || !main {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .expect("valid template"),
        );
        bar.set_position(state.global_step as u64);
        let compute = args.precision.compute_kind();
        let unit = Tensor::ones([], (Kind::Float, device));
        let scale = (args.precision == Precision::Fp16)
            .then(|| Tensor::full([], 65536.0, (Kind::Float, device)));
        let growth = Tensor::zeros([], (Kind::Int, device));
        // The skipped steps, counted on the device (read once, at the end).
        let mut skipped_total = Tensor::zeros([], (Kind::Float, device));
        let mut loss_since_log = Tensor::zeros([], (Kind::Float, device));
        let mut loss_total = Tensor::zeros([], (Kind::Double, device));
        let mut steps_since_log = 0usize;
        let mut last_log = Instant::now();
        let mut samples_since_log = 0usize;
        let start = Instant::now();
        let start_step = state.global_step;
        let mut samples = 0usize;
        let mut tokens = crate::TokenCounts::default();
        let mut evaluated_at = None;
        let mut guard = crate::nonfinite::NonFiniteGuard::new(device);
        let mut interrupted = false;

        while state.global_step < total && !state.stopped_early && !interrupted {
            let epoch = state.epoch;
            let order = Dataset::shard_batches(
                &train.train_batches(bs, args.seed, args.group_by_length, epoch),
                bs,
                ddp.rank(),
                world,
            );
            let skip = state.batches_done_in_epoch.min(order.len());
            for_each_batch(
                train,
                &order[skip..],
                args.prefetch_batches,
                |i, batch| -> Result<bool> {
                    let micro = skip + i;
                    let group_start = micro / accum * accum;
                    let group_len = accum.min(micro_per_epoch - group_start);
                    tch::manual_seed(seed_for(
                        args.seed,
                        state.global_step,
                        (micro - group_start) * world + ddp.rank(),
                    ));
                    let b = DeviceBatch::new(&batch, device);
                    tokens.add(&batch);
                    // A device scalar: dividing it is a kernel, not a host-to-device copy.
                    let factor = scale.as_ref().unwrap_or(&unit) / group_len as f64;
                    let loss = peftkit_models::with_compute_dtype(compute, || {
                        self.model.loss_backward(
                            &b.input_ids,
                            &b.attention_mask,
                            &b.labels,
                            &factor,
                        )
                    })?;
                    tch::no_grad(|| loss_since_log += &loss / group_len as f64);
                    guard.observe(&loss, state.global_step + 1);
                    samples += b.size;
                    samples_since_log += b.size;
                    if micro - group_start + 1 < group_len {
                        return Ok(true);
                    }
                    let lr = args.learning_rate
                        * lr_factor(args.lr_scheduler_type, state.global_step, warmup, total);
                    let skipped =
                        opt.step_with(lr, scale.as_ref(), |g| ddp.average_gradients(g))?;
                    // The model's per-step work sees this step's scale and whether it was
                    // skipped, as device tensors (no read here), before the scale moves on.
                    let scaling = scale.as_ref().map(|s| LossScaling {
                        scale: s.shallow_clone(),
                        skipped: skipped.shallow_clone(),
                    });
                    self.model
                        .after_optimizer_step(state.global_step, scaling.as_ref());
                    if let Some(s) = &scale {
                        let mut s = s.shallow_clone();
                        tch::no_grad(|| {
                            let _ = s.internal_amp_update_scale_(&growth, &skipped, 2.0, 0.5, 2000);
                            let _ = skipped_total.g_add_(&skipped);
                        });
                    }
                    opt.zero_grad();
                    state.global_step += 1;
                    state.batches_done_in_epoch = micro + 1;
                    steps_since_log += 1;
                    bar.inc(1);
                    if state.global_step.is_multiple_of(args.logging_steps)
                        || state.global_step == total
                    {
                        // The only host-device synchronisation of the loop (and, distributed,
                        // the loss averaged over the ranks, as HF logs it).
                        loss_since_log = ddp.mean(&loss_since_log)?;
                        let loss_value = loss_since_log.double_value(&[]) / steps_since_log as f64;
                        guard.check("training loss", loss_value, state.global_step, lr)?;
                        tch::no_grad(|| loss_total += &loss_since_log);
                        loss_since_log = Tensor::zeros([], (Kind::Float, device));
                        let grad_norm = opt.last_grad_norm().map(|n| n.double_value(&[]));
                        let rate = (samples_since_log * world) as f64
                            / last_log.elapsed().as_secs_f64().max(1e-9);
                        let record = serde_json::json!({
                            "step": state.global_step,
                            "epoch": epoch as f64 + state.batches_done_in_epoch as f64 / micro_per_epoch as f64,
                            "loss": loss_value,
                            "learning_rate": lr,
                            "grad_norm": grad_norm,
                            "train_samples_per_second": rate,
                        });
                        bar.set_message(format!(
                            "loss {loss_value:.4} lr {lr:.2e} {rate:.1} samples/s"
                        ));
                        if !self.progress && main {
                            tracing::info!(%record, "train");
                        }
                        self.record(&mut state, record)?;
                        steps_since_log = 0;
                        samples_since_log = 0;
                        last_log = Instant::now();
                    }
                    let at_eval = args.eval_strategy == Strategy::Steps
                        && state.global_step.is_multiple_of(args.eval_steps);
                    let at_save = args.save_strategy == Strategy::Steps
                        && state.global_step.is_multiple_of(args.save_steps);
                    if at_eval || at_save {
                        let fraction = epoch as f64
                            + state.batches_done_in_epoch as f64 / micro_per_epoch as f64;
                        let pending = at_save
                            .then(|| ddp.mean(&(&loss_total + &loss_since_log)))
                            .transpose()?
                            .map(|t| t.double_value(&[]));
                        // No checkpoint of parameters a non-finite loss has reached.
                        if let Some(p) = pending {
                            guard.check("summed training loss", p, state.global_step, lr)?;
                        }
                        self.evaluate_and_save(
                            &mut state, &mut opt, eval, at_eval, pending, fraction, &bar,
                        )
                        .map_err(|e| guard.on_eval_error(e, state.global_step, lr))?;
                        if at_save {
                            guard.last_checkpoint = Some(
                                self.checkpoint_dir
                                    .join(format!("checkpoint-{}", state.global_step)),
                            );
                        }
                        evaluated_at = Some(state.global_step);
                    }
                    if self.stop_after.is_some_and(|s| state.global_step >= s) {
                        interrupted = true;
                        return Ok(false);
                    }
                    Ok(state.global_step < total && !state.stopped_early)
                },
            )?;
            if interrupted {
                break;
            }
            let finished_epoch = state.batches_done_in_epoch >= order.len();
            if finished_epoch {
                state.epoch += 1;
                state.batches_done_in_epoch = 0;
            }
            let end = finished_epoch || state.global_step >= total;
            let at_eval = args.eval_strategy == Strategy::Epoch && end;
            let at_save = args.save_strategy == Strategy::Epoch && end;
            if (at_eval || at_save)
                && evaluated_at != Some(state.global_step)
                && !state.stopped_early
            {
                let fraction = state.epoch as f64
                    + state.batches_done_in_epoch as f64 / micro_per_epoch as f64;
                let pending = at_save
                    .then(|| ddp.mean(&(&loss_total + &loss_since_log)))
                    .transpose()?
                    .map(|t| t.double_value(&[]));
                let lr = args.learning_rate
                    * lr_factor(
                        args.lr_scheduler_type,
                        state.global_step.saturating_sub(1),
                        warmup,
                        total,
                    );
                if let Some(p) = pending {
                    guard.check("summed training loss", p, state.global_step, lr)?;
                }
                self.evaluate_and_save(
                    &mut state, &mut opt, eval, at_eval, pending, fraction, &bar,
                )
                .map_err(|e| guard.on_eval_error(e, state.global_step, lr))?;
                if at_save {
                    guard.last_checkpoint = Some(
                        self.checkpoint_dir
                            .join(format!("checkpoint-{}", state.global_step)),
                    );
                }
                evaluated_at = Some(state.global_step);
            }
        }
        bar.finish_and_clear();
        ddp.check_in_sync(opt.buffer())?;
        let rest = ddp.mean(&loss_since_log)?;
        tch::no_grad(|| loss_total += &rest);
        state.train_loss_total += loss_total.double_value(&[]);
        let runtime = start.elapsed().as_secs_f64();
        if !interrupted && args.load_best_model_at_end {
            if let Some(best) = &state.best_checkpoint {
                let values: HashMap<String, Tensor> =
                    read_safetensors(&Path::new(best).join("trainable.safetensors"))?
                        .into_iter()
                        .map(|(k, v)| (k, v.to_device(device)))
                        .collect();
                opt.load_params(&values)?;
                if main {
                    eprintln!(
                        "loaded the best checkpoint {best} ({} = {:.4})",
                        args.metric_for_best_model,
                        state.best_metric.unwrap_or(f64::NAN)
                    );
                }
            }
        }
        let steps = state.global_step - start_step;
        let out = TrainOutput {
            global_step: state.global_step,
            train_loss: state.train_loss_total / state.global_step.max(1) as f64,
            train_runtime: runtime,
            train_samples_per_second: (samples * world) as f64 / runtime.max(1e-9),
            train_steps_per_second: steps as f64 / runtime.max(1e-9),
            epoch: state.epoch as f64 + state.batches_done_in_epoch as f64 / micro_per_epoch as f64,
            best_checkpoint: state.best_checkpoint.as_ref().map(PathBuf::from),
            best_metric: state.best_metric,
            stopped_early: state.stopped_early,
            log_history: state.log_history.clone(),
            distributed: ddp.stats(),
            tokens,
            skipped_steps: skipped_total.double_value(&[]) as u64,
            memory: memory_start.and_then(|start| {
                let end = peftkit_models::memory_usage(device).ok()?;
                Some(TrainMemory {
                    source: end.source,
                    start_bytes: start.current_bytes,
                    // The peak is the device's (on the CPU the process's): another reset during
                    // training (a second trainer in this process) could leave it below what was
                    // seen at the start.
                    peak_bytes: end
                        .peak_bytes
                        .max(start.current_bytes)
                        .max(end.current_bytes),
                    end_bytes: end.current_bytes,
                })
            }),
        };
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn evaluate_and_save(
        &mut self,
        state: &mut TrainerState,
        opt: &mut FlatOptimizer,
        eval: Option<&Dataset>,
        do_eval: bool,
        save_with_pending_loss: Option<f64>,
        epoch: f64,
        bar: &indicatif::ProgressBar,
    ) -> Result<()> {
        let mut metric = None;
        if do_eval {
            let data = eval.expect("checked at the start of train");
            let out = bar.suspend(|| self.evaluate(data))?;
            let record = serde_json::json!({
                "step": state.global_step,
                "epoch": epoch,
                "eval_loss": out.loss,
                "eval_accuracy": out.metrics.accuracy,
                "eval_f1": out.metrics.macro_f1,
                "eval_runtime": out.runtime,
                "eval_samples_per_second": out.samples_per_second,
            });
            bar.suspend(|| {
                if !self.is_main() {
                    return;
                }
                eprintln!(
                    "step {}: eval_loss {:.4} eval_accuracy {:.4} eval_f1 {:.4} ({:.1} samples/s)",
                    state.global_step,
                    out.loss,
                    out.metrics.accuracy,
                    out.metrics.macro_f1,
                    out.samples_per_second
                )
            });
            self.record(state, record)?;
            let name = self.args.metric_for_best_model.trim_start_matches("eval_");
            let value = if name == "loss" {
                out.loss
            } else {
                out.metrics.get(name).expect("validated in new")
            };
            metric = Some(value);
            let greater = self.args.greater_is_better();
            let improved = match state.best_metric {
                None => true,
                Some(best) if greater => value > best + self.args.early_stopping_threshold,
                Some(best) => value < best - self.args.early_stopping_threshold,
            };
            if improved {
                state.patience = 0;
            } else {
                state.patience += 1;
                if self
                    .args
                    .early_stopping_patience
                    .is_some_and(|p| state.patience >= p)
                {
                    state.stopped_early = true;
                    let main = self.is_main();
                    bar.suspend(|| {
                        if main {
                            eprintln!(
                                "early stopping: no improvement in {} evaluations",
                                state.patience
                            )
                        }
                    });
                }
            }
        }
        if let Some(pending_loss) = save_with_pending_loss {
            let dir = self
                .checkpoint_dir
                .join(format!("checkpoint-{}", state.global_step));
            let better = match (metric, state.best_metric) {
                (Some(v), Some(b)) => {
                    if self.args.greater_is_better() {
                        v > b
                    } else {
                        v < b
                    }
                }
                (Some(_), None) => true,
                (None, _) => false,
            };
            if better {
                state.best_metric = metric;
                state.best_checkpoint = Some(dir.to_string_lossy().to_string());
            }
            // The saved state carries the loss summed so far, so a resumed run reports the
            // same train_loss as an uninterrupted one.
            let saved = TrainerState {
                train_loss_total: state.train_loss_total + pending_loss,
                ..state.clone()
            };
            if self.is_main() {
                self.save_checkpoint(&dir, &saved, opt)?;
                self.rotate_checkpoints(state)?;
            }
            // Nobody reads a checkpoint before it is complete.
            if let Some(g) = self.group {
                g.barrier()?;
            }
        } else if let Some(v) = metric {
            if state.best_metric.is_none_or(|b| {
                if self.args.greater_is_better() {
                    v > b
                } else {
                    v < b
                }
            }) {
                state.best_metric = Some(v);
            }
        }
        Ok(())
    }

    fn save_checkpoint(&self, dir: &Path, state: &TrainerState, opt: &FlatOptimizer) -> Result<()> {
        let params = opt.named_params();
        let optim = opt.state();
        let state_json = serde_json::to_string_pretty(state).expect("state serialises");
        let args_json = serde_json::to_string_pretty(&self.args).expect("args serialise");
        write_dir_atomically(dir, |tmp| -> Result<()> {
            save_safetensors(&tmp.join("trainable.safetensors"), &params)?;
            save_safetensors(&tmp.join("optimizer.safetensors"), &optim)?;
            std::fs::write(tmp.join("trainer_state.json"), &state_json)
                .map_err(|e| TrainError::io(tmp, e))?;
            std::fs::write(tmp.join("training_args.json"), &args_json)
                .map_err(|e| TrainError::io(tmp, e))?;
            Ok(())
        })
    }

    fn rotate_checkpoints(&self, state: &TrainerState) -> Result<()> {
        let Some(limit) = self.args.save_total_limit else {
            return Ok(());
        };
        let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(&self.checkpoint_dir)
            .map_err(|e| TrainError::io(&self.checkpoint_dir, e))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.strip_prefix("checkpoint-")?
                    .parse::<usize>()
                    .ok()
                    .map(|s| (s, e.path()))
            })
            .collect();
        found.sort();
        let best = state.best_checkpoint.as_deref().map(PathBuf::from);
        let mut excess = found.len().saturating_sub(limit.max(1));
        for (_, path) in found {
            if excess == 0 {
                break;
            }
            if Some(&path) == best.as_ref() {
                continue;
            }
            std::fs::remove_dir_all(&path).map_err(|e| TrainError::io(&path, e))?;
            excess -= 1;
        }
        Ok(())
    }

    fn load_checkpoint(&self, dir: &Path, opt: &mut FlatOptimizer) -> Result<TrainerState> {
        let state = TrainerState::from_file(&dir.join("trainer_state.json"))?;
        let device = opt.device();
        let load = |name: &str| -> Result<HashMap<String, Tensor>> {
            Ok(read_safetensors(&dir.join(name))?
                .into_iter()
                .map(|(k, v)| (k, v.to_device(device)))
                .collect())
        };
        opt.load_params(&load("trainable.safetensors")?)?;
        let mut optim = load("optimizer.safetensors")?;
        if let Some(step) = optim.get_mut("step") {
            *step = step.to_device(Device::Cpu);
        }
        opt.load_state(&optim)?;
        Ok(state)
    }
}
