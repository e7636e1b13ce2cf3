//! The batching policy: a pure state object that decides which queued jobs run next. No I/O,
//! no channels, no clock reads; the caller passes the time in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What the policy needs to know about a queued job.
pub trait Queued {
    /// Images in the job (its rows of the batch).
    fn images(&self) -> usize;
    /// Priority level index: 0 is the highest.
    fn level(&self) -> usize;
    /// When the job stops being worth running.
    fn deadline(&self) -> Instant;
    /// Whether the client has gone away.
    fn is_cancelled(&self) -> bool;
}

/// Batching limits of one model version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most images in one batch.
    pub max_batch_size: usize,
    /// How long the oldest job may wait for a preferred batch size; zero = work-conserving.
    pub max_queue_delay: Duration,
    /// Batch sizes worth waiting for (only with a non-zero delay).
    pub preferred_batch_sizes: Vec<usize>,
    /// Number of priority levels.
    pub priority_levels: usize,
}

/// What to do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<J> {
    /// Run these jobs as one batch, in this order.
    Run(Vec<J>),
    /// Nothing to run before this time (unless a job arrives).
    WaitUntil(Instant),
    /// Nothing queued.
    Idle,
}

/// Why a job left the queue without running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Its deadline passed.
    Expired,
    /// Its client went away.
    Cancelled,
}

struct Entry<J> {
    job: J,
    enqueued: Instant,
}

/// Queued jobs by priority level, earliest deadline first within a level.
pub struct Policy<J> {
    limits: Limits,
    levels: Vec<BTreeMap<(Instant, u64), Entry<J>>>,
    images: usize,
    sequence: u64,
}

impl<J: Queued> Policy<J> {
    /// An empty queue with these limits.
    pub fn new(limits: Limits) -> Self {
        let levels = (0..limits.priority_levels.max(1))
            .map(|_| BTreeMap::new())
            .collect();
        Self {
            limits,
            levels,
            images: 0,
            sequence: 0,
        }
    }

    /// Images waiting.
    pub fn queued_images(&self) -> usize {
        self.images
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.levels.iter().all(BTreeMap::is_empty)
    }

    /// Queues a job that arrived at `now`.
    pub fn push(&mut self, job: J, now: Instant) {
        let level = job.level().min(self.levels.len() - 1);
        self.images += job.images();
        self.sequence += 1;
        let key = (job.deadline(), self.sequence);
        if let Some(queue) = self.levels.get_mut(level) {
            queue.insert(key, Entry { job, enqueued: now });
        }
    }

    /// Removes jobs whose deadline has passed or whose client is gone.
    pub fn evict(&mut self, now: Instant) -> Vec<(J, Eviction)> {
        let mut evicted = Vec::new();
        for queue in &mut self.levels {
            let keys: Vec<_> = queue
                .iter()
                .filter(|(_, entry)| entry.job.deadline() <= now || entry.job.is_cancelled())
                .map(|(key, _)| *key)
                .collect();
            for key in keys {
                if let Some(entry) = queue.remove(&key) {
                    self.images -= entry.job.images();
                    let reason = if entry.job.is_cancelled() {
                        Eviction::Cancelled
                    } else {
                        Eviction::Expired
                    };
                    evicted.push((entry.job, reason));
                }
            }
        }
        evicted
    }

    /// The earliest deadline of any queued job, so the caller can wake to evict it.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.levels
            .iter()
            .filter_map(|queue| queue.keys().next().map(|(deadline, _)| *deadline))
            .min()
    }

    /// Decides what an idle instance should do at `now`.
    pub fn next(&mut self, now: Instant) -> Decision<J> {
        let mut keys = Vec::new();
        let mut size = 0;
        let mut oldest: Option<Instant> = None;
        let mut earliest_deadline: Option<Instant> = None;
        'levels: for (level, queue) in self.levels.iter().enumerate() {
            for (key, entry) in queue {
                let images = entry.job.images();
                if size + images > self.limits.max_batch_size && size > 0 {
                    break 'levels;
                }
                size += images;
                keys.push((level, *key));
                oldest = Some(oldest.map_or(entry.enqueued, |t| t.min(entry.enqueued)));
                earliest_deadline = Some(earliest_deadline.map_or(key.0, |t| t.min(key.0)));
            }
        }
        let (Some(oldest), Some(earliest_deadline)) = (oldest, earliest_deadline) else {
            return Decision::Idle;
        };
        if !self.limits.max_queue_delay.is_zero() {
            let target = self
                .limits
                .preferred_batch_sizes
                .iter()
                .copied()
                .filter(|&size| size <= self.limits.max_batch_size)
                .max()
                .unwrap_or(self.limits.max_batch_size);
            let release = oldest + self.limits.max_queue_delay;
            // Waiting must not cost a job its deadline.
            let wake = release.min(earliest_deadline);
            if size < target && now < wake {
                return Decision::WaitUntil(wake);
            }
        }
        let mut batch = Vec::with_capacity(keys.len());
        for (level, key) in keys {
            if let Some(entry) = self
                .levels
                .get_mut(level)
                .and_then(|queue| queue.remove(&key))
            {
                self.images -= entry.job.images();
                batch.push(entry.job);
            }
        }
        Decision::Run(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    struct TestJob {
        id: u32,
        images: usize,
        level: usize,
        deadline: Instant,
        cancelled: bool,
    }

    impl Queued for TestJob {
        fn images(&self) -> usize {
            self.images
        }
        fn level(&self) -> usize {
            self.level
        }
        fn deadline(&self) -> Instant {
            self.deadline
        }
        fn is_cancelled(&self) -> bool {
            self.cancelled
        }
    }

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    fn job(t0: Instant, id: u32, images: usize) -> TestJob {
        TestJob {
            id,
            images,
            level: 0,
            deadline: t0 + ms(1000),
            cancelled: false,
        }
    }

    fn limits(max_batch_size: usize, delay: Duration) -> Limits {
        Limits {
            max_batch_size,
            max_queue_delay: delay,
            preferred_batch_sizes: vec![],
            priority_levels: 2,
        }
    }

    fn ids(decision: Decision<TestJob>) -> Vec<u32> {
        match decision {
            Decision::Run(jobs) => jobs.into_iter().map(|job| job.id).collect(),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn work_conserving_runs_a_lone_job_at_once() {
        let t0 = Instant::now();
        let mut policy = Policy::new(limits(8, Duration::ZERO));
        policy.push(job(t0, 1, 1), t0);
        assert_eq!(ids(policy.next(t0)), vec![1]);
        assert_eq!(policy.next(t0), Decision::Idle);
        assert_eq!(policy.queued_images(), 0);
    }

    #[test]
    fn batches_are_capped_at_max_batch_size_in_images() {
        let t0 = Instant::now();
        let mut policy = Policy::new(limits(4, Duration::ZERO));
        for id in 1..=3 {
            policy.push(job(t0, id, 2), t0);
        }
        assert_eq!(ids(policy.next(t0)), vec![1, 2]);
        assert_eq!(ids(policy.next(t0)), vec![3]);
    }

    #[test]
    fn runs_a_partial_batch_once_the_oldest_job_has_waited_max_delay() {
        let t0 = Instant::now();
        let mut policy = Policy::new(limits(8, ms(2)));
        policy.push(job(t0, 1, 1), t0);
        assert_eq!(policy.next(t0 + ms(1)), Decision::WaitUntil(t0 + ms(2)));
        assert_eq!(ids(policy.next(t0 + ms(2))), vec![1]);
    }

    #[test]
    fn a_full_preferred_batch_runs_without_waiting() {
        let t0 = Instant::now();
        let mut policy = Policy::new(Limits {
            preferred_batch_sizes: vec![2, 4],
            ..limits(8, ms(50))
        });
        policy.push(job(t0, 1, 3), t0);
        assert!(matches!(policy.next(t0), Decision::WaitUntil(_)));
        policy.push(job(t0, 2, 1), t0);
        assert_eq!(ids(policy.next(t0)), vec![1, 2]);
    }

    #[test]
    fn waiting_never_outlasts_a_deadline() {
        let t0 = Instant::now();
        let mut policy = Policy::new(limits(8, ms(50)));
        policy.push(
            TestJob {
                deadline: t0 + ms(10),
                ..job(t0, 1, 1)
            },
            t0,
        );
        assert_eq!(policy.next(t0), Decision::WaitUntil(t0 + ms(10)));
    }

    #[test]
    fn higher_priority_first_then_earliest_deadline() {
        let t0 = Instant::now();
        let mut policy = Policy::new(limits(1, Duration::ZERO));
        policy.push(
            TestJob {
                level: 1,
                ..job(t0, 1, 1)
            },
            t0,
        );
        policy.push(
            TestJob {
                deadline: t0 + ms(500),
                ..job(t0, 2, 1)
            },
            t0,
        );
        policy.push(
            TestJob {
                deadline: t0 + ms(100),
                ..job(t0, 3, 1)
            },
            t0,
        );
        assert_eq!(ids(policy.next(t0)), vec![3]);
        assert_eq!(ids(policy.next(t0)), vec![2]);
        assert_eq!(ids(policy.next(t0)), vec![1]);
    }

    #[test]
    fn expired_and_cancelled_jobs_are_evicted_before_running() {
        let t0 = Instant::now();
        let mut policy = Policy::new(limits(8, Duration::ZERO));
        policy.push(
            TestJob {
                deadline: t0 + ms(5),
                ..job(t0, 1, 1)
            },
            t0,
        );
        policy.push(
            TestJob {
                cancelled: true,
                ..job(t0, 2, 1)
            },
            t0,
        );
        policy.push(job(t0, 3, 1), t0);
        assert_eq!(policy.next_deadline(), Some(t0 + ms(5)));
        let evicted: Vec<_> = policy
            .evict(t0 + ms(5))
            .into_iter()
            .map(|(job, why)| (job.id, why))
            .collect();
        assert_eq!(
            evicted,
            vec![(1, Eviction::Expired), (2, Eviction::Cancelled)]
        );
        assert_eq!(policy.queued_images(), 1);
        assert_eq!(ids(policy.next(t0 + ms(5))), vec![3]);
    }

    #[test]
    fn an_out_of_range_level_is_served_at_the_lowest_priority() {
        let t0 = Instant::now();
        let mut policy = Policy::new(limits(1, Duration::ZERO));
        policy.push(
            TestJob {
                level: 9,
                ..job(t0, 1, 1)
            },
            t0,
        );
        policy.push(job(t0, 2, 1), t0);
        assert_eq!(ids(policy.next(t0)), vec![2]);
        assert_eq!(ids(policy.next(t0)), vec![1]);
    }
}
