//! `trainer_state.json`: where a checkpoint's run stood (HF Trainer's file of the same name, in
//! peftkit's fields), read back on resume and checked before it steers the loop.

use crate::{Result, TrainError};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The loop's position and history, saved with each checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainerState {
    pub(crate) global_step: usize,
    pub(crate) epoch: usize,
    pub(crate) batches_done_in_epoch: usize,
    pub(crate) total_steps: usize,
    pub(crate) best_metric: Option<f64>,
    pub(crate) best_checkpoint: Option<String>,
    pub(crate) patience: usize,
    pub(crate) train_loss_total: f64,
    pub(crate) stopped_early: bool,
    pub(crate) log_history: Vec<serde_json::Value>,
    /// The ranks of the run that wrote it (a resume must have as many).
    #[serde(default = "one")]
    pub(crate) world_size: usize,
}

fn one() -> usize {
    1
}

impl TrainerState {
    /// Reads and checks a `trainer_state.json`: the error names the file and the field.
    ///
    /// ```no_run
    /// let s = peftkit_train::TrainerState::from_file("run.partial/checkpoints/checkpoint-8/trainer_state.json".as_ref())?;
    /// println!("step {}", s.global_step());
    /// # Ok::<(), peftkit_train::TrainError>(())
    /// ```
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let bad = |m: String| TrainError::Checkpoint(format!("{}: {m}", path.display()));
        let state: TrainerState = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        state.check().map_err(bad)?;
        Ok(state)
    }

    /// The optimizer steps done.
    pub fn global_step(&self) -> usize {
        self.global_step
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.world_size == 0 {
            return Err("`world_size` is 0: it must be at least 1".into());
        }
        if self.total_steps == 0 {
            return Err("`total_steps` is 0: it must be at least 1".into());
        }
        if self.global_step > self.total_steps {
            return Err(format!(
                "`global_step` {} is past `total_steps` {}",
                self.global_step, self.total_steps
            ));
        }
        if !self.train_loss_total.is_finite() {
            return Err("`train_loss_total` is not a finite number".into());
        }
        if self.best_metric.is_some_and(|m| !m.is_finite()) {
            return Err("`best_metric` is not a finite number".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_states_name_the_file_and_field() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("trainer_state.json");
        let good = serde_json::to_string(&TrainerState {
            total_steps: 10,
            global_step: 4,
            world_size: 1,
            ..Default::default()
        })
        .unwrap();
        std::fs::write(&p, &good).unwrap();
        assert_eq!(TrainerState::from_file(&p).unwrap().global_step(), 4);
        for (from, to, want) in [
            (
                "\"global_step\":4",
                "\"global_step\":40",
                "`global_step` 40 is past `total_steps` 10",
            ),
            ("\"world_size\":1", "\"world_size\":0", "`world_size` is 0"),
            (
                "\"global_step\":4",
                "\"global_step\":-4",
                "invalid value: integer `-4`",
            ),
        ] {
            std::fs::write(&p, good.replace(from, to)).unwrap();
            let e = TrainerState::from_file(&p).unwrap_err().to_string();
            assert!(
                e.contains("trainer_state.json: ") && e.contains(want),
                "{e}"
            );
        }
    }
}
