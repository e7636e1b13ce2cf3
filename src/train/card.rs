//! The model card (`README.md`) written into an exported model directory.

use super::data::{Dataset, Normalization};
use super::model_dir::today;
use super::resnet::Arch;
use super::trainer::TrainSummary;

/// What the card states about a trained model.
pub struct CardFacts<'a> {
    /// Architecture.
    pub arch: Arch,
    /// Trainable parameters.
    pub parameters: usize,
    /// Dataset display name.
    pub dataset: &'a str,
    /// Epochs in the exported checkpoint.
    pub epochs: usize,
    /// Eval-mode test accuracy measured at export.
    pub test_accuracy: Option<f64>,
    /// The run's `train-summary.json`, if found next to the checkpoint.
    pub summary: Option<&'a TrainSummary>,
    /// Training command to state when there is no summary.
    pub train_command: Option<&'a str>,
    /// The test set the accuracy was measured on.
    pub test_set: &'a Dataset,
    /// Input normalisation.
    pub normalization: &'a Normalization,
    /// The export command line.
    pub export_command: &'a str,
}

/// Markdown for `README.md`: architecture, data, commands, epochs, accuracy, speed, date.
pub fn model_card(facts: &CardFacts) -> String {
    let [channels, height, width] = facts.test_set.dims;
    let accuracy = facts
        .test_accuracy
        .map_or("not measured".into(), |accuracy| {
            format!(
                "{:.2} % ({} test images, eval mode)",
                accuracy * 100.0,
                facts.test_set.len()
            )
        });
    let command = facts
        .summary
        .map(|summary| summary.command.clone())
        .or_else(|| facts.train_command.map(str::to_string))
        .unwrap_or_else(|| "(not recorded)".into());
    let epochs = match facts.summary {
        Some(summary) if summary.epochs > facts.epochs => {
            format!(
                "{} of {} planned (interim checkpoint of a run in progress)",
                facts.epochs, summary.epochs
            )
        }
        _ => facts.epochs.to_string(),
    };
    let speed = facts.summary.map_or("not recorded".into(), |summary| {
        format!(
            "{:.0} images/s (mean over the recorded epochs)",
            summary.images_per_second
        )
    });
    let inputs = if facts.dataset == "Fashion-MNIST" {
        "\n## Inputs it expects\n\nFashion-MNIST items: a single light garment or shoe, centred, on a black \
         background, 28×28 grayscale (larger images are resized to 28 on the shorter side and centre-cropped). \
         Photos of clothes on light backgrounds are out of distribution: invert and crop them first.\n"
    } else {
        ""
    };
    format!(
        "# {arch} on {dataset}\n\n\
         - Architecture: {arch} (He et al. 2015; CIFAR-style depths use option B 1×1 projection shortcuts), \
         {parameters} parameters; batch norm is folded into the convolutions in the ONNX graph.\n\
         - Input: `input` [N, {channels}, {height}, {width}] float32, `/255` then mean {mean:?} std {std:?}; \
         output: `logits` [N, {classes}].\n\
         - Data: {dataset} ({test} test images); training used random crops of the zero-padded image and \
         horizontal flips.\n\
         - Trained: {epochs} epochs, SGD momentum 0.9, weight decay 1e-4 (conv/linear weights only), batch 128.\n\
         - Test accuracy: {accuracy}.\n\
         - Training speed: {speed}, on the 2 shared CPU cores it was trained on.\n\
         - Training command: `{command}`\n\
         - Export command: `{export}`\n\
         - Date: {date}\n{inputs}",
        arch = facts.arch,
        dataset = facts.dataset,
        parameters = facts.parameters,
        mean = facts.normalization.mean,
        std = facts.normalization.std,
        classes = facts.test_set.classes.len(),
        test = facts.test_set.len(),
        export = facts.export_command,
        date = today(),
    )
}
