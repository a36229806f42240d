//! `sluice run export NAME --mlflow URI`: a run of the store as an MLflow run, through the engine's
//! MLflow client (`sluice_engine::mlflow`), with the HTML report (`run visualize`'s) among its
//! artifacts.

use sluice_engine::mlflow::{
    Artifact, Auth, ExportError, ExportOptions, Exported, MlflowClient, export_run,
};

use super::{print_error, store, view};
use crate::ExitStatus;
use crate::cli::{ExportArgs, OutputFormat};
use crate::style::{self, Paint};

pub fn export(args: ExportArgs) -> anyhow::Result<ExitStatus> {
    let name = args
        .name
        .clone()
        .or(args.name_flag.clone())
        .expect("clap requires one");
    let store = store();
    if let Err(e) = store.existing(&name) {
        print_error(&e);
        return Ok(ExitStatus::Invalid);
    }
    let client = match MlflowClient::new(&args.mlflow, Auth::from_env()) {
        Ok(c) => c,
        Err(e) => {
            print_error(&e);
            return Ok(ExitStatus::Invalid);
        }
    };
    let mut artifacts = Vec::new();
    if !args.no_report {
        match view::report_html(std::slice::from_ref(&name)) {
            Ok(html) => artifacts.push(Artifact {
                path: "report.html".into(),
                bytes: html.into_bytes(),
            }),
            Err(e) => eprintln!("the report is left out: {e}"),
        }
    }
    let opts = ExportOptions {
        experiment: args.experiment.clone(),
        user: std::env::var("USER").ok().filter(|u| !u.is_empty()),
        artifacts,
    };
    let rt = super::super::flow::runtime()?;
    let exported = match rt.block_on(export_run(&client, &store, &name, &opts)) {
        Ok(e) => e,
        Err(e) => {
            print_error(&e);
            return Ok(exit_status(&e));
        }
    };
    for w in &exported.warnings {
        eprintln!("{} {w}", style::warning_label());
    }
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&exported)?),
        OutputFormat::Table => print!("{}", text(&exported, style::stdout())),
    }
    if args.format == OutputFormat::Json {
        eprintln!(
            "run {}: {} MLflow run {} ({}) in experiment `{}`: {}",
            exported.run,
            exported.action,
            exported.run_id,
            exported.status,
            exported.experiment_name,
            exported.url
        );
    }
    Ok(ExitStatus::Ok)
}

/// 2 for a run that cannot be exported as named, 1 when the server or the disk failed.
fn exit_status(e: &ExportError) -> ExitStatus {
    if e.is_user_error() {
        ExitStatus::Invalid
    } else {
        ExitStatus::Failed
    }
}

/// What was exported, for people.
fn text(e: &Exported, color: bool) -> String {
    format!(
        "run {} {} MLflow run {}\n  experiment  {} (id {})\n  status      {}\n  logged      {} params, {} metrics, {} tags, {} artifacts\n  url         {}\n",
        style::paint(color, Paint::Bold, &e.run),
        e.action,
        e.run_id,
        e.experiment_name,
        e.experiment_id,
        e.status,
        e.params,
        e.metrics,
        e.tags,
        e.artifacts.len(),
        e.url
    )
}
