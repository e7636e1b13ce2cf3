//! Datasets held in memory as u8 pixels, with augmentation and normalisation into batches.

mod cifar;
mod folder;
mod idx;

pub use cifar::cifar10;
pub use folder::image_folder;
pub use idx::{FASHION_MNIST_DIRS, FASHION_MNIST_LABELS, fashion_mnist, read_idx};

use candle_core::{Device, Tensor};
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::TrainError;

/// Images `[N, C, H, W]` as u8 with their class indices.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Pixels, image after image, channel planes in order.
    pub pixels: Vec<u8>,
    /// Class index of each image.
    pub labels: Vec<u32>,
    /// `[C, H, W]` of every image.
    pub dims: [usize; 3],
    /// Class names; index = class.
    pub classes: Vec<String>,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the dataset holds no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.dims.iter().product()
    }

    /// The pixels of image `index`.
    pub fn image(&self, index: usize) -> Option<&[u8]> {
        self.pixels
            .get(index * self.image_len()..(index + 1) * self.image_len())
    }

    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Self {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_len());
        let mut labels = Vec::with_capacity(indices.len());
        for &index in indices {
            if let (Some(image), Some(&label)) = (self.image(index), self.labels.get(index)) {
                pixels.extend_from_slice(image);
                labels.push(label);
            }
        }
        Self {
            pixels,
            labels,
            dims: self.dims,
            classes: self.classes.clone(),
        }
    }

    /// Splits off the last `count` images of a seeded shuffle as a validation set.
    pub fn split(&self, count: usize, rng: &mut StdRng) -> (Self, Self) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(rng);
        let (train, val) = order.split_at(self.len().saturating_sub(count));
        (self.subset(train), self.subset(val))
    }

    /// Checks that pixels and labels agree with `dims` and the class count.
    pub fn validate(&self, what: &str) -> Result<(), TrainError> {
        if self.pixels.len() != self.len() * self.image_len() {
            return Err(TrainError::Data(format!(
                "{what}: {} pixel bytes for {} images of {:?}",
                self.pixels.len(),
                self.len(),
                self.dims
            )));
        }
        if let Some(label) = self
            .labels
            .iter()
            .find(|&&label| label as usize >= self.classes.len())
        {
            return Err(TrainError::Data(format!(
                "{what}: label {label} but only {} classes",
                self.classes.len()
            )));
        }
        Ok(())
    }
}

/// Per-channel normalisation after dividing by 255: `(x / 255 - mean) / std`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    /// Per-channel mean.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
}

impl Normalization {
    /// Fashion-MNIST's training-set statistics.
    pub fn fashion_mnist() -> Self {
        Self {
            mean: vec![0.2860],
            std: vec![0.3530],
        }
    }

    /// CIFAR-10's training-set statistics.
    pub fn cifar10() -> Self {
        Self {
            mean: vec![0.4914, 0.4822, 0.4465],
            std: vec![0.2470, 0.2435, 0.2616],
        }
    }

    /// ImageNet's statistics (torchvision).
    pub fn imagenet() -> Self {
        Self {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }

    /// Measures per-channel mean and std of `dataset`.
    pub fn measure(dataset: &Dataset) -> Self {
        let [channels, height, width] = dataset.dims;
        let plane = height * width;
        let mut sums = vec![(0f64, 0f64, 0usize); channels];
        for (offset, &value) in dataset.pixels.iter().enumerate() {
            let channel = (offset / plane) % channels.max(1);
            if let Some((sum, squares, count)) = sums.get_mut(channel) {
                let value = f64::from(value) / 255.0;
                *sum += value;
                *squares += value * value;
                *count += 1;
            }
        }
        let stats = sums.iter().map(|&(sum, squares, count)| {
            let n = count.max(1) as f64;
            let mean = sum / n;
            (
                mean as f32,
                ((squares / n - mean * mean).max(1e-12)).sqrt() as f32,
            )
        });
        let (mean, std) = stats.unzip();
        Self { mean, std }
    }

    /// Normalises one u8 value of `channel`.
    pub fn apply(&self, channel: usize, value: u8) -> f32 {
        let mean = self.mean.get(channel).copied().unwrap_or(0.0);
        let std = self.std.get(channel).copied().unwrap_or(1.0);
        (f32::from(value) / 255.0 - mean) / std
    }
}

/// Training-time augmentation: random crop after zero padding, random horizontal flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Augment {
    /// Padding on each side before the random crop back to the original size (0 = no crop).
    pub pad: usize,
    /// Flip horizontally with probability ½.
    pub flip: bool,
}

impl Augment {
    /// No augmentation (evaluation).
    pub const NONE: Augment = Augment {
        pad: 0,
        flip: false,
    };

    /// The standard recipe: pad 4 for 32-pixel images, about 1/14 of the side otherwise.
    pub fn standard(side: usize) -> Self {
        Self {
            pad: if side >= 32 {
                side / 8
            } else {
                (side / 14).max(1)
            },
            flip: true,
        }
    }
}

/// One batch as tensors: images `[B, C, H, W]` (f32, normalised) and labels `[B]` (u32).
pub fn batch(
    dataset: &Dataset,
    indices: &[usize],
    normalization: &Normalization,
    augment: Augment,
    rng: &mut StdRng,
    device: &Device,
) -> Result<(Tensor, Tensor), TrainError> {
    let [channels, height, width] = dataset.dims;
    let mut values = Vec::with_capacity(indices.len() * dataset.image_len());
    let mut labels = Vec::with_capacity(indices.len());
    let pad = augment.pad as i64;
    for &index in indices {
        let (Some(image), Some(&label)) = (dataset.image(index), dataset.labels.get(index)) else {
            return Err(TrainError::Data(format!("image {index} out of range")));
        };
        let (dy, dx) = if pad > 0 {
            (
                rng.random_range(-pad..=pad) as isize,
                rng.random_range(-pad..=pad) as isize,
            )
        } else {
            (0, 0)
        };
        let flip = augment.flip && rng.random_bool(0.5);
        for channel in 0..channels {
            let zero = normalization.apply(channel, 0);
            let plane = image
                .get(channel * height * width..(channel + 1) * height * width)
                .unwrap_or_default();
            for y in 0..height {
                let source_y = y as isize + dy;
                for x in 0..width {
                    let x = if flip { width - 1 - x } else { x };
                    let source_x = x as isize + dx;
                    let inside = (0..height as isize).contains(&source_y)
                        && (0..width as isize).contains(&source_x);
                    let value = if inside {
                        plane
                            .get(source_y as usize * width + source_x as usize)
                            .copied()
                    } else {
                        None
                    };
                    values.push(value.map_or(zero, |value| normalization.apply(channel, value)));
                }
            }
        }
        labels.push(label);
    }
    let images = Tensor::from_vec(values, (indices.len(), channels, height, width), device)?;
    let labels = Tensor::from_vec(labels, indices.len(), device)?;
    Ok((images, labels))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn ramp() -> Dataset {
        Dataset {
            pixels: (0..32).collect(),
            labels: vec![0, 1],
            dims: [1, 4, 4],
            classes: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn batches_normalise_and_keep_labels() {
        let data = ramp();
        let norm = Normalization {
            mean: vec![0.5],
            std: vec![0.25],
        };
        let mut rng = StdRng::seed_from_u64(0);
        let (x, y) = batch(&data, &[1, 0], &norm, Augment::NONE, &mut rng, &Device::Cpu).unwrap();
        assert_eq!(x.dims(), [2, 1, 4, 4]);
        assert_eq!(y.to_vec1::<u32>().unwrap(), [1, 0]);
        let first: f32 = x
            .flatten_all()
            .unwrap()
            .get(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((first - (16.0 / 255.0 - 0.5) / 0.25).abs() < 1e-6);
    }

    #[test]
    fn augmentation_is_a_shifted_or_flipped_copy() {
        let data = ramp();
        let norm = Normalization {
            mean: vec![0.0],
            std: vec![1.0],
        };
        let mut rng = StdRng::seed_from_u64(3);
        let flip_only = Augment { pad: 0, flip: true };
        let mut seen_flip = false;
        for _ in 0..16 {
            let (x, _) = batch(&data, &[0], &norm, flip_only, &mut rng, &Device::Cpu).unwrap();
            let row: Vec<f32> = x
                .flatten_all()
                .unwrap()
                .narrow(0, 0, 4)
                .unwrap()
                .to_vec1()
                .unwrap();
            let row: Vec<u8> = row.iter().map(|v| (v * 255.0).round() as u8).collect();
            assert!(row == [0, 1, 2, 3] || row == [3, 2, 1, 0], "{row:?}");
            seen_flip |= row == [3, 2, 1, 0];
        }
        assert!(seen_flip);
        let crop = Augment {
            pad: 1,
            flip: false,
        };
        let (x, _) = batch(&data, &[0, 0, 0, 0], &norm, crop, &mut rng, &Device::Cpu).unwrap();
        let sum: f32 = x.sum_all().unwrap().to_scalar().unwrap();
        assert!(sum * 255.0 <= 4.0 * 120.0 + 1e-3);
    }

    #[test]
    fn measured_statistics_are_the_moments() {
        let norm = Normalization::measure(&ramp());
        assert!((norm.mean[0] - 15.5 / 255.0).abs() < 1e-6);
        assert!(norm.std[0] > 0.0);
    }

    #[test]
    fn splits_are_disjoint_and_complete() {
        let data = Dataset {
            pixels: (0..10).collect(),
            labels: vec![0; 10],
            dims: [1, 1, 1],
            classes: vec!["a".into()],
        };
        let (train, val) = data.split(3, &mut StdRng::seed_from_u64(1));
        assert_eq!((train.len(), val.len()), (7, 3));
        let mut all: Vec<u8> = train.pixels.iter().chain(&val.pixels).copied().collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<u8>>());
    }
}
