//! A CI-sized training run on the committed Fashion-MNIST fixture: the loss falls, checkpoints
//! resume, and the exported model directory passes the checker and matches ONNX Runtime.
#![cfg(feature = "train")]

use std::path::Path;
use std::process::Command;

use candle_core::Device;
use resnet_serve::repository::config::{Color, ModelConfig};
use resnet_serve::train::data::{Augment, Normalization, fashion_mnist};
use resnet_serve::train::model_dir::{Golden, ModelDirSpec, write_model_dir};
use resnet_serve::train::params::Params;
use resnet_serve::train::resnet::{Arch, ResNet};
use resnet_serve::train::trainer::{Schedule, TrainConfig, train};

#[test]
fn trains_resumes_and_exports_a_model_onnx_runtime_agrees_with() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train/fashion-mnist");
    let (train_set, test_set) = fashion_mnist(Some(&fixtures)).unwrap();
    let train_set = train_set.subset(&(0..64).collect::<Vec<_>>());
    let normalization = Normalization::fashion_mnist();
    let runs = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        epochs: 4,
        batch_size: 32,
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-4,
        schedule: Schedule::Cosine,
        warmup_epochs: 0.0,
        seed: 3,
        checkpoint_dir: Some(runs.path().to_path_buf()),
        resume: true,
        max_steps: None,
        progress: false,
    };
    let build = || {
        let mut params = Params::new(Device::Cpu, 3);
        let model = ResNet::new(Arch::Cifar(20), 1, 10, &mut params).unwrap();
        (model, params)
    };
    // Two epochs, then a "restart" that resumes from last.safetensors for the other two.
    let (model, params) = build();
    let first = train(
        &model,
        &params,
        &train_set,
        None,
        &normalization,
        Augment::NONE,
        &TrainConfig {
            epochs: 2,
            ..config.clone()
        },
        |_| {},
    )
    .unwrap();
    assert!(runs.path().join("epoch-002.safetensors").exists());
    let (model, params) = build();
    let rest = train(
        &model,
        &params,
        &train_set,
        Some(&test_set),
        &normalization,
        Augment::NONE,
        &config,
        |_| {},
    )
    .unwrap();
    assert_eq!(
        rest.first().map(|report| report.epoch),
        Some(3),
        "resumed after epoch 2"
    );
    let losses: Vec<f64> = first
        .iter()
        .chain(&rest)
        .map(|report| report.loss)
        .collect();
    assert!(
        losses[3] < losses[0] * 0.9 && losses[3] < losses[1],
        "loss did not fall: {losses:?}"
    );

    let output = runs.path().join("fashion-resnet20");
    let spec = ModelDirSpec {
        input_dims: [1, 28, 28],
        resize_shorter: 28,
        normalization,
        labels: test_set.classes.clone(),
        default: true,
        golden: Some(Golden {
            images: &test_set,
            indices: (0..8).collect(),
        }),
        card: "# smoke\n".into(),
    };
    write_model_dir(&model, &spec, &output).unwrap();
    let config = ModelConfig::read(&output.join("config.toml")).unwrap();
    assert_eq!(config.input.color, Some(Color::Gray));
    assert_eq!(config.preprocess.mean, Some(vec![0.2860]));
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("golden.json")).unwrap())
            .unwrap();
    assert_eq!(golden["cases"][0]["label"], 9);
    assert_eq!(golden["cases"].as_array().unwrap().len(), 8);
    let labels = std::fs::read_to_string(output.join("labels.txt")).unwrap();
    assert_eq!(labels.lines().nth(9), Some("Ankle boot"));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_onnx.py");
    let result = Command::new("python3")
        .arg(script)
        .arg(&output)
        .args(["--atol", "1e-4", "--rtol", "0"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&result.stdout).to_string()
        + &String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{report}");
}
