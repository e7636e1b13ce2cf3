//! `resnet-bench` against a real server for a few seconds per protocol: the report is
//! well-formed, every level has requests and zero errors, and the raw-ORT baseline and the
//! ratio are there, with `--metrics` the server's side of each level, and each level's
//! latency split by the stage times the answers carry. Not a timing test:
//! no number is compared with a threshold.

mod support;

use std::process::Command;

use support::{Repository, ServerProcess, default_model_dir, root};

fn bench(
    target: &str,
    protocol: &str,
    extra: &[&str],
    output: &std::path::Path,
) -> serde_json::Value {
    let status = Command::new(env!("CARGO_BIN_EXE_resnet-bench"))
        .args([
            "--target",
            target,
            "--protocol",
            protocol,
            "--model",
            "fashion",
        ])
        .args(["--warmup-seconds", "0.3", "--duration-seconds", "1"])
        .arg("--images")
        .arg(root().join("tests/fixtures/images"))
        .arg("--output")
        .arg(output)
        .args(extra)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "resnet-bench --protocol {protocol}: {status:?}"
    );
    assert!(output.join("latency.svg").is_file());
    let report = std::fs::read_to_string(output.join("report.json")).unwrap();
    serde_json::from_str(&report).unwrap()
}

fn assert_clean_levels(report: &serde_json::Value, expected: usize) {
    let levels = report["levels"].as_array().unwrap();
    assert_eq!(levels.len(), expected, "{report}");
    for level in levels {
        assert!(level["requests"].as_u64().unwrap() > 0, "{level}");
        assert!(
            level["throughput_per_second"].as_f64().unwrap() > 0.0,
            "{level}"
        );
        assert_eq!(level["errors"], serde_json::json!({}), "{level}");
        let latency = &level["latency_ms"];
        assert!(latency["p50"].as_f64().unwrap() <= latency["p99"].as_f64().unwrap());
        // Every protocol's answers carry the server's stage times: inference took time, and
        // what the client saw contains the server's decode and inference.
        let stages = &level["stages"];
        assert!(stages["infer_ms"]["p50"].as_f64().unwrap() > 0.0, "{level}");
        assert!(
            stages["decode_ms"]["p50"].as_f64().unwrap() >= 0.0,
            "{level}"
        );
        assert!(
            stages["outside_ms"]["p50"].as_f64().unwrap() > 0.0,
            "{level}"
        );
        // The server's own total holds its inference and fits in what the client saw.
        let server_total = stages["server_total_ms"]["p50"].as_f64().unwrap();
        assert!(
            server_total >= stages["infer_ms"]["p50"].as_f64().unwrap(),
            "{level}"
        );
        assert!(server_total <= latency["p50"].as_f64().unwrap(), "{level}");
    }
}

#[test]
fn every_protocol_reports_without_errors() {
    let repository = Repository::new().model("fashion", &default_model_dir(), None);
    let server = ServerProcess::spawn(repository.path(), &["--intra-op-threads", "1"]);
    let output = tempfile::tempdir().unwrap();
    let onnx = default_model_dir().join("1/model.onnx");
    let onnx = onnx.to_str().unwrap();

    let report = bench(
        &server.address,
        "rest",
        &[
            "--concurrency",
            "1,2",
            "--baseline",
            "raw-ort",
            "--onnx",
            onnx,
            "--threads",
            "1",
            "--metrics",
            &server.metrics_address,
        ],
        &output.path().join("rest"),
    );
    assert_clean_levels(&report, 2);
    // The server's side of each level, from its metrics: it ran inference in the window.
    for level in report["levels"].as_array().unwrap() {
        let server = &level["server"];
        assert!(
            server["inference_busy_fraction"].as_f64().unwrap() > 0.0,
            "{server}"
        );
        assert!(
            server["inference_images_per_second"].as_f64().unwrap() > 0.0,
            "{server}"
        );
        assert!(
            server["mean_batch_size"].as_f64().unwrap() >= 1.0,
            "{server}"
        );
    }
    assert!(report["inference_in_server_over_raw_ort"].as_f64().unwrap() > 0.0);
    let raw = &report["raw_ort"];
    assert!(
        raw["best_images_per_second"].as_f64().unwrap() > 0.0,
        "{raw}"
    );
    assert!(report["server_over_raw_ort"].as_f64().unwrap() > 0.0);
    assert!(
        report["server_over_raw_ort_at_server_batch"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // Concurrency 1 against raw ORT batch 1, in alternating windows: both sides measured.
    let paired = &report["paired"];
    assert_eq!(paired["errors"], 0, "{paired}");
    assert!(paired["requests"].as_u64().unwrap() > 0, "{paired}");
    assert!(
        paired["raw_ort_batch1_runs"].as_u64().unwrap() > 0,
        "{paired}"
    );
    let (server_p50, raw_p50) = (
        paired["server_p50_ms"].as_f64().unwrap(),
        paired["raw_ort_batch1_p50_ms"].as_f64().unwrap(),
    );
    assert!(server_p50 > 0.0 && raw_p50 > 0.0, "{paired}");
    // serde_json's float parsing may differ from the written value in the last bit.
    let overhead = report["p50_overhead_at_concurrency_1_ms"].as_f64().unwrap();
    assert!(
        (overhead - (server_p50 - raw_p50)).abs() < 1e-9,
        "{overhead} {paired}"
    );
    assert!(report["p50_outside_decode_and_inference_at_concurrency_1_ms"].is_number());

    let open = bench(
        &server.address,
        "rest",
        &["--rate", "20", "--deadline-ms", "10000"],
        &output.path().join("open"),
    );
    assert_clean_levels(&open, 1);
    assert_eq!(open["levels"][0]["mode"], "open");

    for (target, protocol) in [
        (&server.grpc_address, "grpc"),
        (&server.address, "v2-rest"),
        (&server.grpc_address, "v2-grpc"),
    ] {
        let report = bench(
            target,
            protocol,
            &["--concurrency", "2", "--deadline-ms", "10000"],
            &output.path().join(protocol),
        );
        assert_clean_levels(&report, 1);
    }
}
