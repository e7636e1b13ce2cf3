//! 2-d batch norm whose training pass is one fused CPU op with a closed-form backward.
//!
//! candle_nn's `BatchNorm` composes ~12 tensor ops (transpose, contiguous copy, mean, sub, sqr,
//! mean, div, sqrt, mul, add, ...) each allocating a full activation and each differentiated
//! separately; on ResNet-20 that made BN as costly as the convolutions.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, Var};
use rayon::prelude::*;

/// Batch statistics of the last training forward: per channel `(mean, 1/√(var+ε), var)`.
type Stats = Arc<Mutex<Vec<(f32, f32, f32)>>>;

/// `y = γ·(x − μ_B)/√(σ²_B + ε) + β` over `[N, C, H, W]`, with running statistics.
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("batch norm needs contiguous tensors")
    };
    storage
        .as_slice::<f32>()?
        .get(start..end)
        .ok_or_else(|| candle_core::Error::Msg("batch norm: storage shorter than layout".into()))
}

/// `(N, C, H·W)` of a 4-d layout.
fn dims(layout: &Layout) -> Result<(usize, usize, usize)> {
    match layout.dims() {
        &[n, c, h, w] => Ok((n, c, h * w)),
        other => candle_core::bail!("batch norm expects [N, C, H, W], got {other:?}"),
    }
}

struct TrainOp {
    eps: f64,
    stats: Stats,
}

impl CustomOp3 for TrainOp {
    fn name(&self) -> &'static str {
        "fused-batch-norm"
    }

    #[allow(
        clippy::indexing_slicing,
        reason = "offsets derive from the checked [N, C, HW] layout"
    )]
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, hw) = dims(l1)?;
        let (x, gamma, beta) = (
            contiguous(s1, l1)?,
            contiguous(s2, l2)?,
            contiguous(s3, l3)?,
        );
        if gamma.len() != c || beta.len() != c || x.len() != n * c * hw {
            candle_core::bail!(
                "batch norm: {c} channels but γ {} β {}",
                gamma.len(),
                beta.len()
            )
        }
        let count = (n * hw).max(1) as f64;
        let stats: Vec<(f32, f32, f32)> = (0..c)
            .into_par_iter()
            .map(|channel| {
                let planes = (0..n).map(|image| &x[(image * c + channel) * hw..][..hw]);
                let sum: f64 = planes.clone().flatten().map(|&v| f64::from(v)).sum();
                let mean = sum / count;
                let squares: f64 = planes
                    .flatten()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum();
                let var = squares / count;
                (
                    mean as f32,
                    (1.0 / (var + self.eps).sqrt()) as f32,
                    var as f32,
                )
            })
            .collect();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(c * hw)
            .zip(x.par_chunks(c * hw))
            .for_each(|(out, image)| {
                for (channel, &(mean, inv_std, _)) in stats.iter().enumerate() {
                    let (scale, shift) = (gamma[channel] * inv_std, beta[channel]);
                    let range = channel * hw..(channel + 1) * hw;
                    for (o, &v) in out[range.clone()].iter_mut().zip(&image[range]) {
                        *o = (v - mean) * scale + shift;
                    }
                }
            });
        *self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch norm stats poisoned".into()))? = stats;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch norm stats poisoned".into()))?
            .clone();
        let op = GradOp { stats };
        let packed = x.apply_op3_no_bwd(gamma, &grad.contiguous()?, &op)?;
        let (elements, channels) = (x.elem_count(), gamma.elem_count());
        let grad_x = packed.narrow(0, 0, elements)?.reshape(x.shape())?;
        let grad_gamma = packed.narrow(0, elements, channels)?;
        let grad_beta = packed.narrow(0, elements + channels, channels)?;
        Ok((Some(grad_x), Some(grad_gamma), Some(grad_beta)))
    }
}

/// Closed-form gradients, packed as `[dx (N·C·H·W), dγ (C), dβ (C)]`:
/// `dx = γ/σ · (dy − mean(dy) − x̂·mean(dy·x̂))`, `dγ = Σ dy·x̂`, `dβ = Σ dy`.
struct GradOp {
    stats: Vec<(f32, f32, f32)>,
}

impl CustomOp3 for GradOp {
    fn name(&self) -> &'static str {
        "fused-batch-norm-grad"
    }

    #[allow(
        clippy::indexing_slicing,
        reason = "offsets derive from the checked [N, C, HW] layout"
    )]
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, hw) = dims(l1)?;
        let (x, gamma, dy) = (
            contiguous(s1, l1)?,
            contiguous(s2, l2)?,
            contiguous(s3, l3)?,
        );
        if gamma.len() != c || dy.len() != x.len() || self.stats.len() != c {
            candle_core::bail!("batch norm backward: shapes do not match {:?}", l1.dims())
        }
        let count = (n * hw).max(1) as f32;
        let sums: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|channel| {
                let (mean, inv_std, _) = self.stats[channel];
                let (mut sum_dy, mut sum_dy_xhat) = (0f64, 0f64);
                for image in 0..n {
                    let offset = (image * c + channel) * hw;
                    for (&g, &v) in dy[offset..][..hw].iter().zip(&x[offset..][..hw]) {
                        sum_dy += f64::from(g);
                        sum_dy_xhat += f64::from(g * (v - mean) * inv_std);
                    }
                }
                (sum_dy as f32, sum_dy_xhat as f32)
            })
            .collect();
        let mut packed = vec![0f32; x.len() + 2 * c];
        let (dx, tail) = packed.split_at_mut(x.len());
        dx.par_chunks_mut(c * hw)
            .zip(x.par_chunks(c * hw).zip(dy.par_chunks(c * hw)))
            .for_each(|(out, (image, grad))| {
                for channel in 0..c {
                    let (mean, inv_std, _) = self.stats[channel];
                    let (sum_dy, sum_dy_xhat) = sums[channel];
                    let scale = gamma[channel] * inv_std;
                    let (mean_dy, mean_dy_xhat) = (sum_dy / count, sum_dy_xhat / count);
                    let range = channel * hw..(channel + 1) * hw;
                    for ((o, &g), &v) in out[range.clone()]
                        .iter_mut()
                        .zip(&grad[range.clone()])
                        .zip(&image[range])
                    {
                        let x_hat = (v - mean) * inv_std;
                        *o = scale * (g - mean_dy - x_hat * mean_dy_xhat);
                    }
                }
            });
        for (channel, &(sum_dy, sum_dy_xhat)) in sums.iter().enumerate() {
            tail[channel] = sum_dy_xhat;
            tail[c + channel] = sum_dy;
        }
        Ok((CpuStorage::F32(packed), Shape::from(x.len() + 2 * c)))
    }
}

impl BatchNorm2d {
    /// A batch norm over existing variables (momentum 0.1 as PyTorch).
    pub fn new(
        weight: Tensor,
        bias: Tensor,
        running_mean: Tensor,
        running_var: Tensor,
        eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            weight,
            bias,
            running_mean: Var::from_tensor(&running_mean)?,
            running_var: Var::from_tensor(&running_var)?,
            eps,
            momentum: 0.1,
        })
    }

    /// γ and β.
    pub fn weight_and_bias(&self) -> (&Tensor, &Tensor) {
        (&self.weight, &self.bias)
    }
    /// Running mean.
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }
    /// Running (unbiased) variance.
    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }
    /// ε.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// Training mode normalises with batch statistics and moves the running ones 10 % towards
    /// them (unbiased variance, as PyTorch); eval mode uses the running statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || !x.device().is_cpu() {
            return self.forward_with(
                x,
                self.running_mean.as_tensor(),
                self.running_var.as_tensor(),
                train,
            );
        }
        let stats: Stats = Arc::default();
        let y = x.contiguous()?.apply_op3(
            &self.weight,
            &self.bias,
            TrainOp {
                eps: self.eps,
                stats: stats.clone(),
            },
        )?;
        let stats = stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch norm stats poisoned".into()))?
            .clone();
        let count = (x.elem_count() / stats.len().max(1)) as f32;
        let correction = count / (count - 1.0).max(1.0);
        let m = self.momentum as f32;
        let old_mean: Vec<f32> = self.running_mean.to_vec1()?;
        let old_var: Vec<f32> = self.running_var.to_vec1()?;
        let mean: Vec<f32> = old_mean
            .iter()
            .zip(&stats)
            .map(|(r, s)| (1.0 - m) * r + m * s.0)
            .collect();
        let var: Vec<f32> = old_var
            .iter()
            .zip(&stats)
            .map(|(r, s)| (1.0 - m) * r + m * s.2 * correction)
            .collect();
        self.running_mean
            .set(&Tensor::from_vec(mean, stats.len(), x.device())?)?;
        self.running_var
            .set(&Tensor::from_vec(var, stats.len(), x.device())?)?;
        Ok(y)
    }

    /// Tensor-op batch norm: eval mode, or training off the CPU (running statistics updated here).
    fn forward_with(&self, x: &Tensor, mean: &Tensor, var: &Tensor, train: bool) -> Result<Tensor> {
        let shape = (1, self.weight.elem_count(), 1, 1);
        let (mean, var) = if train {
            let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
            let var = x
                .broadcast_sub(&mean)?
                .sqr()?
                .mean_keepdim(0)?
                .mean_keepdim(2)?
                .mean_keepdim(3)?;
            if !x.device().is_cpu() {
                // Off the CPU the fused op is unavailable: update the running statistics here.
                let count = (x.elem_count() / self.weight.elem_count().max(1)) as f64;
                let unbiased = (var.flatten_all()?.detach() * (count / (count - 1.0).max(1.0)))?;
                let m = self.momentum;
                let new_mean = ((self.running_mean.as_tensor() * (1.0 - m))?
                    + (mean.flatten_all()?.detach() * m)?)?;
                let new_var = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
                self.running_mean.set(&new_mean)?;
                self.running_var.set(&new_var)?;
            }
            (mean, var)
        } else {
            (mean.detach().reshape(shape)?, var.detach().reshape(shape)?)
        };
        let scale = (var + self.eps)?
            .sqrt()?
            .recip()?
            .broadcast_mul(&self.weight.reshape(shape)?)?;
        x.broadcast_sub(&mean)?
            .broadcast_mul(&scale)?
            .broadcast_add(&self.bias.reshape(shape)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, IndexOp};

    use super::*;

    /// The fused op's output and all three gradients agree with the tensor-op formula.
    #[test]
    fn fused_forward_and_backward_match_tensor_ops() {
        let device = Device::Cpu;
        let x =
            Var::from_tensor(&Tensor::randn(0.5f32, 2.0, (3, 4, 5, 5), &device).unwrap()).unwrap();
        let gamma = Var::from_tensor(&Tensor::randn(1f32, 0.3, 4, &device).unwrap()).unwrap();
        let beta = Var::from_tensor(&Tensor::randn(0f32, 0.3, 4, &device).unwrap()).unwrap();
        let ones = Tensor::ones(4, candle_core::DType::F32, &device).unwrap();
        let bn = BatchNorm2d::new(
            gamma.as_tensor().clone(),
            beta.as_tensor().clone(),
            ones.zeros_like().unwrap(),
            ones,
            1e-5,
        )
        .unwrap();
        let probe = Tensor::randn(0f32, 1.0, (3, 4, 5, 5), &device).unwrap();
        let fused = bn.forward_t(&x, true).unwrap();
        let reference = bn
            .forward_with(&x, bn.running_mean(), bn.running_var(), true)
            .unwrap();
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert!(diff(&fused, &reference) < 1e-5);
        let fused_grads = (&fused * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let reference_grads = (&reference * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for var in [&x, &gamma, &beta] {
            let (a, b) = (
                fused_grads.get(var).unwrap(),
                reference_grads.get(var).unwrap(),
            );
            assert!(diff(a, b) < 1e-4, "{}", diff(a, b));
        }
        // Running statistics moved 10 % towards the batch's (unbiased variance).
        let batch_mean: f32 = x
            .i((.., 0))
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        let running: Vec<f32> = bn.running_mean().to_vec1().unwrap();
        assert!((running[0] - 0.1 * batch_mean).abs() < 1e-5);
    }
}
