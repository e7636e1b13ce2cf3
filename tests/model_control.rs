//! Model control (`--enable-model-control`) and repository polling: a new version is loaded
//! while the old one serves, with no failed request during the rollout; unload takes a model
//! out of service; a broken version never replaces a working one.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::{Repository, TestServer, image, slow_model_dir, start};

fn copy_version(repository: &Repository, from: u64, to: u64) {
    let source = repository.path().join(format!("slow/{from}/model.onnx"));
    let target = repository.path().join(format!("slow/{to}"));
    std::fs::create_dir_all(&target).unwrap();
    std::fs::copy(source, target.join("model.onnx")).unwrap();
}

async fn classify_version(server: &TestServer) -> (u16, String) {
    let response = server
        .classify_raw("", "image/png", image("fashion-0-label9.png"))
        .await;
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    (
        status,
        body["version"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_rolls_out_a_new_version_without_failing_a_request() {
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let server = Arc::new(start(repository.path(), &["--enable-model-control"]).await);
    assert_eq!(classify_version(&server).await, (200, "1".into()));

    // Clients keep sending while version 2 is loaded, warmed up and swapped in.
    let done = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (server, done) = (server.clone(), done.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !done.load(Ordering::Acquire) {
                statuses.push(classify_version(&server).await);
            }
            statuses
        })
    };
    copy_version(&repository, 1, 2);
    assert_eq!(
        server.post_status("/v2/repository/models/slow/load").await,
        200
    );
    assert_eq!(classify_version(&server).await, (200, "2".into()));
    done.store(true, Ordering::Release);
    let statuses = traffic.await.unwrap();
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|(status, _)| *status == 200),
        "{statuses:?}"
    );

    // The default policy serves the latest version only: version 1 was retired.
    let index: serde_json::Value = server
        .client
        .post(server.url("/v2/repository/index"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let states: Vec<_> = index
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| (entry["version"].clone(), entry["state"].clone()))
        .collect();
    assert!(
        states.contains(&(serde_json::json!("2"), serde_json::json!("READY"))),
        "{index}"
    );
    assert!(
        states.contains(&(serde_json::json!("1"), serde_json::json!("UNAVAILABLE"))),
        "{index}"
    );

    // A broken version 3 fails to load and version 2 keeps serving.
    std::fs::create_dir_all(repository.path().join("slow/3")).unwrap();
    std::fs::write(repository.path().join("slow/3/model.onnx"), b"not a model").unwrap();
    let response = server
        .client
        .post(server.url("/v2/repository/models/slow/load"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("failed to load model `slow`")
    );
    assert_eq!(classify_version(&server).await, (200, "2".into()));

    // Unload takes the model out of service; strict readiness is unaffected by an unload on request.
    assert_eq!(
        server
            .post_status("/v2/repository/models/slow/unload")
            .await,
        200
    );
    assert_eq!(classify_version(&server).await.0, 503);
    assert_eq!(
        server.post_status("/v2/repository/models/nope/load").await,
        404
    );
    let server = Arc::into_inner(server).unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_picks_up_a_new_version() {
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let server = start(repository.path(), &["--repository-poll-seconds", "1"]).await;
    assert_eq!(classify_version(&server).await, (200, "1".into()));
    copy_version(&repository, 1, 2);
    let mut version = String::new();
    for _ in 0..100 {
        version = classify_version(&server).await.1;
        if version == "2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(version, "2");
    // Without --enable-model-control, explicit load stays off.
    assert_eq!(
        server.post_status("/v2/repository/models/slow/load").await,
        501
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_names_and_versions_cannot_reach_outside_the_repository() {
    // A model directory beside the repository, which a traversal would find.
    let outside = Repository::new().model("slow", &slow_model_dir(), None);
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let relative = format!(
        "..%2F{}%2Fslow",
        outside.path().file_name().unwrap().to_str().unwrap()
    );
    let server = start(repository.path(), &["--enable-model-control"]).await;
    for name in [
        relative.as_str(),
        "..",
        "%2E%2E",
        "..%2F..%2Fetc%2Fpasswd",
        "slow%2F..%2Fslow",
    ] {
        for path in [
            format!("/v2/repository/models/{name}/load"),
            format!("/v2/repository/models/{name}/unload"),
        ] {
            let status = server.post_status(&path).await;
            assert!(matches!(status, 400 | 404), "{path}: {status}");
        }
        let ready = server.get_status(&format!("/v2/models/{name}/ready")).await;
        assert!(matches!(ready, 400 | 404), "{name} ready: {ready}");
        let response = server
            .classify_raw(
                &format!("?model={name}"),
                "image/png",
                image("fashion-0-label9.png"),
            )
            .await;
        assert_eq!(response.status(), 404, "/classify?model={name}");
    }
    for version in ["..", "..%2F1", "1%2F..%2F1", "-1", "01x"] {
        let response = server
            .classify_raw(
                &format!("?model=slow&version={version}"),
                "image/png",
                image("fashion-0-label9.png"),
            )
            .await;
        assert!(
            matches!(response.status().as_u16(), 400 | 404),
            "version {version}: {}",
            response.status()
        );
    }
    // Nothing was loaded from outside: the repository still has its one model.
    let index: serde_json::Value = server
        .client
        .post(server.url("/v2/repository/index"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(index.as_array().unwrap().len(), 1, "{index}");
    server.stop().await;
}
