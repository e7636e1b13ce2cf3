//! Our decode + colour + resize + crop against Pillow with torchvision's rules, on real files
//! (expected windows computed by scripts/preprocess_reference.py), within DESIGN §7 tolerances.

use std::path::Path;

use resnet_serve::preprocess::{self, ImageLimits, PreprocessSpec};
use resnet_serve::repository::config::{Color, Interpolation};

#[derive(serde::Deserialize)]
struct Case {
    image: String,
    spec: String,
    expected: String,
    lossy: bool,
}

fn spec(name: &str) -> PreprocessSpec {
    let (color, resize_shorter, crop) = match name {
        "rgb56" => (Color::Rgb, 64, [56, 56]),
        "gray28" => (Color::Gray, 28, [28, 28]),
        "rgb224" => (Color::Rgb, 256, [224, 224]),
        other => panic!("unknown spec {other}"),
    };
    let channels = if color == Color::Rgb { 3 } else { 1 };
    PreprocessSpec {
        color,
        resize_shorter,
        crop,
        interpolation: Interpolation::Bilinear,
        scale: 255.0,
        mean: vec![0.0; channels],
        std: vec![1.0; channels],
        jpeg_dct_scaling: false,
    }
}

#[test]
fn preprocess_matches_pillow() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let manifest = std::fs::read_to_string(root.join("preprocess/manifest.json")).unwrap();
    let cases: Vec<Case> = serde_json::from_str(&manifest).unwrap();
    assert!(
        cases.len() >= 40,
        "fixture manifest too small: {}",
        cases.len()
    );
    let limits = ImageLimits {
        max_pixels: 40_000_000,
        max_aspect_ratio: 32.0,
    };
    let mut failures = Vec::new();
    for case in &cases {
        let bytes = std::fs::read(root.join("images").join(&case.image)).unwrap();
        let spec = spec(&case.spec);
        let pixels = preprocess::decode_pixels(&bytes, &spec, &limits).unwrap();
        let ours = preprocess::crop_window(&pixels, &spec).unwrap();
        let expected = std::fs::read(root.join("preprocess").join(&case.expected)).unwrap();
        assert_eq!(ours.len(), expected.len(), "{} {}", case.image, case.spec);
        let differences: Vec<u32> = ours
            .iter()
            .zip(&expected)
            .map(|(a, b)| u32::from(a.abs_diff(*b)))
            .collect();
        let max = differences.iter().copied().max().unwrap_or(0);
        let mean = differences.iter().sum::<u32>() as f64 / differences.len() as f64;
        // DESIGN §7: lossless max ≤ 1, mean ≤ 0.25; JPEG max ≤ 4, mean ≤ 0.5.
        let (max_limit, mean_limit) = if case.lossy { (4, 0.5) } else { (1, 0.25) };
        println!("{:32} {:7} max {max} mean {mean:.4}", case.image, case.spec);
        if max > max_limit || mean > mean_limit {
            failures.push(format!(
                "{} {}: max {max}, mean {mean:.3}",
                case.image, case.spec
            ));
        }
    }
    assert!(failures.is_empty(), "outside tolerance: {failures:#?}");
}
