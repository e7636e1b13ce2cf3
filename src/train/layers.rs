//! ResNet building blocks: convolution + batch norm, the basic block and the bottleneck.

use candle_core::{Result, Tensor};

use super::TrainError;
use super::batch_norm::BatchNorm2d;
use super::conv;
use super::params::Params;

/// Batch-norm epsilon, as in torchvision.
pub const BN_EPS: f64 = 1e-5;

/// A bias-free square convolution followed by batch norm (He et al.: BN after every conv).
pub struct ConvBn {
    /// Weight `[K, C, KH, KW]`, named `<conv>.weight`.
    pub weight: Tensor,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// The batch norm (momentum 0.1, eps 1e-5); running statistics live in [`Params`].
    pub bn: BatchNorm2d,
    /// Name of the convolution, used for ONNX initialisers.
    pub name: String,
}

impl ConvBn {
    /// Creates `conv_name.weight` and `bn_name.{weight,bias,running_mean,running_var}`.
    pub fn new(
        params: &mut Params,
        (conv_name, bn_name): (&str, &str),
        (in_channels, out_channels): (usize, usize),
        kernel: usize,
        stride: usize,
    ) -> std::result::Result<Self, TrainError> {
        let weight = params.kaiming(
            &format!("{conv_name}.weight"),
            &[out_channels, in_channels, kernel, kernel],
        )?;
        let bn = BatchNorm2d::new(
            params.constant(&format!("{bn_name}.weight"), &[out_channels], 1.0)?,
            params.constant(&format!("{bn_name}.bias"), &[out_channels], 0.0)?,
            params.constant(&format!("{bn_name}.running_mean"), &[out_channels], 0.0)?,
            params.constant(&format!("{bn_name}.running_var"), &[out_channels], 1.0)?,
            BN_EPS,
        )?;
        Ok(Self {
            weight,
            stride,
            padding: kernel / 2,
            bn,
            name: conv_name.to_string(),
        })
    }

    /// Conv then BN. Training on the CPU uses the gemm convolution (fast backward); evaluation
    /// and other devices use candle's convolution.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = if train && x.device().is_cpu() && !conv::uses_candle_conv() {
            conv::conv2d(x, &self.weight, self.stride, self.padding)?
        } else {
            x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?
        };
        self.bn.forward_t(&y, train)
    }
}

/// Two 3×3 convolutions with an identity or projection shortcut (ResNet-18/34, CIFAR ResNets).
pub struct BasicBlock {
    /// First 3×3 conv (carries the stride).
    pub conv1: ConvBn,
    /// Second 3×3 conv.
    pub conv2: ConvBn,
    /// 1×1 projection when the shape changes (option B).
    pub downsample: Option<ConvBn>,
}

/// 1×1 reduce, 3×3 (carries the stride, as torchvision v1.5), 1×1 expand ×4 (ResNet-50/101/152).
pub struct Bottleneck {
    /// 1×1 reduction.
    pub conv1: ConvBn,
    /// 3×3 convolution.
    pub conv2: ConvBn,
    /// 1×1 expansion.
    pub conv3: ConvBn,
    /// 1×1 projection when the shape changes.
    pub downsample: Option<ConvBn>,
}

/// One residual block of either kind.
pub enum Block {
    /// Basic block.
    Basic(BasicBlock),
    /// Bottleneck block.
    Bottleneck(Bottleneck),
}

fn projection(
    params: &mut Params,
    prefix: &str,
    (in_channels, out_channels): (usize, usize),
    stride: usize,
) -> std::result::Result<Option<ConvBn>, TrainError> {
    if stride == 1 && in_channels == out_channels {
        return Ok(None);
    }
    let names = (
        &*format!("{prefix}.downsample.0"),
        &*format!("{prefix}.downsample.1"),
    );
    Ok(Some(ConvBn::new(
        params,
        names,
        (in_channels, out_channels),
        1,
        stride,
    )?))
}

impl Block {
    /// A basic block named `prefix` (e.g. `layer2.0`).
    pub fn basic(
        params: &mut Params,
        prefix: &str,
        channels: (usize, usize),
        stride: usize,
    ) -> std::result::Result<Self, TrainError> {
        let (in_channels, out_channels) = channels;
        let conv1 = ConvBn::new(
            params,
            (&format!("{prefix}.conv1"), &format!("{prefix}.bn1")),
            channels,
            3,
            stride,
        )?;
        let conv2_names = (&*format!("{prefix}.conv2"), &*format!("{prefix}.bn2"));
        let conv2 = ConvBn::new(params, conv2_names, (out_channels, out_channels), 3, 1)?;
        let downsample = projection(params, prefix, (in_channels, out_channels), stride)?;
        Ok(Self::Basic(BasicBlock {
            conv1,
            conv2,
            downsample,
        }))
    }

    /// A bottleneck block with `width` inner channels and `4 * width` outputs.
    pub fn bottleneck(
        params: &mut Params,
        prefix: &str,
        in_channels: usize,
        width: usize,
        stride: usize,
    ) -> std::result::Result<Self, TrainError> {
        let out_channels = width * 4;
        let names = |index: usize| {
            (
                format!("{prefix}.conv{index}"),
                format!("{prefix}.bn{index}"),
            )
        };
        let (c1, b1) = names(1);
        let conv1 = ConvBn::new(params, (&c1, &b1), (in_channels, width), 1, 1)?;
        let (c2, b2) = names(2);
        let conv2 = ConvBn::new(params, (&c2, &b2), (width, width), 3, stride)?;
        let (c3, b3) = names(3);
        let conv3 = ConvBn::new(params, (&c3, &b3), (width, out_channels), 1, 1)?;
        let downsample = projection(params, prefix, (in_channels, out_channels), stride)?;
        Ok(Self::Bottleneck(Bottleneck {
            conv1,
            conv2,
            conv3,
            downsample,
        }))
    }

    /// `relu(F(x) + shortcut(x))`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (residual, downsample) = match self {
            Self::Basic(block) => {
                let y = block.conv1.forward_t(x, train)?.relu()?;
                (block.conv2.forward_t(&y, train)?, &block.downsample)
            }
            Self::Bottleneck(block) => {
                let y = block.conv1.forward_t(x, train)?.relu()?;
                let y = block.conv2.forward_t(&y, train)?.relu()?;
                (block.conv3.forward_t(&y, train)?, &block.downsample)
            }
        };
        let shortcut = match downsample {
            Some(projection) => projection.forward_t(x, train)?,
            None => x.clone(),
        };
        (residual + shortcut)?.relu()
    }
}
