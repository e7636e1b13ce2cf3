//! ONNX export of random-weight ResNets: checker full_check and ORT parity with candle.
#![cfg(feature = "train")]

use std::path::Path;
use std::process::Command;

use candle_core::Device;
use resnet_serve::repository::config::{Color, ModelConfig};
use resnet_serve::train::data::{Dataset, Normalization};
use resnet_serve::train::model_dir::{Golden, ModelDirSpec, write_model_dir};
use resnet_serve::train::params::Params;
use resnet_serve::train::resnet::{Arch, ResNet};

/// Runs `scripts/check_onnx.py` on a model directory and returns its report.
fn check(dir: &Path, tolerance: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_onnx.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(dir)
        .args(tolerance)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "check_onnx.py failed:\n{report}");
    report
}

/// Synthetic RGB images at the resize size, so the golden path includes the centre crop.
fn synthetic(count: usize, side: usize) -> Dataset {
    let pixels = (0..count * 3 * side * side)
        .map(|i| ((i * 37 + i / side * 11) % 256) as u8)
        .collect();
    Dataset {
        pixels,
        labels: vec![0; count],
        dims: [3, side, side],
        classes: vec![],
    }
}

fn export_random(arch: Arch, classes: usize, input: usize, resize: usize, dir: &Path) {
    let mut params = Params::new(Device::Cpu, 42);
    let model = ResNet::new(arch, 3, classes, &mut params).unwrap();
    // Fresh BN layers are the identity; random statistics make folding matter.
    params.randomize_batch_norm().unwrap();
    let images = synthetic(2, resize);
    let spec = ModelDirSpec {
        input_dims: [3, input, input],
        resize_shorter: resize as u32,
        normalization: Normalization::imagenet(),
        labels: (0..classes).map(|class| format!("class_{class}")).collect(),
        default: false,
        golden: Some(Golden {
            images: &images,
            indices: vec![0, 1],
        }),
        card: "# test\n".into(),
    };
    write_model_dir(&model, &spec, dir).unwrap();
}

#[test]
fn resnet18_random_weights_match_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    // 64 px input resized from 73 (256/224 of it) exercises the odd centre-crop offset.
    export_random(Arch::ImageNet(18), 10, 64, 73, dir.path());
    let report = check(dir.path(), &["--atol", "1e-4", "--rtol", "1e-4"]);
    assert!(report.contains("20 Conv"), "{report}");
    let config = ModelConfig::read(&dir.path().join("config.toml")).unwrap();
    assert_eq!(config.input.color, Some(Color::Rgb));
    assert_eq!(config.preprocess.crop, Some([64, 64]));
}

#[test]
fn resnet50_imagenet_layout_matches_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    export_random(Arch::ImageNet(50), 1000, 224, 256, dir.path());
    let report = check(dir.path(), &["--atol", "1e-4", "--rtol", "1e-4"]);
    assert!(report.contains("53 Conv"), "{report}");
    let labels = std::fs::read_to_string(dir.path().join("labels.txt")).unwrap();
    assert_eq!(labels.lines().count(), 1000);
}
