//! Overload: at 4 × the measured capacity the server answers only 200, 429 (with
//! `Retry-After`), 503 or 504, admitted requests meet their deadline, its memory stays within
//! a bound derived from the limits, and it serves normally as soon as the load drops.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{Repository, ServerProcess, image, rss_bytes_of, slow_model_dir};

/// Requests in flight at once (`--max-concurrent-requests`); beyond it 429.
const MAX_IN_FLIGHT: u64 = 64;
/// Deadline of every request.
const DEADLINE: Duration = Duration::from_millis(1500);

struct Outcome {
    status: u16,
    latency: Duration,
    retry_after: bool,
}

async fn classify(client: &reqwest::Client, url: &str, body: &[u8]) -> Outcome {
    let started = Instant::now();
    let response = client
        .post(url)
        .header("content-type", "image/jpeg")
        .header("x-request-timeout-ms", DEADLINE.as_millis().to_string())
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let retry_after = response.headers().contains_key("retry-after");
    let status = response.status().as_u16();
    let _ = response.bytes().await;
    Outcome {
        status,
        latency: started.elapsed(),
        retry_after,
    }
}

/// Completed requests per second with `clients` clients in a closed loop.
async fn capacity(client: &reqwest::Client, url: &str, body: &[u8], clients: usize) -> f64 {
    let period = Duration::from_secs(2);
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.to_string(), body.to_vec());
            tokio::spawn(async move {
                let mut done = 0u32;
                while started.elapsed() < period {
                    assert_eq!(classify(&client, &url, &body).await.status, 200);
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for worker in workers {
        done += worker.await.unwrap();
    }
    f64::from(done) / started.elapsed().as_secs_f64()
}

#[test]
fn four_times_capacity_is_shed_cleanly_and_memory_stays_bounded() {
    let repository = Repository::new().model(
        "slow",
        &slow_model_dir(),
        Some("[batching]\nmax_batch_size = 4\nmax_queue_size = 16\n"),
    );
    let server = ServerProcess::spawn(
        repository.path(),
        &[
            "--intra-op-threads",
            "1",
            "--max-concurrent-requests",
            &MAX_IN_FLIGHT.to_string(),
        ],
    );
    let url = server.url("/classify");
    // A real photo: the body, and its decoded pixels while it is preprocessed, are what a
    // request holds.
    let photo = image("cat-451x300.jpg");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();

    let capacity = runtime.block_on(async {
        for _ in 0..3 {
            assert_eq!(classify(&client, &url, &photo).await.status, 200);
        }
        capacity(&client, &url, &photo, 4).await
    });
    let baseline = server.rss_bytes();

    // Open loop at 4 × capacity for 3 s, sampling the server's memory all along.
    let rate = 4.0 * capacity;
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (sampling, peak) = (sampling.clone(), peak.clone());
        let pid = server.child.id();
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                if let Some(rss) = rss_bytes_of(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let outcomes = runtime.block_on(async {
        let started = Instant::now();
        let mut sent = Vec::new();
        let mut next = Duration::ZERO;
        while next < Duration::from_secs(3) {
            tokio::time::sleep_until((started + next).into()).await;
            let (client, url, photo) = (client.clone(), url.clone(), photo.clone());
            sent.push(tokio::spawn(async move {
                classify(&client, &url, &photo).await
            }));
            next += Duration::from_secs_f64(1.0 / rate);
        }
        futures::future::join_all(sent).await
    });
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let outcomes: Vec<Outcome> = outcomes.into_iter().map(Result::unwrap).collect();

    let count = |status: u16| outcomes.iter().filter(|o| o.status == status).count();
    let summary = format!(
        "capacity {capacity:.1}/s, sent {} at {rate:.1}/s: 200 × {}, 429 × {}, 503 × {}, 504 × {}",
        outcomes.len(),
        count(200),
        count(429),
        count(503),
        count(504)
    );
    println!("{summary}");
    for outcome in &outcomes {
        assert!(
            matches!(outcome.status, 200 | 429 | 503 | 504),
            "status {} under overload ({summary})",
            outcome.status
        );
        if outcome.status == 429 {
            assert!(outcome.retry_after, "429 without Retry-After");
        }
    }
    assert!(count(200) > 0, "nothing was served ({summary})");
    assert!(
        count(429) + count(503) + count(504) > 0,
        "4 × capacity was not shed ({summary})"
    );
    // Admitted requests start inference before their deadline; a batch (≤ 4 images) takes
    // well under a second even on a loaded machine.
    let slowest = outcomes
        .iter()
        .filter(|o| o.status == 200)
        .map(|o| o.latency)
        .max()
        .unwrap();
    assert!(
        slowest <= DEADLINE + Duration::from_secs(1),
        "a served request took {slowest:?}, deadline {DEADLINE:?} ({summary})"
    );

    // Memory: what the limits allow in flight (body + decoded RGB pixels + tensor per
    // request), plus 64 MiB for the runtime's arenas and buffers to grow into.
    let per_request = photo.len() as u64 + 451 * 300 * 3 + 28 * 28 * 4;
    let bound = baseline + MAX_IN_FLIGHT * per_request + (64 << 20);
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "RSS: baseline {} MiB, peak {} MiB, bound {} MiB",
        baseline >> 20,
        peak >> 20,
        bound >> 20
    );
    assert!(
        peak <= bound,
        "RSS peaked at {peak} bytes, bound {bound} (baseline {baseline})"
    );

    // The load is gone: it serves at once.
    runtime.block_on(async {
        for _ in 0..10 {
            let outcome = classify(&client, &url, &photo).await;
            assert_eq!(outcome.status, 200, "after the overload");
            assert!(
                outcome.latency < DEADLINE,
                "{:?} after the overload",
                outcome.latency
            );
        }
    });
}
