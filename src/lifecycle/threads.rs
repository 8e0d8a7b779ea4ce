//! Named threads that say when they end, so that a supervisor can wait
//! for an event instead of polling `is_finished`. A watched thread runs
//! its `on_end` however its body ends, a panic included (in a build that
//! unwinds; with `panic = "abort"` the process ends with it).
//!
//! It owns no policy: what an ended thread means is the supervisor's.

use std::thread::JoinHandle;

/// Starts `body` on a thread called `name` (it shows in `top -H`, in
/// panics and in logs). Helpers whose end nobody waits on (the reaper's,
/// the watchdog, the signal listener) name themselves.
pub fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
}

/// Starts `body` on a thread called `name`, and runs `on_end` on that
/// thread when `body` returns or panics.
pub fn spawn_watched(
    name: &str,
    on_end: impl FnOnce() + Send + 'static,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    spawn(name, move || {
        let _guard = OnDrop(Some(on_end));
        body();
    })
}

/// Runs its closure when dropped, also while a panic unwinds.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_watched_thread_reports_its_end_even_when_it_panics() {
        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        let ok = spawn_watched("ends", move || tx.send("ends").unwrap(), || {}).unwrap();
        let panics = spawn_watched(
            "panics",
            move || tx2.send("panics").unwrap(),
            || panic!("on purpose"),
        )
        .unwrap();
        // A bound, not a speed: under qemu a panic's unwinding with a
        // captured backtrace took over 10 s in CI.
        let mut ended: Vec<&str> = (0..2)
            .map(|_| rx.recv_timeout(Duration::from_secs(120)).unwrap())
            .collect();
        ended.sort_unstable();
        assert_eq!(ended, ["ends", "panics"]);
        assert!(ok.join().is_ok());
        assert!(panics.join().is_err());
    }
}
