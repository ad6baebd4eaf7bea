//! Fair access to argon2 password verification.
//!
//! A verification costs about 19 MiB and 15 ms of a core, so at most as many run at once as
//! there are cores (a semaphore, FIFO). Without more, one attacker with many connections
//! fills that queue and a valid, not yet cached login waits behind all of them. So one source
//! address may have only one verification queued or running, and one user name at most
//! [`PER_USER`]: a request over its share is refused at once (429) instead of queueing. The
//! queue then holds at most one request per address, and a verified credential is served
//! from the cache without entering the gate at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Verifications one source address may have queued or running.
pub const PER_ADDRESS: u32 = 1;
/// Verifications one user name may have queued or running.
pub const PER_USER: u32 = 2;

/// The gate; cheap to clone.
#[derive(Debug, Clone)]
pub struct PasswordGate {
    slots: Arc<Semaphore>,
    in_flight: Arc<Mutex<InFlight>>,
}

#[derive(Debug, Default)]
struct InFlight {
    addresses: HashMap<String, u32>,
    users: HashMap<String, u32>,
}

/// Held while a verification is queued or runs; gives the share back when dropped.
#[derive(Debug)]
pub struct GatePass {
    in_flight: Arc<Mutex<InFlight>>,
    address: String,
    user: String,
}

impl Drop for GatePass {
    fn drop(&mut self) {
        if let Ok(mut f) = self.in_flight.lock() {
            release(&mut f.addresses, &self.address);
            release(&mut f.users, &self.user);
        }
    }
}

fn release(map: &mut HashMap<String, u32>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl PasswordGate {
    /// A gate with `slots` concurrent verifications.
    pub fn new(slots: usize) -> Self {
        PasswordGate {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            in_flight: Arc::default(),
        }
    }

    /// Takes this address's and this user's share, or `None` if either is used up.
    pub fn enter(&self, address: &str, user: &str) -> Option<GatePass> {
        let mut f = self.in_flight.lock().ok()?;
        if f.addresses.get(address).copied().unwrap_or(0) >= PER_ADDRESS
            || f.users.get(user).copied().unwrap_or(0) >= PER_USER
        {
            return None;
        }
        *f.addresses.entry(address.to_string()).or_default() += 1;
        *f.users.entry(user.to_string()).or_default() += 1;
        Some(GatePass {
            in_flight: self.in_flight.clone(),
            address: address.to_string(),
            user: user.to_string(),
        })
    }

    /// Waits for a verification slot (FIFO among the admitted).
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_and_one_user_cannot_take_more_than_their_share() {
        let gate = PasswordGate::new(2);
        let a = gate.enter("10.0.0.1", "alice");
        assert!(a.is_some());
        // Same address, any user: refused while the first is in flight.
        assert!(gate.enter("10.0.0.1", "bob").is_none());
        // Another address, same user: up to PER_USER.
        let b = gate.enter("10.0.0.2", "alice");
        assert!(b.is_some());
        assert!(gate.enter("10.0.0.3", "alice").is_none());
        // Someone else entirely is not held up.
        assert!(gate.enter("10.0.0.4", "carol").is_some());
        drop(a);
        assert!(gate.enter("10.0.0.1", "bob").is_some());
        drop(b);
        let f = gate.in_flight.lock().map(|f| f.users.len()).unwrap_or(99);
        assert_eq!(f, 0, "entries are removed when released");
    }
}
