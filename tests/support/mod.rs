//! Test helpers: temporary model repositories, an in-process server on 127.0.0.1:0, fixtures.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::{Path, PathBuf};

use clap::Parser;
use resnet_serve::config::ServeConfig;
use resnet_serve::server::RunningServer;

/// Fashion-MNIST class names, line n = class n.
pub const FASHION_LABELS: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// The repository root of the crate.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped default model's directory.
pub fn default_model_dir() -> PathBuf {
    root().join("models/fashion-resnet20")
}

/// The slow fixture model (~70 ms an image on one core).
pub fn slow_model_dir() -> PathBuf {
    root().join("tests/fixtures/models/slow")
}

/// A committed test image.
pub fn image(name: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures/images").join(name))
        .unwrap_or_else(|error| panic!("{name}: {error}"))
}

/// Fashion-MNIST test items with their true labels: (file, label index).
pub fn fashion_items() -> Vec<(String, usize)> {
    let mut items: Vec<(String, usize)> = std::fs::read_dir(root().join("tests/fixtures/images"))
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let label = name
                .strip_prefix("fashion-")?
                .split_once("-label")?
                .1
                .strip_suffix(".png")?
                .parse()
                .ok()?;
            Some((name, label))
        })
        .collect();
    items.sort();
    items
}

/// A temporary model repository.
pub struct Repository {
    pub dir: tempfile::TempDir,
}

impl Repository {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Copies `source` as model `name`; `config` (if any) replaces its config.toml.
    pub fn model(self, name: &str, source: &Path, config: Option<&str>) -> Self {
        let target = self.dir.path().join(name);
        copy_dir(source, &target);
        if let Some(config) = config {
            std::fs::write(target.join("config.toml"), config).unwrap();
        }
        if !target.join("labels.txt").exists() {
            std::fs::write(target.join("labels.txt"), FASHION_LABELS.join("\n") + "\n").unwrap();
        }
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn copy_dir(source: &Path, target: &Path) {
    std::fs::create_dir_all(target).unwrap();
    for entry in
        std::fs::read_dir(source).unwrap_or_else(|error| panic!("{}: {error}", source.display()))
    {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &target.join(entry.file_name()));
        } else {
            std::fs::copy(&path, target.join(entry.file_name())).unwrap();
        }
    }
}

/// A server running in this process on free ports.
pub struct TestServer {
    pub base: String,
    pub metrics: String,
    pub server: RunningServer,
    pub client: reqwest::Client,
}

/// Server flags for tests: loopback, free ports, no drain delay.
pub fn config(repository: &Path, extra: &[&str]) -> ServeConfig {
    let mut args = vec![
        "resnet-serve".to_string(),
        "--model-repository".into(),
        repository.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--http-port".into(),
        "0".into(),
        "--grpc-port".into(),
        "0".into(),
        "--metrics-port".into(),
        "0".into(),
        "--intra-op-threads".into(),
        "1".into(),
    ];
    if !extra.contains(&"--drain-seconds") {
        args.extend(["--drain-seconds".into(), "0".into()]);
    }
    args.extend(extra.iter().map(|arg| arg.to_string()));
    ServeConfig::try_parse_from(args).unwrap()
}

/// Starts a server over `repository`.
pub async fn start(repository: &Path, extra: &[&str]) -> TestServer {
    let server = resnet_serve::server::start(config(repository, extra))
        .await
        .unwrap();
    TestServer {
        base: format!("http://{}", server.http_address),
        metrics: format!("http://{}/metrics", server.metrics_address),
        server,
        client: reqwest::Client::new(),
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The status of `GET path`.
    pub async fn get_status(&self, path: &str) -> u16 {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        response.status().as_u16()
    }

    /// The status of an empty `POST path`.
    pub async fn post_status(&self, path: &str) -> u16 {
        let response = self.client.post(self.url(path)).send().await.unwrap();
        response.status().as_u16()
    }

    /// POSTs raw bytes to /classify with a content type.
    pub async fn classify_raw(
        &self,
        query: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/classify{query}")))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn metrics_text(&self) -> String {
        self.client
            .get(&self.metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Stops the server and waits for it.
    pub async fn stop(self) {
        self.server.shutdown();
        self.server.wait().await.unwrap();
    }
}

/// Reads a JSON error body and returns (code, message).
pub async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
        .to_string();
    let message = body["error"]["message"].as_str().unwrap().to_string();
    (status, code, message)
}

/// Milliseconds of `stage` in a `Server-Timing` value such as `infer;dur=9.8, total;dur=11.9`;
/// panics when it is missing or not a number.
pub fn server_timing_ms(value: &str, stage: &str) -> f64 {
    value
        .split(',')
        .find_map(|entry| entry.trim().strip_prefix(&format!("{stage};dur=")))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no {stage} duration in Server-Timing `{value}`"))
}

/// Checks a successful inference's `Server-Timing`: inference took time and is part of the
/// total.
pub fn assert_inference_within_total(server_timing: &str) {
    let (infer, total) = (
        server_timing_ms(server_timing, "infer"),
        server_timing_ms(server_timing, "total"),
    );
    assert!(infer > 0.0 && infer <= total, "{server_timing}");
}

/// Sum and count of a histogram for a model, from the metrics text.
pub fn histogram(text: &str, name: &str, model: &str) -> (f64, f64) {
    let value = |suffix: &str| {
        text.lines()
            .find(|line| line.starts_with(&format!("{name}_{suffix}{{model=\"{model}\"}}")))
            .and_then(|line| line.rsplit(' ').next())
            .map_or(0.0, |value| value.parse().unwrap())
    };
    (value("sum"), value("count"))
}

/// The server binary as a child process, for signals and for its own memory use.
pub struct ServerProcess {
    pub child: std::process::Child,
    /// `host:port` of the HTTP listener.
    pub address: String,
    /// `host:port` of the gRPC listener.
    pub grpc_address: String,
    /// `host:port` of the metrics listener.
    pub metrics_address: String,
    /// The rest of its JSON log lines.
    pub lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl ServerProcess {
    /// Starts `resnet-serve` on free loopback ports with JSON logs and waits until it listens.
    pub fn spawn(repository: &Path, extra: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_resnet-serve"))
            .args(["--model-repository", repository.to_str().unwrap()])
            .args([
                "--host",
                "127.0.0.1",
                "--http-port",
                "0",
                "--grpc-port",
                "0",
            ])
            .args(["--metrics-port", "0", "--log-format", "json"])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let (address, grpc_address, metrics_address) = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .unwrap();
            let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
            let fields = &entry["fields"];
            if let (Some(http), Some(grpc), Some(metrics)) = (
                fields["http_address"].as_str(),
                fields["grpc_address"].as_str(),
                fields["metrics_address"].as_str(),
            ) {
                break (http.to_string(), grpc.to_string(), metrics.to_string());
            }
        };
        Self {
            child,
            address,
            grpc_address,
            metrics_address,
            lines,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Resident memory (VmRSS) in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes_of(self.child.id()).expect("the server process is gone")
    }

    /// Sends SIGTERM (the shutdown sequence).
    pub fn terminate(&self) {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Resident memory (VmRSS) of process `pid` in bytes, while it runs.
pub fn rss_bytes_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kib * 1024)
}
