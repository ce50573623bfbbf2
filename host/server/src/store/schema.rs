//! The database's schema, every domain's tables in one place, and the
//! migration from databases made by earlier versions. A new column goes in
//! [`SCHEMA`] (new databases) and in [`migrate`] (existing ones).

use rusqlite::Connection;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS operators (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    ceiling_json TEXT NOT NULL,
    max_tenants INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    zones_json TEXT
);
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    operator_id TEXT REFERENCES operators(id),
    policy_version INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tenants_by_operator ON tenants(operator_id);
CREATE TABLE IF NOT EXISTS policies (
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    version INTEGER NOT NULL,
    policy_json TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    set_by TEXT,
    PRIMARY KEY (tenant_id, version)
);
CREATE TABLE IF NOT EXISTS auditors (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    operator_id TEXT
);
CREATE TABLE IF NOT EXISTS auditor_grants (
    auditor_id TEXT NOT NULL REFERENCES auditors(id),
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    PRIMARY KEY (auditor_id, tenant_id)
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    subject TEXT NOT NULL,
    name TEXT,
    created_at INTEGER NOT NULL,
    id TEXT,
    expires_at INTEGER,
    last_used_at INTEGER,
    revoked_at INTEGER,
    created_by TEXT
);
CREATE TABLE IF NOT EXISTS modules (
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    digest TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    size INTEGER NOT NULL,
    imports_json TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    signers_json TEXT,
    signatures_json TEXT,
    PRIMARY KEY (tenant_id, digest),
    UNIQUE (tenant_id, name, version)
);
CREATE TABLE IF NOT EXISTS signing_key_revocations (
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    key_id TEXT NOT NULL,
    revoked_at INTEGER NOT NULL,
    by_role TEXT NOT NULL,
    by_subject TEXT NOT NULL,
    PRIMARY KEY (tenant_id, key_id)
);

-- A module's build provenance (issue 16): one in-toto statement per module.
CREATE TABLE IF NOT EXISTS module_provenance (
    tenant_id TEXT NOT NULL,
    module TEXT NOT NULL,
    statement_digest TEXT NOT NULL,
    source TEXT NOT NULL,
    cargo_lock TEXT NOT NULL,
    toolchain TEXT NOT NULL,
    statement BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, module),
    FOREIGN KEY (tenant_id, module) REFERENCES modules(tenant_id, digest)
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    module_digest TEXT NOT NULL,
    policy_version INTEGER NOT NULL,
    status TEXT NOT NULL,
    input_digest TEXT NOT NULL,
    input_size INTEGER NOT NULL,
    outcome_kind TEXT,
    output_digest TEXT,
    output_size INTEGER,
    output_content_type TEXT,
    output_inline BLOB,
    wall_us INTEGER,
    fuel INTEGER,
    peak_memory INTEGER,
    report_json TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    zone TEXT,
    adapter TEXT,
    datasets TEXT,
    input_label TEXT,
    output_label TEXT,
    store_output_as TEXT,
    output_dataset TEXT,
    worker TEXT,
    output_zone TEXT,
    secrets TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_tenant ON runs(tenant_id, created_at);
-- Runs accepted and not yet ended: a row here from admission until the
-- run's final row goes into `runs` (same transaction that deletes it). A
-- run's `runs` row is thus written once, complete; this table stays a
-- handful of hot pages. At start-up what is left here was interrupted.
CREATE TABLE IF NOT EXISTS runs_inflight (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    module_digest TEXT NOT NULL,
    policy_version INTEGER NOT NULL,
    input_digest TEXT NOT NULL,
    input_size INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    zone TEXT,
    adapter TEXT,
    datasets TEXT,
    input_label TEXT,
    output_label TEXT,
    store_output_as TEXT,
    secrets TEXT
) WITHOUT ROWID;
"#;

/// Datasets (see `datasets/`).
const DATASETS: &str = r#"
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    label_json TEXT NOT NULL,
    source_run TEXT,
    created_at INTEGER NOT NULL,
    -- 1: uploaded to a fleet control plane, the bytes only in the label
    -- zones' object store buckets (NULL: in the blob store).
    zone_stored INTEGER,
    UNIQUE (tenant_id, name)
);
CREATE INDEX IF NOT EXISTS datasets_by_digest ON datasets(tenant_id, digest);
"#;

/// Create every table (idempotent), then bring older databases up to date.
pub fn create(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(DATASETS)?;
    conn.execute_batch(crate::secrets::sqlite::SCHEMA)?;
    conn.execute_batch(super::starts::SCHEMA)?;
    conn.execute_batch(crate::audit::log::SCHEMA)?;
    migrate(conn)
}

/// Columns `runs` gained when run residency moved into it (databases made
/// before that have them in a `run_residency` table: see [`migrate`]).
const RESIDENCY_COLUMNS: [&str; 7] = [
    "zone",
    "adapter",
    "datasets",
    "input_label",
    "output_label",
    "store_output_as",
    "output_dataset",
];

/// `ALTER TABLE table ADD COLUMN column ty` unless the table has it (names
/// are this file's constants, never input).
fn add_missing_column(
    tx: &rusqlite::Transaction<'_>,
    table: &str,
    column: &str,
    ty: &str,
) -> rusqlite::Result<()> {
    let have = tx
        .prepare(&format!(
            "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
        ))?
        .exists([column])?;
    if !have {
        tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))?;
    }
    Ok(())
}

/// Bring a database made by an earlier kasbah to the current schema, in one
/// transaction (nothing stored is dropped):
/// - `run_residency` rows move into the residency columns of `runs`;
/// - runs still `queued`/`running` in `runs` (the old way of recording
///   runs in flight) move to `runs_inflight`, where start-up marks them
///   interrupted like any other;
/// - the `runs_by_status` index (only that start-up scan used it) goes;
/// - runs gain `worker` (NULL: executed in-process, or recorded before) and
///   `output_zone` (NULL: output inline or in the blob store);
/// - operators gain `zones_json` (NULL: no zone restriction);
/// - modules gain `signers_json` and `signatures_json` (NULL: unsigned);
/// - policy versions gain `set_by`, tokens their id, expiry, last use,
///   revocation and creator, auditors the operator that created them.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for col in RESIDENCY_COLUMNS {
        add_missing_column(&tx, "runs", col, "TEXT")?;
    }
    // The fleet worker that executed a run (issue 14); NULL for runs
    // executed in-process, and for every run recorded before the column.
    add_missing_column(&tx, "runs", "worker", "TEXT")?;
    // The zone whose object store holds a fleet run's output (NULL: inline
    // or in the blob store, as for every run recorded before the column).
    add_missing_column(&tx, "runs", "output_zone", "TEXT")?;
    // Names and versions of the secrets a run was granted (issue 18), JSON;
    // NULL when none, as for every run recorded before the column.
    add_missing_column(&tx, "runs", "secrets", "TEXT")?;
    add_missing_column(&tx, "runs_inflight", "secrets", "TEXT")?;
    // Datasets uploaded to a fleet control plane live only in their zones'
    // buckets; NULL for every dataset recorded before the column.
    add_missing_column(&tx, "datasets", "zone_stored", "INTEGER")?;
    add_missing_column(&tx, "operators", "zones_json", "TEXT")?;
    // Versions from before it was recorded read back with `set_by: null`.
    add_missing_column(&tx, "policies", "set_by", "TEXT")?;
    // Token lifecycle (issue 13): ids, expiry, last use, revocation; who
    // created an auditor. Tokens from before get a random id here and an
    // expiry at the next start (`Db::expire_unbounded_tokens`).
    for (col, ty) in [
        ("id", "TEXT"),
        ("expires_at", "INTEGER"),
        ("last_used_at", "INTEGER"),
        ("revoked_at", "INTEGER"),
        ("created_by", "TEXT"),
    ] {
        add_missing_column(&tx, "tokens", col, ty)?;
    }
    tx.execute_batch(
        "UPDATE tokens SET id = 'tk_' || lower(hex(randomblob(8))) WHERE id IS NULL;
         CREATE UNIQUE INDEX IF NOT EXISTS tokens_by_id ON tokens(id);
         CREATE INDEX IF NOT EXISTS tokens_by_subject ON tokens(role, subject);",
    )?;
    add_missing_column(&tx, "auditors", "operator_id", "TEXT")?;
    // Module signatures (issue 16): the verified signer key ids and the
    // DSSE envelopes; NULL for modules published before (and unsigned ones).
    add_missing_column(&tx, "modules", "signers_json", "TEXT")?;
    add_missing_column(&tx, "modules", "signatures_json", "TEXT")?;
    let table_exists = |name: &str| -> rusqlite::Result<bool> {
        tx.query_row(
            "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    if table_exists("run_residency")? {
        tx.execute_batch(
            "UPDATE runs SET zone = rr.zone, adapter = rr.adapter, datasets = rr.datasets,
                    input_label = rr.input_label, output_label = rr.output_label,
                    store_output_as = rr.store_output_as, output_dataset = rr.output_dataset
             FROM run_residency rr WHERE rr.run_id = runs.id;
             DROP TABLE run_residency;",
        )?;
    }
    // Only a database that still has `runs_by_status` can hold unfinished
    // `runs` rows (and the index makes finding them cheap): a current one is
    // not scanned at every start.
    let legacy: bool = tx.query_row(
        "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'index' AND name = 'runs_by_status'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if legacy {
        let moved = tx.execute(
            "INSERT INTO runs_inflight(id, tenant_id, module_digest, policy_version, input_digest,
                 input_size, created_at, zone, adapter, datasets, input_label, output_label,
                 store_output_as)
             SELECT id, tenant_id, module_digest, policy_version, input_digest, input_size,
                 created_at, zone, adapter, datasets, input_label, output_label, store_output_as
             FROM runs WHERE status IN ('queued', 'running')",
            [],
        )?;
        if moved > 0 {
            tx.execute("DELETE FROM runs WHERE status IN ('queued', 'running')", [])?;
        }
        tx.execute_batch("DROP INDEX runs_by_status")?;
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::audit::log as audit;
    use crate::runs::sqlite::SqliteRuns;
    use crate::runs::storage::RunStore;
    use crate::store::Db;
    use crate::tenancy::sqlite::SqliteTenancy;
    use crate::tenancy::storage::TenancyStore;
    use kasbah_audit::{Entry, EntryBody};
    use kasbah_core::Digest;
    use kasbah_core::api::RunStatus;
    use kasbah_policy::{Ceiling, Policy};
    use rusqlite::Connection;

    /// A database written by the kasbah before runs kept their residency in
    /// `runs` (and their in-flight state in `runs_inflight`) opens with
    /// nothing lost: a finished run keeps its zone and labels, a run that
    /// was in flight is interrupted (zone kept, audited), and both read
    /// back through the API's queries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_of_the_previous_schema_opens_with_nothing_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kasbah.db");
        let d = Digest::of(b"m").to_string();
        {
            let c = Connection::open(&path).expect("open old");
            c.execute_batch(&format!(
                "CREATE TABLE operators (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                     ceiling_json TEXT NOT NULL, max_tenants INTEGER NOT NULL, created_at INTEGER NOT NULL);
                 INSERT INTO operators VALUES ('op_old', 'telecom',
                     '{{\"memory_bytes\":1048576,\"wall_time_ms\":1000,\"fuel\":5000}}', 3, 0);
                 CREATE TABLE tenants (id TEXT PRIMARY KEY, name TEXT NOT NULL,
                     operator_id TEXT, policy_version INTEGER NOT NULL, created_at INTEGER NOT NULL);
                 INSERT INTO tenants VALUES ('tn_a', 'a', NULL, 1, 0);
                 CREATE TABLE policies (tenant_id TEXT NOT NULL REFERENCES tenants(id),
                     version INTEGER NOT NULL, policy_json TEXT NOT NULL, digest TEXT NOT NULL,
                     created_at INTEGER NOT NULL, PRIMARY KEY (tenant_id, version));
                 INSERT INTO policies VALUES ('tn_a', 1, '{{}}', '{d}', 0);
                 CREATE TABLE runs (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(id),
                     module_digest TEXT NOT NULL, policy_version INTEGER NOT NULL, status TEXT NOT NULL,
                     input_digest TEXT NOT NULL, input_size INTEGER NOT NULL, outcome_kind TEXT,
                     output_digest TEXT, output_size INTEGER, output_content_type TEXT, output_inline BLOB,
                     wall_us INTEGER, fuel INTEGER, peak_memory INTEGER, report_json TEXT,
                     created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER);
                 CREATE INDEX runs_by_tenant ON runs(tenant_id, created_at);
                 CREATE INDEX runs_by_status ON runs(status);
                 CREATE TABLE run_residency (run_id TEXT PRIMARY KEY REFERENCES runs(id),
                     zone TEXT NOT NULL, adapter TEXT, datasets TEXT NOT NULL, input_label TEXT NOT NULL,
                     output_label TEXT NOT NULL, store_output_as TEXT, output_dataset TEXT);
                 INSERT INTO runs(id, tenant_id, module_digest, policy_version, status, input_digest,
                     input_size, outcome_kind, wall_us, created_at, started_at, finished_at)
                     VALUES ('run_done', 'tn_a', '{d}', 1, 'done', '{d}', 1, 'ok', 5, 10, 11, 12);
                 INSERT INTO runs(id, tenant_id, module_digest, policy_version, status, input_digest,
                     input_size, created_at)
                     VALUES ('run_flying', 'tn_a', '{d}', 1, 'queued', '{d}', 1, 20);
                 INSERT INTO run_residency VALUES ('run_done', 'zone-a', NULL, '[]', '[\"zone-a\"]',
                     '[\"zone-a\"]', NULL, 'ds_x');
                 INSERT INTO run_residency VALUES ('run_flying', 'zone-b', 'gpu0', '[]',
                     '[\"zone-b\"]', '[\"zone-b\"]', NULL, NULL);"
            ))
            .expect("old schema");
        }
        let db = Arc::new(Db::open(&path, false).expect("open migrated"));
        let (tenancy, runs) = (SqliteTenancy::new(db.clone()), SqliteRuns::new(db.clone()));
        let op = tenancy
            .operator("op_old")
            .expect("read")
            .expect("operator kept");
        assert_eq!((op.name.as_str(), op.max_tenants), ("telecom", 3));
        assert!(
            op.zones.is_empty(),
            "an old operator has no zone restriction"
        );
        // Its ceiling, stored as a bare `Limits`, loads: those limits and
        // nothing beyond (no datasets, env, network or GPU to grant).
        assert_eq!(
            op.ceiling,
            Ceiling::from_legacy(kasbah_policy::Limits {
                memory_bytes: 1 << 20,
                wall_time_ms: 1000,
                fuel: Some(5000),
                ..kasbah_policy::Limits::default()
            })
        );
        assert!(op.ceiling.gpu.is_none() && op.ceiling.network.allow.is_empty());
        // Policy versions from before `set_by` read back without it; new
        // ones record it.
        let v1 = tenancy.current_policy("tn_a").expect("read").expect("v1");
        assert_eq!((v1.version, v1.set_by), (1, None));

        assert_eq!(runs.interrupt_inflight().await.expect("interrupt"), 1);
        let done = runs.run("run_done").expect("read").expect("done run");
        assert_eq!(done.status, RunStatus::Done);
        assert_eq!(done.zone.as_deref(), Some("zone-a"));
        assert_eq!(done.output_label, vec!["zone-a".to_string()]);
        assert_eq!(done.output_dataset.as_deref(), Some("ds_x"));
        let flying = runs.run("run_flying").expect("read").expect("flying run");
        assert_eq!(flying.status, RunStatus::Interrupted);
        assert_eq!(flying.zone.as_deref(), Some("zone-b"));
        assert_eq!(flying.adapter.as_deref(), Some("gpu0"));
        assert_eq!(flying.input_label, vec!["zone-b".to_string()]);
        let listed: Vec<String> = runs
            .runs("tn_a", 10, None)
            .expect("list")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(listed, ["run_flying", "run_done"]);
        let (kinds, zone) = db
            .audit_read(|snap| {
                let e = audit::entries(snap.conn, 0..snap.size, None, 10).expect("entries");
                let zone: Option<String> = snap
                    .conn
                    .query_row(
                        "SELECT COUNT(*) FROM sqlite_schema WHERE name IN ('run_residency', 'runs_by_status')",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                    .ok()
                    .map(|n| n.to_string());
                let zones: Vec<String> = e
                    .iter()
                    .map(|e| match Entry::decode(&e.bytes).expect("decode").body {
                        EntryBody::RunExecuted(r) => format!("{} {} {}", r.run_id, r.outcome, r.zone),
                        other => format!("{other:?}"),
                    })
                    .collect();
                (zones, zone)
            })
            .expect("audit");
        assert_eq!(kinds, ["run_flying interrupted zone-b"]);
        assert_eq!(zone.as_deref(), Some("0"), "old table and index dropped");
        tokio::task::spawn_blocking(move || db.close())
            .await
            .expect("close");
        // Opening again changes nothing.
        let db = Arc::new(Db::open(&path, false).expect("reopen"));
        let (tenancy, runs) = (SqliteTenancy::new(db.clone()), SqliteRuns::new(db.clone()));
        assert_eq!(runs.interrupt_inflight().await.expect("interrupt"), 0);
        assert_eq!(
            runs.run("run_flying").expect("read").map(|r| r.status),
            Some(RunStatus::Interrupted)
        );
        let v2 = tenancy
            .set_policy("tn_a", &Policy::default(), "admin")
            .await
            .expect("set");
        assert_eq!((v2.version, v2.set_by.as_deref()), (2, Some("admin")));
        tokio::task::spawn_blocking(move || db.close())
            .await
            .expect("close");
    }

    /// A database from before runs named their fleet worker (no `worker`
    /// column) opens with its runs intact (`worker` absent); a fleet run
    /// finished afterwards keeps its worker in the row and in its
    /// `run_executed` entry (type 8), an in-process one stays type 4.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_gain_their_worker_column_and_keep_old_rows() {
        use crate::runs::storage::{Finished, NewRun, RunResidency};
        use kasbah_core::RunReport;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kasbah.db");
        let d = Digest::of(b"m");
        let p = path.clone();
        tokio::task::spawn_blocking(move || Db::open(&p, false).expect("create").close())
            .await
            .expect("create");
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch(&format!(
                "ALTER TABLE runs DROP COLUMN worker;
                 ALTER TABLE runs DROP COLUMN output_zone;
                 INSERT INTO tenants VALUES ('tn_a', 'a', NULL, 1, 0);
                 INSERT INTO runs(id, tenant_id, module_digest, policy_version, status,
                     input_digest, input_size, outcome_kind, created_at, zone)
                     VALUES ('run_old', 'tn_a', '{d}', 1, 'done', '{d}', 1, 'ok', 10, 'zone-a');"
            ))
            .expect("the schema before `worker`");
        }
        let db = Arc::new(Db::open(&path, false).expect("open migrated"));
        let runs = SqliteRuns::new(db.clone());
        let old = runs.run("run_old").expect("read").expect("old run");
        assert_eq!((old.status, old.worker), (RunStatus::Done, None));
        assert_eq!(
            runs.run_output_place("run_old").expect("read"),
            Some(crate::runs::storage::OutputPlace::Blobs)
        );
        let placed = RunResidency {
            zone: "zone-a".into(),
            adapter: None,
            datasets: Vec::new(),
            input_label: vec!["zone-a".into()],
            output_label: vec!["zone-a".into()],
            store_output_as: None,
            secrets: Vec::new(),
        };
        let mut kinds = Vec::new();
        for (id, worker) in [("run_fleet", Some("worker-a1")), ("run_here", None)] {
            let run = NewRun {
                id: id.into(),
                tenant_id: "tn_a".into(),
                module: d,
                policy_version: 1,
                input_digest: d,
                input_size: 1,
                created_at: 20,
                residency: Some(placed.clone()),
            };
            runs.insert_run(&run)
                .await
                .expect("insert")
                .durable()
                .await
                .expect("durable");
            let (record, index) = runs
                .finish_run(
                    &run,
                    21,
                    Finished {
                        report: RunReport::denied(d, "x".into()),
                        output: None,
                        worker: worker.map(str::to_string),
                        output_zone: None,
                    },
                )
                .await
                .expect("finish");
            assert_eq!(record.worker.as_deref(), worker);
            let read = runs.run(id).expect("read").expect("run");
            assert_eq!(read.worker.as_deref(), worker, "{id} read back");
            let (tag, body) = db
                .audit_read(|snap| {
                    let e = audit::entries(snap.conn, index..index + 1, None, 1).expect("entry");
                    (
                        e[0].bytes[1],
                        Entry::decode(&e[0].bytes).expect("decode").body,
                    )
                })
                .expect("audit");
            match body {
                EntryBody::RunExecuted(r) => {
                    assert_eq!((r.run_id.as_str(), r.worker.as_deref()), (id, worker))
                }
                other => panic!("{other:?}"),
            }
            kinds.push(tag);
        }
        assert_eq!(
            kinds,
            [8, 4],
            "entry type 8 names the worker, type 4 does not"
        );
        tokio::task::spawn_blocking(move || db.close())
            .await
            .expect("close");
    }
}
