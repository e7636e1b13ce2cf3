//! Turns an encoded image (or raw pixels) into one normalised `C×H×W` slot of a batch tensor,
//! following torchvision on Pillow exactly (DESIGN §7).

mod color;
mod decode;
pub mod format;
mod resize;

pub use format::{ImageFormat, SUPPORTED_FORMATS, Sniffed, sniff};

use crate::repository::config::{Color, Interpolation};

/// Channel layout of decoded pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// One byte a pixel.
    Gray,
    /// Three bytes a pixel, R, G, B.
    Rgb,
}

impl Channels {
    /// Bytes a pixel.
    pub fn count(self) -> usize {
        match self {
            Self::Gray => 1,
            Self::Rgb => 3,
        }
    }
}

/// Decoded 8-bit pixels, row-major, interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixels {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Layout of each pixel.
    pub channels: Channels,
    /// `width × height × channels` bytes.
    pub data: Vec<u8>,
}

/// A model's preprocessing, fully resolved (no optional fields).
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessSpec {
    /// The model's colour space.
    pub color: Color,
    /// Shorter side after resize.
    pub resize_shorter: u32,
    /// Centre crop `[H, W]`; also the model's spatial input size.
    pub crop: [u32; 2],
    /// Resampling filter.
    pub interpolation: Interpolation,
    /// Divide u8 values by this.
    pub scale: f32,
    /// Per-channel mean after scaling.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation after scaling.
    pub std: Vec<f32>,
    /// Opt-in DCT-domain JPEG downscaling.
    pub jpeg_dct_scaling: bool,
}

impl PreprocessSpec {
    /// Number of channels of the model input.
    pub fn channels(&self) -> usize {
        match self.color {
            Color::Gray => 1,
            Color::Rgb => 3,
        }
    }

    /// `C × H × W`: the number of f32 values one image occupies in a batch.
    pub fn tensor_len(&self) -> usize {
        self.channels() * self.crop[0] as usize * self.crop[1] as usize
    }
}

/// Limits checked from the image header, before decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageLimits {
    /// Largest `width × height` accepted.
    pub max_pixels: u64,
    /// Largest `long side / short side` accepted.
    pub max_aspect_ratio: f64,
}

impl ImageLimits {
    fn check(&self, width: u32, height: u32) -> Result<(), PreprocessError> {
        if width == 0 || height == 0 {
            return Err(PreprocessError::EmptyImage { width, height });
        }
        if u64::from(width) * u64::from(height) > self.max_pixels {
            return Err(PreprocessError::TooManyPixels {
                width,
                height,
                limit: self.max_pixels,
            });
        }
        let ratio = f64::from(width.max(height)) / f64::from(width.min(height));
        if ratio > self.max_aspect_ratio {
            return Err(PreprocessError::AspectRatio {
                width,
                height,
                limit: self.max_aspect_ratio,
            });
        }
        Ok(())
    }
}

/// Why an image could not become a tensor.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PreprocessError {
    /// Zero bytes.
    #[error("the image is empty (0 bytes)")]
    NoData,
    /// Bytes of a format we recognise but do not decode.
    #[error("unsupported image format `{0}`; supported formats: {SUPPORTED_FORMATS}")]
    UnsupportedFormat(&'static str),
    /// Bytes that are no image format we know.
    #[error("the data is not an image in a supported format ({SUPPORTED_FORMATS})")]
    UnknownFormat,
    /// Declared size over `--max-image-pixels`.
    #[error("image is {width}×{height} = {} pixels, over the limit of {limit} pixels", u64::from(*width) * u64::from(*height))]
    TooManyPixels {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The limit.
        limit: u64,
    },
    /// A zero dimension.
    #[error("image has no pixels ({width}×{height})")]
    EmptyImage {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
    },
    /// Long side / short side over `--max-aspect-ratio`.
    #[error("image is {width}×{height}, an aspect ratio over the limit of {limit}")]
    AspectRatio {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// The limit.
        limit: f64,
    },
    /// A recognised format that failed to decode (truncated, corrupt).
    #[error("cannot decode {format} image: {message}")]
    Decode {
        /// The sniffed format.
        format: &'static str,
        /// The decoder's complaint.
        message: String,
    },
    /// Raw pixels whose length does not match their declared size.
    #[error(
        "raw pixel buffer has {actual} bytes, expected {expected} ({width}×{height}×{channels})"
    )]
    RawLength {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// Bytes a pixel.
        channels: usize,
        /// Required length.
        expected: u64,
        /// Given length.
        actual: usize,
    },
    /// A bug: resizing failed on valid input.
    #[error("preprocessing failed: {0}")]
    Internal(String),
}

/// Decodes `bytes`, preprocesses them per `spec` and writes `spec.tensor_len()` values to `out`.
pub fn preprocess_encoded(
    bytes: &[u8],
    spec: &PreprocessSpec,
    limits: &ImageLimits,
    out: &mut [f32],
) -> Result<(), PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::NoData);
    }
    let pixels = decode_pixels(bytes, spec, limits)?;
    preprocess_pixels(&pixels, spec, out)
}

/// Checks and preprocesses raw interleaved 8-bit pixels (gRPC `RawImage`).
pub fn preprocess_raw(
    width: u32,
    height: u32,
    channels: Channels,
    data: &[u8],
    spec: &PreprocessSpec,
    limits: &ImageLimits,
    out: &mut [f32],
) -> Result<(), PreprocessError> {
    let expected = u64::from(width) * u64::from(height) * channels.count() as u64;
    if data.len() as u64 != expected {
        return Err(PreprocessError::RawLength {
            width,
            height,
            channels: channels.count(),
            expected,
            actual: data.len(),
        });
    }
    limits.check(width, height)?;
    let pixels = Pixels {
        width,
        height,
        channels,
        data: data.to_vec(),
    };
    let pixels = match (channels, spec.color) {
        (Channels::Rgb, Color::Gray) => Pixels {
            channels: Channels::Gray,
            data: color::rgb_to_gray(&pixels.data),
            ..pixels
        },
        (Channels::Gray, Color::Rgb) => Pixels {
            channels: Channels::Rgb,
            data: color::gray_to_rgb(&pixels.data),
            ..pixels
        },
        _ => pixels,
    };
    preprocess_pixels(&pixels, spec, out)
}

/// Resizes, crops and normalises decoded pixels (already in the model's colour) into `out`.
pub fn preprocess_pixels(
    pixels: &Pixels,
    spec: &PreprocessSpec,
    out: &mut [f32],
) -> Result<(), PreprocessError> {
    let crop = resize::resize_crop(pixels, spec.resize_shorter, spec.crop, spec.interpolation)?;
    normalize_into(&crop, spec, out)
}

/// The u8 pixels of the crop window, before normalisation (for tests and tools).
pub fn crop_window(pixels: &Pixels, spec: &PreprocessSpec) -> Result<Vec<u8>, PreprocessError> {
    resize::resize_crop(pixels, spec.resize_shorter, spec.crop, spec.interpolation)
}

/// Decodes bytes into the model's colour with orientation applied (for tests and tools).
pub fn decode_pixels(
    bytes: &[u8],
    spec: &PreprocessSpec,
    limits: &ImageLimits,
) -> Result<Pixels, PreprocessError> {
    let format = match sniff(bytes) {
        Sniffed::Supported(format) => format,
        Sniffed::Unsupported(name) => return Err(PreprocessError::UnsupportedFormat(name)),
        Sniffed::Unknown => return Err(PreprocessError::UnknownFormat),
    };
    let reduce_to = spec.jpeg_dct_scaling.then_some(spec.resize_shorter);
    decode::decode(bytes, format, spec.color, limits, reduce_to)
}

/// HWC u8 → CHW f32, `(v / scale − mean[c]) / std[c]`, in f32 like torchvision.
fn normalize_into(
    hwc: &[u8],
    spec: &PreprocessSpec,
    out: &mut [f32],
) -> Result<(), PreprocessError> {
    let channels = spec.channels();
    let plane = spec.crop[0] as usize * spec.crop[1] as usize;
    if out.len() != channels * plane || hwc.len() != channels * plane {
        return Err(PreprocessError::Internal(format!(
            "tensor slot holds {} values, expected {}",
            out.len(),
            channels * plane
        )));
    }
    for (channel, target) in out.chunks_exact_mut(plane).enumerate() {
        let (mean, std) = match (spec.mean.get(channel), spec.std.get(channel)) {
            (Some(&mean), Some(&std)) => (mean, std),
            _ => {
                return Err(PreprocessError::Internal(format!(
                    "no mean/std for channel {channel}"
                )));
            }
        };
        for (value, pixel) in target
            .iter_mut()
            .zip(hwc.iter().skip(channel).step_by(channels))
        {
            *value = (f32::from(*pixel) / spec.scale - mean) / std;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray_spec() -> PreprocessSpec {
        PreprocessSpec {
            color: Color::Gray,
            resize_shorter: 4,
            crop: [4, 4],
            interpolation: Interpolation::Bilinear,
            scale: 255.0,
            mean: vec![0.5],
            std: vec![0.25],
            jpeg_dct_scaling: false,
        }
    }

    fn limits() -> ImageLimits {
        ImageLimits {
            max_pixels: 1 << 20,
            max_aspect_ratio: 32.0,
        }
    }

    #[test]
    fn normalises_into_chw() {
        let spec = PreprocessSpec {
            color: Color::Rgb,
            crop: [1, 2],
            mean: vec![0.0, 0.5, 1.0],
            std: vec![1.0, 0.5, 1.0],
            ..gray_spec()
        };
        let mut out = vec![0.0; 6];
        normalize_into(&[255, 0, 255, 0, 255, 0], &spec, &mut out).unwrap();
        assert_eq!(out, vec![1.0, 0.0, -1.0, 1.0, 0.0, -1.0]);
    }

    #[test]
    fn raw_length_mismatch_names_both_sizes() {
        let mut out = vec![0.0; 16];
        let error = preprocess_raw(
            4,
            4,
            Channels::Rgb,
            &[0; 10],
            &gray_spec(),
            &limits(),
            &mut out,
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("10 bytes, expected 48"),
            "{error}"
        );
    }

    #[test]
    fn header_limits_are_checked() {
        let limits = ImageLimits {
            max_pixels: 100,
            max_aspect_ratio: 4.0,
        };
        assert!(matches!(
            limits.check(20, 20),
            Err(PreprocessError::TooManyPixels { .. })
        ));
        assert!(matches!(
            limits.check(1, 5),
            Err(PreprocessError::AspectRatio { .. })
        ));
        assert!(matches!(
            limits.check(0, 5),
            Err(PreprocessError::EmptyImage { .. })
        ));
        assert!(limits.check(10, 10).is_ok());
    }

    #[test]
    fn empty_and_unknown_bytes_are_refused() {
        let mut out = vec![0.0; 16];
        let spec = gray_spec();
        assert_eq!(
            preprocess_encoded(b"", &spec, &limits(), &mut out),
            Err(PreprocessError::NoData)
        );
        assert_eq!(
            preprocess_encoded(b"plain text", &spec, &limits(), &mut out),
            Err(PreprocessError::UnknownFormat)
        );
    }
}
