//! On-disk store and forward: every signed reading is appended (and fsynced) here before anything
//! tries to publish it, and is removed only after the exchange answered it (see [`crate::publisher`]).
//!
//! Layout of the spool directory:
//! - `seg-<first seq, 20 digits>.log`: append-only segments, one record per line: `<seq> <payload>\n`
//!   (payloads are canonical JSON, which never contains a raw newline). A torn last line after a
//!   crash is cut off when the spool is opened.
//! - `acked`: the highest sequence number through which the exchange answered every record (all
//!   records up to it are done),
//!   replaced atomically (write, fsync, rename).
//!
//! The spool is bounded: when its segments exceed the configured size, the oldest segment is dropped
//! as a last resort and the number of readings lost is counted and logged.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Largest segment file. Small enough that re-reading one is cheap, large enough (about 500 readings)
/// that a day at a 1 s poll is under 200 files.
pub const SEGMENT_BYTES_MAX: u64 = 256 * 1024;
/// Smallest spool size accepted: a few segments, so dropping one never drops everything.
pub const SPOOL_BYTES_MIN: u64 = 16 * 1024;
/// Default bound: 64 MiB holds about 150 000 readings, 40 hours at a 1 s poll.
pub const SPOOL_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Largest record payload (a signed reading is about 450 bytes; the protocol caps messages at 1 KiB).
pub const PAYLOAD_BYTES_MAX: usize = 1024;

const ACKED_FILE: &str = "acked";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool i/o on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("record payload of {0} bytes is too large or contains a newline")]
    BadPayload(usize),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.to_path_buf(), source }
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    last_seq: u64,
    records: u64,
    bytes: u64,
    path: PathBuf,
}

/// A bounded, crash-safe queue of `(seq, payload)` records ordered by `seq`.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    bytes_max: u64,
    segment_bytes_max: u64,
    segments: VecDeque<Segment>,
    tail: Option<File>,
    acked_seq: u64,
    dropped_total: u64,
    /// Where the last read stopped: (segment's first seq, byte offset, last seq read).
    read_hint: Option<(u64, u64, u64)>,
}

fn parse_record(line: &[u8]) -> Option<(u64, &[u8])> {
    let space = line.iter().position(|b| *b == b' ')?;
    let seq = std::str::from_utf8(&line[..space]).ok()?.parse().ok()?;
    Some((seq, &line[space + 1..]))
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, repairing a torn tail.
    pub fn open(dir: &Path, bytes_max: u64) -> Result<Self, SpoolError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let bytes_max = bytes_max.max(SPOOL_BYTES_MIN);
        let acked_path = dir.join(ACKED_FILE);
        let acked_seq = match fs::read_to_string(&acked_path) {
            Ok(text) => text.trim().parse().unwrap_or(0),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => return Err(SpoolError::Io { path: acked_path, source: error }),
        };
        let mut names: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io_error(dir))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("seg-") && n.ends_with(".log"))
            })
            .collect();
        names.sort();
        let mut segments = VecDeque::new();
        for path in names {
            if let Some(segment) = Self::scan(&path)? {
                segments.push_back(segment);
            }
        }
        let mut spool = Self {
            dir: dir.to_path_buf(),
            bytes_max,
            segment_bytes_max: SEGMENT_BYTES_MAX.min(bytes_max / 4),
            segments,
            tail: None,
            acked_seq,
            dropped_total: 0,
            read_hint: None,
        };
        spool.remove_acked_segments()?;
        Ok(spool)
    }

    /// Reads a segment's records, truncating a torn or garbled tail. Empty segments are deleted.
    fn scan(path: &Path) -> Result<Option<Segment>, SpoolError> {
        let bytes = fs::read(path).map_err(io_error(path))?;
        let (mut good_len, mut first_seq, mut last_seq, mut records) = (0usize, None, 0u64, 0u64);
        let mut offset = 0usize;
        while let Some(newline) = bytes[offset..].iter().position(|b| *b == b'\n') {
            let line = &bytes[offset..offset + newline];
            let Some((seq, _)) = parse_record(line) else { break };
            if first_seq.is_some() && seq <= last_seq {
                break;
            }
            first_seq.get_or_insert(seq);
            last_seq = seq;
            records += 1;
            offset += newline + 1;
            good_len = offset;
        }
        if good_len < bytes.len() {
            tracing::warn!(path = %path.display(), cut_bytes = bytes.len() - good_len, "spool: cutting a torn record");
            let file = OpenOptions::new().write(true).open(path).map_err(io_error(path))?;
            file.set_len(good_len as u64).map_err(io_error(path))?;
            file.sync_all().map_err(io_error(path))?;
        }
        let Some(first_seq) = first_seq else {
            fs::remove_file(path).map_err(io_error(path))?;
            return Ok(None);
        };
        Ok(Some(Segment { first_seq, last_seq, records, bytes: good_len as u64, path: path.to_path_buf() }))
    }

    /// The highest sequence number ever appended (0 when the spool is empty and nothing was acked).
    pub fn last_seq(&self) -> u64 {
        self.segments.back().map_or(self.acked_seq, |segment| segment.last_seq.max(self.acked_seq))
    }
    pub fn acked_seq(&self) -> u64 {
        self.acked_seq
    }
    /// Readings dropped to stay within the size bound since this spool was opened.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.bytes).sum()
    }
    /// Records not yet acknowledged (counted per segment, so an upper bound).
    pub fn unacked_estimate(&self) -> u64 {
        self.segments.iter().filter(|s| s.last_seq > self.acked_seq).map(|s| s.records).sum()
    }

    /// Appends one record and fsyncs it. `seq` must be above every appended sequence number.
    pub fn append(&mut self, seq: u64, payload: &[u8]) -> Result<(), SpoolError> {
        assert!(seq > self.last_seq(), "spool sequence numbers strictly increase");
        if payload.len() > PAYLOAD_BYTES_MAX || payload.contains(&b'\n') {
            return Err(SpoolError::BadPayload(payload.len()));
        }
        let mut line = Vec::with_capacity(payload.len() + 24);
        line.extend_from_slice(seq.to_string().as_bytes());
        line.push(b' ');
        line.extend_from_slice(payload);
        line.push(b'\n');
        let rotate = self.segments.back().is_none_or(|tail| tail.bytes + line.len() as u64 > self.segment_bytes_max);
        if rotate || self.tail.is_none() {
            self.open_tail(seq, rotate)?;
        }
        let Some(tail_segment) = self.segments.back_mut() else {
            unreachable!("open_tail pushed a segment");
        };
        let path = tail_segment.path.clone();
        let Some(file) = self.tail.as_mut() else { unreachable!("open_tail opened the file") };
        file.write_all(&line).map_err(io_error(&path))?;
        file.sync_data().map_err(io_error(&path))?;
        tail_segment.bytes += line.len() as u64;
        tail_segment.last_seq = seq;
        tail_segment.records += 1;
        self.enforce_bound()?;
        Ok(())
    }

    fn open_tail(&mut self, seq: u64, new_segment: bool) -> Result<(), SpoolError> {
        if new_segment {
            let path = self.dir.join(format!("seg-{seq:020}.log"));
            self.segments.push_back(Segment { first_seq: seq, last_seq: seq, records: 0, bytes: 0, path });
            // Make the new file's directory entry durable.
            if let Ok(dir) = File::open(&self.dir) {
                let _ = dir.sync_all();
            }
        }
        let Some(tail) = self.segments.back() else { unreachable!("a tail exists") };
        let file = OpenOptions::new().create(true).append(true).open(&tail.path).map_err(io_error(&tail.path))?;
        self.tail = Some(file);
        Ok(())
    }

    fn enforce_bound(&mut self) -> Result<(), SpoolError> {
        while self.bytes() > self.bytes_max && self.segments.len() > 1 {
            let Some(oldest) = self.segments.pop_front() else { break };
            let lost = if oldest.last_seq > self.acked_seq { oldest.records } else { 0 };
            self.dropped_total += lost;
            tracing::warn!(
                lost,
                dropped_total = self.dropped_total,
                first_seq = oldest.first_seq,
                last_seq = oldest.last_seq,
                "spool full: dropped the oldest unacknowledged readings"
            );
            fs::remove_file(&oldest.path).map_err(io_error(&oldest.path))?;
            self.read_hint = None;
        }
        Ok(())
    }

    /// Up to `max` records with `seq > after_seq`, in order.
    pub fn read_after(&mut self, after_seq: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        let mut out = Vec::new();
        for segment in self.segments.iter().filter(|segment| segment.last_seq > after_seq) {
            if out.len() >= max {
                break;
            }
            let start = match self.read_hint {
                Some((first_seq, offset, last_read)) if first_seq == segment.first_seq && last_read <= after_seq => {
                    offset
                }
                _ => 0,
            };
            let mut file = File::open(&segment.path).map_err(io_error(&segment.path))?;
            file.seek(SeekFrom::Start(start)).map_err(io_error(&segment.path))?;
            let mut bytes = Vec::new();
            file.take(segment.bytes.saturating_sub(start)).read_to_end(&mut bytes).map_err(io_error(&segment.path))?;
            let mut offset = 0usize;
            while let Some(newline) = bytes[offset..].iter().position(|b| *b == b'\n') {
                let Some((seq, payload)) = parse_record(&bytes[offset..offset + newline]) else { break };
                offset += newline + 1;
                if seq > after_seq {
                    out.push((seq, payload.to_vec()));
                    self.read_hint = Some((segment.first_seq, start + offset as u64, seq));
                    if out.len() >= max {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Records that everything up to `seq` was acknowledged: persists the cursor and deletes segments
    /// that hold only acknowledged records.
    pub fn ack_through(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq <= self.acked_seq {
            return Ok(());
        }
        self.acked_seq = seq;
        let path = self.dir.join(ACKED_FILE);
        let temp = self.dir.join("acked.tmp");
        let mut file = File::create(&temp).map_err(io_error(&temp))?;
        file.write_all(seq.to_string().as_bytes()).map_err(io_error(&temp))?;
        file.sync_all().map_err(io_error(&temp))?;
        fs::rename(&temp, &path).map_err(io_error(&path))?;
        self.remove_acked_segments()
    }

    fn remove_acked_segments(&mut self) -> Result<(), SpoolError> {
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.last_seq <= self.acked_seq) {
            if let Some(done) = self.segments.pop_front() {
                fs::remove_file(&done.path).map_err(io_error(&done.path))?;
                self.read_hint = None;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(seq: u64) -> Vec<u8> {
        format!("{{\"seq\":{seq},\"pad\":\"{}\"}}", "x".repeat(400)).into_bytes()
    }

    #[test]
    fn records_survive_reopening_and_acked_ones_are_not_read_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut spool = Spool::open(dir.path(), SPOOL_BYTES_DEFAULT).expect("opens");
        for seq in 1..=10 {
            spool.append(seq, &payload(seq)).expect("appends");
        }
        spool.ack_through(4).expect("acks");
        drop(spool);
        let mut spool = Spool::open(dir.path(), SPOOL_BYTES_DEFAULT).expect("reopens");
        assert_eq!(spool.last_seq(), 10);
        let unacked: Vec<u64> = spool.read_after(spool.acked_seq(), 100).expect("reads").iter().map(|r| r.0).collect();
        assert_eq!(unacked, (5..=10).collect::<Vec<_>>());
        assert_eq!(spool.read_after(7, 2).expect("reads").iter().map(|r| r.0).collect::<Vec<_>>(), vec![8, 9]);
    }

    #[test]
    fn a_torn_last_record_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut spool = Spool::open(dir.path(), SPOOL_BYTES_DEFAULT).expect("opens");
        spool.append(1, &payload(1)).expect("appends");
        spool.append(2, &payload(2)).expect("appends");
        drop(spool);
        let segment = fs::read_dir(dir.path())
            .expect("lists")
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().starts_with("seg-"));
        let path = segment.expect("a segment").path();
        let mut file = OpenOptions::new().append(true).open(&path).expect("opens segment");
        file.write_all(b"3 {\"half").expect("writes torn record");
        let mut spool = Spool::open(dir.path(), SPOOL_BYTES_DEFAULT).expect("reopens");
        assert_eq!(spool.last_seq(), 2);
        spool.append(3, &payload(3)).expect("appends after repair");
        assert_eq!(spool.read_after(0, 10).expect("reads").len(), 3);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_segment_and_counts_the_loss() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut spool = Spool::open(dir.path(), SPOOL_BYTES_MIN).expect("opens");
        for seq in 1..=200 {
            spool.append(seq, &payload(seq)).expect("appends");
        }
        assert!(spool.bytes() <= SPOOL_BYTES_MIN);
        assert!(spool.dropped_total() > 0);
        let remaining = spool.read_after(0, 1000).expect("reads");
        assert_eq!(remaining.last().map(|r| r.0), Some(200));
        assert_eq!(remaining.len() as u64 + spool.dropped_total(), 200);
        let seqs: Vec<u64> = remaining.iter().map(|r| r.0).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "what remains is contiguous and ordered");
    }

    #[test]
    fn acknowledged_segments_are_deleted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut spool = Spool::open(dir.path(), SPOOL_BYTES_MIN * 4).expect("opens");
        for seq in 1..=100 {
            spool.append(seq, &payload(seq)).expect("appends");
        }
        let before = spool.segments.len();
        spool.ack_through(100).expect("acks");
        assert!(spool.segments.len() < before);
        assert_eq!(spool.read_after(spool.acked_seq(), 10).expect("reads").len(), 0);
        assert_eq!(spool.last_seq(), 100);
    }
}
