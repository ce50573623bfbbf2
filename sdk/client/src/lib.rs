//! Typed client for the kasbah HTTP API. Used by the `kasbah` CLI and usable
//! from any Rust program that drives a kasbah server.
//!
//! Audit: [`Client::run_receipt`] / [`Client::module_receipt`] download
//! receipts that [`verify_receipt`] checks offline with only the log's key;
//! [`Client::watch`] moves a [`Watcher`] forward along consistency proofs.

mod logs;

use std::path::Path;

use futures_util::StreamExt;
use kasbah_core::api::*;
use kasbah_policy::Policy;
use serde::de::DeserializeOwned;

pub use kasbah_audit::{
    Entry, Hash, LogVerifier, Receipt, VerifiedEntry, VerifyError, WatchError, WatchOutcome,
    Watcher, verify_receipt,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an API error.
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot reach the server: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected response: {0}")]
    Decode(String),
    /// The log's answer did not check out (see [`Client::watch`]).
    #[error(transparent)]
    Watch(#[from] WatchError),
}

/// One audit entry with its canonical bytes decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub index: u64,
    /// The canonical bytes (the leaf hash covers these).
    pub bytes: Vec<u8>,
    /// Decoded from `bytes` (not from the server's JSON rendering).
    pub entry: Entry,
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base_url: &str, token: &str) -> Self {
        Client {
            base: base_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    async fn send<T: DeserializeOwned>(rb: reqwest::RequestBuilder) -> Result<T> {
        let bytes = Self::send_bytes(rb).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))
    }

    async fn send_text(rb: reqwest::RequestBuilder) -> Result<String> {
        let bytes = Self::send_bytes(rb).await?;
        String::from_utf8(bytes.to_vec()).map_err(|e| Error::Decode(e.to_string()))
    }

    async fn send_bytes(rb: reqwest::RequestBuilder) -> Result<Vec<u8>> {
        Self::check(rb.send().await?).await
    }

    /// The body of a successful response, else the API error it carries.
    async fn check(resp: reqwest::Response) -> Result<Vec<u8>> {
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(Error::Api {
                status: status.as_u16(),
                code: v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
                message: v["error"]["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
            });
        }
        Ok(bytes.to_vec())
    }

    pub async fn whoami(&self) -> Result<WhoAmI> {
        Self::send(self.req(reqwest::Method::GET, "/v1/whoami")).await
    }

    pub async fn create_operator(&self, req: &CreateOperator) -> Result<Operator> {
        Self::send(self.req(reqwest::Method::POST, "/v1/operators").json(req)).await
    }

    /// Replace an operator's ceiling (admins).
    pub async fn set_operator_ceiling(
        &self,
        operator: &str,
        ceiling: &kasbah_policy::Ceiling,
    ) -> Result<Operator> {
        Self::send(
            self.req(
                reqwest::Method::PUT,
                &format!("/v1/operators/{operator}/ceiling"),
            )
            .json(ceiling),
        )
        .await
    }

    pub async fn operators(&self) -> Result<Vec<Operator>> {
        Self::send(self.req(reqwest::Method::GET, "/v1/operators")).await
    }

    pub async fn operator_token(&self, operator: &str) -> Result<TokenCreated> {
        self.operator_token_with(operator, &CreateToken::default())
            .await
    }

    /// An operator token with a name and/or a lifetime.
    pub async fn operator_token_with(
        &self,
        operator: &str,
        req: &CreateToken,
    ) -> Result<TokenCreated> {
        Self::send(
            self.req(
                reqwest::Method::POST,
                &format!("/v1/operators/{operator}/tokens"),
            )
            .json(req),
        )
        .await
    }

    /// Metadata of the tokens this caller manages (never their secrets).
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        Self::send(self.req(reqwest::Method::GET, "/v1/tokens")).await
    }

    /// Revoke a token by id (idempotent).
    pub async fn revoke_token(&self, id: &str) -> Result<TokenInfo> {
        Self::send(self.req(reqwest::Method::DELETE, &format!("/v1/tokens/{id}"))).await
    }

    pub async fn create_tenant(&self, req: &CreateTenant) -> Result<Tenant> {
        Self::send(self.req(reqwest::Method::POST, "/v1/tenants").json(req)).await
    }

    pub async fn tenants(&self) -> Result<Vec<Tenant>> {
        Self::send(self.req(reqwest::Method::GET, "/v1/tenants")).await
    }

    pub async fn tenant_token(&self, tenant: &str) -> Result<TokenCreated> {
        self.tenant_token_with(tenant, &CreateToken::default())
            .await
    }

    /// A developer token with a name and/or a lifetime.
    pub async fn tenant_token_with(&self, tenant: &str, req: &CreateToken) -> Result<TokenCreated> {
        Self::send(
            self.req(
                reqwest::Method::POST,
                &format!("/v1/tenants/{tenant}/tokens"),
            )
            .json(req),
        )
        .await
    }

    pub async fn set_policy(&self, tenant: &str, policy: &Policy) -> Result<PolicyRecord> {
        Self::send(
            self.req(
                reqwest::Method::PUT,
                &format!("/v1/tenants/{tenant}/policy"),
            )
            .json(policy),
        )
        .await
    }

    /// Every policy version of a tenant, oldest first, with who set it.
    pub async fn policy_versions(&self, tenant: &str) -> Result<Vec<PolicyRecord>> {
        Self::send(self.req(
            reqwest::Method::GET,
            &format!("/v1/tenants/{tenant}/policy/versions"),
        ))
        .await
    }

    pub async fn policy(&self, tenant: &str) -> Result<PolicyRecord> {
        Self::send(self.req(
            reqwest::Method::GET,
            &format!("/v1/tenants/{tenant}/policy"),
        ))
        .await
    }

    pub async fn create_auditor(&self, req: &CreateAuditor) -> Result<TokenCreated> {
        Self::send(self.req(reqwest::Method::POST, "/v1/auditors").json(req)).await
    }

    /// Stream a component file to the server; `progress(sent, total)` is
    /// called as bytes go out.
    pub async fn publish(
        &self,
        path: &Path,
        name: &str,
        version: &str,
        progress: impl Fn(u64, u64) + Send + Sync + 'static,
    ) -> Result<ModuleRecord> {
        Ok(self.publish_checked(path, name, version, progress).await?.0)
    }

    /// [`Self::publish`], also saying whether this request stored the
    /// module (`true`, HTTP 201) or the server already had these bytes for
    /// the tenant (`false`, 200: the record returned is the existing one,
    /// whose name and version may differ from those asked for).
    pub async fn publish_checked(
        &self,
        path: &Path,
        name: &str,
        version: &str,
        progress: impl Fn(u64, u64) + Send + Sync + 'static,
    ) -> Result<(ModuleRecord, bool)> {
        self.publish_signed(path, name, version, &[], progress)
            .await
    }

    /// [`Self::publish_checked`] with signatures: each of `envelopes` is a
    /// DSSE envelope's JSON (what `kasbah sign` writes), sent as one
    /// `Kasbah-Signature` header (base64) while the body streams.
    pub async fn publish_signed(
        &self,
        path: &Path,
        name: &str,
        version: &str,
        envelopes: &[Vec<u8>],
        progress: impl Fn(u64, u64) + Send + Sync + 'static,
    ) -> Result<(ModuleRecord, bool)> {
        use base64::Engine as _;
        let (total, body) = upload_body(path, progress).await?;
        let mut rb = self
            .req(reqwest::Method::POST, "/v1/modules")
            .query(&[("name", name), ("version", version)])
            .header("content-type", "application/wasm")
            .header("content-length", total);
        for e in envelopes {
            rb = rb.header(
                "kasbah-signature",
                base64::engine::general_purpose::STANDARD.encode(e),
            );
        }
        let resp = rb.body(body).send().await?;
        let created = resp.status() == reqwest::StatusCode::CREATED;
        let bytes = Self::check(resp).await?;
        let m = serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))?;
        Ok((m, created))
    }

    /// Publish a module's provenance statement (`kasbah build` writes it
    /// next to the module): the record, and whether this request stored it
    /// (`true`, 201) or the server already had these bytes (`false`, 200).
    pub async fn put_provenance(
        &self,
        digest: &str,
        statement: Vec<u8>,
    ) -> Result<(ProvenanceRecord, bool)> {
        let resp = self
            .req(
                reqwest::Method::PUT,
                &format!("/v1/modules/{digest}/provenance"),
            )
            .header("content-type", "application/json")
            .body(statement)
            .send()
            .await?;
        let created = resp.status() == reqwest::StatusCode::CREATED;
        let bytes = Self::check(resp).await?;
        let p = serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))?;
        Ok((p, created))
    }

    /// Store `value` as a new version of the caller's tenant's secret
    /// `name` (a developer token). The value is sent as is, never echoed.
    pub async fn set_secret(&self, name: &str, value: Vec<u8>) -> Result<SecretRecord> {
        Self::send(
            self.req(reqwest::Method::PUT, &format!("/v1/secrets/{name}"))
                .header("content-type", "application/octet-stream")
                .body(value),
        )
        .await
    }

    /// The caller's tenant's secrets: names and versions, never values.
    pub async fn secrets(&self) -> Result<Vec<SecretRecord>> {
        Self::send(self.req(reqwest::Method::GET, "/v1/secrets")).await
    }

    /// Delete the caller's tenant's secret `name`.
    pub async fn delete_secret(&self, name: &str) -> Result<()> {
        let resp = self
            .req(reqwest::Method::DELETE, &format!("/v1/secrets/{name}"))
            .send()
            .await?;
        Self::check(resp).await.map(drop)
    }

    /// A module's provenance statement, byte for byte as published.
    pub async fn provenance(&self, digest: &str) -> Result<Vec<u8>> {
        Self::send_bytes(self.req(
            reqwest::Method::GET,
            &format!("/v1/modules/{digest}/provenance"),
        ))
        .await
    }

    pub async fn modules(&self) -> Result<Vec<ModuleRecord>> {
        Self::send(self.req(reqwest::Method::GET, "/v1/modules")).await
    }

    /// A module's record: `reference` is its digest, `name@version` or `name`.
    pub async fn module(&self, reference: &str) -> Result<ModuleRecord> {
        Self::send(self.req(reqwest::Method::GET, &format!("/v1/modules/{reference}"))).await
    }

    /// A module's bytes (its tenant's developers and auditors), checked by
    /// the server against its digest while streamed.
    pub async fn module_content(&self, digest: &str) -> Result<Vec<u8>> {
        self.bytes(&format!("/v1/modules/{digest}/content")).await
    }

    /// The DSSE envelopes the module's publish carried (empty: no verified
    /// signer), as JSON values: check them again with
    /// `kasbah_audit::dsse::Envelope::parse`.
    pub async fn module_signatures(&self, digest: &str) -> Result<Vec<serde_json::Value>> {
        Self::send(self.req(
            reqwest::Method::GET,
            &format!("/v1/modules/{digest}/signatures"),
        ))
        .await
    }

    /// Revoke a module signing key (its key id) for a tenant's publishes
    /// (admins; the tenant's operator).
    pub async fn revoke_signing_key(
        &self,
        tenant: &str,
        key_id: &str,
    ) -> Result<SigningKeyRevocation> {
        Self::send(self.req(
            reqwest::Method::POST,
            &format!("/v1/tenants/{tenant}/signing-keys/{key_id}/revoke"),
        ))
        .await
    }

    /// The key ids revoked for a tenant.
    pub async fn revoked_signing_keys(&self, tenant: &str) -> Result<Vec<String>> {
        Self::send(self.req(
            reqwest::Method::GET,
            &format!("/v1/tenants/{tenant}/signing-keys/revoked"),
        ))
        .await
    }

    /// Stream a file to the server as a dataset named `name` with the
    /// residency label `zones` (default: the tenant's zones);
    /// `progress(sent, total)` is called as bytes go out.
    pub async fn create_dataset(
        &self,
        path: &Path,
        name: &str,
        zones: Option<&[String]>,
        progress: impl Fn(u64, u64) + Send + Sync + 'static,
    ) -> Result<DatasetRecord> {
        let (total, body) = upload_body(path, progress).await?;
        Self::send(
            self.dataset_upload(name, zones)
                .header("content-length", total)
                .body(body),
        )
        .await
    }

    /// `POST /v1/datasets` for `name` labelled `zones`, without its body.
    fn dataset_upload(&self, name: &str, zones: Option<&[String]>) -> reqwest::RequestBuilder {
        let mut q = vec![("name", name.to_string())];
        if let Some(z) = zones {
            q.push(("zones", z.join(",")));
        }
        self.req(reqwest::Method::POST, "/v1/datasets")
            .query(&q)
            .header("content-type", "application/octet-stream")
    }

    /// [`Self::create_dataset`] from bytes in memory.
    pub async fn create_dataset_bytes(
        &self,
        bytes: Vec<u8>,
        name: &str,
        zones: Option<&[String]>,
    ) -> Result<DatasetRecord> {
        Self::send(self.dataset_upload(name, zones).body(bytes)).await
    }

    /// The datasets the caller may read (its tenant's; auditors and admins:
    /// their tenants', or `tenant`'s).
    pub async fn datasets(&self, tenant: Option<&str>) -> Result<Vec<DatasetRecord>> {
        let mut rb = self.req(reqwest::Method::GET, "/v1/datasets");
        if let Some(t) = tenant {
            rb = rb.query(&[("tenant", t)]);
        }
        Self::send(rb).await
    }

    pub async fn dataset(&self, id: &str) -> Result<DatasetRecord> {
        Self::send(self.req(reqwest::Method::GET, &format!("/v1/datasets/{id}"))).await
    }

    /// A dataset's bytes (its tenant's developers and auditors), checked by
    /// the server against its digest while streamed.
    pub async fn dataset_content(&self, id: &str) -> Result<Vec<u8>> {
        self.bytes(&format!("/v1/datasets/{id}/content")).await
    }

    pub async fn run(&self, req: &CreateRun) -> Result<RunRecord> {
        Self::send(self.req(reqwest::Method::POST, "/v1/runs").json(req)).await
    }

    pub async fn get_run(&self, id: &str) -> Result<RunRecord> {
        Self::send(self.req(reqwest::Method::GET, &format!("/v1/runs/{id}"))).await
    }

    pub async fn runs(&self, limit: u32) -> Result<Vec<RunRecord>> {
        Self::send(
            self.req(reqwest::Method::GET, "/v1/runs")
                .query(&[("limit", limit)]),
        )
        .await
    }

    pub async fn run_output(&self, id: &str) -> Result<Vec<u8>> {
        self.bytes(&format!("/v1/runs/{id}/output")).await
    }

    /// A GET answering raw bytes (an error envelope otherwise).
    async fn bytes(&self, path: &str) -> Result<Vec<u8>> {
        let resp = self.req(reqwest::Method::GET, path).send().await?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let v: serde_json::Value = resp.json().await.unwrap_or_default();
            return Err(Error::Api {
                status,
                code: v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
                message: v["error"]["message"].as_str().unwrap_or("").to_string(),
            });
        }
        Ok(resp.bytes().await?.to_vec())
    }

    /// The fleet's live workers (admins and operators; `409 fleet_disabled`
    /// on a server without a fleet).
    pub async fn fleet_workers(&self) -> Result<Vec<FleetWorker>> {
        Self::send(self.req(reqwest::Method::GET, "/v1/fleet/workers")).await
    }

    pub async fn usage(&self, tenant: Option<&str>, period: &str) -> Result<Vec<UsageRow>> {
        let mut q = vec![("period", period.to_string())];
        if let Some(t) = tenant {
            q.push(("tenant", t.to_string()));
        }
        Self::send(self.req(reqwest::Method::GET, "/v1/usage").query(&q)).await
    }

    // ---- audit log --------------------------------------------------------

    /// The log's verifier key as the server states it. Trust on first use:
    /// pin the key the operator publishes out of band instead where you can.
    pub async fn audit_key(&self) -> Result<LogVerifier> {
        let text = Self::send_text(self.req(reqwest::Method::GET, "/v1/audit/key")).await?;
        text.trim()
            .parse()
            .map_err(|e: kasbah_audit::KeyError| Error::Decode(e.to_string()))
    }

    /// The latest signed checkpoint (a C2SP signed note), unverified: open
    /// it with [`kasbah_audit::open_checkpoint`] or hand it to a [`Watcher`].
    pub async fn checkpoint(&self) -> Result<String> {
        Self::send_text(self.req(reqwest::Method::GET, "/v1/audit/checkpoint")).await
    }

    /// Entries in `[start, end)` the caller may read (the server caps the
    /// page; continue from the returned `end`).
    pub async fn audit_entries(&self, start: u64, end: Option<u64>) -> Result<AuditEntries> {
        let mut q = vec![("start", start)];
        if let Some(e) = end {
            q.push(("end", e));
        }
        Self::send(
            self.req(reqwest::Method::GET, "/v1/audit/entries")
                .query(&q),
        )
        .await
    }

    /// [`Self::audit_entries`], with each entry decoded from its bytes.
    pub async fn audit_log_entries(
        &self,
        start: u64,
        end: Option<u64>,
    ) -> Result<(AuditEntries, Vec<LogEntry>)> {
        use base64::Engine as _;
        let page = self.audit_entries(start, end).await?;
        let entries = page
            .entries
            .iter()
            .map(|r| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&r.bytes)
                    .map_err(|e| Error::Decode(format!("entry {}: {e}", r.index)))?;
                let entry = Entry::decode(&bytes)
                    .map_err(|e| Error::Decode(format!("entry {}: {e}", r.index)))?;
                Ok(LogEntry {
                    index: r.index,
                    bytes,
                    entry,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((page, entries))
    }

    /// Inclusion proof of entry `index` in the tree of `size` entries.
    pub async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        let p: InclusionProof = Self::send(
            self.req(reqwest::Method::GET, "/v1/audit/proof/inclusion")
                .query(&[("index", index), ("size", size)]),
        )
        .await?;
        parse_hashes(&p.proof)
    }

    /// Consistency proof between the trees of `old` and `new` entries.
    pub async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        let p: ConsistencyProof = Self::send(
            self.req(reqwest::Method::GET, "/v1/audit/proof/consistency")
                .query(&[("old", old), ("new", new)]),
        )
        .await?;
        parse_hashes(&p.proof)
    }

    /// The receipt of a run's `run_executed` entry.
    pub async fn run_receipt(&self, id: &str) -> Result<Receipt> {
        Self::send(self.req(reqwest::Method::GET, &format!("/v1/runs/{id}/receipt"))).await
    }

    /// The receipt of a module's `module_published` entry.
    pub async fn module_receipt(&self, digest: &str) -> Result<Receipt> {
        Self::send(self.req(
            reqwest::Method::GET,
            &format!("/v1/modules/{digest}/receipt"),
        ))
        .await
    }

    /// The receipt of any entry the caller may read, by index (e.g. a
    /// denial found with [`Self::audit_entries`]).
    pub async fn entry_receipt(&self, index: u64) -> Result<Receipt> {
        Self::send(self.req(
            reqwest::Method::GET,
            &format!("/v1/audit/entries/{index}/receipt"),
        ))
        .await
    }

    /// Fetch the newest checkpoint and, if it is larger than the watcher's
    /// trusted one, a consistency proof from the trusted size; the watcher
    /// checks signature and proof and advances only on success. A fork or
    /// rollback is [`Error::Watch`].
    pub async fn watch(&self, watcher: &mut Watcher) -> Result<WatchOutcome> {
        let note = self.checkpoint().await?;
        self.watch_note(watcher, &note).await
    }

    /// [`Self::watch`] for a checkpoint note already fetched (e.g. one
    /// whose witness cosignatures the caller checked first): fetches the
    /// consistency proof from the trusted size and updates the watcher.
    pub async fn watch_note(&self, watcher: &mut Watcher, note: &str) -> Result<WatchOutcome> {
        // Parse (unverified) only to learn the size to ask a proof for; the
        // watcher verifies the signature and the proof.
        let offered = kasbah_audit::note::parse_note(note)
            .ok()
            .and_then(|n| kasbah_audit::Checkpoint::parse(n.text).ok());
        let trusted = watcher.trusted().checkpoint.size;
        let proof = match offered {
            Some(c) if trusted > 0 && c.size > trusted => {
                self.consistency_proof(trusted, c.size).await?
            }
            _ => Vec::new(),
        };
        Ok(watcher.update(note, &proof)?)
    }
}

fn parse_hashes(v: &[String]) -> Result<Vec<Hash>> {
    v.iter()
        .map(|h| {
            h.parse()
                .map_err(|e: kasbah_audit::hash::InvalidHash| Error::Decode(e.to_string()))
        })
        .collect()
}

/// A file as a streamed request body, reporting `progress(sent, total)` as
/// bytes go out; returns the file's size (for `Content-Length`) too.
async fn upload_body(
    path: &Path,
    progress: impl Fn(u64, u64) + Send + Sync + 'static,
) -> Result<(u64, reqwest::Body)> {
    let file = tokio::fs::File::open(path).await?;
    let total = file.metadata().await?.len();
    let mut sent = 0u64;
    let stream = tokio_util::io::ReaderStream::new(file).map(move |chunk| {
        if let Ok(c) = &chunk {
            sent += c.len() as u64;
            progress(sent, total);
        }
        chunk
    });
    Ok((total, reqwest::Body::wrap_stream(stream)))
}
