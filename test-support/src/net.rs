//! Loopback ports and unique names.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long [`wait_listening`] waits for a listener: a bound on a hang, not a timing.
pub const LISTEN_WAIT_MAX: Duration = Duration::from_secs(60);

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// Whether something accepts TCP connections on `host:port` within [`LISTEN_WAIT_MAX`].
pub fn wait_listening(host: &str, port: u16) -> bool {
    let Ok(addr) = format!("{host}:{port}").parse::<SocketAddr>() else {
        return false;
    };
    let deadline = Instant::now() + LISTEN_WAIT_MAX;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A unique suffix for zone names and client ids, so tests sharing a broker never see each other.
pub fn unique() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{:x}{:x}{}", std::process::id(), nanos, UNIQUE.fetch_add(1, Ordering::Relaxed))
}
