//! Runs' rules: who starts runs (a tenant's developers), what a run may
//! carry (its module, input within `max_input_bytes`), where it runs
//! (placement, refused and audited before admission), whether it runs now
//! (admission: per-tenant and server-wide bounds, refusals audited), and
//! who reads records, outputs and usage. No HTTP here.

use std::time::Duration;

use base64::Engine as _;
use kasbah_core::Digest;
use kasbah_core::api::{CreateRun, Role, RunRecord, UsageRow};
use kasbah_core::phases::Phases;
use kasbah_runtime::Request;

use super::dispatch;
use super::execute::execute;
use super::fleet::OutputStream;
use super::placement::place_run;
use super::scheduler::Refusal;
use super::storage::{NewRun, OutputPlace, Period, RunStore, queued_record};
use crate::audit::storage::AuditStore;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::ids::{new_run_id, now_ms};
use crate::registry::service::resolve as resolve_module;
use crate::state::AppState;
use crate::tenancy::service::policy;
use crate::tenancy::storage::TenancyStore;
use crate::validate::parse_module_ref;

/// Only developer tokens start runs (checked before anything else).
pub fn may_start(caller: &Caller) -> ApiResult<()> {
    caller.require(
        &[Role::Developer],
        "start runs (use a tenant developer token)",
    )
}

/// How [`start`] ended.
pub enum Started {
    /// The run finished while the caller waited (`wait: true`).
    Finished(RunRecord),
    /// The run is accepted (durably recorded) and executes on its own.
    Accepted(RunRecord),
}

/// Start a run for the caller's tenant. Refusals (bad input, residency,
/// admission) come before anything is recorded or run; residency and
/// admission refusals are audited. Waits for the result if asked, up to
/// the server's `sync_wait_ms`; past that (or if the caller goes away) the
/// run goes on detached.
pub async fn start(s: &AppState, caller: &Caller, mut req: CreateRun) -> ApiResult<Started> {
    may_start(caller)?;
    let input = match (req.input.take(), req.input_base64.take()) {
        (Some(t), None) => t.into_bytes(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| {
                ApiError::unprocessable("invalid_request", format!("input_base64: {e}"))
            })?,
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => {
            return Err(ApiError::unprocessable(
                "invalid_request",
                "give `input` or `input_base64`, not both",
            ));
        }
    };
    start_with_input(s, caller, req, input).await
}

/// [`start`] with the input already in bytes (`req.input` and
/// `req.input_base64` are ignored): `POST /v1/runs` and raw invokes
/// (`invoke.rs`) share everything from here.
pub async fn start_with_input(
    s: &AppState,
    caller: &Caller,
    req: CreateRun,
    input: Vec<u8>,
) -> ApiResult<Started> {
    may_start(caller)?;
    let mut phases = Phases::new();
    let tenant = caller.subject.clone();
    let module_ref = parse_module_ref(&req.module)?;
    // The digest run is the one the reference names now; the record and
    // the receipt carry it, whatever the reference was.
    let module = resolve_module(s, &tenant, &module_ref)?;
    let digest = module.digest;
    phases.mark("module");
    let policy = policy(s, &tenant)?;
    phases.mark("policy");
    let limits = &policy.policy.limits;
    if input.len() as u64 > limits.max_input_bytes {
        return Err(ApiError::too_large(
            "input_too_large",
            format!(
                "input of {} bytes exceeds limits.max_input_bytes = {}",
                input.len(),
                limits.max_input_bytes
            ),
        ));
    }
    // Granted secrets, decrypted now (a missing one, or any on a fleet
    // control plane, refuses the run before anything is recorded); the record keeps their names and versions.
    let (secret_values, secret_uses) =
        crate::secrets::service::for_run(s, &tenant, &policy.policy)?;
    // Residency: refused (403, audited) before anything is admitted or run.
    let mut placed = place_run(
        s,
        &tenant,
        &policy.policy,
        &module,
        &req.datasets,
        req.input_label.as_deref(),
        req.store_output_as.as_deref(),
    )
    .await?;
    placed.options.secrets = secret_values;
    placed.row.secrets = secret_uses;
    phases.mark("place");
    let admission = match s.scheduler.admit(&tenant, limits.max_concurrent_runs) {
        Ok(a) => a,
        Err(r) => return Err(refuse_admission(s, &tenant, digest, r).await),
    };
    phases.mark("admit");

    let run = NewRun {
        id: new_run_id(),
        tenant_id: tenant,
        module: digest,
        policy_version: policy.version,
        input_digest: Digest::of(&input),
        input_size: input.len() as u64,
        created_at: now_ms(),
        residency: Some(placed.row.clone()),
    };
    // The insert is queued, not waited for: the run starts while it
    // commits, and nobody hears of the run before it is durable (below).
    // The result's commit, later in the same writer, implies it.
    let inserted = s.runs.insert_run(&run).await?;
    phases.mark("insert");
    let live = s.live.start(&run.id, &run.tenant_id, s.fleet.is_none());
    phases.mark("live");
    tracing::debug!(target: "kasbah::phases", run = %run.id, "admission {phases}");
    let mut request = Request::new(input);
    if let Some(ct) = req.content_type {
        request = request.with_content_type(ct);
    }
    request.metadata = req.metadata.into_iter().collect();

    let wait = Duration::from_millis(
        s.config
            .sync_wait_ms
            .min(limits.wall_time_ms.saturating_add(5_000)),
    );
    let task_state = s.clone();
    let policy_for_run = policy.clone();
    let accepted = queued_record(&run);
    s.metrics.runs_in_flight.inc();
    let run_to_end = async move {
        let id = run.id.clone();
        let record = match task_state.fleet.clone() {
            Some(fleet) => {
                dispatch::execute(
                    &fleet,
                    &task_state,
                    run,
                    policy_for_run,
                    request,
                    admission,
                    placed,
                )
                .await
            }
            None => {
                execute(
                    &task_state,
                    run,
                    policy_for_run,
                    request,
                    admission,
                    placed,
                    live,
                )
                .await
            }
        };
        // Followers read the stored record when the feed closes.
        task_state.live.end(&id);
        task_state.metrics.runs_in_flight.dec();
        record
    };
    if req.wait {
        // The run executes in the caller's own task (no hand-off to another
        // task and back); past the wait, or if the client goes away, it goes
        // on detached.
        let mut running = Detached::new(run_to_end);
        if let Ok(done) = tokio::time::timeout(wait, &mut running).await {
            return match done {
                Some(record) => Ok(Started::Finished(record)),
                None => Err(ApiError::internal("the run's result could not be stored")),
            };
        }
    } else {
        tokio::spawn(run_to_end);
    }
    inserted.durable().await?;
    let r = s.runs.run(&accepted.id)?.unwrap_or(accepted);
    Ok(Started::Accepted(r))
}

/// A run refused at admission: counted, audited, `429` with Retry-After.
async fn refuse_admission(s: &AppState, tenant: &str, module: Digest, r: Refusal) -> ApiError {
    let (reason, msg) = match r {
        Refusal::TenantLimit(n) => (
            "tenant_limit",
            format!("the tenant already has {n} runs in flight (limits.max_concurrent_runs)"),
        ),
        Refusal::ServerFull(n) => (
            "server_full",
            format!("the server is at capacity ({n} runs in flight)"),
        ),
    };
    s.metrics
        .runs_rejected
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: reason.into(),
        })
        .inc();
    if let Err(e) =
        s.db.record_denial(
            tenant,
            Some(module),
            "run",
            &format!("rate_limited: {reason}: {msg}"),
        )
        .await
    {
        tracing::error!("auditing a refused run: {e}");
    }
    ApiError::overloaded(msg, 1)
}

/// A future polled in place by its caller that, if dropped before it
/// finished, is spawned to finish on its own: an admitted run is never
/// cancelled because its client stopped waiting or went away.
struct Detached<F: Future + Send + 'static>(Option<std::pin::Pin<Box<F>>>)
where
    F::Output: Send;

impl<F: Future + Send + 'static> Detached<F>
where
    F::Output: Send,
{
    fn new(f: F) -> Self {
        Detached(Some(Box::pin(f)))
    }
}

impl<F: Future + Send + 'static> Future for Detached<F>
where
    F::Output: Send,
{
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let Some(f) = self.0.as_mut() else {
            return std::task::Poll::Pending;
        };
        let out = std::task::ready!(f.as_mut().poll(cx));
        self.0 = None;
        std::task::Poll::Ready(out)
    }
}

impl<F: Future + Send + 'static> Drop for Detached<F>
where
    F::Output: Send,
{
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(f);
                }
                Err(_) => tracing::error!("a run was dropped outside the runtime (shutdown)"),
            }
        }
    }
}

/// A run's record, if the caller reads its tenant's records (else 404).
pub fn visible_run(s: &AppState, caller: &Caller, id: &str) -> ApiResult<RunRecord> {
    let r = s.runs.run(id)?.ok_or_else(|| ApiError::not_found("run"))?;
    if caller.reads_records(s, &r.tenant_id)? {
        Ok(r)
    } else {
        Err(ApiError::not_found("run"))
    }
}

/// A run's record as the caller may see it (see [`redact_output`]).
pub fn run(s: &AppState, caller: &Caller, id: &str) -> ApiResult<RunRecord> {
    let mut r = visible_run(s, caller, id)?;
    redact_output(s, caller, &mut r)?;
    Ok(r)
}

/// Output bytes (inline in the record) only for the callers who may
/// download them; others see the digest and size.
fn redact_output(s: &AppState, caller: &Caller, r: &mut RunRecord) -> ApiResult<()> {
    if !caller.reads_outputs(s, &r.tenant_id)?
        && let Some(out) = r.output.as_mut()
    {
        out.inline = None;
    }
    Ok(())
}

/// A run's output for download.
pub struct RunOutput {
    pub body: OutputBody,
    pub content_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// The bytes of a run's output: in memory (inline in the record, or from
/// this server's blob store), or streamed from the zone object store a
/// fleet worker put it in (checked against its digest while streamed).
pub enum OutputBody {
    Bytes(Vec<u8>),
    Stream(OutputStream),
}

/// A run's output: its bytes, content type and digest, for the owning
/// tenant and its auditors (403 for others who see the record; 409 while
/// the run has not finished, or when it ended without output). An output
/// kept in a zone's object store is `503 output_unavailable` (Retry-After)
/// while that store cannot be read, or when this server runs without the
/// fleet.
pub async fn output(s: &AppState, caller: &Caller, id: &str) -> ApiResult<RunOutput> {
    let r = visible_run(s, caller, id)?;
    if !caller.reads_outputs(s, &r.tenant_id)? {
        return Err(ApiError::forbidden(
            "run outputs are released only to the owning tenant and its auditors",
        ));
    }
    let Some(out) = r.output else {
        // The run exists: its output does not (yet).
        return Err(match &r.outcome {
            None => ApiError::conflict(
                "run_not_finished",
                format!(
                    "run {id} is {}: its output exists once it finishes",
                    r.status.as_str()
                ),
            ),
            Some(o) => ApiError::conflict(
                "no_output",
                format!("run {id} ended with outcome {} and has no output", o.kind()),
            ),
        });
    };
    let body = match s.runs.run_output_place(id)? {
        Some(OutputPlace::Inline(b)) => OutputBody::Bytes(b),
        Some(OutputPlace::Zone(zone)) => {
            let Some(fleet) = s.fleet.as_ref() else {
                return Err(ApiError::unavailable(
                    "output_unavailable",
                    format!(
                        "the output is kept in zone {zone}'s object store and this server is not \
                         connected to the fleet (start it with --nats)"
                    ),
                    60,
                ));
            };
            let stream = fleet
                .output(&zone, &out.digest, out.size)
                .await
                .map_err(|e| {
                    tracing::error!(run = id, "reading the output from zone {zone}: {e:#}");
                    ApiError::unavailable(
                        "output_unavailable",
                        format!("the output could not be read from zone {zone}'s object store"),
                        5,
                    )
                })?;
            OutputBody::Stream(stream)
        }
        Some(OutputPlace::Blobs) | None => {
            let bytes = s
                .blobs
                .get(&out.digest)
                .map_err(ApiError::internal)?
                .ok_or_else(|| ApiError::internal(format!("output blob {} missing", out.digest)))?;
            // Checked as zone-bucket outputs and dataset downloads are.
            if Digest::of(&bytes) != out.digest {
                tracing::error!(
                    run = id,
                    "output blob {} does not match its digest",
                    out.digest
                );
                return Err(ApiError::unavailable(
                    "output_unavailable",
                    "the stored output does not match its digest".to_string(),
                    5,
                ));
            }
            OutputBody::Bytes(bytes)
        }
    };
    Ok(RunOutput {
        body,
        content_type: out.content_type,
        digest: out.digest,
        size: out.size,
    })
}

/// The most recent runs (at most `limit`, 1–1000, default 50) of the
/// tenants the caller reads, newest first; with `before` (a run id the
/// caller may read: the last of the previous page), only older runs.
pub fn list(
    s: &AppState,
    caller: &Caller,
    tenant: Option<&str>,
    limit: Option<u32>,
    before: Option<&str>,
) -> ApiResult<Vec<RunRecord>> {
    let limit = limit.unwrap_or(50).clamp(1, 1000);
    let tenants = caller.readable_tenants(s, tenant)?;
    let cursor = match before {
        None => None,
        Some(id) => {
            // A cursor the caller cannot read is an unknown run: its
            // timestamp would otherwise leak through the page it selects.
            let r = s
                .runs
                .run(id)?
                .filter(|r| tenants.contains(&r.tenant_id))
                .ok_or_else(|| ApiError::not_found("run"))?;
            Some((r.created_at, r.id))
        }
    };
    let mut out = Vec::new();
    for t in &tenants {
        out.extend(
            s.runs
                .runs(t, limit, cursor.as_ref().map(|(at, id)| (*at, id.as_str())))?,
        );
    }
    out.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    out.truncate(limit as usize);
    for r in &mut out {
        redact_output(s, caller, r)?;
    }
    Ok(out)
}

/// Usage per tenant and period: admins every tenant, operators theirs,
/// developers their own; auditors none.
pub fn usage(
    s: &AppState,
    caller: &Caller,
    tenant: Option<&str>,
    period: Option<Period>,
    from: Option<i64>,
    to: Option<i64>,
) -> ApiResult<Vec<UsageRow>> {
    let tenants: Vec<String> = match (caller.role, tenant) {
        (Role::Admin, None) => s.tenancy.tenants(None)?.into_iter().map(|t| t.id).collect(),
        (Role::Operator, None) => s
            .tenancy
            .tenants(Some(&caller.subject))?
            .into_iter()
            .map(|t| t.id)
            .collect(),
        (Role::Developer, None) => vec![caller.subject.clone()],
        (Role::Auditor, _) => return Err(ApiError::forbidden("auditors do not read usage")),
        (_, Some(t)) => vec![caller.visible_tenant(s, t)?.id],
    };
    Ok(s.runs.usage(
        &tenants,
        period.unwrap_or(Period::Day),
        from.unwrap_or(0),
        to.unwrap_or(now_ms() + 86_400_000),
    )?)
}
