//! SGD with momentum and decoupled-from-BN weight decay, and its safetensors checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};

use super::TrainError;
use super::params::{Params, is_decayed};

/// PyTorch's SGD: `v = μ·v + (g + λ·w)`, `w -= lr·v`, with λ only on conv/linear weights
/// (candle_nn's SGD has no momentum).
pub struct Sgd {
    /// Momentum μ.
    pub momentum: f64,
    /// Weight decay λ.
    pub weight_decay: f64,
    buffers: BTreeMap<String, Tensor>,
}

impl Sgd {
    /// A fresh optimiser with empty momentum buffers.
    pub fn new(momentum: f64, weight_decay: f64) -> Self {
        Self {
            momentum,
            weight_decay,
            buffers: BTreeMap::new(),
        }
    }

    /// One update of every trainable variable that received a gradient.
    pub fn step(&mut self, params: &Params, grads: &GradStore, lr: f64) -> Result<(), TrainError> {
        for (name, var) in params.trainable() {
            let Some(grad) = grads.get(var) else { continue };
            let grad = if is_decayed(name, var.rank()) && self.weight_decay != 0.0 {
                (grad + (var.as_tensor() * self.weight_decay)?)?
            } else {
                grad.clone()
            };
            let buffer = match self.buffers.get(name) {
                Some(buffer) => ((buffer * self.momentum)? + grad)?,
                None => grad,
            }
            .detach();
            var.set(&(var.as_tensor() - (&buffer * lr)?)?)?;
            self.buffers.insert(name.clone(), buffer);
        }
        Ok(())
    }
}

/// Where a run stands: written after every epoch and read back by `--resume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Epochs completed.
    pub epoch: usize,
    /// The run's seed; each epoch's generator is derived from `(seed, epoch)`, so this and
    /// `epoch` are the whole RNG state.
    pub seed: u64,
}

/// Saves model variables (`model.*`), momentum buffers (`momentum.*`) and progress (`meta.*`).
pub fn save_checkpoint(
    path: &Path,
    params: &Params,
    sgd: &Sgd,
    progress: Progress,
) -> Result<(), TrainError> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, var) in params.vars() {
        tensors.insert(format!("model.{name}"), var.as_tensor().detach());
    }
    for (name, buffer) in &sgd.buffers {
        tensors.insert(format!("momentum.{name}"), buffer.clone());
    }
    let meta = |value: u64| Tensor::new(&[value as i64], &Device::Cpu);
    tensors.insert("meta.epoch".into(), meta(progress.epoch as u64)?);
    tensors.insert("meta.seed".into(), meta(progress.seed)?);
    // Write then rename, so an interrupted save never leaves a truncated checkpoint.
    let partial = path.with_extension("partial");
    candle_core::safetensors::save(&tensors, &partial)?;
    std::fs::rename(&partial, path).map_err(|source| TrainError::io(path, source))
}

/// Loads a checkpoint into `params` and `sgd`; returns its progress.
pub fn load_checkpoint(
    path: &Path,
    params: &Params,
    sgd: &mut Sgd,
) -> Result<Progress, TrainError> {
    let tensors = candle_core::safetensors::load(path, params.device())
        .map_err(|error| TrainError::Checkpoint(format!("{}: {error}", path.display())))?;
    params.load(&tensors, "model.")?;
    sgd.buffers = tensors
        .iter()
        .filter_map(|(name, tensor)| {
            Some((name.strip_prefix("momentum.")?.to_string(), tensor.clone()))
        })
        .collect();
    let meta = |name: &str| -> Result<u64, TrainError> {
        let tensor = tensors
            .get(name)
            .ok_or_else(|| TrainError::Checkpoint(format!("missing `{name}`")))?;
        let values: Vec<i64> = tensor.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
        values
            .first()
            .map(|&value| value as u64)
            .ok_or_else(|| TrainError::Checkpoint(format!("empty `{name}`")))
    };
    Ok(Progress {
        epoch: meta("meta.epoch")? as usize,
        seed: meta("meta.seed")?,
    })
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;

    #[test]
    fn momentum_and_decay_follow_pytorch() {
        let mut params = Params::new(Device::Cpu, 0);
        params
            .insert("conv.weight", vec![1.0; 4], &[1, 1, 2, 2])
            .unwrap();
        params.insert("bn.weight", vec![1.0], &[1]).unwrap();
        let mut sgd = Sgd::new(0.9, 0.1);
        for _ in 0..2 {
            let loss = params
                .vars()
                .values()
                .map(Var::as_tensor)
                .map(|t| t.sum_all().unwrap())
                .fold(Tensor::new(0f32, &Device::Cpu).unwrap(), |acc, t| {
                    (acc + t).unwrap()
                });
            sgd.step(&params, &loss.backward().unwrap(), 0.5).unwrap();
        }
        // conv: g = 1 + 0.1·w. Step 1: v = 1.1, w = 0.45. Step 2: v = 0.99 + 1.045, w = -0.5675.
        let conv: Vec<f32> = params.vars()["conv.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!((conv[0] + 0.5675).abs() < 1e-6, "{conv:?}");
        // bn: no decay. v = 1, w = 0.5; v = 1.9, w = -0.45.
        let bn: Vec<f32> = params.vars()["bn.weight"].to_vec1().unwrap();
        assert!((bn[0] + 0.45).abs() < 1e-6, "{bn:?}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.safetensors");
        save_checkpoint(&path, &params, &sgd, Progress { epoch: 3, seed: 7 }).unwrap();
        let mut other = Params::new(Device::Cpu, 1);
        other
            .insert("conv.weight", vec![0.0; 4], &[1, 1, 2, 2])
            .unwrap();
        other.insert("bn.weight", vec![0.0], &[1]).unwrap();
        let mut restored = Sgd::new(0.9, 0.1);
        assert_eq!(
            load_checkpoint(&path, &other, &mut restored).unwrap(),
            Progress { epoch: 3, seed: 7 }
        );
        let conv: Vec<f32> = other.vars()["conv.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!((conv[0] + 0.5675).abs() < 1e-6);
        assert_eq!(restored.buffers.len(), 2);
    }
}
