//! The run index: one SQLite file, `$SLUICE_HOME/runs.sqlite`, with a row per run (status, flow, data,
//! variant, metrics, timings, token counts), so `run list` does not read every run folder. The run folder
//! stays the source of truth: a missing or stale index is rebuilt from the folders' `run.json`.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value as Json;

use super::{run_dir, runs_root};

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

pub struct Index {
    db: Connection,
}

fn index_path() -> PathBuf {
    super::sluice_home().join("runs.sqlite")
}

impl Index {
    /// Opens (and creates) the index.
    pub fn open() -> anyhow::Result<Index> {
        let path = index_path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let db = Connection::open(&path)?;
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.execute_batch(SCHEMA)?;
        Ok(Index { db })
    }

    /// Records a run from its `run.json` record.
    pub fn upsert(&self, record: &Json) -> anyhow::Result<()> {
        let props = &record["properties"];
        let sm = &props["system_metrics"];
        let s = |v: &Json| v.as_str().map(str::to_owned);
        let archived: i64 = match record["archived"].as_bool() {
            Some(a) => a as i64,
            None => self
                .db
                .query_row(
                    "SELECT archived FROM runs WHERE name = ?1",
                    params![record["name"].as_str()],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0),
        };
        self.db.execute(
            "INSERT OR REPLACE INTO runs (name, display_name, description, status, flow_path, flow_name, data,
                 variant, base_run, created_on, duration, total_lines, completed_lines, failed_lines,
                 prompt_tokens, completion_tokens, total_tokens, metrics, tags, archived)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
            params![
                s(&record["name"]),
                s(&record["display_name"]),
                s(&record["description"]),
                s(&record["status"]).unwrap_or_else(|| "Unknown".into()),
                props["flow_path"].as_str(),
                s(&record["flow_name"]),
                record["data"].as_str(),
                props["node_variant"].to_string(),
                s(&props["run"]),
                s(&record["created_on"]),
                sm["duration"].as_f64(),
                sm["total_lines"].as_i64(),
                sm["completed_lines"].as_i64(),
                sm["failed_lines"].as_i64(),
                sm["prompt_tokens"].as_i64(),
                sm["completion_tokens"].as_i64(),
                sm["total_tokens"].as_i64(),
                record["metrics"].to_string(),
                record["tags"].to_string(),
                archived,
            ],
        )?;
        Ok(())
    }

    pub fn set_archived(&self, name: &str, archived: bool) -> anyhow::Result<bool> {
        Ok(self.db.execute(
            "UPDATE runs SET archived = ?2 WHERE name = ?1",
            params![name, archived as i64],
        )? > 0)
    }

    pub fn is_archived(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self
            .db
            .query_row(
                "SELECT archived FROM runs WHERE name = ?1",
                params![name],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .unwrap_or(0)
            != 0)
    }

    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        self.db
            .execute("DELETE FROM runs WHERE name = ?1", params![name])?;
        Ok(())
    }

    /// Adds runs whose folders exist but are not indexed (e.g. runs from before the index, or an index
    /// that was deleted), and drops rows whose folders are gone.
    pub fn reconcile(&self) -> anyhow::Result<()> {
        let mut known: Vec<String> = {
            let mut stmt = self.db.prepare("SELECT name FROM runs")?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        known.sort();
        if let Ok(entries) = std::fs::read_dir(runs_root()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if known.binary_search(&name).is_ok() {
                    continue;
                }
                if let Some(record) = read_record(&e.path()) {
                    self.upsert(&record)?;
                }
            }
        }
        for name in known {
            if !run_dir(&name).exists() {
                self.remove(&name)?;
            }
        }
        Ok(())
    }

    /// Runs, newest first.
    pub fn list(&self, archived: Archived, limit: Option<usize>) -> anyhow::Result<Vec<Json>> {
        let filter = match archived {
            Archived::Exclude => "WHERE archived = 0",
            Archived::Only => "WHERE archived = 1",
            Archived::Include => "",
        };
        let limit = limit.map_or(String::new(), |n| format!("LIMIT {n}"));
        let mut stmt = self.db.prepare(&format!(
            "SELECT name FROM runs {filter} ORDER BY created_on DESC, name DESC {limit}"
        ))?;
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for name in names {
            if let Some(mut record) = read_record(&run_dir(&name)) {
                record["archived"] = Json::Bool(self.is_archived(&name)?);
                out.push(record);
            }
        }
        Ok(out)
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Archived {
    Exclude,
    Only,
    Include,
}

/// A run folder's `run.json`.
pub fn read_record(dir: &Path) -> Option<Json> {
    let text = std::fs::read_to_string(dir.join("run.json")).ok()?;
    serde_json::from_str(&text).ok()
}
