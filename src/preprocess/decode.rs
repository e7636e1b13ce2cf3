//! Decodes encoded bytes into 8-bit pixels in the model's colour, with EXIF orientation applied,
//! checking the declared size before any pixel is decoded.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, metadata::Orientation};

use super::color::{cmyk_to_rgb, gray_to_rgb, rgb_to_gray};
use super::format::ImageFormat;
use super::{Channels, ImageLimits, Pixels, PreprocessError};
use crate::repository::config::Color;

/// Decodes `bytes` of the sniffed `format` into pixels of `color`. `reduce_to` (JPEG only) asks
/// for DCT-domain downscaling to the smallest scale whose shorter side still covers it.
pub(crate) fn decode(
    bytes: &[u8],
    format: ImageFormat,
    color: Color,
    limits: &ImageLimits,
    reduce_to: Option<u32>,
) -> Result<Pixels, PreprocessError> {
    match format {
        ImageFormat::Jpeg => decode_jpeg(bytes, color, limits, reduce_to),
        _ => decode_other(bytes, format, color, limits),
    }
}

fn decode_error(format: ImageFormat, message: impl ToString) -> PreprocessError {
    PreprocessError::Decode {
        format: format.name(),
        message: message.to_string(),
    }
}

fn decode_jpeg(
    bytes: &[u8],
    color: Color,
    limits: &ImageLimits,
    reduce_to: Option<u32>,
) -> Result<Pixels, PreprocessError> {
    let jpeg_error = |error: turbojpeg::Error| decode_error(ImageFormat::Jpeg, error);
    let mut decompressor = turbojpeg::Decompressor::new().map_err(jpeg_error)?;
    let header = decompressor.read_header(bytes).map_err(jpeg_error)?;
    let (width, height) = (to_u32(header.width)?, to_u32(header.height)?);
    limits.check(width, height)?;
    // Progressive files can hold thousands of tiny scans: a CPU bomb.
    decompressor.set_scan_limit(500).map_err(jpeg_error)?;
    if let Some(target) = reduce_to {
        decompressor
            .set_scaling_factor(turbojpeg::ScalingFactor::new(
                1,
                dct_scale_denominator(width.min(height), target),
            ))
            .map_err(jpeg_error)?;
    }
    let scaled = header.scaled(decompressor.scaling_factor());
    let source_gray = header.colorspace == turbojpeg::Colorspace::Gray;
    let cmyk = matches!(
        header.colorspace,
        turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK
    );
    let format = if source_gray {
        turbojpeg::PixelFormat::GRAY
    } else if cmyk {
        turbojpeg::PixelFormat::CMYK
    } else {
        turbojpeg::PixelFormat::RGB
    };
    let pitch = scaled.width * format.size();
    let length = pitch
        .checked_mul(scaled.height)
        .ok_or(PreprocessError::TooManyPixels {
            width,
            height,
            limit: limits.max_pixels,
        })?;
    let mut data = vec![0u8; length];
    let image = turbojpeg::Image {
        pixels: data.as_mut_slice(),
        width: scaled.width,
        pitch,
        height: scaled.height,
        format,
    };
    decompressor.decompress(bytes, image).map_err(jpeg_error)?;
    let (width, height) = (to_u32(scaled.width)?, to_u32(scaled.height)?);
    let pixels = match (source_gray, cmyk, color) {
        (true, _, Color::Gray) => Pixels {
            width,
            height,
            channels: Channels::Gray,
            data,
        },
        (true, _, Color::Rgb) => Pixels {
            width,
            height,
            channels: Channels::Rgb,
            data: gray_to_rgb(&data),
        },
        (false, true, _) => to_color(
            Pixels {
                width,
                height,
                channels: Channels::Rgb,
                data: cmyk_to_rgb(&data),
            },
            color,
        ),
        (false, false, _) => to_color(
            Pixels {
                width,
                height,
                channels: Channels::Rgb,
                data,
            },
            color,
        ),
    };
    Ok(match jpeg_orientation(bytes) {
        Some(orientation) if orientation != Orientation::NoTransforms => {
            orient(pixels, orientation)
        }
        _ => pixels,
    })
}

/// The JPEG DCT scale 1/n (n = 8, 4, 2 or 1) to decode at: the smallest whose shorter side,
/// rounded up as libjpeg-turbo scales, still covers `target` (DESIGN §7: decode at 1/2 when the
/// image is at least twice the resize target, and so on).
fn dct_scale_denominator(shorter: u32, target: u32) -> usize {
    [8, 4, 2]
        .into_iter()
        .find(|&denom| shorter.div_ceil(denom) >= target)
        .map_or(1, |denom| denom as usize)
}

fn to_u32(value: usize) -> Result<u32, PreprocessError> {
    u32::try_from(value).map_err(|_| decode_error(ImageFormat::Jpeg, "dimension out of range"))
}

fn to_color(pixels: Pixels, color: Color) -> Pixels {
    match (pixels.channels, color) {
        (Channels::Rgb, Color::Gray) => Pixels {
            channels: Channels::Gray,
            data: rgb_to_gray(&pixels.data),
            ..pixels
        },
        (Channels::Gray, Color::Rgb) => Pixels {
            channels: Channels::Rgb,
            data: gray_to_rgb(&pixels.data),
            ..pixels
        },
        _ => pixels,
    }
}

/// Reads the EXIF orientation from a JPEG's APP1 segment, if any.
fn jpeg_orientation(bytes: &[u8]) -> Option<Orientation> {
    let mut position = 2; // after SOI
    while let Some(&[0xFF, marker, high, low]) = bytes.get(position..position + 4) {
        // Standalone markers and the start of scan end the header segments we care about.
        if marker == 0xDA || marker == 0xD9 {
            return None;
        }
        let length = usize::from(u16::from_be_bytes([high, low]));
        let segment = bytes.get(position + 4..position + 2 + length)?;
        if let (0xE1, Some(exif)) = (marker, segment.strip_prefix(b"Exif\0\0")) {
            return Orientation::from_exif_chunk(exif);
        }
        position += 2 + length;
    }
    None
}

fn decode_other(
    bytes: &[u8],
    format: ImageFormat,
    color: Color,
    limits: &ImageLimits,
) -> Result<Pixels, PreprocessError> {
    // Refuse bombs from the raw header, before any decoder reads further.
    if let Some((width, height)) = super::format::header_dimensions(bytes, format) {
        limits.check(width, height)?;
    }
    let image_format = match format {
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::Gif => image::ImageFormat::Gif,
        ImageFormat::Webp => image::ImageFormat::WebP,
        ImageFormat::Bmp => image::ImageFormat::Bmp,
        ImageFormat::Tiff => image::ImageFormat::Tiff,
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), image_format);
    let mut decoder_limits = image::Limits::default();
    // 16-bit RGBA is the widest layout: 8 bytes a pixel, plus room for the decoder's buffers.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(decoder_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|error| decode_error(format, error))?;
    let (width, height) = decoder.dimensions();
    limits.check(width, height)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image =
        DynamicImage::from_decoder(decoder).map_err(|error| decode_error(format, error))?;
    image.apply_orientation(orientation);
    let (width, height) = (image.width(), image.height());
    let is_gray = matches!(
        image,
        DynamicImage::ImageLuma8(_)
            | DynamicImage::ImageLumaA8(_)
            | DynamicImage::ImageLuma16(_)
            | DynamicImage::ImageLumaA16(_)
    );
    Ok(match (color, is_gray) {
        (Color::Gray, true) => Pixels {
            width,
            height,
            channels: Channels::Gray,
            data: image.into_luma8().into_raw(),
        },
        // Pillow's convert("L") weighs R, G, B as 299/587/114 (image's to_luma8 uses Rec. 709).
        (Color::Gray, false) => Pixels {
            width,
            height,
            channels: Channels::Gray,
            data: rgb_to_gray(&image.into_rgb8().into_raw()),
        },
        // convert("RGB") drops alpha without compositing, as into_rgb8 does.
        (Color::Rgb, _) => Pixels {
            width,
            height,
            channels: Channels::Rgb,
            data: image.into_rgb8().into_raw(),
        },
    })
}

/// Applies an EXIF orientation to decoded pixels.
fn orient(pixels: Pixels, orientation: Orientation) -> Pixels {
    let Pixels {
        width,
        height,
        channels,
        data,
    } = pixels;
    let image = match channels {
        Channels::Gray => image::GrayImage::from_raw(width, height, data).map(DynamicImage::from),
        Channels::Rgb => image::RgbImage::from_raw(width, height, data).map(DynamicImage::from),
    };
    let Some(mut image) = image else {
        // Unreachable: the buffer was sized from these dimensions.
        return Pixels {
            width,
            height,
            channels,
            data: Vec::new(),
        };
    };
    image.apply_orientation(orientation);
    let (width, height) = (image.width(), image.height());
    let data = match channels {
        Channels::Gray => image.into_luma8().into_raw(),
        Channels::Rgb => image.into_rgb8().into_raw(),
    };
    Pixels {
        width,
        height,
        channels,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::dct_scale_denominator;

    #[test]
    fn the_dct_scale_is_the_smallest_that_still_covers_the_target() {
        // A 12-megapixel photo for a 256 resize: 3000 / 8 = 375 still covers it.
        assert_eq!(dct_scale_denominator(3000, 256), 8);
        assert_eq!(dct_scale_denominator(2040, 256), 4);
        assert_eq!(dct_scale_denominator(1024, 256), 4);
        assert_eq!(dct_scale_denominator(1020, 256), 2);
        assert_eq!(dct_scale_denominator(512, 256), 2);
        // Scaled sizes round up, as libjpeg-turbo rounds them: 2041 / 8 = 255.1 -> 256.
        assert_eq!(dct_scale_denominator(2041, 256), 8);
        // Below twice the target (less the rounding): no scaling.
        assert_eq!(dct_scale_denominator(510, 256), 1);
        assert_eq!(dct_scale_denominator(100, 256), 1);
    }
}
