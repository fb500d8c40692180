//! Modbus transport: TCP and RTU (serial) connections with timeouts, retries with backoff, reconnects,
//! reads split into requests of at most [`REGISTERS_PER_REQUEST_MAX`] registers, and writes of holding
//! registers (function 16) of at most [`WRITE_REGISTERS_PER_REQUEST_MAX`].

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::lookup_host;
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::{ExceptionCode, Slave};
use tokio_serial::{Parity, SerialPortBuilderExt, StopBits};

/// The Modbus specification's limit for one read of holding or input registers (function 3 and 4).
pub const REGISTERS_PER_REQUEST_MAX: u16 = 125;
/// How long one request may take. A healthy meter answers in tens of milliseconds; an RS-485 line at
/// 9600 baud needs ~300 ms for 125 registers.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 1_000;
/// The Modbus specification's limit for one write of multiple registers (function 16).
pub const WRITE_REGISTERS_PER_REQUEST_MAX: u16 = 123;
/// Attempts per read before the poll cycle gives up (the next poll tries again anyway).
pub const ATTEMPTS_DEFAULT: u32 = 3;
/// First retry delay; doubled on each retry.
pub const BACKOFF_INITIAL_MS: u64 = 100;
/// Longest retry delay, so a retrying read still fits inside a typical poll interval.
pub const BACKOFF_MAX_MS: u64 = 2_000;
/// Highest serial line speed we accept (Modbus RTU devices top out at 115200 in practice).
pub const BAUD_MAX: u32 = 921_600;

/// Which register table a read addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    /// Function 3, read holding registers.
    Holding,
    /// Function 4, read input registers.
    Input,
}

#[derive(Debug, thiserror::Error)]
pub enum ModbusError {
    #[error("bad modbus url `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: std::io::Error },
    #[error("device answered with modbus exception {0}")]
    Exception(ExceptionCode),
    #[error("no answer within {0} ms")]
    Timeout(u64),
    #[error("transport error: {0}")]
    Transport(String),
    #[error("device returned {got} registers, asked for {want}")]
    ShortAnswer { got: usize, want: usize },
    #[error("register range {addr}+{count} runs past 65535")]
    Range { addr: u16, count: u16 },
}

/// Serial line parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineParity {
    None,
    Even,
    Odd,
}

/// Where the device is: `tcp://host:port` or `rtu:///dev/ttyUSB0?baud=9600&parity=none&stop_bits=1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModbusUrl {
    Tcp { host: String, port: u16 },
    Rtu { path: String, baud: u32, parity: LineParity, stop_bits: u8 },
}

impl fmt::Display for ModbusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModbusUrl::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            ModbusUrl::Rtu { path, baud, parity, stop_bits } => {
                let parity = format!("{parity:?}").to_lowercase();
                write!(f, "rtu://{path}?baud={baud}&parity={parity}&stop_bits={stop_bits}")
            }
        }
    }
}

impl ModbusUrl {
    pub fn parse(url: &str) -> Result<Self, ModbusError> {
        let bad = |reason: &str| ModbusError::BadUrl { url: url.to_owned(), reason: reason.to_owned() };
        if let Some(rest) = url.strip_prefix("tcp://") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("expected tcp://HOST:PORT"))?;
            let port: u16 = port.trim_end_matches('/').parse().map_err(|_| bad("port is not a number 0-65535"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(bad("missing host"));
            }
            return Ok(ModbusUrl::Tcp { host: host.to_owned(), port });
        }
        if let Some(rest) = url.strip_prefix("rtu://") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if !path.starts_with('/') {
                return Err(bad("expected rtu:///dev/NAME (an absolute device path)"));
            }
            let (mut baud, mut parity, mut stop_bits) = (9600u32, LineParity::None, 1u8);
            for pair in query.split('&').filter(|pair| !pair.is_empty()) {
                let (key, value) = pair.split_once('=').ok_or_else(|| bad("query items are key=value"))?;
                match key {
                    "baud" => {
                        baud = value.parse().map_err(|_| bad("baud is a number"))?;
                        if baud == 0 || baud > BAUD_MAX {
                            return Err(bad("baud out of range"));
                        }
                    }
                    "parity" => {
                        parity = match value {
                            "none" | "N" | "n" => LineParity::None,
                            "even" | "E" | "e" => LineParity::Even,
                            "odd" | "O" | "o" => LineParity::Odd,
                            _ => return Err(bad("parity is none, even or odd")),
                        }
                    }
                    "stop_bits" => {
                        stop_bits = match value {
                            "1" => 1,
                            "2" => 2,
                            _ => return Err(bad("stop_bits is 1 or 2")),
                        }
                    }
                    _ => return Err(bad("unknown query item (baud, parity, stop_bits)")),
                }
            }
            return Ok(ModbusUrl::Rtu { path: path.to_owned(), baud, parity, stop_bits });
        }
        Err(bad("scheme must be tcp:// or rtu://"))
    }
}

/// Timeouts and retries for a [`ModbusClient`].
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub timeout_ms: u64,
    pub attempts: u32,
    pub backoff_initial_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
            attempts: ATTEMPTS_DEFAULT,
            backoff_initial_ms: BACKOFF_INITIAL_MS,
        }
    }
}

/// A Modbus client that connects lazily and reconnects after transport errors.
pub struct ModbusClient {
    url: ModbusUrl,
    unit: u8,
    policy: RetryPolicy,
    context: Option<Context>,
}

impl fmt::Debug for ModbusClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModbusClient")
            .field("url", &self.url.to_string())
            .field("unit", &self.unit)
            .field("connected", &self.context.is_some())
            .finish()
    }
}

impl ModbusClient {
    pub fn new(url: ModbusUrl, unit: u8, policy: RetryPolicy) -> Self {
        Self { url, unit, policy, context: None }
    }

    pub fn url(&self) -> &ModbusUrl {
        &self.url
    }

    /// Addresses the next requests to `unit` over the same connection (several devices behind one
    /// TCP gateway or on one RS-485 line).
    pub fn set_unit(&mut self, unit: u8) {
        self.unit = unit;
        if let Some(context) = self.context.as_mut() {
            use tokio_modbus::slave::SlaveContext;
            context.set_slave(Slave(unit));
        }
    }

    pub fn unit(&self) -> u8 {
        self.unit
    }

    /// Takes its inputs by value: the returned future must not borrow the client (its context is not
    /// `Sync`, and the gateway's future must be `Send`).
    async fn connect(url: ModbusUrl, unit: u8, policy: RetryPolicy) -> Result<Context, ModbusError> {
        let slave = Slave(unit);
        let timeout = Duration::from_millis(policy.timeout_ms);
        match &url {
            ModbusUrl::Tcp { host, port } => {
                let target = format!("{host}:{port}");
                let connect = async {
                    let addr: SocketAddr = lookup_host(&target)
                        .await?
                        .next()
                        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "host has no address"))?;
                    tokio_modbus::client::tcp::connect_slave(addr, slave).await
                };
                match tokio::time::timeout(timeout, connect).await {
                    Ok(result) => result.map_err(|source| ModbusError::Connect { target, source }),
                    Err(_) => Err(ModbusError::Timeout(policy.timeout_ms)),
                }
            }
            ModbusUrl::Rtu { path, baud, parity, stop_bits } => {
                let parity = match parity {
                    LineParity::None => Parity::None,
                    LineParity::Even => Parity::Even,
                    LineParity::Odd => Parity::Odd,
                };
                let stop_bits = if *stop_bits == 2 { StopBits::Two } else { StopBits::One };
                let port = tokio_serial::new(path, *baud)
                    .parity(parity)
                    .stop_bits(stop_bits)
                    .timeout(timeout)
                    .open_native_async()
                    .map_err(|error| ModbusError::Connect { target: path.clone(), source: error.into() })?;
                Ok(tokio_modbus::client::rtu::attach_slave(port, slave))
            }
        }
    }

    async fn read_once(&mut self, function: Function, addr: u16, count: u16) -> Result<Vec<u16>, ModbusError> {
        if self.context.is_none() {
            self.context = Some(Self::connect(self.url.clone(), self.unit, self.policy).await?);
        }
        let Some(context) = self.context.as_mut() else {
            return Err(ModbusError::Transport("not connected".to_owned()));
        };
        let request = async {
            match function {
                Function::Holding => context.read_holding_registers(addr, count).await,
                Function::Input => context.read_input_registers(addr, count).await,
            }
        };
        let outcome = tokio::time::timeout(Duration::from_millis(self.policy.timeout_ms), request).await;
        let words = match outcome {
            Err(_) => {
                // The answer may still arrive later and would be taken for the next request's: start afresh.
                self.context = None;
                return Err(ModbusError::Timeout(self.policy.timeout_ms));
            }
            Ok(Err(error)) => {
                self.context = None;
                return Err(ModbusError::Transport(error.to_string()));
            }
            Ok(Ok(Err(code))) => return Err(ModbusError::Exception(code)),
            Ok(Ok(Ok(words))) => words,
        };
        if words.len() != usize::from(count) {
            return Err(ModbusError::ShortAnswer { got: words.len(), want: usize::from(count) });
        }
        Ok(words)
    }

    async fn write_once(&mut self, addr: u16, words: &[u16]) -> Result<(), ModbusError> {
        if self.context.is_none() {
            self.context = Some(Self::connect(self.url.clone(), self.unit, self.policy).await?);
        }
        let Some(context) = self.context.as_mut() else {
            return Err(ModbusError::Transport("not connected".to_owned()));
        };
        let request = context.write_multiple_registers(addr, words);
        match tokio::time::timeout(Duration::from_millis(self.policy.timeout_ms), request).await {
            Err(_) => {
                self.context = None;
                Err(ModbusError::Timeout(self.policy.timeout_ms))
            }
            Ok(Err(error)) => {
                self.context = None;
                Err(ModbusError::Transport(error.to_string()))
            }
            Ok(Ok(Err(code))) => Err(ModbusError::Exception(code)),
            Ok(Ok(Ok(()))) => Ok(()),
        }
    }

    /// Writes holding registers from `addr` in one request (function 16), retrying transport errors and
    /// timeouts like a read: writing the same values again is harmless. Exceptions are not retried.
    pub async fn write(&mut self, addr: u16, words: &[u16]) -> Result<(), ModbusError> {
        let count = u16::try_from(words.len()).unwrap_or(u16::MAX);
        if words.is_empty() || count > WRITE_REGISTERS_PER_REQUEST_MAX || u32::from(addr) + u32::from(count) > 0x1_0000
        {
            return Err(ModbusError::Range { addr, count });
        }
        let mut backoff_ms = self.policy.backoff_initial_ms;
        let mut attempt = 1;
        loop {
            match self.write_once(addr, words).await {
                Ok(()) => return Ok(()),
                Err(error @ ModbusError::Exception(_)) => return Err(error),
                Err(error) if attempt >= self.policy.attempts.max(1) => return Err(error),
                Err(error) => {
                    tracing::debug!(%error, attempt, "modbus write failed, retrying");
                    tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                    backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
                    attempt += 1;
                }
            }
        }
    }

    /// Reads at most [`REGISTERS_PER_REQUEST_MAX`] registers in one request, retrying transport errors
    /// and timeouts with exponential backoff. Exceptions are answers and are not retried.
    pub async fn read_block(&mut self, function: Function, addr: u16, count: u16) -> Result<Vec<u16>, ModbusError> {
        assert!(count <= REGISTERS_PER_REQUEST_MAX, "callers split reads into requests of at most 125 registers");
        let mut backoff_ms = self.policy.backoff_initial_ms;
        let mut attempt = 1;
        loop {
            match self.read_once(function, addr, count).await {
                Ok(words) => return Ok(words),
                Err(error @ (ModbusError::Exception(_) | ModbusError::ShortAnswer { .. })) => return Err(error),
                Err(error) if attempt >= self.policy.attempts.max(1) => return Err(error),
                Err(error) => {
                    tracing::debug!(%error, attempt, "modbus read failed, retrying");
                    tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                    backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
                    attempt += 1;
                }
            }
        }
    }

    /// Reads any number of registers, split into requests of at most 125.
    pub async fn read(&mut self, function: Function, addr: u16, count: u16) -> Result<Vec<u16>, ModbusError> {
        if u32::from(addr) + u32::from(count) > 0x1_0000 {
            return Err(ModbusError::Range { addr, count });
        }
        let mut words = Vec::with_capacity(usize::from(count));
        for (start, len) in chunks(addr, count) {
            words.extend(self.read_block(function, start, len).await?);
        }
        Ok(words)
    }

    /// Drops the connection; the next read reconnects.
    pub async fn disconnect(&mut self) {
        if let Some(mut context) = self.context.take() {
            use tokio_modbus::client::Client;
            let _ = context.disconnect().await;
        }
    }
}

/// Splits `count` registers from `addr` into requests of at most [`REGISTERS_PER_REQUEST_MAX`].
pub fn chunks(addr: u16, count: u16) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    let mut done: u16 = 0;
    while done < count {
        let len = (count - done).min(REGISTERS_PER_REQUEST_MAX);
        out.push((addr.wrapping_add(done), len));
        done += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_for_tcp_and_rtu() {
        assert_eq!(
            ModbusUrl::parse("tcp://127.0.0.1:1502").expect("valid"),
            ModbusUrl::Tcp { host: "127.0.0.1".into(), port: 1502 }
        );
        assert_eq!(
            ModbusUrl::parse("rtu:///dev/ttyUSB0?baud=19200&parity=even&stop_bits=2").expect("valid"),
            ModbusUrl::Rtu { path: "/dev/ttyUSB0".into(), baud: 19200, parity: LineParity::Even, stop_bits: 2 }
        );
        assert_eq!(
            ModbusUrl::parse("rtu:///dev/ttyUSB0").expect("valid"),
            ModbusUrl::Rtu { path: "/dev/ttyUSB0".into(), baud: 9600, parity: LineParity::None, stop_bits: 1 }
        );
        assert!(ModbusUrl::parse("http://x:1").is_err());
        assert!(ModbusUrl::parse("tcp://host").is_err());
        assert!(ModbusUrl::parse("rtu:///dev/x?baud=0").is_err());
        assert!(ModbusUrl::parse("rtu:///dev/x?speed=1").is_err());
    }

    #[test]
    fn reads_are_split_into_requests_of_at_most_125_registers() {
        assert_eq!(chunks(40000, 300), vec![(40000, 125), (40125, 125), (40250, 50)]);
        assert_eq!(chunks(0, 125), vec![(0, 125)]);
        assert!(chunks(0, 0).is_empty());
    }
}
