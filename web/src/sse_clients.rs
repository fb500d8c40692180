//! How many live-feed streams each client address holds open (`http.sse_streams_per_client_max`), so
//! one client cannot take every stream. A leaf module: the shared state holds the counts and the
//! feed takes a slot per stream.

use crate::error::ApiError;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The streams each client address holds open, so one client cannot take every stream.
#[derive(Debug)]
pub struct ClientStreams {
    per_client_max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open stream of a client; closing the stream (dropping this) frees it.
pub(crate) struct ClientSlot {
    streams: Arc<ClientStreams>,
    client: IpAddr,
}

impl ClientStreams {
    pub fn new(per_client_max: usize) -> ClientStreams {
        ClientStreams { per_client_max, open: Mutex::new(HashMap::new()) }
    }

    /// Takes one of `client`'s streams, or refuses with 429 `too_many_streams` when it has all.
    pub(crate) fn take(streams: &Arc<ClientStreams>, client: IpAddr) -> Result<ClientSlot, ApiError> {
        // A poisoned lock only means a panic between two integer updates; the counts stay usable.
        let mut open = streams.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(client).or_insert(0);
        if *count >= streams.per_client_max {
            return Err(ApiError::new(
                actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!("this client already has {} live streams open; close one first", streams.per_client_max),
            ));
        }
        *count += 1;
        Ok(ClientSlot { streams: Arc::clone(streams), client })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}
