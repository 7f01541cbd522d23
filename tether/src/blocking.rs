//! Blocking work off the runtime thread, each job on a thread of its own, with an error
//! instead of a panic when the kernel has no thread to give.
//!
//! `tokio::task::spawn_blocking` panics ("OS can't spawn worker thread") when its pool needs
//! a new thread and `clone` fails. A fork bomb in the container holds every pid, so the next
//! clock sync, `docker top`, `docker stats` or `docker cp` that found the pool's thread gone
//! idle powered the VM off: `fork_bomb` did so once the host-key parse, which had started
//! that thread early, ran late. Here a thread comes from `std::thread::Builder`, whose
//! failure is an `Err`: the job's caller reports it and the tether goes on.
//!
//! A thread per job costs a `clone` (well under a millisecond); these jobs are rare, none on
//! the output path. They run at the background priority, as deferrable work does.

use tokio::sync::oneshot;

/// Why a blocking job did not give its result.
#[derive(Debug, thiserror::Error)]
pub enum BlockingError {
    /// the kernel refused a thread (every pid taken, or memory short)
    #[error("no thread for {0}: {1}")]
    Spawn(&'static str, #[source] std::io::Error),
    /// the job's thread ended without a result (it panicked)
    #[error("{0} ended without a result")]
    Lost(&'static str),
}

/// A started job: [`Job::join`] waits for its result.
#[derive(Debug)]
pub struct Job<T> {
    what: &'static str,
    result: oneshot::Receiver<T>,
}

/// Starts `f` on a thread of its own now; `what` names the thread and the errors.
pub fn spawn<T, F>(what: &'static str, f: F) -> Result<Job<T>, BlockingError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, result) = oneshot::channel();
    std::thread::Builder::new()
        .name(what.into())
        .spawn(move || {
            crate::writeback::background_priority();
            let _ = tx.send(f());
        })
        .map_err(|e| BlockingError::Spawn(what, e))?;
    Ok(Job { what, result })
}

impl<T> Job<T> {
    /// The job's result, once it is done.
    pub async fn join(self) -> Result<T, BlockingError> {
        self.result
            .await
            .map_err(|_| BlockingError::Lost(self.what))
    }
}

/// Runs `f` on a thread of its own and waits for its result.
pub async fn run<T, F>(what: &'static str, f: F) -> Result<T, BlockingError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    spawn(what, f)?.join().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_gives_its_result_or_says_why_not() {
        assert_eq!(run("add", || 2 + 2).await.unwrap(), 4);
        let job = spawn("started", || {
            std::thread::current().name().map(str::to_owned)
        })
        .unwrap();
        assert_eq!(job.join().await.unwrap().as_deref(), Some("started"));
        // A job that dies gives an error, not a hang (the test harness's panic hook only
        // prints).
        let err = run("dies", || -> u8 { panic!("boom") }).await.unwrap_err();
        assert_eq!(err.to_string(), "dies ended without a result");
    }
}
