//! `SCHED_BATCH` for background threads that share a core with request handling.
//!
//! Under `SCHED_BATCH` (Linux, sched(7)) a thread keeps its CPU share and nice value, but its
//! wake-ups do not preempt the thread that is running: it runs when that thread waits or its
//! time slice ends. The store's writer (under load) and the server's log thread use it.
//!
//! Only a thread under the default policy (`SCHED_OTHER`) is moved, and only back to it: a
//! policy the operator chose (real-time, idle, a `sched_ext` scheduler, or one this code does
//! not know) is left alone. The policy is read from `/proc/thread-self/stat`, so no policy
//! value can surprise a parser. A thread under a seccomp filter is left alone too, unless
//! `ESTUARY_SCHED_BATCH=1` says the filter allows the call: a filter may kill the process on
//! `sched_setscheduler` (systemd's `SystemCallFilter=~@resources` without
//! `SystemCallErrorNumber=`), and the optimisation is not worth that risk.

/// `SCHED_OTHER` (also called `SCHED_NORMAL`).
const SCHED_OTHER: u32 = 0;
/// `SCHED_BATCH`.
const SCHED_BATCH: u32 = 3;

/// The calling thread's policy and whether a seccomp filter applies to it, from `/proc`.
/// `None` where `/proc` does not say (not Linux, not mounted).
fn current_policy() -> Option<(u32, bool)> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Field 2 (the name) may hold spaces and parentheses: count from after its last ')'.
    // Field 41 is the policy, the 39th after the name.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let policy = after_name.split_whitespace().nth(38)?.parse().ok()?;
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let seccomp_filtered = status
        .lines()
        .find_map(|line| line.strip_prefix("Seccomp:"))
        .is_some_and(|mode| mode.trim() != "0");
    Some((policy, seccomp_filtered))
}

/// Whether this thread may be moved between `SCHED_OTHER` and `SCHED_BATCH`: it is under
/// `SCHED_OTHER`, and no seccomp filter applies or the environment says the filter allows it
/// (`ESTUARY_SCHED_BATCH=1`, which the shipped systemd unit sets: its filters refuse only
/// real-time policies). `ESTUARY_SCHED_BATCH=0` turns it off.
pub fn adjustable() -> bool {
    let setting = std::env::var("ESTUARY_SCHED_BATCH").ok();
    match (current_policy(), setting.as_deref()) {
        (_, Some("0")) => false,
        (Some((SCHED_OTHER, seccomp_filtered)), setting) => {
            !seccomp_filtered || setting == Some("1")
        }
        _ => false,
    }
}

/// Puts the calling thread under `SCHED_BATCH` (`batch`) or back under `SCHED_OTHER`, if
/// [`adjustable`] said so. False if the kernel refused.
pub fn set_batch(batch: bool) -> bool {
    #[cfg(target_os = "linux")]
    {
        let policy = if batch {
            scheduler::Policy::Batch
        } else {
            scheduler::Policy::Other
        };
        scheduler::set_self_policy(policy, 0).is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = batch;
        false
    }
}

/// The calling thread's policy is `SCHED_BATCH` (for tests).
pub fn is_batch() -> bool {
    matches!(current_policy(), Some((SCHED_BATCH, _)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_is_read_and_changed() {
        std::thread::spawn(|| {
            let Some((policy, filtered)) = current_policy() else {
                panic!("/proc/thread-self/stat has no policy");
            };
            if policy != SCHED_OTHER || filtered {
                // Not adjustable here: nothing may change.
                assert!(!adjustable());
                return;
            }
            assert!(adjustable());
            assert!(set_batch(true));
            assert!(is_batch());
            assert!(set_batch(false));
            assert!(!is_batch());
        })
        .join()
        .unwrap();
    }
}
