//! Where argon2 password checks run: a few long-lived threads, not the blocking pool.
//!
//! Each check allocates the hash's working memory (19 MiB with the default parameters) and
//! frees it. glibc's allocator keeps freed memory in the arena of the thread that used it, and
//! a blocking-pool thread that comes and goes may leave a new arena behind each time: forty
//! wrong passwords in a row once took the server from 19 to 253 MiB, for good. On a fixed set
//! of threads the same few arenas are reused, so memory stays bounded by the number of
//! threads (checks beyond them wait in a queue; the password gate already caps how many can
//! queue, per address and per user).

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

/// The process's password-check threads.
pub struct PasswordCheckers {
    jobs: mpsc::Sender<Job>,
}

static CHECKERS: OnceLock<Option<PasswordCheckers>> = OnceLock::new();

impl PasswordCheckers {
    /// The process-wide checkers (one thread per core, at most 4), started on first use;
    /// `None` if no thread could be started.
    pub fn get() -> Option<&'static PasswordCheckers> {
        CHECKERS
            .get_or_init(|| {
                let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
                Self::start(threads)
            })
            .as_ref()
    }

    fn start(threads: usize) -> Option<PasswordCheckers> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let mut started = 0;
        for i in 0..threads {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("estuary-password-{i}"))
                .spawn(move || loop {
                    let job = match receiver.lock() {
                        Ok(receiver) => receiver.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            if spawned.is_ok() {
                started += 1;
            }
        }
        (started > 0).then_some(PasswordCheckers { jobs: sender })
    }

    /// Runs `check` on a checker thread; `None` if the checkers are gone.
    pub async fn run<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(check());
        });
        self.jobs.send(job).ok()?;
        answer.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checks_run_on_the_checker_threads() {
        let checkers = PasswordCheckers::get().expect("checker threads");
        let name = checkers
            .run(|| std::thread::current().name().map(str::to_string))
            .await
            .flatten()
            .unwrap_or_default();
        assert!(name.starts_with("estuary-password-"), "{name}");
        // Many at once all finish.
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..20 {
            tasks.spawn(async move { checkers.run(move || i * 2).await });
        }
        let mut sum = 0;
        while let Some(answer) = tasks.join_next().await {
            sum += answer.ok().flatten().unwrap_or(0);
        }
        assert_eq!(sum, 380);
    }
}
