//! Bad input over REST: every error path answers with its status code and a JSON message that
//! names the problem, and the server stays healthy.

mod support;

use support::{Repository, error_of, image, slow_model_dir, start};

/// A PNG header claiming `width × height` pixels, with a valid IHDR CRC and nothing after it.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    let crc = crc32(&ihdr);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc.to_be_bytes());
    png
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn repository() -> Repository {
    Repository::new().model("slow", &slow_model_dir(), None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_status_and_a_clear_message() {
    let repository = repository();
    let server = start(
        repository.path(),
        &[
            "--max-body-bytes",
            "200000",
            "--max-image-pixels",
            "1000000",
        ],
    )
    .await;
    let jpeg = image("cat-451x300.jpg");
    let png = image("fashion-0-label9.png");

    let mut corrupt_png = png.clone();
    let middle = corrupt_png.len() / 2;
    corrupt_png[middle] ^= 0xFF;
    let mut heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic".to_vec();
    heic.extend([0; 64]);

    // (case, query, content type, body, status, code, message fragment)
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<u8>, u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "empty body",
            "",
            "image/png",
            vec![],
            400,
            "empty_body",
            "empty",
        ),
        (
            "text content type",
            "",
            "text/plain",
            b"hello".to_vec(),
            415,
            "unsupported_media_type",
            "text/plain",
        ),
        (
            "non-image bytes",
            "",
            "application/octet-stream",
            b"just some text".to_vec(),
            415,
            "unsupported_media_type",
            "jpeg, png",
        ),
        (
            "heic",
            "",
            "image/heic",
            heic,
            415,
            "unsupported_media_type",
            "heic",
        ),
        (
            "truncated jpeg",
            "",
            "image/jpeg",
            jpeg[..jpeg.len() / 2].to_vec(),
            422,
            "undecodable_image",
            "jpeg",
        ),
        (
            "corrupt png",
            "",
            "image/png",
            corrupt_png,
            422,
            "undecodable_image",
            "png",
        ),
        (
            "pixel bomb",
            "",
            "image/png",
            png_header(50_000, 50_000),
            413,
            "image_too_large",
            "2500000000 pixels",
        ),
        (
            "extreme aspect ratio",
            "",
            "image/png",
            png_header(2, 200),
            422,
            "aspect_ratio_too_large",
            "2×200",
        ),
        (
            "body over the limit",
            "",
            "application/octet-stream",
            vec![0xFF; 300_000],
            413,
            "body_too_large",
            "200000 bytes",
        ),
        (
            "top_k zero",
            "?top_k=0",
            "image/png",
            png.clone(),
            400,
            "invalid_top_k",
            "got 0",
        ),
        (
            "top_k too large",
            "?top_k=11",
            "image/png",
            png.clone(),
            400,
            "invalid_top_k",
            "between 1 and 10",
        ),
        (
            "top_k huge",
            "?top_k=1000000000",
            "image/png",
            png.clone(),
            400,
            "invalid_top_k",
            "1000000000",
        ),
        (
            "top_k negative",
            "?top_k=-3",
            "image/png",
            png.clone(),
            400,
            "invalid_top_k",
            "-3",
        ),
        (
            "top_k not a number",
            "?top_k=five",
            "image/png",
            png.clone(),
            400,
            "invalid_top_k",
            "five",
        ),
        (
            "unknown query",
            "?colour=red",
            "image/png",
            png.clone(),
            400,
            "bad_query",
            "colour",
        ),
        (
            "unknown model",
            "?model=nope",
            "image/png",
            png.clone(),
            404,
            "model_not_found",
            "nope",
        ),
        (
            "unknown version",
            "?version=7",
            "image/png",
            png.clone(),
            404,
            "version_not_found",
            "7",
        ),
        (
            "bad json",
            "",
            "application/json",
            b"{\"image\":".to_vec(),
            400,
            "bad_json",
            "invalid JSON",
        ),
        (
            "json of wrong shape",
            "",
            "application/json",
            br#"{"picture": "aGk="}"#.to_vec(),
            400,
            "bad_json",
            "picture",
        ),
        (
            "bad base64",
            "",
            "application/json",
            br#"{"image": "%%%"}"#.to_vec(),
            400,
            "bad_base64",
            "invalid base64",
        ),
        (
            "base64 of non-image",
            "",
            "application/json",
            br#"{"images": ["iVBORw0KGgo=", "aGVsbG8="]}"#.to_vec(),
            422,
            "undecodable_image",
            "image 0",
        ),
        (
            "multipart without boundary",
            "",
            "multipart/form-data",
            b"--x\r\n".to_vec(),
            400,
            "bad_multipart",
            "multipart",
        ),
    ];
    for (name, query, content_type, body, status, code, fragment) in cases {
        let response = server.classify_raw(query, content_type, body).await;
        let (actual_status, actual_code, message) = error_of(response).await;
        assert_eq!(
            (actual_status, actual_code.as_str()),
            (status, code),
            "{name}: {message}"
        );
        assert!(
            message.contains(fragment),
            "{name}: message `{message}` lacks `{fragment}`"
        );
    }

    // A multi-image request fails whole and names the bad image's position.
    let form = reqwest::multipart::Form::new()
        .part(
            "a",
            reqwest::multipart::Part::bytes(png.clone()).file_name("a.png"),
        )
        .part(
            "b",
            reqwest::multipart::Part::bytes(b"not an image".to_vec()).file_name("b.png"),
        );
    let response = server
        .client
        .post(server.url("/classify"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, 415);
    assert!(message.starts_with("image 1:"), "{message}");

    let form = reqwest::multipart::Form::new().text("note", "no files here");
    let response = server
        .client
        .post(server.url("/classify"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(response).await;
    assert_eq!((status, code.as_str()), (400, "bad_multipart"), "{message}");

    // Framework rejections use the same JSON shape.
    let (status, code, _) = error_of(
        server
            .client
            .get(server.url("/classify"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (405, "method_not_allowed"));
    let (status, code, _) = error_of(
        server
            .client
            .get(server.url("/nowhere"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    let response = server
        .client
        .post(server.url("/classify"))
        .header("x-request-timeout-ms", "soon")
        .body(png.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.0, 400);

    // No 5xx, and the server still answers.
    let metrics = server.metrics_text().await;
    assert!(
        !metrics.lines().any(
            |line| line.starts_with("resnet_serve_requests_total") && line.contains("code=\"5")
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("resnet_serve_requests_total{code=\"404\",model=\"_unknown\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("resnet_serve_rejected_total{model=\"slow\",reason=\"invalid\"}"),
        "{metrics}"
    );
    let response = server.classify_raw("", "image/png", png).await;
    assert_eq!(response.status(), 200);
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("resnet_serve_images_total{model=\"slow\"}"),
        "{metrics}"
    );
    // Without a latency target there is no admission margin to show.
    assert!(
        !metrics.contains("resnet_serve_admission_margin{"),
        "{metrics}"
    );
    assert_eq!(server.get_status("/health/ready").await, 200);
    server.stop().await;
}
