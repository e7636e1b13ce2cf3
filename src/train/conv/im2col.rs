//! Convolution geometry, im2col/col2im and a bounds-checked `gemm` call.

use candle_core::{CpuStorage, Layout, Result};

/// Geometry of one convolution: `[N, C, H, W] * [K, C, KH, KW] -> [N, K, OH, OW]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geometry {
    pub(super) batch: usize,
    pub(super) channels: usize,
    pub(super) height: usize,
    pub(super) width: usize,
    pub(super) filters: usize,
    pub(super) kernel_h: usize,
    pub(super) kernel_w: usize,
    pub(super) stride: usize,
    pub(super) padding: usize,
    pub(super) out_h: usize,
    pub(super) out_w: usize,
}

impl Geometry {
    pub(super) fn new(
        input: &[usize],
        weight: &[usize],
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let (&[batch, channels, height, width], &[filters, weight_channels, kernel_h, kernel_w]) =
            (input, weight)
        else {
            candle_core::bail!("conv2d expects 4-d input and weight, got {input:?} and {weight:?}")
        };
        if weight_channels != channels || stride == 0 {
            candle_core::bail!("conv2d: input {input:?} does not fit weight {weight:?}")
        }
        let (padded_h, padded_w) = (height + 2 * padding, width + 2 * padding);
        if padded_h < kernel_h || padded_w < kernel_w {
            candle_core::bail!("conv2d: kernel {weight:?} larger than padded input {input:?}")
        }
        Ok(Self {
            batch,
            channels,
            height,
            width,
            filters,
            kernel_h,
            kernel_w,
            stride,
            padding,
            out_h: (padded_h - kernel_h) / stride + 1,
            out_w: (padded_w - kernel_w) / stride + 1,
        })
    }

    pub(super) fn input_len(&self) -> usize {
        self.channels * self.height * self.width
    }
    pub(super) fn output_len(&self) -> usize {
        self.filters * self.out_h * self.out_w
    }
    /// Rows of the column matrix: `C * KH * KW`.
    pub(super) fn patch_len(&self) -> usize {
        self.channels * self.kernel_h * self.kernel_w
    }
    /// Columns of the column matrix: `OH * OW`.
    pub(super) fn positions(&self) -> usize {
        self.out_h * self.out_w
    }
    /// A 1x1, stride-1, unpadded convolution needs no column matrix: the image is one.
    pub(super) fn is_pointwise(&self) -> bool {
        self.kernel_h == 1 && self.kernel_w == 1 && self.stride == 1 && self.padding == 0
    }

    /// The range of output columns `ow` whose input column `ow * stride + kj - padding` exists.
    fn valid_columns(&self, kj: usize) -> (usize, usize) {
        let lo = self.padding.saturating_sub(kj).div_ceil(self.stride);
        let hi = match (self.width + self.padding).checked_sub(kj + 1) {
            Some(last) => last / self.stride + 1,
            None => 0,
        };
        (lo.min(self.out_w), hi.min(self.out_w))
    }

    /// Fills `columns` (`[C*KH*KW, OH*OW]`) from one image (`[C, H, W]`).
    #[allow(
        clippy::indexing_slicing,
        reason = "all offsets derive from the checked geometry"
    )]
    pub(super) fn im2col(&self, image: &[f32], columns: &mut [f32]) {
        let positions = self.positions();
        for c in 0..self.channels {
            let plane = &image[c * self.height * self.width..][..self.height * self.width];
            for ki in 0..self.kernel_h {
                for kj in 0..self.kernel_w {
                    let row = (c * self.kernel_h + ki) * self.kernel_w + kj;
                    let out = &mut columns[row * positions..][..positions];
                    let (lo, hi) = self.valid_columns(kj);
                    for oh in 0..self.out_h {
                        let line = &mut out[oh * self.out_w..][..self.out_w];
                        let ih = (oh * self.stride + ki).wrapping_sub(self.padding);
                        if ih >= self.height || lo >= hi {
                            line.fill(0.0);
                            continue;
                        }
                        line[..lo].fill(0.0);
                        line[hi..].fill(0.0);
                        let source = &plane[ih * self.width..][..self.width];
                        let first = lo * self.stride + kj - self.padding;
                        if self.stride == 1 {
                            line[lo..hi].copy_from_slice(&source[first..first + hi - lo]);
                        } else {
                            for (slot, ow) in line[lo..hi].iter_mut().zip(0..) {
                                *slot = source[first + ow * self.stride];
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adds `columns` (`[C*KH*KW, OH*OW]`) back into one image gradient (`[C, H, W]`).
    #[allow(
        clippy::indexing_slicing,
        reason = "all offsets derive from the checked geometry"
    )]
    pub(super) fn col2im(&self, columns: &[f32], image: &mut [f32]) {
        let positions = self.positions();
        image.fill(0.0);
        for c in 0..self.channels {
            let plane = &mut image[c * self.height * self.width..][..self.height * self.width];
            for ki in 0..self.kernel_h {
                for kj in 0..self.kernel_w {
                    let row = (c * self.kernel_h + ki) * self.kernel_w + kj;
                    let input = &columns[row * positions..][..positions];
                    let (lo, hi) = self.valid_columns(kj);
                    if lo >= hi {
                        continue;
                    }
                    for oh in 0..self.out_h {
                        let ih = (oh * self.stride + ki).wrapping_sub(self.padding);
                        if ih >= self.height {
                            continue;
                        }
                        let line = &input[oh * self.out_w..][..self.out_w];
                        let target = &mut plane[ih * self.width..][..self.width];
                        let first = lo * self.stride + kj - self.padding;
                        if self.stride == 1 {
                            // Contiguous on both sides: lets the compiler vectorise the sum.
                            let span = &mut target[first..first + hi - lo];
                            span.iter_mut()
                                .zip(&line[lo..hi])
                                .for_each(|(t, v)| *t += v);
                        } else {
                            for (value, ow) in line[lo..hi].iter().zip(0..) {
                                target[first + ow * self.stride] += value;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A row-major matrix view: `data[row * row_stride + col * col_stride]`.
#[derive(Clone, Copy)]
pub(super) struct Matrix<'a> {
    data: &'a [f32],
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Matrix<'a> {
    pub(super) fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }
    pub(super) fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            row_stride: 1,
            col_stride: cols,
        }
    }
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, with `dst` row-major and contiguous.
pub(super) fn matmul(
    dst: &mut [f32],
    lhs: Matrix,
    rhs: Matrix,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
) -> Result<()> {
    if dst.len() < m * n || !lhs.fits(m, k) || !rhs.fits(k, n) {
        candle_core::bail!("conv2d: matmul operands do not fit {m}x{n}x{k}")
    }
    // SAFETY: the three checks above keep every index gemm touches inside its slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

pub(super) fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("conv2d needs contiguous tensors")
    };
    storage
        .as_slice::<f32>()?
        .get(start..end)
        .ok_or_else(|| candle_core::Error::Msg("conv2d: storage shorter than layout".into()))
}
