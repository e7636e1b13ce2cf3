//! Colour conversions that match Pillow's `convert("L")`, `convert("RGB")` and CMYK handling.

/// Pillow's RGB → L: `(R·19595 + G·38470 + B·7471 + 0x8000) >> 16` (≈ 299/587/114 per mille).
pub(crate) fn rgb_to_gray(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|pixel| {
            let [r, g, b] = [pixel[0], pixel[1], pixel[2]].map(u32::from);
            // The sum is at most 255·65536 + 0x8000, so the shift fits in a u8.
            ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
        })
        .collect()
}

/// Pillow's L → RGB: the value in every channel.
pub(crate) fn gray_to_rgb(gray: &[u8]) -> Vec<u8> {
    gray.iter()
        .flat_map(|&value| [value, value, value])
        .collect()
}

/// Pillow's CMYK JPEG → RGB: Pillow reads JPEG CMYK as inverted (Adobe) and converts with
/// `channel = 255 - k' - channel'·(255 - k')/255`, here on the stored (inverted) values.
pub(crate) fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    cmyk.chunks_exact(4)
        .flat_map(|pixel| {
            // Stored values are inverted: ink = 255 - stored.
            let ink_k = 255 - u32::from(pixel[3]);
            let not_k = 255 - ink_k;
            [pixel[0], pixel[1], pixel[2]].map(|stored| {
                let ink = 255 - u32::from(stored);
                let product = ink * not_k + 128;
                let scaled = (product + (product >> 8)) >> 8; // Pillow's MULDIV255
                not_k.saturating_sub(scaled) as u8
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gray_matches_pillow_weights() {
        assert_eq!(rgb_to_gray(&[255, 255, 255, 0, 0, 0]), vec![255, 0]);
        // Pillow: Image.new("RGB", (1, 1), (255, 0, 0)).convert("L") == 76
        assert_eq!(
            rgb_to_gray(&[255, 0, 0, 0, 255, 0, 0, 0, 255]),
            vec![76, 150, 29]
        );
    }

    #[test]
    fn cmyk_white_and_black() {
        // Inverted storage: 255 everywhere is no ink (white); K stored 0 is full black.
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 255]), vec![255, 255, 255]);
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 0]), vec![0, 0, 0]);
        assert_eq!(cmyk_to_rgb(&[0, 255, 255, 255]), vec![0, 255, 255]);
    }
}
