//! Sluice's integration tests, in one binary so that llama.cpp and CPython are linked once.
//!
//! Each module tests one area through the built `sluice` binary or the library crates: `cli` the
//! commands and exit statuses, `fixtures` the engine semantics fixtures under `tests/fixtures`, `batch`,
//! `runs` and `streaming` batch runs and the run store, `report` the HTML report, `mlflow` the export to an MLflow server, `monitor` drift and quality checks, `prompty` prompty files as flows, `flex` flex flows, `serve` and `model_serve` the HTTP servers, `llm`, `embeddings`, `retrieval` and `rag` the
//! local models, HTTP backends and indexes, `cpu_variants` the choice of llama.cpp's CPU code, `tracing` the OpenTelemetry export read back from Phoenix.

mod batch;
mod cli;
mod common;
mod cpu_variants;
mod crash;
mod embeddings;
mod fake;
mod fixtures;
mod flex;
mod hardening;
mod images;
mod isolation;
mod llm;
mod llm_requests;
mod mlflow;
mod model_serve;
mod monitor;
mod package_tools;
mod prompty;
mod py_connections;
mod rag;
mod report;
mod retrieval;
mod runs;
mod scheduler;
mod secrets;
mod serve;
mod streaming;
mod tracing;
