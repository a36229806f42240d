//! Where spans go and what they carry: `--trace URL`, `--trace-payloads` and the OpenTelemetry
//! environment variables, read once before a command starts.

use std::time::Duration;

/// How spans travel to the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over HTTP with protobuf bodies (`POST /v1/traces`).
    HttpProtobuf,
    /// OTLP over gRPC.
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("the trace endpoint `{url}` is not usable: {reason}")]
    Endpoint { url: String, reason: &'static str },
    #[error("{name}={value} is not supported: use http/protobuf or grpc")]
    Protocol { name: &'static str, value: String },
    #[error("{name}={value} is not {what}")]
    Setting {
        name: &'static str,
        value: String,
        what: &'static str,
    },
    #[error("cannot make the OTLP exporter for {endpoint}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("cannot start the trace exporter's thread")]
    Thread(#[source] std::io::Error),
}

/// Where spans go and what they carry.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceConfig {
    /// The URL spans are sent to: `.../v1/traces` over HTTP, the server's address over gRPC.
    pub endpoint: String,
    pub protocol: Protocol,
    /// The resource's `service.name` (`OTEL_SERVICE_NAME`, default `sluice`).
    pub service_name: String,
    /// The resource's `openinference.project.name` (the Phoenix project): `SLUICE_TRACE_PROJECT`,
    /// else the flow's name; `None` where `OTEL_RESOURCE_ATTRIBUTES` names one.
    pub project: Option<String>,
    /// Whether inputs, outputs and prompts go with the spans.
    pub payloads: bool,
    /// How many lines' spans wait for the exporter at most (`SLUICE_TRACE_QUEUE`, default 2048);
    /// the spans of lines beyond that are dropped and counted.
    pub queue_lines: usize,
    /// The most spans in one export request.
    pub batch_spans: usize,
    /// How long the end of a command waits for the queue to drain (`SLUICE_TRACE_FLUSH_TIMEOUT`
    /// seconds, default 3).
    pub flush_timeout: Duration,
}

impl TraceConfig {
    /// The configuration for a command given `--trace` (`arg`) and `--trace-payloads`, from the
    /// process's environment; `None` when no endpoint is given anywhere.
    pub fn from_env(
        arg: Option<&str>,
        payloads: bool,
        flow_name: &str,
    ) -> Result<Option<TraceConfig>, TraceError> {
        TraceConfig::resolve(arg, payloads, flow_name, &|k| {
            std::env::var(k).ok().filter(|v| !v.trim().is_empty())
        })
    }

    /// The same, with the environment given as a lookup.
    pub fn resolve(
        arg: Option<&str>,
        payloads: bool,
        flow_name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<TraceConfig>, TraceError> {
        let protocol = match [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]
        .into_iter()
        .find_map(|name| env(name).map(|v| (name, v)))
        {
            None => Protocol::HttpProtobuf,
            Some((name, value)) => match value.trim() {
                "http/protobuf" => Protocol::HttpProtobuf,
                "grpc" => Protocol::Grpc,
                _ => return Err(TraceError::Protocol { name, value }),
            },
        };
        // `--trace` and OTEL_EXPORTER_OTLP_ENDPOINT name the collector, under which HTTP spans go to
        // `/v1/traces`; OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is the URL itself.
        let (url, is_base) = match (arg, env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
            (Some(a), _) => (a.trim().to_owned(), true),
            (None, Some(t)) => (t.trim().to_owned(), false),
            (None, None) => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(e) => (e.trim().to_owned(), true),
                None => return Ok(None),
            },
        };
        let endpoint = endpoint_url(&url, protocol, is_base)?;
        let project = match env("SLUICE_TRACE_PROJECT") {
            Some(p) => Some(p),
            None if env("OTEL_RESOURCE_ATTRIBUTES")
                .is_some_and(|a| a.contains("openinference.project.name=")) =>
            {
                None
            }
            None => Some(flow_name.to_owned()),
        };
        let queue_lines = match env("SLUICE_TRACE_QUEUE") {
            None => 2048,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if (1..=1_000_000).contains(&n) => n,
                _ => {
                    return Err(TraceError::Setting {
                        name: "SLUICE_TRACE_QUEUE",
                        value: v,
                        what: "a number of lines from 1 to 1000000",
                    });
                }
            },
        };
        let flush_timeout = match env("SLUICE_TRACE_FLUSH_TIMEOUT") {
            None => Duration::from_secs(3),
            Some(v) => match v.trim().parse::<f64>() {
                Ok(s) if (0.0..=600.0).contains(&s) => Duration::from_secs_f64(s),
                _ => {
                    return Err(TraceError::Setting {
                        name: "SLUICE_TRACE_FLUSH_TIMEOUT",
                        value: v,
                        what: "a number of seconds from 0 to 600",
                    });
                }
            },
        };
        Ok(Some(TraceConfig {
            endpoint,
            protocol,
            service_name: env("OTEL_SERVICE_NAME").unwrap_or_else(|| "sluice".to_owned()),
            project,
            payloads,
            queue_lines,
            batch_spans: 512,
            flush_timeout,
        }))
    }
}

/// The URL spans are sent to: over HTTP, a collector's base URL gets `/v1/traces` (unless it ends
/// so already); over gRPC the URL is the server's address.
fn endpoint_url(url: &str, protocol: Protocol, is_base: bool) -> Result<String, TraceError> {
    let bad = |reason| TraceError::Endpoint {
        url: url.to_owned(),
        reason,
    };
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(bad(if url.starts_with("https://") {
            "https is not supported yet: send to a collector on http:// (a local OpenTelemetry Collector can forward over TLS)"
        } else {
            "write it as http://HOST:PORT"
        }));
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains(['@', ' ']) {
        return Err(bad("write it as http://HOST:PORT"));
    }
    let trimmed = url.trim_end_matches('/');
    Ok(match protocol {
        Protocol::Grpc => trimmed.to_owned(),
        Protocol::HttpProtobuf if is_base && !trimmed.ends_with("/v1/traces") => {
            format!("{trimmed}/v1/traces")
        }
        Protocol::HttpProtobuf => url.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(
        arg: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Result<Option<TraceConfig>, TraceError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TraceConfig::resolve(arg, true, "my_flow", &move |k| {
            vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn no_endpoint_means_no_tracing() {
        assert!(
            resolve(None, &[("OTEL_SERVICE_NAME", "x")])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_collector_url_gets_the_traces_path_over_http_but_not_over_grpc() {
        let c = resolve(Some("http://127.0.0.1:6006"), &[])
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:6006/v1/traces");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.service_name, "sluice");
        assert_eq!(c.project.as_deref(), Some("my_flow"));
        let c = resolve(
            None,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4317/"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_SERVICE_NAME", "svc"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.endpoint.as_str(), c.protocol, c.service_name.as_str()),
            ("http://h:4317", Protocol::Grpc, "svc")
        );
        // The signal's own endpoint is used as written.
        let c = resolve(
            None,
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://h:1/custom"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:2"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint, "http://h:1/custom");
        // --trace wins over the environment.
        let c = resolve(
            Some("http://a:1/v1/traces"),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://b:2")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint, "http://a:1/v1/traces");
    }

    #[test]
    fn settings_that_cannot_work_are_refused_with_their_name() {
        for (arg, vars, needle) in [
            (Some("https://x:1"), vec![], "https is not supported"),
            (Some("localhost:4317"), vec![], "http://HOST:PORT"),
            (
                Some("http://x:1"),
                vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
                "OTEL_EXPORTER_OTLP_PROTOCOL=http/json",
            ),
            (
                Some("http://x:1"),
                vec![("SLUICE_TRACE_QUEUE", "0")],
                "SLUICE_TRACE_QUEUE=0",
            ),
        ] {
            let e = resolve(arg, &vars).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn a_project_named_in_the_resource_attributes_is_left_alone() {
        let c = resolve(
            Some("http://x:1"),
            &[("OTEL_RESOURCE_ATTRIBUTES", "openinference.project.name=p")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.project, None);
        let c = resolve(Some("http://x:1"), &[("SLUICE_TRACE_PROJECT", "q")])
            .unwrap()
            .unwrap();
        assert_eq!(c.project.as_deref(), Some("q"));
    }
}
