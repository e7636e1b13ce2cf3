//! The named parameter store: every weight, BN affine and running statistic of a model.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::TrainError;

/// Named variables in a deterministic order, initialised from a seeded generator (candle's CPU
/// generator cannot be seeded, so initialisation does not use it).
pub struct Params {
    vars: BTreeMap<String, Var>,
    device: Device,
    rng: StdRng,
}

impl Params {
    /// An empty store whose random initialisers draw from `seed`.
    pub fn new(device: Device, seed: u64) -> Self {
        Self {
            vars: BTreeMap::new(),
            device,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The device the variables live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// All variables by name, running statistics included.
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// The variables the optimiser updates (everything except BN running statistics).
    pub fn trainable(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter().filter(|(name, _)| is_trainable(name))
    }

    /// Number of trainable scalars (what torchvision's parameter counts count).
    pub fn parameter_count(&self) -> usize {
        self.trainable().map(|(_, var)| var.elem_count()).sum()
    }

    /// Registers `values` under `name` and returns the variable's tensor (sharing storage).
    pub fn insert(
        &mut self,
        name: &str,
        values: Vec<f32>,
        shape: &[usize],
    ) -> Result<Tensor, TrainError> {
        if self.vars.contains_key(name) {
            return Err(TrainError::Model(format!(
                "parameter `{name}` defined twice"
            )));
        }
        let var = Var::from_vec(values, shape, &self.device)?;
        let tensor = var.as_tensor().clone();
        self.vars.insert(name.to_string(), var);
        Ok(tensor)
    }

    /// He et al. normal initialisation for a conv weight `[K, C, KH, KW]` (fan-out, as torchvision).
    pub fn kaiming(&mut self, name: &str, shape: &[usize; 4]) -> Result<Tensor, TrainError> {
        let fan_out = (shape[0] * shape[2] * shape[3]) as f64;
        let std = (2.0 / fan_out).sqrt();
        let count = shape.iter().product();
        let values = (0..count).map(|_| (self.normal() * std) as f32).collect();
        self.insert(name, values, shape)
    }

    /// Uniform in `[-bound, bound)` (torchvision's `Linear` default with bound 1/√fan_in).
    pub fn uniform(
        &mut self,
        name: &str,
        shape: &[usize],
        bound: f64,
    ) -> Result<Tensor, TrainError> {
        let count = shape.iter().product();
        let values = (0..count)
            .map(|_| self.rng.random_range(-bound..bound) as f32)
            .collect();
        self.insert(name, values, shape)
    }

    /// A constant-filled variable.
    pub fn constant(
        &mut self,
        name: &str,
        shape: &[usize],
        value: f32,
    ) -> Result<Tensor, TrainError> {
        self.insert(name, vec![value; shape.iter().product()], shape)
    }

    /// Overwrites every variable present in `tensors` (e.g. from a checkpoint); missing or
    /// misshaped entries are errors so a checkpoint for another architecture is refused.
    pub fn load(
        &self,
        tensors: &std::collections::HashMap<String, Tensor>,
        prefix: &str,
    ) -> Result<(), TrainError> {
        for (name, var) in &self.vars {
            let key = format!("{prefix}{name}");
            let Some(tensor) = tensors.get(&key) else {
                return Err(TrainError::Checkpoint(format!("missing tensor `{key}`")));
            };
            if tensor.dims() != var.dims() {
                return Err(TrainError::Checkpoint(format!(
                    "`{key}` has shape {:?}, the model needs {:?}",
                    tensor.dims(),
                    var.dims()
                )));
            }
            var.set(&tensor.to_dtype(DType::F32)?.to_device(&self.device)?)?;
        }
        Ok(())
    }

    /// Re-draws BN running statistics and affine parameters so that folding is really exercised
    /// by random-weight exports (fresh BN layers are the identity in eval mode).
    pub fn randomize_batch_norm(&mut self) -> Result<(), TrainError> {
        let names: Vec<String> = self
            .vars
            .keys()
            .filter(|name| is_batch_norm(name))
            .cloned()
            .collect();
        for name in names {
            let Some(var) = self.vars.get(&name) else {
                continue;
            };
            let count = var.elem_count();
            let (lo, hi) = match name.rsplit('.').next() {
                Some("running_var") => (0.5, 2.0),
                Some("weight") => (0.5, 1.5),
                _ => (-0.2, 0.2),
            };
            let values: Vec<f32> = (0..count).map(|_| self.rng.random_range(lo..hi)).collect();
            var.set(&Tensor::from_vec(values, var.dims(), &self.device)?)?;
        }
        Ok(())
    }

    fn normal(&mut self) -> f64 {
        // Box-Muller: rand 0.9 alone has no normal distribution.
        let u1: f64 = self.rng.random_range(f64::EPSILON..1.0);
        let u2: f64 = self.rng.random();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Whether `name` is a learnable parameter rather than a BN running statistic.
pub fn is_trainable(name: &str) -> bool {
    !(name.ends_with(".running_mean") || name.ends_with(".running_var"))
}

/// Whether weight decay applies: conv and linear weights only, never BN affine or biases.
pub fn is_decayed(name: &str, rank: usize) -> bool {
    name.ends_with(".weight") && rank >= 2
}

fn is_batch_norm(name: &str) -> bool {
    let layer = name.rsplit_once('.').map_or("", |(layer, _)| layer);
    let last = layer.rsplit('.').next().unwrap_or(layer);
    last.starts_with("bn") || layer.ends_with("downsample.1")
}
