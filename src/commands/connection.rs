//! `sluice connection`: named LLM endpoints, secrets kept out of sight.

use serde_json::json;
use sluice_engine::redact;
use sluice_nodes::llm::connections::{self, Connection, ConnectionType};

use crate::ExitStatus;
use crate::cli::{ConnCreateArgs, ConnName};

fn print(c: &Connection) -> anyhow::Result<()> {
    let r = c.redacted();
    let mut obj = serde_json::Map::new();
    obj.insert("name".into(), json!(r.name));
    obj.insert("type".into(), json!(r.kind.as_str()));
    if r.kind == ConnectionType::Custom {
        obj.insert("configs".into(), json!(r.configs));
        obj.insert("secrets".into(), json!(r.secrets));
    } else {
        for (k, v) in r.configs.iter().chain(r.secrets.iter()) {
            obj.insert(k.clone(), json!(v));
        }
    }
    println!("{}", serde_json::to_string_pretty(&obj)?);
    Ok(())
}

pub fn create(args: ConnCreateArgs) -> anyhow::Result<ExitStatus> {
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "{} cannot read {}: {e}",
                crate::style::error_label(),
                args.file.display()
            );
            return Ok(ExitStatus::Invalid);
        }
    };
    let mut conn = match Connection::from_yaml(&text, &args.file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "{} {}",
                crate::style::error_label(),
                redact::redact(&e.to_string())
            );
            return Ok(ExitStatus::Invalid);
        }
    };
    for item in &args.set {
        let Some((k, v)) = item.split_once('=') else {
            eprintln!(
                "{} --set expects KEY=VALUE, got `{}`",
                crate::style::error_label(),
                redact::redact(item)
            );
            return Ok(ExitStatus::Invalid);
        };
        let k = k.trim();
        let (k, place) = if let Some(k) = k.strip_prefix("secrets.") {
            (k, Some(true))
        } else if let Some(k) = k.strip_prefix("configs.") {
            (k, Some(false))
        } else {
            (k, None)
        };
        // A value set with --set is as secret as one written in the file: `secrets.x=`, or a
        // secret-looking name (`token=`, `password=`, `key=`, `*_secret=`, ...).
        if place.unwrap_or_else(|| redact::is_secret_key(k)) {
            conn.configs.remove(k);
            conn.secrets.insert(k.to_owned(), v.to_owned());
        } else if k == "base_url" || k == "api_base" {
            conn.configs.insert("api_base".to_owned(), v.to_owned());
        } else {
            conn.secrets.remove(k);
            conn.configs.insert(k.to_owned(), v.to_owned());
        }
    }
    if let Some(n) = args.name {
        conn.name = n;
    }
    conn.register_secrets();
    match connections::save(&conn) {
        Ok(path) => {
            eprintln!("saved connection `{}` to {}", conn.name, path.display());
            print(&conn)?;
            Ok(ExitStatus::Ok)
        }
        Err(e) => {
            eprintln!("{} {e}", crate::style::error_label());
            Ok(ExitStatus::Invalid)
        }
    }
}

pub fn list(format: crate::cli::OutputFormat) -> anyhow::Result<ExitStatus> {
    let all = connections::list().map_err(anyhow::Error::msg)?;
    let rows: Vec<_> = all
        .iter()
        .map(|c| {
            let c = c.redacted();
            json!({"name": c.name, "type": c.kind.as_str(), "api_base": c.configs.get("api_base")})
        })
        .collect();
    super::print_listing(&rows, &["name", "type", "api_base"], format)?;
    Ok(ExitStatus::Ok)
}

pub fn show(args: ConnName) -> anyhow::Result<ExitStatus> {
    match connections::load(&args.name).map_err(anyhow::Error::msg)? {
        Some(c) => {
            print(&c)?;
            Ok(ExitStatus::Ok)
        }
        None => {
            eprintln!(
                "{} no connection named `{}`",
                crate::style::error_label(),
                args.name
            );
            Ok(ExitStatus::Failed)
        }
    }
}

pub fn delete(args: ConnName) -> anyhow::Result<ExitStatus> {
    if connections::delete(&args.name).map_err(anyhow::Error::msg)? {
        eprintln!("deleted connection `{}`", args.name);
        Ok(ExitStatus::Ok)
    } else {
        eprintln!(
            "{} no connection named `{}`",
            crate::style::error_label(),
            args.name
        );
        Ok(ExitStatus::Failed)
    }
}
