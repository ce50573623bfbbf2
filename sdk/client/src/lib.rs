//! Typed client for the kasbah HTTP API. Used by the `kasbah` CLI and usable
//! from any Rust program that drives a kasbah server.

use std::path::Path;

use futures_util::StreamExt;
use kasbah_core::api::*;
use kasbah_policy::Policy;
use serde::de::DeserializeOwned;

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
        let resp = rb.send().await?;
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
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))
    }

    pub async fn whoami(&self) -> Result<WhoAmI> {
        Self::send(self.req(reqwest::Method::GET, "/v1/whoami")).await
    }

    pub async fn create_operator(&self, req: &CreateOperator) -> Result<Operator> {
        Self::send(self.req(reqwest::Method::POST, "/v1/operators").json(req)).await
    }

    pub async fn operators(&self) -> Result<Vec<Operator>> {
        Self::send(self.req(reqwest::Method::GET, "/v1/operators")).await
    }

    pub async fn operator_token(&self, operator: &str) -> Result<TokenCreated> {
        Self::send(
            self.req(
                reqwest::Method::POST,
                &format!("/v1/operators/{operator}/tokens"),
            )
            .json(&CreateToken { name: None }),
        )
        .await
    }

    pub async fn create_tenant(&self, req: &CreateTenant) -> Result<Tenant> {
        Self::send(self.req(reqwest::Method::POST, "/v1/tenants").json(req)).await
    }

    pub async fn tenants(&self) -> Result<Vec<Tenant>> {
        Self::send(self.req(reqwest::Method::GET, "/v1/tenants")).await
    }

    pub async fn tenant_token(&self, tenant: &str) -> Result<TokenCreated> {
        Self::send(
            self.req(
                reqwest::Method::POST,
                &format!("/v1/tenants/{tenant}/tokens"),
            )
            .json(&CreateToken { name: None }),
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
        Self::send(
            self.req(reqwest::Method::POST, "/v1/modules")
                .query(&[("name", name), ("version", version)])
                .header("content-type", "application/wasm")
                .header("content-length", total)
                .body(reqwest::Body::wrap_stream(stream)),
        )
        .await
    }

    pub async fn modules(&self) -> Result<Vec<ModuleRecord>> {
        Self::send(self.req(reqwest::Method::GET, "/v1/modules")).await
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
        let resp = self
            .req(reqwest::Method::GET, &format!("/v1/runs/{id}/output"))
            .send()
            .await?;
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

    pub async fn usage(&self, tenant: Option<&str>, period: &str) -> Result<Vec<UsageRow>> {
        let mut q = vec![("period", period.to_string())];
        if let Some(t) = tenant {
            q.push(("tenant", t.to_string()));
        }
        Self::send(self.req(reqwest::Method::GET, "/v1/usage").query(&q)).await
    }
}
