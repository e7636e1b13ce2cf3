//! Start-up and shutdown: readiness, model load failures (`--exit-on-error`,
//! `--strict-readiness`), and a SIGTERM drain that loses no accepted request.

mod support;

use std::time::Duration;

use support::{Repository, ServerProcess, config, image, slow_model_dir, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_model_stops_start_up_or_is_reported_unavailable() {
    let repository = Repository::new()
        .model("slow", &slow_model_dir(), Some("default = true\n"))
        .model("broken", &slow_model_dir(), None);
    std::fs::write(
        repository.path().join("broken/1/model.onnx"),
        b"not an onnx file",
    )
    .unwrap();

    let error = resnet_serve::server::start(config(repository.path(), &[]))
        .await
        .err()
        .unwrap();
    let message = format!("{error:#}");
    assert!(
        message.contains("broken") && message.contains("--exit-on-error"),
        "{message}"
    );

    // Without exit-on-error it serves the other model; strict readiness keeps it not ready.
    let server = start(repository.path(), &["--exit-on-error=false"]).await;
    let ready = server
        .client
        .get(server.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let response = server
        .classify_raw("", "image/png", image("fashion-0-label9.png"))
        .await;
    assert_eq!(response.status(), 200);
    let response = server
        .classify_raw("?model=broken", "image/png", image("fashion-0-label9.png"))
        .await;
    assert_eq!(response.status(), 503);
    let models: serde_json::Value = server
        .client
        .get(server.url("/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let broken = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|model| model["name"] == "broken")
        .unwrap();
    assert_eq!(broken["versions"][0]["state"], "UNAVAILABLE");
    assert!(
        broken["versions"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("model.onnx"),
        "{broken}"
    );
    server.stop().await;

    let server = start(
        repository.path(),
        &["--exit-on-error=false", "--strict-readiness=false"],
    )
    .await;
    assert_eq!(server.get_status("/health/ready").await, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_not_ready_then_finishes_in_flight_requests() {
    let config_toml = "[batching]\nmax_batch_size = 1\n";
    let repository = Repository::new().model("slow", &slow_model_dir(), Some(config_toml));
    let server = support::start(repository.path(), &["--drain-seconds", "1"]).await;
    let png = image("fashion-0-label9.png");
    let in_flight: Vec<_> = (0..6)
        .map(|_| {
            let request = server
                .client
                .post(server.url("/classify"))
                .header("content-type", "image/png")
                .body(png.clone());
            tokio::spawn(async move {
                request
                    .send()
                    .await
                    .map(|response| response.status().as_u16())
            })
        })
        .collect();
    // Wait until the requests are being processed, then begin shutdown.
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.server.shutdown();
    // Not ready at once, but still accepting during the drain period.
    let mut ready = 200;
    for _ in 0..100 {
        ready = server.get_status("/health/ready").await;
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(ready, 503);
    let during_drain = server.classify_raw("", "image/png", png).await;
    assert_eq!(during_drain.status(), 200);
    for request in in_flight {
        assert_eq!(request.await.unwrap().unwrap(), 200);
    }
    server.server.wait().await.unwrap();
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let repository = Repository::new().model(
        "slow",
        &slow_model_dir(),
        Some("[batching]\nmax_batch_size = 1\n"),
    );
    let mut server = ServerProcess::spawn(repository.path(), &["--drain-seconds", "1"]);
    let address = server.address.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let statuses = runtime.block_on(async {
        let client = reqwest::Client::new();
        let png = image("fashion-0-label9.png");
        let requests: Vec<_> = (0..4)
            .map(|_| {
                let request = client
                    .post(format!("http://{address}/classify"))
                    .header("content-type", "image/png")
                    .body(png.clone());
                tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(30)).await;
        server.terminate();
        futures::future::join_all(requests)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    });
    assert_eq!(statuses, vec![200; 4]);
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let logged: Vec<String> = server.lines.by_ref().map_while(Result::ok).collect();
    assert!(
        logged.iter().any(|line| line.contains("SIGTERM")),
        "{logged:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_golden_mismatch_keeps_the_model_out_of_ready() {
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    std::fs::create_dir_all(repository.path().join("slow/golden")).unwrap();
    std::fs::write(
        repository.path().join("slow/golden/0.png"),
        image("fashion-0-label9.png"),
    )
    .unwrap();
    let golden = serde_json::json!({"atol": 1e-4, "rtol": 1e-3, "cases": [
        {"file": "golden/0.png", "label": 9, "logits": vec![0.0; 10]}
    ]});
    std::fs::write(
        repository.path().join("slow/golden.json"),
        golden.to_string(),
    )
    .unwrap();
    let error = resnet_serve::server::start(config(repository.path(), &[]))
        .await
        .err()
        .unwrap();
    let message = format!("{error:#}");
    assert!(
        message.contains("golden check failed for golden/0.png"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_guards_inference_but_not_health() {
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let server = start(repository.path(), &["--api-key", "s3cret"]).await;
    let png = image("fashion-0-label9.png");
    let response = server.classify_raw("", "image/png", png.clone()).await;
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(support::error_of(response).await.1, "unauthorized");
    let wrong = server
        .client
        .post(server.url("/classify"))
        .bearer_auth("s3cret!")
        .body(png.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = server
        .client
        .post(server.url("/classify"))
        .bearer_auth("s3cret")
        .body(png)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(server.get_status("/models").await, 401);
    assert_eq!(server.get_status("/health/ready").await, 200);
    assert_eq!(
        server
            .client
            .get(&server.metrics)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuda_without_a_gpu_fails_clearly_unless_cpu_fallback_is_allowed() {
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let error = resnet_serve::server::start(config(repository.path(), &["--device", "cuda"]))
        .await
        .err()
        .unwrap();
    let message = format!("{error:#}");
    assert!(
        message.contains("CUDA execution provider unavailable")
            && message.contains("--allow-cpu-fallback"),
        "{message}"
    );
    let server = start(
        repository.path(),
        &["--device", "cuda:0", "--allow-cpu-fallback"],
    )
    .await;
    let metrics = server.metrics_text().await;
    assert!(metrics.contains("execution_provider=\"cpu\""), "{metrics}");
    let response = server
        .classify_raw("", "image/png", image("fashion-0-label9.png"))
        .await;
    assert_eq!(response.status(), 200);
    server.stop().await;
}
