//! The run index: one SQLite file, `runs.sqlite` beside the run folders, with a row per run (status,
//! flow, data, variant, metrics, timings, token counts), so listing runs does not read every folder. The
//! folders stay the source of truth: a missing or stale index is rebuilt from their `run.json`.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::record::RunRecord;
use super::{RunStore, StoreError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY,
    display_name TEXT,
    description TEXT,
    status TEXT NOT NULL,
    flow_path TEXT,
    flow_name TEXT,
    data TEXT,
    variant TEXT,
    base_run TEXT,
    created_on TEXT,
    duration REAL,
    total_lines INTEGER,
    completed_lines INTEGER,
    failed_lines INTEGER,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    total_tokens INTEGER,
    metrics TEXT,
    tags TEXT,
    archived INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created_on);
";

/// Which runs a listing includes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Archived {
    Exclude,
    Only,
    Include,
}

/// An open run index.
#[derive(Debug)]
pub struct RunIndex {
    db: Connection,
}

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError::Index {
        path: path.to_owned(),
        source: e,
    }
}

impl RunIndex {
    /// Opens (and creates) the index at `path`.
    pub fn open(path: &Path) -> Result<RunIndex, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        }
        let err = sql(path);
        let db = Connection::open(path).map_err(&err)?;
        db.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(&err)?;
        db.pragma_update(None, "journal_mode", "WAL")
            .map_err(&err)?;
        db.execute_batch(SCHEMA).map_err(&err)?;
        Ok(RunIndex { db })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |e| StoreError::Index {
            path: self.db.path().map(Into::into).unwrap_or_default(),
            source: e,
        }
    }

    /// Records a run (keeping its archived flag unless the record sets one).
    pub fn upsert(&self, record: &RunRecord) -> Result<(), StoreError> {
        let props = &record.properties;
        let sm = &props.system_metrics;
        let archived: i64 = match record.archived {
            Some(a) => a as i64,
            None => self
                .db
                .query_row(
                    "SELECT archived FROM runs WHERE name = ?1",
                    params![record.name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.err())?
                .unwrap_or(0),
        };
        let json = |v: &dyn erased::Json| v.text();
        self.db
            .execute(
                "INSERT OR REPLACE INTO runs (name, display_name, description, status, flow_path, flow_name, data,
                 variant, base_run, created_on, duration, total_lines, completed_lines, failed_lines,
                 prompt_tokens, completion_tokens, total_tokens, metrics, tags, archived)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
                params![
                    record.name,
                    record.display_name,
                    record.description,
                    record.status.as_str(),
                    props.flow_path.to_string_lossy(),
                    record.flow_name,
                    record.data.as_ref().map(|d| d.to_string_lossy().into_owned()),
                    json(&props.node_variant),
                    props.run,
                    record
                        .created_on
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    sm.duration,
                    sm.total_lines as i64,
                    sm.completed_lines.map(|n| n as i64),
                    sm.failed_lines.map(|n| n as i64),
                    sm.tokens.prompt_tokens.map(|n| n as i64),
                    sm.tokens.completion_tokens.map(|n| n as i64),
                    sm.tokens.total_tokens.map(|n| n as i64),
                    json(&record.metrics),
                    json(&record.tags),
                    archived,
                ],
            )
            .map_err(self.err())?;
        Ok(())
    }

    pub fn set_archived(&self, name: &str, archived: bool) -> Result<bool, StoreError> {
        Ok(self
            .db
            .execute(
                "UPDATE runs SET archived = ?2 WHERE name = ?1",
                params![name, archived as i64],
            )
            .map_err(self.err())?
            > 0)
    }

    pub fn is_archived(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .db
            .query_row(
                "SELECT archived FROM runs WHERE name = ?1",
                params![name],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(self.err())?
            .unwrap_or(0)
            != 0)
    }

    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        self.db
            .execute("DELETE FROM runs WHERE name = ?1", params![name])
            .map_err(self.err())?;
        Ok(())
    }

    /// Adds runs whose folders exist but are not indexed (runs from before the index, or an index that
    /// was deleted), and drops rows whose folders are gone.
    pub fn reconcile(&self, store: &RunStore) -> Result<(), StoreError> {
        let mut known: Vec<String> = {
            let mut stmt = self
                .db
                .prepare("SELECT name FROM runs")
                .map_err(self.err())?;
            stmt.query_map([], |r| r.get(0))
                .map_err(self.err())?
                .collect::<Result<_, _>>()
                .map_err(self.err())?
        };
        known.sort();
        for name in store.names() {
            if known.binary_search(&name).is_ok() {
                continue;
            }
            if let Ok(record) = store.read_record_file(&store.dir_unchecked(&name)) {
                self.upsert(&record)?;
            }
        }
        for name in known {
            if !store.dir_unchecked(&name).join(super::RUN_JSON).exists() {
                self.remove(&name)?;
            }
        }
        Ok(())
    }

    /// Run names, newest first.
    pub fn names(
        &self,
        archived: Archived,
        limit: Option<usize>,
    ) -> Result<Vec<String>, StoreError> {
        let filter = match archived {
            Archived::Exclude => "WHERE archived = 0",
            Archived::Only => "WHERE archived = 1",
            Archived::Include => "",
        };
        let limit = limit.map_or(String::new(), |n| format!("LIMIT {n}"));
        let mut stmt = self
            .db
            .prepare(&format!(
                "SELECT name FROM runs {filter} ORDER BY created_on DESC, name DESC {limit}"
            ))
            .map_err(self.err())?;
        stmt.query_map([], |r| r.get(0))
            .map_err(self.err())?
            .collect::<Result<_, _>>()
            .map_err(self.err())
    }
}

/// JSON text of a value for an index column.
mod erased {
    pub trait Json {
        fn text(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn text(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}
