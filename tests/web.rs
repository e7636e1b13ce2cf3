//! The web page, the OpenAPI document and CORS: the document validates, lists exactly the
//! routes served, and the page works in a real headless browser.

mod support;

use std::process::Command;

use support::{Repository, image, root, slow_model_dir, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_route_and_validates() {
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let server = start(repository.path(), &[]).await;
    let text = server
        .client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let spec: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = spec["paths"].as_object().unwrap();
    // Every documented operation is served: none answers the router's 404 or 405.
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let concrete = path.replace("{model}", "slow").replace("{version}", "1");
            let request = match method.as_str() {
                "get" => server.client.get(server.url(&concrete)),
                "post" => server
                    .client
                    .post(server.url(&concrete))
                    .body(Vec::<u8>::new()),
                other => panic!("unexpected method {other}"),
            };
            let status = request.send().await.unwrap().status().as_u16();
            assert!(status != 404 && status != 405, "{method} {path}: {status}");
        }
    }
    for expected in [
        "/classify",
        "/models",
        "/health/live",
        "/health/ready",
        "/",
        "/openapi.json",
        "/v2",
        "/v2/health/ready",
        "/v2/models/{model}/infer",
        "/v2/models/{model}/versions/{version}/config",
        "/v2/repository/index",
    ] {
        assert!(
            paths.contains_key(expected),
            "{expected} missing from {:?}",
            paths.keys()
        );
    }
    assert_eq!(
        paths["/classify"]["post"]["responses"]["415"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    let output = Command::new("python3")
        .args([
            "-m",
            "openapi_spec_validator",
            file.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_can_be_turned_off_and_cors_is_opt_in() {
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let server = start(repository.path(), &[]).await;
    let page = server.client.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page must not load external assets"
    );
    let preflight = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/classify"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    server.stop().await;

    let server = start(
        repository.path(),
        &["--no-web-ui", "--cors-allow-origin", "https://app.example"],
    )
    .await;
    assert_eq!(server.get_status("/").await, 404);
    let spec: serde_json::Value = server
        .client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["paths"].get("/").is_none());
    let response = server
        .client
        .post(server.url("/classify"))
        .header("origin", "https://app.example")
        .header("content-type", "image/png")
        .body(image("fashion-0-label9.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        response.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("server-timing")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_classifies_an_upload_in_headless_chromium() {
    let repository =
        Repository::new().model("fashion-resnet20", &support::default_model_dir(), None);
    let server = start(repository.path(), &[]).await;
    let out = root().join("target/browser");
    let bad = tempfile::NamedTempFile::with_suffix(".png").unwrap();
    std::fs::write(bad.path(), b"this is not an image").unwrap();
    let images = root().join("tests/fixtures/images");
    let output = Command::new("python3")
        .arg(root().join("tests/browser/page_check.py"))
        .arg(server.url("/"))
        .arg(images.join("fashion-0-label9.png"))
        .arg("Ankle boot")
        .arg(bad.path())
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(out.join("page.png").exists());
    server.stop().await;
}
