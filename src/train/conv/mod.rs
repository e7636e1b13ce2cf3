//! A CPU 2-d convolution whose forward and backward passes are im2col/col2im around `gemm`.
//!
//! candle 0.11's own CPU backward computes the input gradient with a direct `conv_transpose2d`
//! loop, which took ~80 % of a ResNet-20 training step. Here all three products (output, input
//! gradient, weight gradient) are single large matrix multiplications per image, and the batch
//! is split across threads with rayon.

use std::sync::atomic::{AtomicBool, Ordering};

mod im2col;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use im2col::{Geometry, Matrix, contiguous, matmul};
use rayon::prelude::*;

/// Whether training convolutions use candle's own conv2d (for before/after benchmarks).
static CANDLE_BACKWARD: AtomicBool = AtomicBool::new(false);

/// Selects candle's conv2d (and its `conv_transpose2d` backward) instead of the gemm op.
pub fn use_candle_conv(enabled: bool) {
    CANDLE_BACKWARD.store(enabled, Ordering::Relaxed);
}

/// Whether [`use_candle_conv`] is in effect.
pub fn uses_candle_conv() -> bool {
    CANDLE_BACKWARD.load(Ordering::Relaxed)
}

/// `y = conv2d(x, w)` with square stride and padding; differentiable in both arguments.
#[derive(Debug, Clone, Copy)]
pub struct Conv2dOp {
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "gemm-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.dims(), l2.dims(), self.stride, self.padding)?;
        let (input, weight) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        let mut output = vec![0f32; g.batch * g.output_len()];
        let shape = (g.batch, g.filters, g.out_h, g.out_w);
        if g.batch == 0 {
            return Ok((CpuStorage::F32(output), shape.into()));
        }
        let sizes = (g.filters, g.positions(), g.patch_len());
        output
            .par_chunks_mut(g.output_len())
            .zip(input.par_chunks(g.input_len()))
            .try_for_each_init(Vec::new, |columns, (out, image)| {
                let columns = if g.is_pointwise() {
                    image
                } else {
                    columns.resize(g.patch_len() * g.positions(), 0.0);
                    g.im2col(image, columns);
                    columns
                };
                let rhs = Matrix::rows(columns, g.positions());
                matmul(out, Matrix::rows(weight, g.patch_len()), rhs, sizes, false)
            })?;
        Ok((CpuStorage::F32(output), shape.into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let op = Conv2dGrad {
            stride: self.stride,
            padding: self.padding,
            input_dims: x.dims().to_vec(),
            weight_dims: w.dims().to_vec(),
        };
        let grad_input = grad.apply_op2_no_bwd(w, &op.clone().input())?;
        let grad_weight = x.apply_op2_no_bwd(&grad, &op.weight())?;
        Ok((Some(grad_input), Some(grad_weight)))
    }
}

/// The two gradient products of [`Conv2dOp`]; not differentiable themselves.
#[derive(Debug, Clone)]
struct Conv2dGrad {
    stride: usize,
    padding: usize,
    input_dims: Vec<usize>,
    weight_dims: Vec<usize>,
}

impl Conv2dGrad {
    fn input(self) -> GradInput {
        GradInput(self)
    }
    fn weight(self) -> GradWeight {
        GradWeight(self)
    }
    fn geometry(&self) -> Result<Geometry> {
        Geometry::new(
            &self.input_dims,
            &self.weight_dims,
            self.stride,
            self.padding,
        )
    }
}

/// `dL/dx` from `(dL/dy, w)`: per image `col2im(wᵀ · dy)`.
struct GradInput(Conv2dGrad);

impl CustomOp2 for GradInput {
    fn name(&self) -> &'static str {
        "gemm-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0.geometry()?;
        let (grad, weight) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        if l1.dims() != [g.batch, g.filters, g.out_h, g.out_w] {
            candle_core::bail!("conv2d backward: gradient shape {:?}", l1.dims())
        }
        let mut output = vec![0f32; g.batch * g.input_len()];
        let sizes = (g.patch_len(), g.positions(), g.filters);
        let lhs = Matrix::transposed(weight, g.patch_len());
        output
            .par_chunks_mut(g.input_len().max(1))
            .zip(grad.par_chunks(g.output_len().max(1)))
            .try_for_each_init(Vec::new, |columns, (image, dy)| {
                let rhs = Matrix::rows(dy, g.positions());
                if g.is_pointwise() {
                    return matmul(image, lhs, rhs, sizes, false);
                }
                columns.resize(g.patch_len() * g.positions(), 0.0);
                matmul(columns, lhs, rhs, sizes, false)?;
                g.col2im(columns, image);
                Ok(())
            })?;
        Ok((
            CpuStorage::F32(output),
            Shape::from(self.0.input_dims.clone()),
        ))
    }
}

/// `dL/dw` from `(x, dL/dy)`: `Σ_images dy · im2col(x)ᵀ`, one partial sum per thread.
struct GradWeight(Conv2dGrad);

impl CustomOp2 for GradWeight {
    fn name(&self) -> &'static str {
        "gemm-conv2d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0.geometry()?;
        let (input, grad) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        if l2.dims() != [g.batch, g.filters, g.out_h, g.out_w] {
            candle_core::bail!("conv2d backward: gradient shape {:?}", l2.dims())
        }
        let weight_len = g.filters * g.patch_len();
        let threads = rayon::current_num_threads().clamp(1, g.batch.max(1));
        let per_thread = g.batch.div_ceil(threads).max(1);
        let sizes = (g.filters, g.patch_len(), g.positions());
        let partials = (0..g.batch.div_ceil(per_thread))
            .into_par_iter()
            .map(|chunk| {
                let mut sum = vec![0f32; weight_len];
                let mut columns = Vec::new();
                let images = chunk * per_thread..((chunk + 1) * per_thread).min(g.batch);
                for (index, n) in images.enumerate() {
                    let image = input
                        .get(n * g.input_len()..(n + 1) * g.input_len())
                        .unwrap_or_default();
                    let dy = grad
                        .get(n * g.output_len()..(n + 1) * g.output_len())
                        .unwrap_or_default();
                    let columns: &[f32] = if g.is_pointwise() {
                        image
                    } else {
                        columns.resize(g.patch_len() * g.positions(), 0.0);
                        g.im2col(image, &mut columns);
                        &columns
                    };
                    let rhs = Matrix::transposed(columns, g.positions());
                    matmul(
                        &mut sum,
                        Matrix::rows(dy, g.positions()),
                        rhs,
                        sizes,
                        index > 0,
                    )?;
                }
                Ok(sum)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut total = vec![0f32; weight_len];
        for partial in partials {
            total
                .iter_mut()
                .zip(partial)
                .for_each(|(sum, value)| *sum += value);
        }
        Ok((
            CpuStorage::F32(total),
            Shape::from(self.0.weight_dims.clone()),
        ))
    }
}

/// Convolves with [`Conv2dOp`] (gradients via gemm); inputs are made contiguous first.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, Conv2dOp { stride, padding })
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let count: usize = shape.iter().product();
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let values: Vec<f32> = (0..count)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
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
    }

    /// Forward and both gradients agree with candle's own conv2d for every shape ResNets use.
    #[test]
    fn matches_candle_conv2d_forward_and_backward() {
        let cases = [
            // (input, weight, stride, padding)
            ([2, 3, 9, 9], [4, 3, 3, 3], 1, 1),
            ([2, 4, 8, 8], [5, 4, 3, 3], 2, 1),
            ([2, 4, 7, 7], [6, 4, 1, 1], 2, 0),
            ([3, 4, 5, 5], [6, 4, 1, 1], 1, 0),
            ([1, 3, 15, 15], [4, 3, 7, 7], 2, 3),
            ([2, 2, 6, 6], [3, 2, 3, 3], 1, 0),
        ];
        for (seed, (input, weight, stride, padding)) in cases.into_iter().enumerate() {
            let x = Var::from_tensor(&random(&input, seed as u64)).unwrap();
            let w = Var::from_tensor(&random(&weight, 100 + seed as u64)).unwrap();
            let ours = conv2d(&x, &w, stride, padding).unwrap();
            let theirs = x.conv2d(&w, padding, stride, 1, 1).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert!(
                max_diff(&ours, &theirs) < 1e-5,
                "forward {input:?} {weight:?}"
            );
            let probe = random(ours.dims(), 7);
            let ours_grads = (&ours * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let theirs_grads = (&theirs * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for var in [&x, &w] {
                let (a, b) = (ours_grads.get(var).unwrap(), theirs_grads.get(var).unwrap());
                assert!(
                    max_diff(a, b) < 1e-4,
                    "grad {input:?} {weight:?}: {}",
                    max_diff(a, b)
                );
            }
        }
    }
}
