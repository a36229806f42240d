//! `details.jsonl`: one append-only file with every finished line's record, the source of truth of a
//! run; and `started.jsonl`, a mark for every line as it starts, so that the lines a dead process was
//! running can be told after it.
//!
//! Each record is handed to the OS as soon as it is written (a crash of the process loses no finished
//! line) and the file is synced to disk at most [`SYNC_INTERVAL`] apart and when the run ends. A torn last
//! record (a killed writer) is skipped on read; the last record of a line number wins.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::StoreError;
use super::record::LineRecord;

/// The longest time a finished line may stay in the OS's cache before it is synced to disk.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Appends records to a JSON Lines file of a run (`details.jsonl`, `started.jsonl`).
#[derive(Debug)]
pub struct DetailsWriter {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    last_sync: Instant,
    dirty: bool,
}

impl DetailsWriter {
    /// Creates (or truncates) the file.
    pub fn create(path: &Path) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(|e| StoreError::io(path, e))?;
        Ok(DetailsWriter {
            path: path.to_owned(),
            file,
            buf: Vec::with_capacity(4096),
            last_sync: Instant::now(),
            dirty: false,
        })
    }

    /// Writes one record as one `write` call, so that a record reaches the OS whole.
    pub fn append(&mut self, record: &impl Serialize) -> Result<(), StoreError> {
        self.push(record)?;
        self.flush()
    }

    /// Adds one record to those the next [`DetailsWriter::flush`] writes, and returns its size in
    /// bytes: a writer of many small records hands them to the OS together.
    pub fn push(&mut self, record: &impl Serialize) -> Result<usize, StoreError> {
        let start = self.buf.len();
        crate::json::to_writer(&mut self.buf, record)
            .map_err(|e| StoreError::io(&self.path, std::io::Error::other(e)))?;
        self.buf.push(b'\n');
        // Connection secrets never reach the records (an error that echoes a key, an output).
        if let std::borrow::Cow::Owned(masked) = redact_bytes(&self.buf[start..]) {
            self.buf.truncate(start);
            self.buf.extend_from_slice(&masked);
        }
        Ok(self.buf.len() - start)
    }

    /// Writes the records pushed since the last flush as one `write` call, and syncs the file when
    /// [`SYNC_INTERVAL`] has passed since the last sync.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.write_pushed()?;
        if self.dirty && self.last_sync.elapsed() >= SYNC_INTERVAL {
            self.sync()?;
        }
        Ok(())
    }

    /// Writes the records pushed since the last flush as one `write` call, and leaves syncing to
    /// whoever syncs [`DetailsWriter::try_clone_file`]'s handle (and to [`DetailsWriter::sync`]).
    pub fn flush_unsynced(&mut self) -> Result<(), StoreError> {
        self.write_pushed()
    }

    /// Another handle on the file, for a thread of its own to sync it.
    pub fn try_clone_file(&self) -> Result<File, StoreError> {
        self.file
            .try_clone()
            .map_err(|e| StoreError::io(&self.path, e))
    }

    /// Hands the records pushed since the last write to the OS, in one `write` call.
    fn write_pushed(&mut self) -> Result<(), StoreError> {
        if !self.buf.is_empty() {
            self.file
                .write_all(&self.buf)
                .map_err(|e| StoreError::io(&self.path, e))?;
            self.buf.clear();
            self.dirty = true;
        }
        Ok(())
    }

    /// Adds one record that `write` appends to the buffer it is given (numbered, secrets already
    /// masked, newline included); returns its size in bytes.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> usize {
        let start = self.buf.len();
        write(&mut self.buf);
        self.buf.len() - start
    }

    /// Adds one record made by [`crate::json::to_template`] (secrets already masked, newline
    /// included), numbered `n`; returns its size in bytes.
    pub fn push_template(&mut self, template: &[u8], n: usize) -> Result<usize, StoreError> {
        crate::json::fill_template(template, n, &mut self.buf)
            .map_err(|e| StoreError::io(&self.path, e))
    }

    /// Writes what was pushed and syncs it to disk.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.write_pushed()?;
        if self.dirty {
            self.file
                .sync_data()
                .map_err(|e| StoreError::io(&self.path, e))?;
            self.dirty = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }
}

/// `bytes` with every registered secret masked (see [`crate::redact`]).
pub fn redact_bytes(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !crate::redact::has_secrets() {
        return std::borrow::Cow::Borrowed(bytes);
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => match crate::redact::redact(text) {
            std::borrow::Cow::Borrowed(_) => std::borrow::Cow::Borrowed(bytes),
            std::borrow::Cow::Owned(s) => std::borrow::Cow::Owned(s.into_bytes()),
        },
        Err(_) => std::borrow::Cow::Borrowed(bytes),
    }
}

/// The records of a run's `details.jsonl`, one at a time, skipping a torn or unreadable line.
pub fn stream_details(dir: &Path) -> impl Iterator<Item = LineRecord> + use<> {
    stream_records(&dir.join(super::DETAILS))
}

/// The start marks of a run's lines (`started.jsonl`).
pub fn stream_marks(dir: &Path) -> impl Iterator<Item = LineRecord> + use<> {
    stream_records(&dir.join(super::STARTED))
}

fn stream_records(path: &Path) -> impl Iterator<Item = LineRecord> + use<> {
    File::open(path)
        .ok()
        .into_iter()
        .flat_map(|f| BufReader::new(f).lines())
        .map_while(Result::ok)
        .filter_map(|line| crate::json::from_str::<LineRecord>(&line).ok())
}

/// Every line's last record, by line number.
pub fn read_details(dir: &Path) -> BTreeMap<usize, LineRecord> {
    stream_details(dir).map(|r| (r.line_number, r)).collect()
}
