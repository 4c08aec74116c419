//! A cached thread pool standing in for today's "spawn a task per phase"
//! (`tokio::spawn` on the host, a goroutine per phase in the Go SDK).
//!
//! A job goes to an idle worker through an unbounded channel; when no worker is
//! idle (every one is inside a plugin call), a new one is started, so code that
//! blocks in a job cannot starve the next one.
#![forbid(unsafe_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{unbounded, Receiver, Sender};

/// A boxed job.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Spawner {
    name: &'static str,
    tx: Sender<Job>,
    rx: Receiver<Job>,
    idle: Arc<AtomicUsize>,
}

impl Spawner {
    /// At most this many workers; past it, jobs wait for one to be free.
    const MAX_WORKERS: usize = 256;

    pub(crate) fn new(name: &'static str) -> Self {
        let (tx, rx) = unbounded();
        Self {
            name,
            tx,
            rx,
            idle: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Runs `job` on a worker thread; a panic in it is caught and dropped.
    pub(crate) fn spawn(&self, job: Job) {
        let claimed = self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        // strong_count - 1 is the number of workers.
        if !claimed && Arc::strong_count(&self.idle) <= Self::MAX_WORKERS {
            let rx = self.rx.clone();
            let idle = Arc::clone(&self.idle);
            // If the thread cannot start, the job waits for the next idle worker.
            let _ = std::thread::Builder::new()
                .name(self.name.into())
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        let _ = catch_unwind(AssertUnwindSafe(job));
                        idle.fetch_add(1, Ordering::AcqRel);
                    }
                });
        }
        // The receiver lives in `self`, so the channel is never disconnected.
        let _ = self.tx.send(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    #[test]
    fn blocked_jobs_do_not_starve_new_ones() {
        let s = Spawner::new("test");
        let barrier = Arc::new(Barrier::new(5));
        for _ in 0..4 {
            let b = Arc::clone(&barrier);
            // Each job waits for all the others: only possible on 4 threads.
            s.spawn(Box::new(move || {
                b.wait();
            }));
        }
        barrier.wait();
    }
}
