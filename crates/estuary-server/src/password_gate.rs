//! Fair access to argon2 password verification.
//!
//! A verification costs about 19 MiB and 15 ms of a core, so at most as many run at once as
//! there are cores (the global slots). Fairness has two parts:
//!
//! - **Per source address**: one verification queued or running. A request over that is
//!   refused at once (429) instead of queueing, so one attacker's many connections occupy one
//!   place in the queue, not all of it.
//! - **Per user name**: at most [`PER_USER_SLOTS`] of the global slots at a time. Further
//!   checks for the same name wait for that name's turn *before* they take a global slot, so
//!   guesses against one user (from many addresses) never hold up other users' logins. A real
//!   login of the attacked user waits behind at most one guess per attacking address; it is
//!   not refused.
//!
//! A verified credential is served from the cache without entering the gate at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Global slots one user name may hold at once.
pub const PER_USER_SLOTS: usize = 1;
/// The queue every name that is not a configured user shares (not a valid user name: it
/// holds a NUL).
pub const UNKNOWN_USERS: &str = "\0unknown";

/// The gate; cheap to clone.
#[derive(Debug, Clone)]
pub struct PasswordGate {
    slots: Arc<Semaphore>,
    state: Arc<Mutex<GateState>>,
}

#[derive(Debug, Default)]
struct GateState {
    /// Addresses with a verification queued or running.
    addresses: HashMap<String, ()>,
    /// Per user name: its semaphore and how many requests hold or wait for it.
    users: HashMap<String, (Arc<Semaphore>, usize)>,
}

/// An admitted verification: the address's place, released when dropped.
#[derive(Debug)]
pub struct GatePass {
    state: Arc<Mutex<GateState>>,
    address: String,
}

impl Drop for GatePass {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            s.addresses.remove(&self.address);
        }
    }
}

/// The right to run one verification now (the user's turn and a global slot).
#[derive(Debug)]
pub struct Slot {
    _global: OwnedSemaphorePermit,
    _user: OwnedSemaphorePermit,
    _user_entry: UserEntry,
}

/// Keeps a user name's entry alive while a request holds or waits for it.
#[derive(Debug)]
struct UserEntry {
    state: Arc<Mutex<GateState>>,
    user: String,
}

impl Drop for UserEntry {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            if let Some((_, n)) = s.users.get_mut(&self.user) {
                *n -= 1;
                if *n == 0 {
                    s.users.remove(&self.user);
                }
            }
        }
    }
}

impl PasswordGate {
    /// A gate with `slots` concurrent verifications.
    pub fn new(slots: usize) -> Self {
        PasswordGate {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            state: Arc::default(),
        }
    }

    /// Admits a verification from `address`, or `None` if that address already has one
    /// queued or running.
    pub fn enter(&self, address: &str) -> Option<GatePass> {
        let mut s = self.state.lock().ok()?;
        if s.addresses.contains_key(address) {
            return None;
        }
        s.addresses.insert(address.to_string(), ());
        Some(GatePass {
            state: self.state.clone(),
            address: address.to_string(),
        })
    }

    /// Waits for `user`'s turn, then for a global slot (both FIFO).
    pub async fn slot(&self, _pass: &GatePass, user: &str) -> Option<Slot> {
        let user_semaphore = {
            let mut s = self.state.lock().ok()?;
            let entry = s
                .users
                .entry(user.to_string())
                .or_insert_with(|| (Arc::new(Semaphore::new(PER_USER_SLOTS)), 0));
            entry.1 += 1;
            entry.0.clone()
        };
        let user_entry = UserEntry {
            state: self.state.clone(),
            user: user.to_string(),
        };
        let user_permit = user_semaphore.acquire_owned().await.ok()?;
        let global = self.slots.clone().acquire_owned().await.ok()?;
        Some(Slot {
            _global: global,
            _user: user_permit,
            _user_entry: user_entry,
        })
    }

    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        self.state
            .lock()
            .map(|s| (s.addresses.len(), s.users.len()))
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_address_has_one_place_in_the_queue() {
        let gate = PasswordGate::new(2);
        let a = gate.enter("10.0.0.1");
        assert!(a.is_some());
        assert!(gate.enter("10.0.0.1").is_none());
        assert!(gate.enter("10.0.0.2").is_some());
        drop(a);
        assert!(gate.enter("10.0.0.1").is_some());
    }

    #[tokio::test]
    async fn guesses_against_one_user_do_not_hold_up_another() {
        let gate = PasswordGate::new(2);
        // Carol's first check runs; guesses for carol from other addresses wait for her turn
        // without taking the second global slot.
        let p1 = gate.enter("10.0.0.1").unwrap();
        let carol = gate.slot(&p1, "carol").await.unwrap();
        let mut waiting = Vec::new();
        for i in 2..6 {
            let gate = gate.clone();
            waiting.push(tokio::spawn(async move {
                let pass = gate.enter(&format!("10.0.0.{i}")).unwrap();
                let _slot = gate.slot(&pass, "carol").await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Dave gets the free global slot at once.
        let p2 = gate.enter("10.0.1.1").unwrap();
        let dave = tokio::time::timeout(Duration::from_secs(1), gate.slot(&p2, "dave"))
            .await
            .expect("dave waited behind carol's queue");
        assert!(dave.is_some());
        drop(carol);
        for w in waiting {
            w.await.unwrap();
        }
        drop((dave, p1, p2));
        assert_eq!(gate.tracked(), (0, 0), "entries are removed when released");
    }
}
