//! Recognises image formats from their magic bytes; the Content-Type header is never trusted.

/// A format we decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// JPEG (baseline, progressive, grayscale, CMYK/YCCK).
    Jpeg,
    /// PNG (8/16-bit, palette, interlaced, alpha; APNG's first frame).
    Png,
    /// GIF (first frame).
    Gif,
    /// WebP (lossy, lossless, first frame of an animation).
    Webp,
    /// Windows bitmap.
    Bmp,
    /// TIFF (first page).
    Tiff,
}

impl ImageFormat {
    /// Lower-case name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::Gif => "gif",
            Self::Webp => "webp",
            Self::Bmp => "bmp",
            Self::Tiff => "tiff",
        }
    }
}

/// The formats we decode, for error messages.
pub const SUPPORTED_FORMATS: &str = "jpeg, png, webp, gif, bmp, tiff";

/// What the first bytes of a body say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// A format we decode.
    Supported(ImageFormat),
    /// A recognised format we do not decode (named for the message).
    Unsupported(&'static str),
    /// Nothing we recognise.
    Unknown,
}

/// Identifies the format of `bytes` from its signature.
pub fn sniff(bytes: &[u8]) -> Sniffed {
    use ImageFormat::*;
    let starts = |prefix: &[u8]| bytes.starts_with(prefix);
    let brand_at_4 = |brands: &[&[u8]]| {
        bytes.get(4..8) == Some(b"ftyp") && brands.iter().any(|b| bytes.get(8..12) == Some(*b))
    };
    if starts(&[0xFF, 0xD8, 0xFF]) {
        Sniffed::Supported(Jpeg)
    } else if starts(b"\x89PNG\r\n\x1a\n") {
        Sniffed::Supported(Png)
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Sniffed::Supported(Gif)
    } else if starts(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        Sniffed::Supported(Webp)
    } else if starts(b"BM") && bytes.len() >= 26 {
        Sniffed::Supported(Bmp)
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        Sniffed::Supported(Tiff)
    } else if brand_at_4(&[b"avif", b"avis"]) {
        Sniffed::Unsupported("avif")
    } else if brand_at_4(&[
        b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1",
    ]) {
        Sniffed::Unsupported("heic")
    } else if starts(b"%PDF") {
        Sniffed::Unsupported("pdf")
    } else if starts(&[0xFF, 0x0A]) || starts(b"\0\0\0\x0cJXL ") {
        Sniffed::Unsupported("jpeg xl")
    } else if starts(b"qoif") {
        Sniffed::Unsupported("qoi")
    } else if starts(b"8BPS") {
        Sniffed::Unsupported("psd")
    } else if starts(&[0, 0, 1, 0]) {
        Sniffed::Unsupported("ico")
    } else if looks_like_svg(bytes) {
        Sniffed::Unsupported("svg")
    } else {
        Sniffed::Unknown
    }
}

/// Width and height read straight from the header bytes, for formats whose header is at a
/// fixed place (checked before any decoder allocates). `None` when unknown or too short.
pub fn header_dimensions(bytes: &[u8], format: ImageFormat) -> Option<(u32, u32)> {
    let be32 = |at: usize| Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let le16 = |at: usize| {
        Some(u32::from(u16::from_le_bytes(
            bytes.get(at..at + 2)?.try_into().ok()?,
        )))
    };
    let le24 = |at: usize| {
        let b = bytes.get(at..at + 3)?;
        Some(u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16)
    };
    let le32 = |at: usize| Some(i32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    match format {
        ImageFormat::Png if bytes.get(12..16) == Some(b"IHDR") => Some((be32(16)?, be32(20)?)),
        ImageFormat::Gif => Some((le16(6)?, le16(8)?)),
        ImageFormat::Bmp => Some((le32(18)?.unsigned_abs(), le32(22)?.unsigned_abs())),
        ImageFormat::Webp => match bytes.get(12..16)? {
            b"VP8X" => Some((le24(24)? + 1, le24(27)? + 1)),
            b"VP8L" => {
                let bits = u32::from_le_bytes(bytes.get(21..25)?.try_into().ok()?);
                Some(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
            }
            b"VP8 " => Some((le16(26)? & 0x3FFF, le16(28)? & 0x3FFF)),
            _ => None,
        },
        _ => None,
    }
}

fn looks_like_svg(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(512)];
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let text = text.trim_start_matches('\u{feff}').trim_start();
    (text.starts_with("<?xml") || text.starts_with("<svg")) && text.contains("<svg")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_supported_signatures() {
        assert_eq!(
            sniff(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Sniffed::Supported(ImageFormat::Jpeg)
        );
        assert_eq!(
            sniff(b"\x89PNG\r\n\x1a\n...."),
            Sniffed::Supported(ImageFormat::Png)
        );
        assert_eq!(sniff(b"GIF89a.."), Sniffed::Supported(ImageFormat::Gif));
        assert_eq!(
            sniff(b"RIFF\0\0\0\0WEBPVP8 "),
            Sniffed::Supported(ImageFormat::Webp)
        );
        assert_eq!(
            sniff(b"II*\0\x08\0\0\0"),
            Sniffed::Supported(ImageFormat::Tiff)
        );
    }

    #[test]
    fn names_formats_we_do_not_decode() {
        assert_eq!(
            sniff(b"\0\0\0\x1cftypheic\0\0"),
            Sniffed::Unsupported("heic")
        );
        assert_eq!(
            sniff(b"\0\0\0\x1cftypavif\0\0"),
            Sniffed::Unsupported("avif")
        );
        assert_eq!(sniff(b"%PDF-1.7"), Sniffed::Unsupported("pdf"));
        assert_eq!(
            sniff(b"<?xml version=\"1.0\"?><svg xmlns="),
            Sniffed::Unsupported("svg")
        );
    }

    #[test]
    fn reads_header_dimensions_without_decoding() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend(50_000u32.to_be_bytes());
        png.extend(40_000u32.to_be_bytes());
        assert_eq!(
            header_dimensions(&png, ImageFormat::Png),
            Some((50_000, 40_000))
        );
        assert_eq!(
            header_dimensions(b"GIF89a\x10\x00\x20\x00", ImageFormat::Gif),
            Some((16, 32))
        );
        assert_eq!(header_dimensions(b"\x89PNG", ImageFormat::Png), None);
    }

    #[test]
    fn text_and_empty_input_are_unknown() {
        assert_eq!(sniff(b""), Sniffed::Unknown);
        assert_eq!(sniff(b"hello world"), Sniffed::Unknown);
        assert_eq!(sniff(b"BM"), Sniffed::Unknown);
    }
}
