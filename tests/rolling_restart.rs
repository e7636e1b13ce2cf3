//! A rolling restart of two replicas under steady load (DESIGN §11): each replica, on SIGTERM,
//! turns not-ready first, keeps serving through the drain, finishes what it accepted and exits
//! 0; a client behind a load balancer that health-checks readiness, retrying on 503 or a
//! refused connection, loses no request.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Repository, ServerProcess, default_model_dir, image};

const REPLICA_FLAGS: [&str; 4] = ["--drain-seconds", "1", "--shutdown-timeout-seconds", "10"];

/// What a load balancer knows: the replicas, and which of them failed their last readiness
/// check (those get no new requests; that is what the drain period is for).
#[derive(Default)]
struct Balancer {
    replicas: Mutex<Vec<String>>,
    unready: Mutex<HashSet<String>>,
}

impl Balancer {
    /// The replica for `turn`: round robin over the ready ones (over all when none is).
    fn pick(&self, turn: usize) -> String {
        let replicas = self.replicas.lock().unwrap();
        let unready = self.unready.lock().unwrap();
        let ready: Vec<&String> = replicas.iter().filter(|a| !unready.contains(*a)).collect();
        if ready.is_empty() {
            replicas[turn % replicas.len()].clone()
        } else {
            ready[turn % ready.len()].clone()
        }
    }

    /// Checks every replica's readiness every 20 ms while `running`.
    async fn health_check(self: Arc<Self>, running: Arc<AtomicBool>) {
        let client = reqwest::Client::new();
        while running.load(Ordering::Relaxed) {
            let replicas = self.replicas.lock().unwrap().clone();
            for address in replicas {
                let response = client
                    .get(format!("http://{address}/health/ready"))
                    .send()
                    .await;
                let ready = matches!(response, Ok(response) if response.status() == 200);
                let mut unready = self.unready.lock().unwrap();
                if ready {
                    unready.remove(&address);
                } else {
                    unready.insert(address);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends one request through the balancer, retrying on another replica on 503 or a refused
/// connection. Returns the final status, or why the request was lost (a reset or closed
/// connection after it was sent is what a drain must never cause).
async fn send_with_retries(
    client: &reqwest::Client,
    balancer: &Balancer,
    body: &[u8],
    turn: usize,
) -> Result<u16, String> {
    for attempt in 0..50 {
        let address = balancer.pick(turn + attempt);
        let response = client
            .post(format!("http://{address}/classify"))
            .header("content-type", "image/png")
            .body(body.to_vec())
            .send()
            .await;
        match response {
            Ok(response) if response.status() == 503 => {}
            Ok(response) => return Ok(response.status().as_u16()),
            Err(error) if error.is_connect() => {}
            Err(error) => return Err(format!("lost after it was sent: {error}")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("no replica answered in 50 attempts".into())
}

/// Waits for a replica's exit and returns whether it was clean, after checking that its
/// readiness turned 503 while it still accepted connections.
fn terminate_and_watch(replica: &mut ServerProcess) -> bool {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ready_url = replica.url("/health/ready");
    replica.terminate();
    let not_ready_seen = runtime.block_on(async {
        let client = reqwest::Client::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            match client.get(&ready_url).send().await {
                Ok(response) if response.status() == 503 => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    });
    assert!(
        not_ready_seen,
        "readiness never answered 503 before the replica stopped accepting"
    );
    replica.child.wait().unwrap().success()
}

#[test]
fn a_rolling_restart_under_load_loses_no_request() {
    let repository = Repository::new().model("fashion", &default_model_dir(), None);
    let mut first = ServerProcess::spawn(repository.path(), &REPLICA_FLAGS);
    let mut second = ServerProcess::spawn(repository.path(), &REPLICA_FLAGS);
    let balancer = Arc::new(Balancer::default());
    *balancer.replicas.lock().unwrap() = vec![first.address.clone(), second.address.clone()];
    let running = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicUsize::new(0));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let checker = runtime.spawn(balancer.clone().health_check(running.clone()));
    let body = image("fashion-0-label9.png");
    let clients: Vec<_> = (0..4)
        .map(|worker| {
            let (balancer, running, sent, body) = (
                balancer.clone(),
                running.clone(),
                sent.clone(),
                body.clone(),
            );
            runtime.spawn(async move {
                let client = reqwest::Client::new();
                let mut failures = Vec::new();
                let mut turn = worker;
                while running.load(Ordering::Relaxed) {
                    let status = send_with_retries(&client, &balancer, &body, turn).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if status != Ok(200) {
                        failures.push(status);
                    }
                    turn += 1;
                }
                failures
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(500));
    // Restart the first replica: drain it, start its replacement, then the second.
    assert!(terminate_and_watch(&mut first), "first replica exit");
    let replacement = ServerProcess::spawn(repository.path(), &REPLICA_FLAGS);
    balancer.replicas.lock().unwrap()[0] = replacement.address.clone();
    std::thread::sleep(Duration::from_millis(300));
    assert!(terminate_and_watch(&mut second), "second replica exit");
    let replacement_second = ServerProcess::spawn(repository.path(), &REPLICA_FLAGS);
    balancer.replicas.lock().unwrap()[1] = replacement_second.address.clone();
    std::thread::sleep(Duration::from_millis(300));
    running.store(false, Ordering::Relaxed);

    runtime.block_on(checker).unwrap();
    let failures: Vec<Result<u16, String>> = runtime
        .block_on(futures::future::join_all(clients))
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > 20, "only {sent} requests were sent");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {failures:?}",
        failures.len()
    );
}
