//! gRPC: `resnet.v1.ClassifyService`, health and reflection against a real server, with the
//! generated client, including bad input and the status codes of DESIGN §4.2.

mod support;

use resnet_serve::grpc::proto::classify_service_client::ClassifyServiceClient;
use resnet_serve::grpc::proto::{self, ClassifyRequest, Image, RawImage, image::Data};
use support::{Repository, TestServer, image, slow_model_dir, start};
use tonic::Code;
use tonic::transport::Channel;

async fn client(server: &TestServer) -> ClassifyServiceClient<Channel> {
    ClassifyServiceClient::connect(format!("http://{}", server.server.grpc_address))
        .await
        .unwrap()
}

fn encoded(bytes: Vec<u8>) -> Image {
    Image {
        data: Some(Data::Encoded(bytes)),
    }
}

fn request(id: &str, images: Vec<Image>) -> ClassifyRequest {
    ClassifyRequest {
        id: id.into(),
        images,
        ..Default::default()
    }
}

/// The pixels of a Fashion-MNIST fixture, decoded (8-bit gray PNG) by the test itself.
fn gray_pixels(name: &str) -> (u32, u32, Vec<u8>) {
    let decoded = image::load_from_memory(&support::image(name))
        .unwrap()
        .into_luma8();
    (decoded.width(), decoded.height(), decoded.into_raw())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_encoded_and_raw_images() {
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let server = start(repository.path(), &[]).await;
    let mut client = client(&server).await;

    let response = client
        .classify(request("one", vec![encoded(image("fashion-0-label9.png"))]))
        .await
        .unwrap();
    let response = response.into_inner();
    assert_eq!(
        (
            response.id.as_str(),
            response.model.as_str(),
            response.version.as_str()
        ),
        ("one", "slow", "1")
    );
    assert_eq!(response.results.len(), 1);
    let predictions = &response.results[0].predictions;
    assert_eq!(predictions.len(), 5);
    assert!(
        predictions
            .windows(2)
            .all(|pair| pair[0].score >= pair[1].score)
    );
    let timing = response.timing.unwrap();
    assert!(
        timing.total_ms >= timing.infer_ms && timing.infer_ms > 0.0,
        "{timing:?}"
    );

    // The same pixels sent raw give the same answer.
    let (width, height, pixels) = gray_pixels("fashion-0-label9.png");
    let raw = Image {
        data: Some(Data::Raw(RawImage {
            width,
            height,
            format: proto::PixelFormat::Gray8 as i32,
            pixels,
        })),
    };
    let mut two = request("two", vec![raw, encoded(image("fashion-1-label2.png"))]);
    two.top_k = Some(2);
    let response = client.classify(two).await.unwrap().into_inner();
    assert_eq!(response.results.len(), 2);
    assert_eq!(
        response.results[0].predictions[0].index,
        predictions[0].index
    );
    assert!((response.results[0].predictions[0].score - predictions[0].score).abs() < 1e-6);
    assert_eq!(response.results[1].predictions.len(), 2);

    let models = client
        .list_models(proto::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(models.default_model, "slow");
    assert_eq!(models.models[0].versions[0].state, "READY");
    assert_eq!(
        models.models[0].input.as_ref().unwrap().shape,
        vec![-1, 1, 28, 28]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_design_status_codes() {
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let server = start(
        repository.path(),
        &[
            "--grpc-max-message-bytes",
            "100000",
            "--max-image-pixels",
            "50000",
        ],
    )
    .await;
    let mut client = client(&server).await;
    let png = image("fashion-0-label9.png");
    let raw = |width, height, format: proto::PixelFormat, length| Image {
        data: Some(Data::Raw(RawImage {
            width,
            height,
            format: format as i32,
            pixels: vec![0; length],
        })),
    };
    let mut zero_top_k = request("k", vec![encoded(png.clone())]);
    zero_top_k.top_k = Some(0);
    let mut unknown_model = request("m", vec![encoded(png.clone())]);
    unknown_model.model = "nope".into();
    let mut bad_priority = request("p", vec![encoded(png.clone())]);
    bad_priority.priority = 9;
    let cases = vec![
        ("top_k 0", zero_top_k, Code::InvalidArgument, "top_k"),
        ("unknown model", unknown_model, Code::NotFound, "nope"),
        ("priority", bad_priority, Code::InvalidArgument, "priority"),
        (
            "no images",
            request("e", vec![]),
            Code::InvalidArgument,
            "no image",
        ),
        (
            "empty image",
            request("x", vec![Image { data: None }]),
            Code::InvalidArgument,
            "no data",
        ),
        (
            "not an image",
            request("t", vec![encoded(b"hello".to_vec())]),
            Code::InvalidArgument,
            "supported",
        ),
        (
            "raw length",
            request("r", vec![raw(4, 4, proto::PixelFormat::Rgb8, 10)]),
            Code::InvalidArgument,
            "expected 48",
        ),
        (
            "raw format",
            request("f", vec![raw(4, 4, proto::PixelFormat::Unspecified, 16)]),
            Code::InvalidArgument,
            "PIXEL_FORMAT",
        ),
        (
            "raw pixel limit",
            request("l", vec![raw(300, 200, proto::PixelFormat::Gray8, 60_000)]),
            Code::InvalidArgument,
            "limit of 50000 pixels",
        ),
        (
            "over the message limit",
            request("big", vec![encoded(vec![0; 200_000])]),
            Code::OutOfRange,
            "",
        ),
    ];
    for (name, message, code, fragment) in cases {
        let status = client.classify(message).await.unwrap_err();
        assert_eq!(status.code(), code, "{name}: {}", status.message());
        assert!(
            status.message().contains(fragment),
            "{name}: `{}` lacks `{fragment}`",
            status.message()
        );
    }
    // Raw pixels go through the pixel limit too (length right, size over the limit).
    let status = client
        .classify(request(
            "big",
            vec![raw(1100, 1000, proto::PixelFormat::Gray8, 1_100_000)],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let mut small = request("px", vec![raw(1001, 1000, proto::PixelFormat::Gray8, 0)]);
    small.images[0] = Image {
        data: Some(Data::Raw(RawImage {
            width: 2000,
            height: 20,
            format: proto::PixelFormat::Gray8 as i32,
            pixels: vec![7; 40_000],
        })),
    };
    let status = client.classify(small).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("aspect ratio"),
        "{}",
        status.message()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_answers_in_order_and_echoes_ids() {
    let repository = Repository::new().model(
        "slow",
        &slow_model_dir(),
        Some("[batching]\nmax_batch_size = 4\n"),
    );
    let server = start(repository.path(), &[]).await;
    let mut client = client(&server).await;
    let names = [
        "fashion-0-label9.png",
        "fashion-1-label2.png",
        "fashion-2-label1.png",
        "fashion-3-label1.png",
    ];
    let requests: Vec<_> = (0..8)
        .map(|index| {
            request(
                &format!("item-{index}"),
                vec![encoded(image(names[index % 4]))],
            )
        })
        .collect();
    let singles = {
        let mut answers = Vec::new();
        for name in names {
            let response = client
                .classify(request("single", vec![encoded(image(name))]))
                .await
                .unwrap();
            answers.push(response.into_inner().results[0].predictions[0].index);
        }
        answers
    };
    let mut stream = client
        .classify_stream(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut index = 0;
    while let Some(response) = stream.message().await.unwrap() {
        assert_eq!(response.id, format!("item-{index}"));
        assert_eq!(response.results[0].predictions[0].index, singles[index % 4]);
        index += 1;
    }
    assert_eq!(index, 8);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_and_deadlines_map_to_retryable_codes() {
    let config = "[batching]\nmax_batch_size = 1\nmax_queue_size = 1\n";
    let repository = Repository::new().model("slow", &slow_model_dir(), Some(config));
    let server = start(repository.path(), &[]).await;
    let client = client(&server).await;
    let png = image("fashion-0-label9.png");
    let calls = (0..8).map(|_| {
        let mut client = client.clone();
        let png = png.clone();
        async move {
            client
                .classify(request("q", vec![encoded(png)]))
                .await
                .map(|_| ())
                .map_err(|status| {
                    // A refusal says when to retry (gRPC's server pushback).
                    let pushback = status.metadata().get("grpc-retry-pushback-ms");
                    let pushback = pushback.map(|value| value.to_str().unwrap().to_string());
                    (status.code(), pushback)
                })
        }
    });
    let outcomes = futures::future::join_all(calls).await;
    let refused = (Code::ResourceExhausted, Some("1000".to_string()));
    assert!(outcomes.contains(&Err(refused.clone())), "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|outcome| outcome.is_ok() || outcome.as_ref().err() == Some(&refused)),
        "{outcomes:?}"
    );

    server.stop().await;

    // A deadline that passes in the queue: the model's timeout caps every request at 5 ms.
    let config = "[batching]\nmax_batch_size = 1\ndefault_timeout_ms = 5\n";
    let repository = Repository::new().model("slow", &slow_model_dir(), Some(config));
    let server = start(repository.path(), &[]).await;
    let client = self::client(&server).await;
    let calls = (0..4).map(|_| {
        let mut client = client.clone();
        let png = png.clone();
        async move {
            client
                .classify(request("d", vec![encoded(png)]))
                .await
                .map(|_| ())
                .map_err(|status| status.code())
        }
    });
    let outcomes = futures::future::join_all(calls).await;
    assert!(
        outcomes.contains(&Err(Code::DeadlineExceeded)),
        "{outcomes:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_api_key_and_single_port() {
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let server = start(repository.path(), &["--single-port", "--api-key", "k3y"]).await;
    assert_eq!(server.server.grpc_address, server.server.http_address);
    let channel = Channel::from_shared(format!("http://{}", server.server.grpc_address))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in resnet_serve::grpc::HEALTH_SERVICES {
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(
            answer.into_inner().status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter([ask]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list");
    };
    let names: Vec<_> = list
        .service
        .iter()
        .map(|service| service.name.as_str())
        .collect();
    assert!(names.contains(&"resnet.v1.ClassifyService"), "{names:?}");

    let mut classify = ClassifyServiceClient::new(channel);
    let status = classify
        .classify(request("a", vec![encoded(image("fashion-0-label9.png"))]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut authorised =
        tonic::Request::new(request("a", vec![encoded(image("fashion-0-label9.png"))]));
    authorised
        .metadata_mut()
        .insert("authorization", "Bearer k3y".parse().unwrap());
    assert_eq!(
        classify.classify(authorised).await.unwrap().into_inner().id,
        "a"
    );

    // REST on the same port.
    let response = server
        .client
        .get(server.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_not_serving_when_draining() {
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let server = start(repository.path(), &["--drain-seconds", "2"]).await;
    let channel = Channel::from_shared(format!("http://{}", server.server.grpc_address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = |service: &str| tonic_health::pb::HealthCheckRequest {
        service: service.into(),
    };
    use tonic_health::pb::health_check_response::ServingStatus;
    let status = health.check(check("")).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::Serving as i32);
    server.server.shutdown();
    let mut status = ServingStatus::Serving as i32;
    for _ in 0..100 {
        status = health
            .check(check("resnet.v1.ClassifyService"))
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == ServingStatus::NotServing as i32 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(status, ServingStatus::NotServing as i32);
    server.server.wait().await.unwrap();
}
