//! The training loop: schedule, epochs with progress bars, validation, checkpoints, resume.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::data::{Augment, Dataset, Normalization, batch};
use super::optim::{Progress, Sgd, load_checkpoint, save_checkpoint};
use super::params::Params;
use super::resnet::ResNet;

/// How the learning rate evolves over the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// ×0.1 at 50 % and 75 % of the epochs (He et al.).
    Step,
    /// Half-cosine from the peak to zero.
    Cosine,
}

/// Hyper-parameters and bookkeeping for one run.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Total epochs.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay on conv/linear weights.
    pub weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Linear warm-up from lr/10, in epochs (may be fractional).
    pub warmup_epochs: f64,
    /// Seed for shuffling and augmentation.
    pub seed: u64,
    /// Where `last.safetensors` and `epoch-NNN.safetensors` go.
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from `checkpoint_dir/last.safetensors` when it exists.
    pub resume: bool,
    /// Cap on steps per epoch (smoke tests).
    pub max_steps: Option<usize>,
    /// Draw indicatif bars (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

/// What one epoch achieved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Training accuracy (augmented, training-mode BN).
    pub train_accuracy: f64,
    /// Validation accuracy in eval mode, if there is a validation set.
    pub val_accuracy: Option<f64>,
    /// Training throughput.
    pub images_per_second: f64,
    /// Wall time of the epoch, validation included.
    pub seconds: f64,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
}

impl TrainConfig {
    /// The learning rate at fractional epoch `t`.
    pub fn lr_at(&self, t: f64) -> f64 {
        let epochs = self.epochs.max(1) as f64;
        if t < self.warmup_epochs {
            return self.lr * (0.1 + 0.9 * t / self.warmup_epochs);
        }
        match self.schedule {
            Schedule::Step => {
                self.lr
                    * if t >= 0.75 * epochs {
                        0.01
                    } else if t >= 0.5 * epochs {
                        0.1
                    } else {
                        1.0
                    }
            }
            Schedule::Cosine => {
                let span = (epochs - self.warmup_epochs).max(1e-9);
                let progress = ((t - self.warmup_epochs) / span).clamp(0.0, 1.0);
                0.5 * self.lr * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

fn correct(logits: &Tensor, labels: &Tensor) -> Result<usize, TrainError> {
    let predicted = logits.argmax(D::Minus1)?;
    Ok(predicted
        .eq(labels)?
        .to_dtype(DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()? as usize)
}

/// Eval-mode top-1 accuracy over `dataset`.
pub fn evaluate(
    model: &ResNet,
    dataset: &Dataset,
    normalization: &Normalization,
    device: &Device,
) -> Result<f64, TrainError> {
    let mut rng = StdRng::seed_from_u64(0);
    let mut right = 0;
    let indices: Vec<usize> = (0..dataset.len()).collect();
    for chunk in indices.chunks(250) {
        let (images, labels) = batch(
            dataset,
            chunk,
            normalization,
            Augment::NONE,
            &mut rng,
            device,
        )?;
        right += correct(&model.forward_t(&images, false)?, &labels)?;
    }
    Ok(right as f64 / dataset.len().max(1) as f64)
}

fn bar(config: &TrainConfig, steps: usize, epoch: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
    if !config.progress {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style =
        ProgressStyle::with_template("epoch {prefix} [{bar:25}] {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{epoch}/{}", config.epochs));
    bar
}

/// Trains `model` (whose variables are `params`) and calls `on_epoch` after each epoch, after
/// the checkpoint is written. Resumes from the last checkpoint when asked.
#[allow(
    clippy::too_many_arguments,
    reason = "each argument is a distinct piece of the run"
)]
pub fn train(
    model: &ResNet,
    params: &Params,
    train_set: &Dataset,
    val_set: Option<&Dataset>,
    normalization: &Normalization,
    augment: Augment,
    config: &TrainConfig,
    mut on_epoch: impl FnMut(&EpochReport),
) -> Result<Vec<EpochReport>, TrainError> {
    let device = params.device().clone();
    let mut sgd = Sgd::new(config.momentum, config.weight_decay);
    let mut start_epoch = 0;
    let last = config
        .checkpoint_dir
        .as_ref()
        .map(|dir| dir.join("last.safetensors"));
    if config.resume
        && let Some(last) = &last
        && last.exists()
    {
        let progress = load_checkpoint(last, params, &mut sgd)?;
        if progress.seed != config.seed {
            return Err(TrainError::Checkpoint(format!(
                "{} was trained with --seed {}, not {}",
                last.display(),
                progress.seed,
                config.seed
            )));
        }
        start_epoch = progress.epoch;
        tracing::info!(checkpoint = %last.display(), epoch = start_epoch, "resumed");
    }
    if let Some(dir) = &config.checkpoint_dir {
        std::fs::create_dir_all(dir).map_err(|source| TrainError::io(dir, source))?;
    }
    let batches = train_set.len() / config.batch_size.max(1);
    let steps = config
        .max_steps
        .map_or(batches, |max| max.min(batches))
        .max(1);
    let mut reports = Vec::new();
    for epoch in start_epoch..config.epochs {
        let started = Instant::now();
        // Each epoch's generator depends only on (seed, epoch): resuming replays it exactly.
        let mut rng = StdRng::seed_from_u64(
            config.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let mut order: Vec<usize> = (0..train_set.len()).collect();
        order.shuffle(&mut rng);
        let bar = bar(config, steps, epoch + 1);
        let (mut loss_sum, mut right, mut seen, mut lr) = (0.0, 0, 0, config.lr);
        for (step, indices) in order
            .chunks_exact(config.batch_size.max(1))
            .take(steps)
            .enumerate()
        {
            lr = config.lr_at(epoch as f64 + step as f64 / steps as f64);
            let (images, labels) = batch(
                train_set,
                indices,
                normalization,
                augment,
                &mut rng,
                &device,
            )?;
            let logits = model.forward_t(&images, true)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
            sgd.step(params, &loss.backward()?, lr)?;
            let loss_value = f64::from(loss.to_scalar::<f32>()?);
            if !loss_value.is_finite() {
                return Err(TrainError::Model(format!(
                    "loss became {loss_value} at epoch {} step {step}",
                    epoch + 1
                )));
            }
            loss_sum += loss_value * indices.len() as f64;
            right += correct(&logits, &labels)?;
            seen += indices.len();
            let rate = seen as f64 / started.elapsed().as_secs_f64();
            let (mean_loss, accuracy) = (loss_sum / seen as f64, right as f64 / seen as f64);
            bar.set_message(format!(
                "loss {mean_loss:.4} acc {:.2}% {rate:.0} img/s lr {lr:.4}",
                accuracy * 100.0
            ));
            bar.inc(1);
            if (step + 1) % 50 == 0 {
                tracing::info!(
                    epoch = epoch + 1,
                    step = step + 1,
                    steps,
                    loss = mean_loss,
                    accuracy,
                    images_per_second = rate
                );
            }
        }
        bar.finish();
        let train_seconds = started.elapsed().as_secs_f64();
        let val_accuracy = val_set
            .map(|val| evaluate(model, val, normalization, &device))
            .transpose()?;
        if let (Some(dir), Some(last)) = (&config.checkpoint_dir, &last) {
            let progress = Progress {
                epoch: epoch + 1,
                seed: config.seed,
            };
            let numbered = dir.join(format!("epoch-{:03}.safetensors", epoch + 1));
            save_checkpoint(&numbered, params, &sgd, progress)?;
            std::fs::copy(&numbered, last).map_err(|source| TrainError::io(last, source))?;
        }
        let report = EpochReport {
            epoch: epoch + 1,
            loss: loss_sum / seen.max(1) as f64,
            train_accuracy: right as f64 / seen.max(1) as f64,
            val_accuracy,
            images_per_second: seen as f64 / train_seconds,
            seconds: started.elapsed().as_secs_f64(),
            lr,
        };
        on_epoch(&report);
        reports.push(report);
    }
    Ok(reports)
}

/// Written next to the checkpoints when a run finishes; read by `export` for the model card.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    /// The exact command line.
    pub command: String,
    /// Architecture name (`resnet20`).
    pub arch: String,
    /// Dataset name.
    pub dataset: String,
    /// Epochs trained.
    pub epochs: usize,
    /// Final eval-mode test accuracy (absent while the run is in progress).
    pub test_accuracy: Option<f64>,
    /// Mean training throughput over the reported epochs.
    pub images_per_second: f64,
    /// UTC date the run finished.
    pub date: String,
    /// Per-epoch reports, across resumed invocations.
    pub reports: Vec<EpochReport>,
}

impl TrainSummary {
    /// Adds `report`, replacing any earlier report of the same epoch, and updates the mean speed.
    pub fn record(&mut self, report: &EpochReport) {
        self.reports.retain(|old| old.epoch < report.epoch);
        self.reports.push(report.clone());
        let rates: Vec<f64> = self
            .reports
            .iter()
            .map(|report| report.images_per_second)
            .collect();
        self.images_per_second = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
        self.date = super::model_dir::today();
    }

    /// Reads `path`, if it exists and parses.
    pub fn read(path: &std::path::Path) -> Option<Self> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }

    /// Writes `path` as pretty JSON.
    pub fn write(&self, path: &std::path::Path) -> Result<(), TrainError> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).map_err(|source| TrainError::io(path, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(schedule: Schedule, warmup_epochs: f64) -> TrainConfig {
        TrainConfig {
            epochs: 20,
            batch_size: 128,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            schedule,
            warmup_epochs,
            seed: 0,
            checkpoint_dir: None,
            resume: false,
            max_steps: None,
            progress: false,
        }
    }

    #[test]
    fn schedules_warm_up_then_decay() {
        let step = config(Schedule::Step, 0.0);
        assert_eq!((step.lr_at(0.0), step.lr_at(9.99)), (0.1, 0.1));
        assert!(
            (step.lr_at(10.0) - 0.01).abs() < 1e-12 && (step.lr_at(15.0) - 0.001).abs() < 1e-12
        );
        let cosine = config(Schedule::Cosine, 1.0);
        assert!((cosine.lr_at(0.0) - 0.01).abs() < 1e-12);
        assert!((cosine.lr_at(1.0) - 0.1).abs() < 1e-12);
        assert!(cosine.lr_at(10.5) < 0.051 && cosine.lr_at(10.5) > 0.049);
        assert!(cosine.lr_at(20.0).abs() < 1e-12);
    }
}
