//! CPU clocks read from `/proc` (no `unsafe`: the workspace forbids it, so no `libc` calls), and the
//! batch-verification reference measured on one thread.

use exchange::ingest::{self, Kind, Origin};
use protocol::topics::{self, Inbound};
use protocol::Version;
use std::time::Instant;

/// Clock ticks per second of the `utime`/`stime` fields of `/proc/<pid>/stat` and of `/proc/stat`:
/// Linux reports them in `USER_HZ`, which is 100 on every architecture it runs on here
/// (`getconf CLK_TCK` says 100 on the benchmark machine); `sysconf` would need `unsafe`.
const TICKS_PER_S: f64 = 100.0;
/// Messages per verification batch, as the exchange's verification workers take them at most.
pub const VERIFY_BATCH: usize = 256;

/// utime + stime of process `pid` (all its threads, living and ended), in seconds; 0 when it is gone.
pub fn process_cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let Some((_, fields)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = fields.split_whitespace().collect();
    // Fields 14 and 15 of proc(5) (utime, stime) are the 12th and 13th after the name.
    let ticks = |index: usize| fields.get(index).and_then(|field| field.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / TICKS_PER_S
}

/// Busy CPU time of the whole machine (all cores: user, nice, system, irq, softirq, steal), seconds.
pub fn machine_busy_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return 0.0 };
    let Some(line) = stat.lines().next() else { return 0.0 };
    let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|field| field.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|index| ticks.get(*index)).sum();
    busy as f64 / TICKS_PER_S
}

/// CPU time of the calling thread in nanoseconds: the first field of `/proc/thread-self/schedstat`,
/// the scheduler's `sum_exec_runtime`, which is what `clock_gettime(CLOCK_THREAD_CPUTIME_ID)` reads.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|stat| stat.split_whitespace().next().and_then(|field| field.parse().ok()))
        .unwrap_or(0)
}

/// utime + stime of every process named `name` (e.g. all PostgreSQL backends of the machine,
/// whoever's they are), in seconds. A process that ends between two readings drops out of the sum.
pub fn processes_named_cpu_s(name: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str().and_then(|pid| pid.parse::<u32>().ok()))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim_end() == name))
        .map(process_cpu_s)
        .sum()
}

/// `LOAD_BROKER_PID`: the broker's process, whose CPU time is then reported too.
pub fn broker_pid() -> Option<u32> {
    std::env::var("LOAD_BROKER_PID").ok().and_then(|pid| pid.parse().ok())
}

/// The 1-minute load average.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|loadavg| loadavg.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// A reading of the clocks at the start or end of a timed phase.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    wall: Instant,
    /// The exchange's processes together (the tool's own process when the exchange runs in it).
    exchange_s: f64,
    tool_s: f64,
    broker_s: f64,
    postgres_s: f64,
    machine_s: f64,
}

impl Clocks {
    pub fn now(exchange_pids: &[u32]) -> Clocks {
        let tool_s = process_cpu_s(std::process::id());
        let exchange_s =
            if exchange_pids.is_empty() { tool_s } else { exchange_pids.iter().map(|pid| process_cpu_s(*pid)).sum() };
        Clocks {
            wall: Instant::now(),
            exchange_s,
            tool_s,
            broker_s: broker_pid().map_or(0.0, process_cpu_s),
            postgres_s: processes_named_cpu_s("postgres"),
            machine_s: machine_busy_s(),
        }
    }

    /// What was spent from `start` to `self`.
    pub fn since(&self, start: &Clocks) -> Spent {
        Spent {
            wall_s: self.wall.duration_since(start.wall).as_secs_f64(),
            exchange_s: self.exchange_s - start.exchange_s,
            tool_s: self.tool_s - start.tool_s,
            broker_s: self.broker_s - start.broker_s,
            postgres_s: self.postgres_s - start.postgres_s,
            machine_s: self.machine_s - start.machine_s,
        }
    }
}

/// CPU seconds spent during a timed phase.
#[derive(Debug, Clone, Copy)]
pub struct Spent {
    pub wall_s: f64,
    pub exchange_s: f64,
    pub tool_s: f64,
    /// 0 without `LOAD_BROKER_PID`.
    pub broker_s: f64,
    /// Every PostgreSQL process of the machine (other users' too).
    pub postgres_s: f64,
    pub machine_s: f64,
}

/// Batch verification of `messages` (topic, payload) on one thread, as the exchange's verification
/// workers do it (`ingest::parse`, then `ingest::verify_signatures`, which calls
/// `protocol::verify_batch` per message type), in batches of [`VERIFY_BATCH`]. Returns the thread's
/// CPU time per message in µs: (parse, verify). Every signature must verify.
pub fn verification_us(messages: Vec<(String, Vec<u8>)>) -> (f64, f64) {
    std::thread::spawn(move || {
        let raw: Vec<(Kind, Origin, Vec<u8>)> =
            messages.into_iter().map(|(topic, bytes)| origin(&topic, bytes)).collect();
        let total = raw.len().max(1) as f64;
        let mut parse_ns = 0;
        let mut verify_ns = 0;
        for chunk in raw.chunks(VERIFY_BATCH) {
            let started = thread_cpu_ns();
            let parsed: Vec<_> =
                chunk.iter().map(|(kind, origin, bytes)| ingest::parse(*kind, origin, bytes)).collect();
            let parsed_at = thread_cpu_ns();
            let verdicts = ingest::verify_signatures(&parsed);
            verify_ns += thread_cpu_ns() - parsed_at;
            parse_ns += parsed_at - started;
            assert!(parsed.iter().all(Result::is_ok), "every payload parses");
            assert!(verdicts.iter().all(Option::is_none), "every signature verifies");
        }
        (parse_ns as f64 / total / 1_000.0, verify_ns as f64 / total / 1_000.0)
    })
    .join()
    .expect("the verification thread")
}

/// The kind and origin the exchange's MQTT listener gives a message on `topic`.
fn origin(topic: &str, bytes: Vec<u8>) -> (Kind, Origin, Vec<u8>) {
    let (kind, version, zone, sender) = match topics::parse_inbound(topic) {
        Some(Inbound::Readings { version, zone, device }) => (Kind::Reading, version, zone, device),
        Some(Inbound::Orders { zone, account }) => (Kind::Command, Version::V1, zone, account),
        _ => panic!("not an inbound reading or order topic: {topic}"),
    };
    (kind, Origin::Mqtt { version, zone: zone.to_owned(), sender: sender.to_owned() }, bytes)
}
