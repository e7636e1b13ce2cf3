//! Conformance: NVIDIA's Python `tritonclient` (HTTP and gRPC) against the real server, via
//! `tests/conformance/tritonclient_check.py`. Needs `pip install -r requirements.txt`.

mod support;

use support::{Repository, root, slow_model_dir, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_http_and_grpc_work_against_the_server() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = tokio::process::Command::new(&python)
        .args(["-c", "import tritonclient.http, tritonclient.grpc"])
        .output()
        .await
        .expect("python3 runs");
    assert!(
        probe.status.success(),
        "tritonclient is not installed (pip install -r requirements.txt): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let server = start(repository.path(), &["--max-batch-size", "4"]).await;
    let output = tokio::process::Command::new(&python)
        .arg(root().join("tests/conformance/tritonclient_check.py"))
        .args(["--http", &server.server.http_address.to_string()])
        .args(["--grpc", &server.server.grpc_address.to_string()])
        .args(["--model", "slow", "--max-batch-size", "4"])
        .arg("--image")
        .arg(root().join("tests/fixtures/images/fashion-0-label9.png"))
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tritonclient check failed\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("tritonclient.http: ok") && stdout.contains("tritonclient.grpc: ok"),
        "{stdout}"
    );
    server.stop().await;
}
