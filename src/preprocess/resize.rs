//! torchvision's `Resize(shorter)` + `CenterCrop(h, w)`, computing only the pixels inside the
//! crop window with Pillow-style antialiased filters (fast_image_resize implements Pillow's
//! convolution), so memory is bounded by the output size for any aspect ratio.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::{Channels, Pixels, PreprocessError};
use crate::repository::config::Interpolation;

/// Where the crop window lies in the resized image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Size after `Resize(shorter)`, before cropping.
    pub resized: (u32, u32),
    /// Left and top of the crop window in resized coordinates (negative = zero padding).
    pub offset: (i64, i64),
}

/// torchvision's output size for `Resize(shorter)` and `CenterCrop` offsets (Python's round,
/// half to even).
pub(crate) fn geometry(width: u32, height: u32, shorter: u32, crop_hw: [u32; 2]) -> Geometry {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    // Python: int(requested * long / short), in f64 like CPython.
    let new_long = (f64::from(shorter) * f64::from(long) / f64::from(short)) as u32;
    let resized = if width <= height {
        (shorter, new_long)
    } else {
        (new_long, shorter)
    };
    let offset = |size: u32, crop: u32| -> i64 {
        let half = (f64::from(size) - f64::from(crop)) / 2.0;
        half.round_ties_even() as i64
    };
    let [crop_h, crop_w] = crop_hw;
    Geometry {
        resized,
        offset: (offset(resized.0, crop_w), offset(resized.1, crop_h)),
    }
}

/// Resizes and crops `pixels` to `crop_hw`, returning `crop_h × crop_w × channels` bytes.
/// Regions of the window outside the resized image (crop larger than the image) stay 0,
/// as torchvision pads with 0.
pub(crate) fn resize_crop(
    pixels: &Pixels,
    shorter: u32,
    crop_hw: [u32; 2],
    interpolation: Interpolation,
) -> Result<Vec<u8>, PreprocessError> {
    let [crop_h, crop_w] = crop_hw;
    let channels = pixels.channels.count();
    let geometry = geometry(pixels.width, pixels.height, shorter, crop_hw);
    let (resized_w, resized_h) = geometry.resized;
    let (left, top) = geometry.offset;
    // The visible part of the window, in resized coordinates.
    let x0 = left.max(0) as u32;
    let y0 = top.max(0) as u32;
    let x1 = (left + i64::from(crop_w)).min(i64::from(resized_w)) as u32;
    let y1 = (top + i64::from(crop_h)).min(i64::from(resized_h)) as u32;
    let mut out = vec![0u8; crop_h as usize * crop_w as usize * channels];
    if x1 <= x0 || y1 <= y0 {
        return Ok(out);
    }
    let (visible_w, visible_h) = (x1 - x0, y1 - y0);
    let pixel_type = match pixels.channels {
        Channels::Gray => PixelType::U8,
        Channels::Rgb => PixelType::U8x3,
    };
    let internal = |error: &dyn std::fmt::Display| PreprocessError::Internal(error.to_string());
    let source = ImageRef::new(pixels.width, pixels.height, &pixels.data, pixel_type)
        .map_err(|error| internal(&error))?;
    let mut window = Image::new(visible_w, visible_h, pixel_type);
    let scale_x = f64::from(pixels.width) / f64::from(resized_w);
    let scale_y = f64::from(pixels.height) / f64::from(resized_h);
    let algorithm = match interpolation {
        Interpolation::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
        Interpolation::Bicubic => ResizeAlg::Convolution(FilterType::CatmullRom),
        Interpolation::Nearest => ResizeAlg::Nearest,
    };
    let options = ResizeOptions::new().resize_alg(algorithm).crop(
        f64::from(x0) * scale_x,
        f64::from(y0) * scale_y,
        f64::from(visible_w) * scale_x,
        f64::from(visible_h) * scale_y,
    );
    Resizer::new()
        .resize(&source, &mut window, &options)
        .map_err(|error| internal(&error))?;
    // Copy the visible rows into the (possibly padded) window.
    let row_bytes = visible_w as usize * channels;
    let out_row = crop_w as usize * channels;
    let dx = (i64::from(x0) - left) as usize * channels;
    let dy = (i64::from(y0) - top) as usize;
    for (row, source_row) in window.buffer().chunks_exact(row_bytes).enumerate() {
        let start = (dy + row) * out_row + dx;
        if let Some(target) = out.get_mut(start..start + row_bytes) {
            target.copy_from_slice(source_row);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_side_truncates_like_torchvision() {
        // 1024×683 → shorter 256: long = int(256·1024/683) = 383.
        let geometry = geometry(1024, 683, 256, [224, 224]);
        assert_eq!(geometry.resized, (383, 256));
        // (383 − 224) / 2 = 79.5 rounds half to even → 80.
        assert_eq!(geometry.offset, (80, 16));
    }

    #[test]
    fn portrait_images_keep_orientation() {
        let geometry = geometry(375, 500, 256, [224, 224]);
        assert_eq!(geometry.resized, (256, 341));
        assert_eq!(geometry.offset, (16, 58)); // (341-224)/2 = 58.5 → 58
    }

    #[test]
    fn crop_larger_than_image_is_zero_padded() {
        let pixels = Pixels {
            width: 2,
            height: 2,
            channels: Channels::Gray,
            data: vec![200; 4],
        };
        let out = resize_crop(&pixels, 2, [4, 4], Interpolation::Bilinear).unwrap();
        #[rustfmt::skip]
        let expected = vec![
            0, 0, 0, 0,
            0, 200, 200, 0,
            0, 200, 200, 0,
            0, 0, 0, 0,
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn identity_size_returns_the_same_pixels() {
        let data: Vec<u8> = (0..=255).collect();
        let pixels = Pixels {
            width: 16,
            height: 16,
            channels: Channels::Gray,
            data: data.clone(),
        };
        assert_eq!(
            resize_crop(&pixels, 16, [16, 16], Interpolation::Bilinear).unwrap(),
            data
        );
    }

    #[test]
    fn extreme_aspect_ratio_allocates_only_the_window() {
        let pixels = Pixels {
            width: 1,
            height: 20_000,
            channels: Channels::Gray,
            data: vec![9; 20_000],
        };
        let out = resize_crop(&pixels, 4, [4, 4], Interpolation::Bilinear).unwrap();
        assert_eq!(out.len(), 16);
    }
}
