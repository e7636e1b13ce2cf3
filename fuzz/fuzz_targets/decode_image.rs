//! Image sniffing, header checks, decoding and preprocessing of arbitrary bytes, for a gray
//! 28² model and an RGB 224² one, with and without DCT-domain JPEG scaling.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resnet_serve::preprocess::{ImageLimits, PreprocessSpec, preprocess_encoded};
use resnet_serve::repository::config::{Color, Interpolation};

fuzz_target!(|data: &[u8]| {
    // The layout is chosen from the length so that seed files stay valid images.
    let (color, side, interpolation) = match data.len() % 3 {
        0 => (Color::Gray, 28, Interpolation::Bilinear),
        1 => (Color::Rgb, 224, Interpolation::Bicubic),
        _ => (Color::Rgb, 224, Interpolation::Nearest),
    };
    let spec = PreprocessSpec {
        color,
        resize_shorter: side + side / 7,
        crop: [side, side],
        interpolation,
        scale: 255.0,
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
        jpeg_dct_scaling: data.len() % 2 == 0,
    };
    // The server's defaults are 40 M pixels; smaller here keeps each run fast.
    let limits = ImageLimits {
        max_pixels: 4_000_000,
        max_aspect_ratio: 32.0,
    };
    let mut out = vec![0.0f32; spec.tensor_len()];
    if preprocess_encoded(data, &spec, &limits, &mut out).is_ok() {
        assert!(out.iter().all(|value| value.is_finite()));
    }
});
