//! The export worker: a thread with a one-thread tokio runtime that takes finished lines off the
//! queue, makes their spans (off the lines' threads), gathers them into batches (up to `batch_spans`, or what arrived within [`LINGER`]) and
//! sends each batch with the OTLP exporter. A batch that fails is dropped and counted; the worker
//! goes on with the next one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use tokio::sync::{Notify, mpsc};

use super::{FlowInfo, LineScope, Protocol, SpanMaker, TraceConfig, TraceError, TraceStats};
use sluice_engine::LineResult;

/// A finished line, waiting for its spans to be made and sent.
#[derive(Debug)]
pub(super) struct Job {
    pub line: LineResult,
    pub flow: FlowInfo,
    pub scope: LineScope,
}

impl Job {
    fn spans(&self, maker: &SpanMaker) -> Vec<SpanData> {
        maker.line_spans(&self.line, &self.flow, &self.scope)
    }
}

/// How long the worker waits for more lines before sending a batch that is not full.
const LINGER: Duration = Duration::from_millis(100);

/// The running worker: told to finish, it drains the queue; `done` says it has.
#[derive(Debug)]
pub(super) struct Handle {
    closing: Arc<Notify>,
    done: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Handle {
    /// Tells the worker to export what is queued and stop, and waits for it at most `deadline`.
    pub(super) fn finish(&self, deadline: Duration) {
        self.closing.notify_one();
        if let Ok(done) = self.done.lock() {
            let _ = done.recv_timeout(deadline);
        }
    }
}

fn exporter(config: &TraceConfig) -> Result<opentelemetry_otlp::SpanExporter, TraceError> {
    let built = match config.protocol {
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(config.endpoint.clone())
            .build(),
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.endpoint.clone())
            .build(),
    };
    let mut exporter = built.map_err(|source| TraceError::Exporter {
        endpoint: config.endpoint.clone(),
        source,
    })?;
    let mut resource = Resource::builder().with_service_name(config.service_name.clone());
    if let Some(p) = &config.project {
        resource = resource.with_attributes([
            KeyValue::new("openinference.project.name", p.clone()),
            // promptflow's name for the same thing.
            KeyValue::new("collection", p.clone()),
        ]);
    }
    exporter.set_resource(&resource.build());
    Ok(exporter)
}

/// Makes this thread yield the CPU to the lines when both want it (a nice value of 10, Linux only): the
/// spans wait in the queue instead of slowing the run, and are flushed when it ends.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread, with no pointers.
    #[allow(unsafe_code)]
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// Starts the worker; returns the queue lines' spans go on.
pub(super) fn start(
    config: &TraceConfig,
    maker: SpanMaker,
    stats: Arc<TraceStats>,
) -> Result<(mpsc::Sender<Job>, Handle), TraceError> {
    let (tx, rx) = mpsc::channel(config.queue_lines);
    let closing = Arc::new(Notify::new());
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let config = config.clone();
    let notify = closing.clone();
    std::thread::Builder::new()
        .name("sluice-otlp".into())
        .spawn(move || {
            lower_priority();
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(TraceError::Thread(e)));
                    return;
                }
            };
            rt.block_on(async move {
                // The gRPC channel is made on this runtime.
                let exporter = match exporter(&config) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                run(rx, &maker, exporter, &config, &stats, &notify).await;
            });
            let _ = done_tx.send(());
        })
        .map_err(TraceError::Thread)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((
            tx,
            Handle {
                closing,
                done: std::sync::Mutex::new(done_rx),
            },
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(TraceError::Thread(std::io::Error::other(
            "the trace exporter's thread ended before it started",
        ))),
    }
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    maker: &SpanMaker,
    exporter: opentelemetry_otlp::SpanExporter,
    config: &TraceConfig,
    stats: &TraceStats,
    closing: &Notify,
) {
    let mut batch: Vec<SpanData> = Vec::new();
    let mut warned = false;
    let mut finishing = false;
    while !finishing {
        let first = tokio::select! {
            biased;
            job = rx.recv() => job,
            () = closing.notified() => None,
        };
        let Some(job) = first else { break };
        batch.extend(job.spans(maker));
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < config.batch_spans {
            tokio::select! {
                biased;
                job = rx.recv() => match job {
                    Some(j) => batch.extend(j.spans(maker)),
                    None => break,
                },
                () = closing.notified() => {
                    finishing = true;
                    break;
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        send(&exporter, &mut batch, config, stats, &mut warned).await;
    }
    // Finishing: what is still queued, in batches.
    rx.close();
    while let Some(job) = rx.recv().await {
        batch.extend(job.spans(maker));
        if batch.len() >= config.batch_spans {
            send(&exporter, &mut batch, config, stats, &mut warned).await;
        }
    }
    send(&exporter, &mut batch, config, stats, &mut warned).await;
}

async fn send(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: &mut Vec<SpanData>,
    config: &TraceConfig,
    stats: &TraceStats,
    warned: &mut bool,
) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    match exporter.export(std::mem::take(batch)).await {
        Ok(()) => {
            stats.exported.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => {
            stats.dropped_export_failed.fetch_add(n, Ordering::Relaxed);
            if !*warned {
                *warned = true;
                tracing::warn!(
                    "cannot export spans to {} ({}): {e}; spans that cannot be sent are dropped and counted",
                    config.endpoint,
                    config.protocol.as_str()
                );
            }
        }
    }
}
