//! Prometheus metrics (`GET /metrics`, text exposition format).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub runs: Family<OutcomeLabel, Counter>,
    pub runs_rejected: Family<ReasonLabel, Counter>,
    pub runs_in_flight: Gauge,
    pub run_seconds: Histogram,
    pub modules_published: Counter,
    pub publishes_refused: Family<ReasonLabel, Counter>,
    /// The runtime's compile and artifact-cache counters, copied in at
    /// each scrape (`sync_runtime`).
    modules_compiled: Counter,
    artifacts: Family<ArtifactLabel, Counter>,
    syncing: std::sync::Mutex<()>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ArtifactLabel {
    pub event: &'static str,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kasbah");
        let runs = Family::<OutcomeLabel, Counter>::default();
        registry.register("runs", "Runs finished, by outcome", runs.clone());
        let runs_rejected = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "runs_rejected",
            "Runs refused at admission (429), by reason",
            runs_rejected.clone(),
        );
        let runs_in_flight = Gauge::default();
        registry.register(
            "runs_in_flight",
            "Runs queued or running",
            runs_in_flight.clone(),
        );
        let run_seconds = Histogram::new(exponential_buckets(0.0001, 4.0, 12));
        registry.register(
            "run_duration_seconds",
            "Wall time of finished runs",
            run_seconds.clone(),
        );
        let modules_published = Counter::default();
        registry.register(
            "modules_published",
            "Modules accepted",
            modules_published.clone(),
        );
        let publishes_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "publishes_refused",
            "Module uploads refused, by error code",
            publishes_refused.clone(),
        );
        let modules_compiled = Counter::default();
        registry.register(
            "modules_compiled",
            "Modules compiled to native code (loads from the compiled-artifact cache excluded)",
            modules_compiled.clone(),
        );
        let artifacts = Family::<ArtifactLabel, Counter>::default();
        registry.register(
            "compiled_artifacts",
            "Compiled-artifact cache on disk: hit (loaded), miss, rejected (failed its \
             integrity check: removed and recompiled), written, evicted",
            artifacts.clone(),
        );
        Metrics {
            registry,
            modules_compiled,
            artifacts,
            syncing: std::sync::Mutex::new(()),
            runs,
            runs_rejected,
            runs_in_flight,
            run_seconds,
            modules_published,
            publishes_refused,
        }
    }

    /// Export the database writer's group-commit counters.
    pub fn register_writer(&mut self, w: &crate::store::writer::WriterStats) {
        let r = &mut self.registry;
        r.register(
            "db_write_batches",
            "Write transactions committed or failed by the group-commit writer",
            w.batches.clone(),
        );
        r.register(
            "db_write_failed_batches",
            "Write transactions rolled back",
            w.failed_batches.clone(),
        );
        r.register("db_write_jobs", "Writes submitted", w.jobs.clone());
        r.register(
            "audit_entries_appended",
            "Audit log entries committed",
            w.entries.clone(),
        );
        r.register(
            "db_write_batch_jobs",
            "Writes per committed transaction",
            w.batch_jobs.clone(),
        );
        r.register(
            "db_write_commit_seconds",
            "Time to run and commit one batch transaction (fsync included)",
            w.commit_seconds.clone(),
        );
    }

    /// Bring the runtime's counters (monotonic) into the registry.
    pub fn sync_runtime(&self, rt: &kasbah_runtime::Runtime) {
        let _one = self
            .syncing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let catch_up = |c: &Counter, now: u64| {
            c.inc_by(now.saturating_sub(c.get()));
        };
        catch_up(&self.modules_compiled, rt.compiled());
        let a = rt.artifact_stats();
        for (event, n) in [
            ("hit", a.hits),
            ("miss", a.misses),
            ("rejected", a.rejected),
            ("written", a.written),
            ("evicted", a.evicted),
        ] {
            catch_up(&self.artifacts.get_or_create(&ArtifactLabel { event }), n);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
