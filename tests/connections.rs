//! Connection-level defences against slow and abusive clients (slowloris on headers and body,
//! idle connections, oversized heads, a connection cap), HTTP/2 settings, and TLS for REST and
//! gRPC, against a real server over raw sockets and real clients.

mod support;

use std::time::Duration;

use resnet_serve::grpc::proto::classify_service_client::ClassifyServiceClient;
use resnet_serve::grpc::proto::{ClassifyRequest, Image, image::Data};
use support::{Repository, TestServer, image, root, slow_model_dir, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn repository() -> Repository {
    Repository::new().model("slow", &slow_model_dir(), None)
}

/// Reads until the server closes the connection (or `limit` passes: then panics).
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    });
    read.await
        .expect("the server kept a stalled connection open");
    received
}

async fn healthy(server: &TestServer) {
    assert_eq!(server.get_status("/health/live").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_headers_and_idle_connections_are_closed() {
    let repository = repository();
    let server = start(repository.path(), &["--header-read-timeout-ms", "300"]).await;
    let address = server.server.http_address;

    // Connects and never sends a byte.
    let mut idle = TcpStream::connect(address).await.unwrap();
    // Sends half a request head and stalls (slowloris).
    let mut slow = TcpStream::connect(address).await.unwrap();
    slow.write_all(b"POST /classify HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    // Keeps an HTTP/1.1 connection open after a complete request, then goes quiet.
    let mut kept = TcpStream::connect(address).await.unwrap();
    kept.write_all(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();

    for stream in [&mut idle, &mut slow] {
        let received = read_until_closed(stream, Duration::from_secs(10)).await;
        assert!(
            !received.starts_with(b"HTTP/1.1 2"),
            "a stalled request was answered: {:?}",
            String::from_utf8_lossy(&received)
        );
    }
    let received = read_until_closed(&mut kept, Duration::from_secs(10)).await;
    assert!(received.starts_with(b"HTTP/1.1 200"), "{received:?}");
    healthy(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let repository = repository();
    let server = start(repository.path(), &["--body-read-timeout-ms", "300"]).await;
    let mut stream = TcpStream::connect(server.server.http_address)
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n\
              Content-Length: 100000\r\n\r\n\x89PNG",
        )
        .await
        .unwrap();
    let received = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"body_timeout\""), "{text}");
    assert!(text.contains("300 ms"), "{text}");

    // The same limit on the V2 route, in the V2 error form.
    let mut stream = TcpStream::connect(server.server.http_address)
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"inputs\"",
        )
        .await
        .unwrap();
    let received = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("{\"error\":\"the request body did not arrive"),
        "{text}"
    );
    healthy(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_gets_431() {
    let repository = repository();
    let server = start(repository.path(), &["--max-header-bytes", "16384"]).await;
    let mut stream = TcpStream::connect(server.server.http_address)
        .await
        .unwrap();
    let filler = "a".repeat(64 * 1024);
    let head =
        format!("GET /health/live HTTP/1.1\r\nHost: localhost\r\nX-Filler: {filler}\r\n\r\n");
    // The server may close while the rest is still being written.
    let _ = stream.write_all(head.as_bytes()).await;
    let received = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");

    // Within the limit, a large header is fine.
    let response = server
        .client
        .get(server.url("/health/live"))
        .header("x-filler", "a".repeat(8 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let repository = repository();
    let server = start(repository.path(), &["--max-connections", "1"]).await;
    let holder = TcpStream::connect(server.server.http_address)
        .await
        .unwrap();
    // Give the server time to accept the holder, so it owns the only slot.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = reqwest::Client::builder().build().unwrap();
    let waiting = tokio::spawn({
        let url = server.url("/health/live");
        async move {
            client
                .get(url)
                .send()
                .await
                .map(|response| response.status())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a connection beyond --max-connections was served"
    );
    drop(holder);
    let status = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting connection was never served after a slot freed")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    server.stop().await;
}

/// Opens an HTTP/2 connection with prior knowledge (h2c) to `address` and returns the
/// server's first SETTINGS frame as (identifier, value) pairs.
async fn server_settings(address: std::net::SocketAddr) -> Vec<(u16, u32)> {
    let mut stream = TcpStream::connect(address).await.unwrap();
    // The client preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let read = async {
        loop {
            let mut header = [0u8; 9];
            stream.read_exact(&mut header).await.unwrap();
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; length];
            stream.read_exact(&mut payload).await.unwrap();
            // SETTINGS, not an acknowledgement.
            if header[3] == 4 && header[4] & 1 == 0 {
                return payload
                    .chunks_exact(6)
                    .map(|entry| {
                        (
                            u16::from_be_bytes([entry[0], entry[1]]),
                            u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]),
                        )
                    })
                    .collect();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no SETTINGS frame from the server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_settings_carry_the_stream_limit_and_the_frame_size() {
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    const MAX_FRAME_SIZE: u16 = 0x5;
    let repository = repository();
    let server = start(repository.path(), &["--max-concurrent-streams", "7"]).await;
    for address in [server.server.http_address, server.server.grpc_address] {
        let settings = server_settings(address).await;
        assert!(
            settings.contains(&(MAX_CONCURRENT_STREAMS, 7)),
            "{address}: {settings:?}"
        );
        // A 600 KB tensor in one frame instead of 37 (docs/PERFORMANCE.md).
        assert!(
            settings.contains(&(MAX_FRAME_SIZE, 1 << 20)),
            "{address}: {settings:?}"
        );
    }
    healthy(&server).await;
    server.stop().await;
}

fn tls_file(name: &str) -> String {
    root()
        .join("tests/fixtures/tls")
        .join(name)
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_rest_over_http1_and_http2_and_grpc() {
    let repository = repository();
    let (cert, key) = (tls_file("server.pem"), tls_file("server.key"));
    let server = start(repository.path(), &["--tls-cert", &cert, "--tls-key", &key]).await;
    let ca = std::fs::read(tls_file("ca.pem")).unwrap();
    let https = |port: u16, path: &str| format!("https://localhost:{port}{path}");
    let http_port = server.server.http_address.port();

    for http2 in [false, true] {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .resolve("localhost", server.server.http_address);
        builder = if http2 {
            builder.http2_prior_knowledge()
        } else {
            builder.http1_only()
        };
        let client = builder.build().unwrap();
        let response = client
            .post(https(http_port, "/classify"))
            .header("content-type", "image/png")
            .body(image("coffee-300x200.png"))
            .send()
            .await
            .unwrap();
        let expected = if http2 {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(response.version(), expected);
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
    }

    // Plain HTTP to the TLS port is not served.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/health/live", server.server.http_address))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was served on the TLS port");

    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name("localhost");
    let channel =
        tonic::transport::Channel::from_shared(https(server.server.grpc_address.port(), ""))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
    let reply = ClassifyServiceClient::new(channel)
        .classify(ClassifyRequest {
            id: "tls".into(),
            images: vec![Image {
                data: Some(Data::Encoded(image("coffee-300x200.png"))),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.results.len(), 1);
    server.stop().await;
}

#[test]
fn tls_flags_come_in_pairs_and_bad_files_are_named() {
    let repository = repository();
    let only_cert = ["--tls-cert", "x.pem"];
    let parsed = <resnet_serve::config::ServeConfig as clap::Parser>::try_parse_from(
        ["resnet-serve"].iter().chain(only_cert.iter()),
    );
    assert!(parsed.is_err(), "--tls-cert without --tls-key was accepted");

    let missing = tls_file("missing.pem");
    let key = tls_file("server.key");
    let config = support::config(
        repository.path(),
        &["--tls-cert", &missing, "--tls-key", &key],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let error = runtime
        .block_on(resnet_serve::server::start(config))
        .err()
        .expect("a missing certificate file was accepted")
        .to_string();
    assert!(
        error.contains("--tls-cert") && error.contains("missing.pem"),
        "{error}"
    );

    // A certificate given as the key.
    let cert = tls_file("server.pem");
    let config = support::config(
        repository.path(),
        &["--tls-cert", &cert, "--tls-key", &cert],
    );
    let error = runtime
        .block_on(resnet_serve::server::start(config))
        .err()
        .expect("a certificate was accepted as the private key")
        .to_string();
    assert!(error.contains("--tls-key"), "{error}");
}
