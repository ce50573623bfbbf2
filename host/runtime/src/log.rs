//! The `kasbah:pipeline/log` capability: guest log records kept in a bounded
//! per-run buffer. Same shape as every capability: a context (`LogCtx`), a view
//! borrowed from the store data (`Log`), and `add_to_linker`.

use kasbah_core::{LogLevel, LogRecord, Logs};
use wasmtime::component::{HasData, Linker};

use crate::bindings::kasbah::pipeline::log as wit;

/// Per-run log state.
pub struct LogCtx {
    budget_bytes: usize,
    used_bytes: usize,
    /// Records kept at most (`limits.max_log_records`).
    max_records: usize,
    logs: Logs,
    /// Also forward records to the host's `tracing` output (CLI `--verbose`).
    echo: bool,
    /// Kept records, also sent here as they come (see `control.rs`).
    live: Option<crate::control::LiveSink>,
}

impl LogCtx {
    pub fn new(budget_bytes: u64, max_records: u64, echo: bool) -> Self {
        LogCtx {
            budget_bytes: usize::try_from(budget_bytes).unwrap_or(usize::MAX),
            used_bytes: 0,
            max_records: usize::try_from(max_records).unwrap_or(usize::MAX),
            logs: Logs::default(),
            echo,
            live: None,
        }
    }

    pub(crate) fn with_live(mut self, live: Option<crate::control::LiveSink>) -> Self {
        self.live = live;
        self
    }

    pub fn take(&mut self) -> Logs {
        std::mem::take(&mut self.logs)
    }
}

/// The least a record costs against `max_log_bytes`.
const RECORD_OVERHEAD: usize = kasbah_policy::LOG_RECORD_OVERHEAD_BYTES as usize;

/// The view the generated bindings call into.
pub struct Log<'a>(pub &'a mut LogCtx);

impl HasData for Log<'static> {
    type Data<'a> = Log<'a>;
}

impl wit::Host for Log<'_> {
    fn log(&mut self, level: wit::Level, message: String) {
        let ctx = &mut *self.0;
        let level = match level {
            wit::Level::Trace => LogLevel::Trace,
            wit::Level::Debug => LogLevel::Debug,
            wit::Level::Info => LogLevel::Info,
            wit::Level::Warn => LogLevel::Warn,
            wit::Level::Error => LogLevel::Error,
        };
        // A record costs its message plus a fixed overhead (level, framing,
        // the record in the report and the database): empty messages are
        // not free.
        let cost = message.len().max(RECORD_OVERHEAD);
        if ctx.logs.records.len() >= ctx.max_records
            || ctx.used_bytes.saturating_add(cost) > ctx.budget_bytes
        {
            ctx.logs.dropped += 1;
            return;
        }
        ctx.used_bytes += cost;
        // Only kept records are echoed: a flood must not flood the host's log.
        if ctx.echo {
            tracing::info!(target: "guest", ?level, "{message}");
        }
        if let Some(live) = &ctx.live {
            live.send(kasbah_core::LogEvent::Log {
                level,
                message: message.clone(),
            });
        }
        ctx.logs.records.push(LogRecord { level, message });
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> Log<'_>,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, Log<'static>>(linker, get)
}
