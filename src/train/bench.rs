//! Times the parts of a training step (forward, backward, update) on random data.

use std::time::Instant;

use candle_core::Tensor;
use serde::Serialize;

use super::TrainError;
use super::optim::Sgd;
use super::params::Params;
use super::resnet::ResNet;

/// Where the time of a training step goes.
#[derive(Debug, Clone, Serialize)]
pub struct StepTimes {
    /// Forward pass and loss, seconds per step.
    pub forward: f64,
    /// Backward pass, seconds per step.
    pub backward: f64,
    /// Optimiser update, seconds per step.
    pub update: f64,
    /// Training throughput over the timed steps.
    pub images_per_second: f64,
}

/// Times `steps` training steps on random data (after one warm-up step).
pub fn benchmark(
    model: &ResNet,
    params: &Params,
    input_dims: [usize; 3],
    batch_size: usize,
    steps: usize,
) -> Result<StepTimes, TrainError> {
    let device = params.device();
    let [channels, height, width] = input_dims;
    let classes = model.fc.bias.dim(0)?;
    let images = Tensor::randn(0f32, 1.0, (batch_size, channels, height, width), device)?;
    let labels: Vec<u32> = (0..batch_size).map(|i| (i % classes) as u32).collect();
    let labels = Tensor::from_vec(labels, batch_size, device)?;
    let mut sgd = Sgd::new(0.9, 1e-4);
    let (mut forward, mut backward, mut update) = (0.0, 0.0, 0.0);
    for step in 0..=steps {
        let started = Instant::now();
        let loss = candle_nn::loss::cross_entropy(&model.forward_t(&images, true)?, &labels)?;
        loss.to_scalar::<f32>()?;
        let forwarded = Instant::now();
        let grads = loss.backward()?;
        let backwarded = Instant::now();
        sgd.step(params, &grads, 0.01)?;
        if step > 0 {
            forward += (forwarded - started).as_secs_f64();
            backward += (backwarded - forwarded).as_secs_f64();
            update += backwarded.elapsed().as_secs_f64();
        }
    }
    let steps_f = steps.max(1) as f64;
    Ok(StepTimes {
        forward: forward / steps_f,
        backward: backward / steps_f,
        update: update / steps_f,
        images_per_second: (steps * batch_size) as f64 / (forward + backward + update).max(1e-9),
    })
}
