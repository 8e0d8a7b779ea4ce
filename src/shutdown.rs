//! The shutdown signal, passed as a value into every long-running loop.
//!
//! One [`Shutdown`] is created by the binary and cloned into each thread and
//! task. Threads sleep on it ([`Shutdown::sleep`]) instead of
//! `thread::sleep`, and tasks `select!` on [`Shutdown::wait`], so a SIGTERM
//! wakes every wait at once and no loop can outlive its bound unnoticed. It
//! owns no policy: what "drain" means is decided by each loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    flag: AtomicBool,
    started: Mutex<Option<Instant>>,
    wake_threads: Condvar,
    wake_tasks: tokio::sync::Notify,
    /// Run once by the trigger: wakes waits that are not on this value
    /// (another condition variable, a channel, a file descriptor).
    on_trigger: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the shutdown; later calls do nothing.
    pub fn trigger(&self) {
        let mut started = self.inner.started.lock().unwrap_or_else(|e| e.into_inner());
        if started.is_none() {
            *started = Some(Instant::now());
        }
        self.inner.flag.store(true, Ordering::SeqCst);
        drop(started);
        self.inner.wake_threads.notify_all();
        self.inner.wake_tasks.notify_waiters();
        let wakers = std::mem::take(
            &mut *self
                .inner
                .on_trigger
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for wake in wakers {
            wake();
        }
    }

    /// Runs `wake` when shutdown starts (at once if it has): for a loop
    /// that blocks on something of its own rather than on this value, so
    /// that it sleeps without polling and still stops at once. `wake` runs
    /// on the thread that triggers and must only wake, never block.
    pub fn on_trigger(&self, wake: impl FnOnce() + Send + 'static) {
        let mut wakers = self
            .inner
            .on_trigger
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.is_triggered() {
            drop(wakers);
            wake();
        } else {
            wakers.push(Box::new(wake));
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.flag.load(Ordering::SeqCst)
    }

    /// When the shutdown started, if it has.
    pub fn started_at(&self) -> Option<Instant> {
        *self.inner.started.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps for `d` or until shutdown; returns true if shutdown started.
    pub fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut guard = self.inner.started.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.is_triggered() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self
                .inner
                .wake_threads
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Completes when shutdown starts.
    pub async fn wait(&self) {
        loop {
            let notified = self.inner.wake_tasks.notified();
            // Checked after creating the future so a trigger between the
            // check and the await is not lost.
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }
}

/// Waits on `condvar` with `guard` until `done` holds, `shutdown` starts
/// (its waker must notify `condvar`, [`Shutdown::on_trigger`]) or the
/// optional deadline passes. Returns the guard and whether `done` held.
/// For the loops that sleep on a condition of their own rather than on the
/// shutdown.
pub fn wait_while<'a, T>(
    condvar: &Condvar,
    mut guard: std::sync::MutexGuard<'a, T>,
    deadline: Option<Instant>,
    shutdown: &Shutdown,
    mut done: impl FnMut(&mut T) -> bool,
) -> (std::sync::MutexGuard<'a, T>, bool) {
    loop {
        if done(&mut guard) {
            return (guard, true);
        }
        if shutdown.is_triggered() {
            return (guard, false);
        }
        guard = match deadline {
            None => condvar.wait(guard).unwrap_or_else(|e| e.into_inner()),
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    return (guard, false);
                }
                condvar
                    .wait_timeout(guard, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
    }
}

/// SIGTERM or SIGINT starts the shutdown (a drain of at most `bound`, which
/// is only logged here); a second one calls `second` with the signal number,
/// where the binary exits at once. The handler runs on a named thread.
pub fn on_termination_signals(
    shutdown: Shutdown,
    bound: Duration,
    second: impl Fn(i32) + Send + 'static,
) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                if shutdown.is_triggered() {
                    log::warn!("second {name}: exiting now");
                    second(signal);
                    continue;
                }
                log::info!(
                    "{name}: draining, at most {}",
                    humantime::format_duration(bound)
                );
                shutdown.trigger();
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_wakes_on_trigger() {
        let s = Shutdown::new();
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            (s2.sleep(Duration::from_secs(30)), start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        s.trigger();
        let (woken, took) = t.join().unwrap();
        assert!(woken);
        assert!(took < Duration::from_secs(10));
        assert!(s.started_at().is_some());
        assert!(!Shutdown::new().sleep(Duration::from_millis(1)));
    }

    #[test]
    fn wakers_run_once_at_the_trigger_or_at_once_after_it() {
        let s = Shutdown::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        s.on_trigger(move || tx.send("before").unwrap());
        assert!(rx.try_recv().is_err());
        s.trigger();
        s.trigger();
        assert_eq!(rx.try_recv(), Ok("before"));
        s.on_trigger(move || tx2.send("after").unwrap());
        assert_eq!(rx.try_recv(), Ok("after"));
        assert!(rx.try_recv().is_err(), "each ran once");
    }

    #[test]
    fn wait_completes_on_trigger() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let s = Shutdown::new();
        let s2 = s.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            s2.trigger();
        });
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), s.wait())
                .await
                .unwrap();
        });
    }
}
