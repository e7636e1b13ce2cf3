//! The ResNet family of He et al. 2015: CIFAR-style 20/32/44/56/110 and ImageNet-style 18-152.

use std::fmt;
use std::str::FromStr;

use candle_core::{Result, Tensor};

use super::TrainError;
use super::layers::{Block, ConvBn};
use super::params::Params;

/// A ResNet depth and layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// CIFAR-style, 3 stages of 16/32/64 channels, `(depth - 2) / 6` basic blocks per stage.
    Cifar(usize),
    /// ImageNet-style (torchvision layout): 7×7 stem, max pool, 4 stages.
    ImageNet(usize),
}

impl Arch {
    /// Every supported architecture.
    pub const ALL: [Arch; 10] = [
        Arch::Cifar(20),
        Arch::Cifar(32),
        Arch::Cifar(44),
        Arch::Cifar(56),
        Arch::Cifar(110),
        Arch::ImageNet(18),
        Arch::ImageNet(34),
        Arch::ImageNet(50),
        Arch::ImageNet(101),
        Arch::ImageNet(152),
    ];

    /// The network depth (number of weighted layers).
    pub fn depth(self) -> usize {
        match self {
            Arch::Cifar(depth) | Arch::ImageNet(depth) => depth,
        }
    }

    fn imagenet_blocks(depth: usize) -> Option<[usize; 4]> {
        match depth {
            18 => Some([2, 2, 2, 2]),
            34 | 50 => Some([3, 4, 6, 3]),
            101 => Some([3, 4, 23, 3]),
            152 => Some([3, 8, 36, 3]),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "resnet{}", self.depth())
    }
}

impl FromStr for Arch {
    type Err = TrainError;

    fn from_str(text: &str) -> std::result::Result<Self, TrainError> {
        let depth = text
            .trim_start_matches("resnet")
            .trim_start_matches("ResNet-");
        Arch::ALL
            .into_iter()
            .find(|arch| depth.parse() == Ok(arch.depth()))
            .ok_or_else(|| {
                let names: Vec<String> = Arch::ALL.iter().map(Arch::to_string).collect();
                TrainError::Model(format!(
                    "unknown architecture `{text}`; one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// The classifier head: `logits = x · Wᵀ + b`.
pub struct Linear {
    /// `[classes, features]`, named `fc.weight`.
    pub weight: Tensor,
    /// `[classes]`, named `fc.bias`.
    pub bias: Tensor,
}

/// A ResNet built from explicit layers; parameters live in the [`Params`] it was built with.
pub struct ResNet {
    /// Which architecture.
    pub arch: Arch,
    /// First convolution + BN (3×3 stride 1 for CIFAR, 7×7 stride 2 for ImageNet).
    pub stem: ConvBn,
    /// Whether a 3×3 stride-2 max pool (padding 1) follows the stem.
    pub max_pool: bool,
    /// Residual stages (`layer1`, `layer2`, ...), each a list of blocks.
    pub stages: Vec<Vec<Block>>,
    /// The final fully connected layer after global average pooling.
    pub fc: Linear,
}

impl ResNet {
    /// Builds `arch` for `in_channels`-channel images and `classes` outputs, registering its
    /// variables in `params` under torchvision's names (`layer1.0.conv1.weight`, ...).
    pub fn new(
        arch: Arch,
        in_channels: usize,
        classes: usize,
        params: &mut Params,
    ) -> std::result::Result<Self, TrainError> {
        let (stem, max_pool, widths, blocks, bottleneck) = match arch {
            Arch::Cifar(depth) => {
                let per_stage = (depth - 2) / 6;
                let stem = ConvBn::new(params, ("conv1", "bn1"), (in_channels, 16), 3, 1)?;
                (stem, false, vec![16, 32, 64], vec![per_stage; 3], false)
            }
            Arch::ImageNet(depth) => {
                let Some(blocks) = Arch::imagenet_blocks(depth) else {
                    return Err(TrainError::Model(format!(
                        "no ImageNet ResNet of depth {depth}"
                    )));
                };
                let stem = ConvBn::new(params, ("conv1", "bn1"), (in_channels, 64), 7, 2)?;
                (
                    stem,
                    true,
                    vec![64, 128, 256, 512],
                    blocks.to_vec(),
                    depth >= 50,
                )
            }
        };
        let mut channels = widths.first().copied().unwrap_or(16);
        let mut stages = Vec::new();
        for (stage, (&width, &count)) in widths.iter().zip(&blocks).enumerate() {
            let mut layer = Vec::new();
            for index in 0..count {
                let stride = if index == 0 && stage > 0 { 2 } else { 1 };
                let prefix = format!("layer{}.{index}", stage + 1);
                let block = if bottleneck {
                    Block::bottleneck(params, &prefix, channels, width, stride)?
                } else {
                    Block::basic(params, &prefix, (channels, width), stride)?
                };
                channels = if bottleneck { width * 4 } else { width };
                layer.push(block);
            }
            stages.push(layer);
        }
        let bound = 1.0 / (channels as f64).sqrt();
        let fc = Linear {
            weight: params.uniform("fc.weight", &[classes, channels], bound)?,
            bias: params.uniform("fc.bias", &[classes], bound)?,
        };
        Ok(Self {
            arch,
            stem,
            max_pool,
            stages,
            fc,
        })
    }

    /// Logits `[N, classes]` for images `[N, C, H, W]`; `train` selects batch statistics (and
    /// updates the running ones) or running statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = self.stem.forward_t(x, train)?.relu()?;
        if self.max_pool {
            // After ReLU every value is ≥ 0, so zero padding equals PyTorch's -inf padding.
            x = x
                .pad_with_zeros(2, 1, 1)?
                .pad_with_zeros(3, 1, 1)?
                .max_pool2d_with_stride(3, 2)?;
        }
        for block in self.stages.iter().flatten() {
            x = block.forward_t(&x, train)?;
        }
        let pooled = x.mean((2, 3))?;
        pooled
            .matmul(&self.fc.weight.t()?)?
            .broadcast_add(&self.fc.bias)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, IndexOp};

    use super::*;

    fn count(arch: Arch, in_channels: usize, classes: usize) -> usize {
        let mut params = Params::new(Device::Cpu, 0);
        ResNet::new(arch, in_channels, classes, &mut params).unwrap();
        params.parameter_count()
    }

    #[test]
    fn parameter_counts_match_the_references() {
        // torchvision's counts for the ImageNet models.
        assert_eq!(count(Arch::ImageNet(18), 3, 1000), 11_689_512);
        assert_eq!(count(Arch::ImageNet(34), 3, 1000), 21_797_672);
        assert_eq!(count(Arch::ImageNet(50), 3, 1000), 25_557_032);
        assert_eq!(count(Arch::ImageNet(101), 3, 1000), 44_549_160);
        assert_eq!(count(Arch::ImageNet(152), 3, 1000), 60_192_808);
        // Option A ResNet-20 has 269,722; option B adds two 1×1 projections with BN (+2,752).
        assert_eq!(count(Arch::Cifar(20), 3, 10), 272_474);
        assert_eq!(count(Arch::Cifar(20), 1, 10), 272_474 - 2 * 16 * 9);
        for (depth, millions) in [(32, 0.46), (44, 0.66), (56, 0.85), (110, 1.73)] {
            let found = count(Arch::Cifar(depth), 3, 10) as f64 / 1e6;
            assert!((found - millions).abs() < 0.01, "resnet{depth}: {found} M");
        }
    }

    #[test]
    fn architectures_parse_and_print() {
        assert_eq!("resnet50".parse::<Arch>().unwrap(), Arch::ImageNet(50));
        assert_eq!("resnet20".parse::<Arch>().unwrap(), Arch::Cifar(20));
        assert_eq!(Arch::Cifar(110).to_string(), "resnet110");
        assert!(
            "resnet21"
                .parse::<Arch>()
                .unwrap_err()
                .to_string()
                .contains("resnet56")
        );
    }

    #[test]
    fn forward_shapes_and_batch_norm_modes() {
        let mut params = Params::new(Device::Cpu, 1);
        let model = ResNet::new(Arch::Cifar(20), 1, 10, &mut params).unwrap();
        let x = Tensor::randn(0f32, 1.0, (4, 1, 28, 28), &Device::Cpu)
            .unwrap()
            .affine(3.0, 2.0)
            .unwrap();
        assert_eq!(model.forward_t(&x, false).unwrap().dims(), [4, 10]);

        // Training mode moves the running statistics 10 % of the way towards the batch's.
        let mean = params.vars()["bn1.running_mean"].as_tensor().clone();
        let var = params.vars()["bn1.running_var"].as_tensor().clone();
        let before: Vec<f32> = mean.to_vec1().unwrap();
        let stem = model.stem.weight.clone();
        let y = x
            .conv2d(&stem, 1, 1, 1, 1)
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .flatten_from(1)
            .unwrap();
        let batch_mean: Vec<f32> = y.mean(1).unwrap().to_vec1().unwrap();
        let batch_var: Vec<f32> = y.var(1).unwrap().to_vec1().unwrap();
        model.forward_t(&x, true).unwrap();
        let after: Vec<f32> = mean.to_vec1().unwrap();
        let after_var: Vec<f32> = var.to_vec1().unwrap();
        for channel in 0..16 {
            let expected = 0.9 * before[channel] + 0.1 * batch_mean[channel];
            assert!((after[channel] - expected).abs() < 1e-4, "mean {channel}");
            let expected_var = 0.9 + 0.1 * batch_var[channel];
            assert!(
                (after_var[channel] - expected_var).abs() < 1e-3 * expected_var,
                "var {channel}"
            );
        }
        // Repeated batches converge to the batch statistics.
        for _ in 0..60 {
            model.forward_t(&x, true).unwrap();
        }
        let converged: f32 = mean.i(0).unwrap().to_scalar().unwrap();
        assert!((converged - batch_mean[0]).abs() < 1e-2 * batch_mean[0].abs().max(1.0));
    }
}
