//! The run store: every batch run's folder under `<home>/runs/<name>/` and the index of them.
//!
//! A run folder holds promptflow's files where tools read them (`flow_outputs/output.jsonl`,
//! `outputs.jsonl`, `inputs.jsonl`, `metrics.json`, `error.json`, `logs.txt`, `snapshot/`) plus
//! `run.json` ([`RunRecord`], what `run show` prints) and one append-only `details.jsonl` with every
//! line's record ([`details`]). `<home>/runs.sqlite` indexes the runs ([`index`]).
//!
//! Every name that comes in is checked by [`RunName::parse`], so no command reaches outside the store;
//! `run.json` is replaced atomically; and a run whose process died is never shown as running
//! ([`RunStore::read_record`] checks the owner it records).

pub mod details;
pub mod index;
pub mod record;

use std::path::{Path, PathBuf};

pub use details::{DetailsWriter, read_details, stream_details, stream_marks};
pub use index::{Archived, RunIndex};
pub use record::{
    LineRecord, LineRecordRef, LineStatus, NodeMetrics, NodeRecord, Owner, RunProperties,
    RunRecord, RunStatus, StartMark, SystemMetrics, TokenCounts,
};

/// `run.json`.
pub const RUN_JSON: &str = "run.json";
/// `details.jsonl`.
pub const DETAILS: &str = "details.jsonl";
/// `started.jsonl`.
pub const STARTED: &str = "started.jsonl";

/// What can go wrong in the run store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "`{name}` is not a valid run name: use letters, digits, `_`, `-` and `.` (not first), at most 200 characters"
    )]
    InvalidName { name: String },
    #[error("no run named `{name}` in {} (see `sluice run list`)", .root.display())]
    NotFound { name: String, root: PathBuf },
    #[error("a run named `{name}` already exists at {}; pick another --name", .dir.display())]
    Exists { name: String, dir: PathBuf },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: the run record cannot be read: {source}", .path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the run index {} failed: {source}", .path.display())]
    Index {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

impl StoreError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Whether the user named something wrong (as opposed to the disk or the index failing).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            StoreError::InvalidName { .. }
                | StoreError::NotFound { .. }
                | StoreError::Exists { .. }
        )
    }
}

/// A checked run name: one path component inside the store, never `..`, a path or a hidden name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunName(String);

impl RunName {
    pub fn parse(name: &str) -> Result<RunName, StoreError> {
        let ok = !name.is_empty()
            && name.len() <= 200
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if ok {
            Ok(RunName(name.to_owned()))
        } else {
            Err(StoreError::InvalidName {
                name: name.chars().take(200).collect(),
            })
        }
    }

    /// A name made from free text (a flow's name): anything outside the allowed characters becomes `_`.
    pub fn sanitize(text: &str) -> String {
        let s: String = text
            .chars()
            .take(120)
            .map(|c| {
                if c.is_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if s.is_empty() { "run".into() } else { s }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RunName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The run store under a Sluice home.
#[derive(Clone, Debug)]
pub struct RunStore {
    home: PathBuf,
}

impl RunStore {
    /// The store of `home` (`$SLUICE_HOME`): runs in `home/runs`, the index in `home/runs.sqlite`.
    pub fn new(home: impl Into<PathBuf>) -> Self {
        RunStore { home: home.into() }
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn root(&self) -> PathBuf {
        self.home.join("runs")
    }

    pub fn index_path(&self) -> PathBuf {
        self.home.join("runs.sqlite")
    }

    pub fn open_index(&self) -> Result<RunIndex, StoreError> {
        RunIndex::open(&self.index_path())
    }

    /// The folder of a run.
    pub fn dir(&self, name: &RunName) -> PathBuf {
        self.root().join(&name.0)
    }

    fn dir_unchecked(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }

    /// The names of the run folders (those with valid names).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| RunName::parse(n).is_ok())
            .collect();
        names.sort();
        names
    }

    /// Parses `name` and checks the run exists.
    pub fn existing(&self, name: &str) -> Result<RunName, StoreError> {
        let name = RunName::parse(name)?;
        let dir = self.dir(&name);
        let is_dir = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
        if !is_dir || !dir.join(RUN_JSON).is_file() {
            return Err(StoreError::NotFound {
                name: name.0,
                root: self.root(),
            });
        }
        Ok(name)
    }

    /// Creates a new, empty run folder; refuses a name in use.
    pub fn create_dir(&self, name: &RunName) -> Result<PathBuf, StoreError> {
        let dir = self.dir(name);
        if std::fs::symlink_metadata(&dir).is_ok() {
            return Err(StoreError::Exists {
                name: name.0.clone(),
                dir,
            });
        }
        let root = self.root();
        std::fs::create_dir_all(&root).map_err(|e| StoreError::io(&root, e))?;
        std::fs::create_dir(&dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => StoreError::Exists {
                name: name.0.clone(),
                dir: dir.clone(),
            },
            _ => StoreError::io(&dir, e),
        })?;
        let outputs = dir.join("flow_outputs");
        std::fs::create_dir(&outputs).map_err(|e| StoreError::io(&outputs, e))?;
        Ok(dir)
    }

    fn read_record_file(&self, dir: &Path) -> Result<RunRecord, StoreError> {
        let path = dir.join(RUN_JSON);
        let text = std::fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
        serde_json::from_slice(&text).map_err(|e| StoreError::Record { path, source: e })
    }

    /// A run's record. A run recorded as running whose process is gone is shown, and from then on
    /// stored, as failed, with a note that says how to resume it.
    pub fn read_record(&self, name: &RunName) -> Result<RunRecord, StoreError> {
        let dir = self.dir(name);
        let mut record = match self.read_record_file(&dir) {
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    name: name.0.clone(),
                    root: self.root(),
                });
            }
            other => other?,
        };
        if record.status == RunStatus::Running
            && let Some(owner) = &record.owner
            && owner.is_dead()
        {
            record.status = RunStatus::Failed;
            record.status_note = Some(format!(
                "the process running it (pid {}) ended without finishing it; resume it with --resume-from {}",
                owner.pid, record.name
            ));
            // Best effort: a read-only store still shows the right state.
            if self.write_record(&record).is_ok()
                && let Ok(index) = self.open_index()
            {
                let _ = index.upsert(&record);
            }
        }
        Ok(record)
    }

    /// Replaces `run.json` atomically (write a temporary file, sync, rename), so a full disk or a crash
    /// never leaves a truncated record.
    pub fn write_record(&self, record: &RunRecord) -> Result<(), StoreError> {
        let name = RunName::parse(&record.name)?;
        let dir = self.dir(&name);
        let path = dir.join(RUN_JSON);
        let tmp = dir.join(".run.json.tmp");
        let text = serde_json::to_vec_pretty(record)
            .map_err(|e| StoreError::io(&path, std::io::Error::other(e)))?;
        let written = write_synced(&tmp, &text)
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e)));
        if written.is_err() {
            // A full disk leaves no half-written temporary file behind.
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Deletes a run's folder (only a real folder inside the store with a run record) and its index row.
    pub fn delete(&self, name: &RunName) -> Result<(), StoreError> {
        let name = self.existing(name.as_str())?;
        let dir = self.dir(&name);
        std::fs::remove_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        if let Ok(index) = self.open_index() {
            index.remove(name.as_str())?;
        }
        Ok(())
    }
}

/// Writes a whole file (with every registered secret masked) and syncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let bytes = details::redact_bytes(bytes);
    let mut file = std::fs::File::create(path).map_err(|e| StoreError::io(path, e))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_data())
        .map_err(|e| StoreError::io(path, e))
}

impl Owner {
    /// This process.
    pub fn current() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start_ticks: start_ticks(pid),
            host: host_name(),
        }
    }

    /// Whether the owner is known to be gone: same host, and no process with its pid and start time.
    /// Where that cannot be told (another host, no `/proc`), the owner counts as alive.
    pub fn is_dead(&self) -> bool {
        if !Path::new("/proc/self/stat").exists() || self.host != host_name() {
            return false;
        }
        match start_ticks(self.pid) {
            None => true,
            Some(now) => self.start_ticks.is_some_and(|then| then != now),
        }
    }
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks after boot.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let state = rest.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None; // a zombie has finished running
    }
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Copies a flow folder (its YAML, templates and code; not caches, hidden files or run output) into a
/// run's `snapshot/`. Symbolic links are not followed: a link is neither copied nor read through, so a
/// snapshot holds only the flow's own files.
pub fn snapshot(flow_dir: &Path, to: &Path) -> std::io::Result<()> {
    fn copy(from: &Path, to: &Path, budget: &mut u64, depth: usize) -> std::io::Result<()> {
        if depth > 32 {
            return Ok(());
        }
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(from)?.flatten() {
            let name = e.file_name();
            let n = name.to_string_lossy();
            if n.starts_with('.') || n == "__pycache__" || n == "node_modules" {
                continue;
            }
            // `DirEntry::file_type` does not follow links.
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                copy(&e.path(), &to.join(&name), budget, depth + 1)?;
            } else if kind.is_file()
                && let Ok(meta) = e.metadata()
            {
                // Data files and other large files stay out of the snapshot.
                if meta.len() > *budget || meta.len() > 1 << 20 {
                    continue;
                }
                *budget -= meta.len();
                std::fs::copy(e.path(), to.join(&name))?;
            }
        }
        Ok(())
    }
    let mut budget = 16 << 20;
    copy(flow_dir, to, &mut budget, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_the_store_are_refused() {
        for bad in [
            "", ".", "..", "../x", "a/b", "a\\b", ".hidden", "/etc", "a\0b", "x y",
        ] {
            assert!(RunName::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["run_1", "my-run.v2", "ünïcode_名前"] {
            assert!(RunName::parse(good).is_ok(), "{good:?} refused");
        }
        assert!(RunName::parse(&"a".repeat(201)).is_err());
        assert_eq!(RunName::sanitize("my flow/x"), "my_flow_x");
    }

    #[test]
    fn this_process_is_alive_and_a_gone_pid_is_dead() {
        let me = Owner::current();
        assert!(!me.is_dead());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let ticks = start_ticks(pid);
        child.wait().unwrap();
        let gone = Owner {
            pid,
            start_ticks: ticks,
            host: host_name(),
        };
        assert!(gone.is_dead());
        let reused = Owner {
            start_ticks: me.start_ticks.map(|t| t + 1),
            ..me
        };
        assert!(reused.is_dead());
    }
}
