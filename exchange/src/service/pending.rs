//! The asking half of a request relayed to another gridex server through the broker (a command in
//! [`super::relay`], a read query in [`super::query`]): this server's topic segment, the publish
//! queue, the operator key replies are verified against, the timeout, and the bounded table of the
//! callers waiting for a reply, keyed by request id. A leaf of the service: of its modules it
//! imports only [`super::events`].

use super::events::Outbound;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;

/// Callers of type `W` waiting for replies from other servers.
pub(crate) struct Pending<W> {
    /// This server's segment of the request and reply topics (`relay::topic_segment`).
    pub name: String,
    pub publish: mpsc::Sender<Outbound>,
    /// The operator key every reply is verified against.
    pub operator: [u8; 32],
    /// How long a caller waits for its reply.
    pub timeout: Duration,
    waiting: Mutex<HashMap<String, W>>,
    /// Callers waiting at once, at most: each holds an HTTP request open, so this bounds the
    /// memory of a burst towards an owner that does not answer.
    waiting_max: usize,
    /// Request ids: a per-process random prefix and a counter, unique across restarts.
    prefix: u64,
    next: AtomicU64,
}

impl<W> std::fmt::Debug for Pending<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<W> Pending<W> {
    /// A table for requests published through `publish` as `name` (already one topic segment).
    pub(crate) fn new(
        name: String,
        publish: mpsc::Sender<Outbound>,
        operator: [u8; 32],
        timeout_ms: u64,
        waiting_max: usize,
    ) -> Self {
        let prefix = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), &name);
        Pending {
            name,
            publish,
            operator,
            timeout: Duration::from_millis(timeout_ms),
            waiting: Mutex::new(HashMap::new()),
            waiting_max,
            prefix,
            next: AtomicU64::new(0),
        }
    }

    fn waiting(&self) -> MutexGuard<'_, HashMap<String, W>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new request id with `caller` waiting for its reply; `Err(caller)` when the table is full.
    pub(crate) fn wait(&self, caller: W) -> Result<String, W> {
        let request = format!("{:016x}{:016x}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed));
        let mut waiting = self.waiting();
        if waiting.len() >= self.waiting_max {
            return Err(caller);
        }
        waiting.insert(request.clone(), caller);
        Ok(request)
    }

    /// The caller waiting for `request`, no longer waiting; `None` if it was answered, timed out
    /// or never asked.
    pub(crate) fn take(&self, request: &str) -> Option<W> {
        self.waiting().remove(request)
    }

    /// Whether a caller waits for `request` (tests).
    #[cfg(test)]
    pub(crate) fn waits_for(&self, request: &str) -> bool {
        self.waiting().contains_key(request)
    }

    /// The timeout in milliseconds, as callers are told it.
    pub(crate) fn timeout_ms(&self) -> u64 {
        self.timeout.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_gives_its_caller_back_and_a_taken_request_is_gone() {
        let (publish, _published) = mpsc::channel(1);
        let pending = Pending::new("web-a".to_owned(), publish, [0; 32], 1_000, 2);
        let first = pending.wait(1).expect("room");
        let second = pending.wait(2).expect("room");
        assert_ne!(first, second);
        assert_eq!(pending.wait(3), Err(3));
        assert_eq!(pending.take(&first), Some(1));
        assert_eq!(pending.take(&first), None);
        assert!(!pending.waits_for(&first));
        assert!(pending.waits_for(&second));
        assert!(pending.wait(4).is_ok(), "room again once one is taken");
    }
}
