//! Token lifecycle (issue 13, item 3): expiry, revocation on the very next
//! request, listing without secrets, who may revoke what, audit entries.

use std::time::Duration;

use kasbah_audit::{EntryBody, verify_receipt};
use kasbah_client::Client;
use kasbah_core::api::*;
use kasbah_tests::platform::{Platform, api_err};

async fn operator(p: &Platform, name: &str) -> (Operator, Client) {
    let op = p
        .admin
        .create_operator(&CreateOperator {
            name: name.into(),
            ceiling: None,
            max_tenants: 10,
            zones: Vec::new(),
        })
        .await
        .expect("operator");
    let tok = p
        .admin
        .operator_token(&op.id)
        .await
        .expect("operator token");
    (op, p.client(&tok.token))
}

async fn tenant_of(op: &Client, name: &str) -> Tenant {
    op.create_tenant(&CreateTenant {
        name: name.into(),
        operator_id: None,
        policy: None,
    })
    .await
    .expect("tenant")
}

fn ttl(seconds: u64) -> CreateToken {
    CreateToken {
        name: Some("short".into()),
        ttl_seconds: Some(seconds),
    }
}

#[tokio::test]
async fn a_token_expires_after_its_ttl_and_ttls_are_bounded() {
    let p = Platform::start_with(|c| {
        c.token_ttl_seconds = 600;
        c.token_max_ttl_seconds = 3600;
    })
    .await;
    let (t, _) = p.tenant("exp", None).await;
    let short = p
        .admin
        .tenant_token_with(&t.id, &ttl(1))
        .await
        .expect("1 s token");
    let created = short.expires_at.expect("has an expiry");
    let dev = p.client(&short.token);
    dev.whoami().await.expect("valid while fresh");
    // Wait until just past the expiry (at most ~1 s), then the very next
    // request is refused with its own code.
    loop {
        let now = kasbah_server::ids::now_ms();
        if now > created {
            break;
        }
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(created - now + 20).unwrap_or(20),
        ))
        .await;
    }
    assert_eq!(api_err(dev.whoami().await), (401, "token_expired".into()));
    assert_eq!(api_err(dev.modules().await), (401, "token_expired".into()));
    // Bounds: 0 and past the server's maximum are refused; the default
    // applies without a ttl.
    assert_eq!(
        api_err(p.admin.tenant_token_with(&t.id, &ttl(0)).await),
        (422, "invalid_ttl".into())
    );
    assert_eq!(
        api_err(p.admin.tenant_token_with(&t.id, &ttl(3601)).await),
        (422, "invalid_ttl".into())
    );
    let default = p.admin.tenant_token(&t.id).await.expect("default ttl");
    let left = default.expires_at.expect("expiry") - kasbah_server::ids::now_ms();
    let want = 600_000;
    assert!((want - 60_000..=want).contains(&left), "{left}");
    // An unknown token is still plain `unauthenticated`.
    assert_eq!(
        api_err(p.client("kbh_nope").whoami().await),
        (401, "unauthenticated".into())
    );
}

#[tokio::test]
async fn a_revoked_token_is_refused_on_the_very_next_request() {
    let p = Platform::start().await;
    let (t, _) = p.tenant("rev", None).await;
    let tok = p.admin.tenant_token(&t.id).await.expect("token");
    let dev = p.client(&tok.token);
    // Used (and so cached by the server) before the revocation.
    for _ in 0..3 {
        dev.whoami().await.expect("valid");
    }
    let info = p.admin.revoke_token(&tok.id).await.expect("revoke");
    assert!(info.revoked && info.revoked_at.is_some());
    assert_eq!(api_err(dev.whoami().await), (401, "token_revoked".into()));
    // Idempotent; other tokens unaffected.
    assert!(p.admin.revoke_token(&tok.id).await.expect("again").revoked);
    p.admin.whoami().await.expect("admin still valid");
    assert_eq!(
        api_err(p.admin.revoke_token("tk_0000000000000000").await),
        (404, "not_found".into())
    );
    // Revocation under concurrent use: every request after the revoke
    // answer is refused, none succeeds late.
    let tok2 = p.admin.tenant_token(&t.id).await.expect("token");
    let dev2 = p.client(&tok2.token);
    let hammer = {
        let dev2 = dev2.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                let _ = dev2.whoami().await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    p.admin.revoke_token(&tok2.id).await.expect("revoke");
    for _ in 0..20 {
        assert_eq!(api_err(dev2.whoami().await), (401, "token_revoked".into()));
    }
    hammer.await.expect("hammer");
}

#[tokio::test]
async fn listing_shows_metadata_never_secrets_and_last_use() {
    let p = Platform::start().await;
    let (t, _) = p.tenant("list", None).await;
    let tok = p
        .admin
        .tenant_token_with(
            &t.id,
            &CreateToken {
                name: Some("ci".into()),
                ttl_seconds: Some(600),
            },
        )
        .await
        .expect("token");
    p.client(&tok.token).whoami().await.expect("use it");
    // The raw body: neither the secret nor its stored hash.
    let admin_token = p.server.admin_token.clone().expect("admin token");
    let raw = reqwest::Client::new()
        .get(format!("{}/v1/tokens", p.url))
        .bearer_auth(&admin_token)
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("body");
    for secret in [&tok.token, &admin_token] {
        assert!(!raw.contains(secret.as_str()), "secret in {raw}");
        let hash = kasbah_server::ids::hash_token(secret);
        assert!(!raw.contains(&hash), "hash in {raw}");
    }
    // last_used_at is written in the background: poll briefly.
    let mut found = None;
    for _ in 0..100 {
        let list = p.admin.tokens().await.expect("list");
        found = list.into_iter().find(|i| i.id == tok.id);
        if found.as_ref().is_some_and(|f| f.last_used_at.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let info = found.expect("listed");
    assert_eq!(info.role, Role::Developer);
    assert_eq!(info.subject, t.id);
    assert_eq!(info.name.as_deref(), Some("ci"));
    assert_eq!(info.expires_at, tok.expires_at);
    assert!(!info.revoked);
    assert!(info.last_used_at.is_some(), "{info:?}");
    assert_eq!(info.created_by.as_deref(), Some("admin:admin"));
}

#[tokio::test]
async fn operators_manage_their_tenants_and_auditors_tokens_only_and_it_is_all_logged() {
    let p = Platform::start().await;
    let (op_a, a) = operator(&p, "op-a").await;
    let (_op_b, b) = operator(&p, "op-b").await;
    let ta = tenant_of(&a, "ta").await;
    let tb = tenant_of(&b, "tb").await;
    let dev_a = a.tenant_token(&ta.id).await.expect("a's tenant token");
    let dev_b = b.tenant_token(&tb.id).await.expect("b's tenant token");

    // Operators create auditors for their own tenants only.
    let aud_a = a
        .create_auditor(&CreateAuditor {
            name: "aud-a".into(),
            tenants: vec![ta.id.clone()],
            ttl_seconds: Some(3600),
        })
        .await
        .expect("operator creates an auditor for its tenant");
    assert_eq!(aud_a.role, Role::Auditor);
    let auditor = p.client(&aud_a.token);
    assert_eq!(auditor.tenants().await.expect("reads").len(), 1);
    assert_eq!(
        api_err(
            a.create_auditor(&CreateAuditor {
                name: "nosy".into(),
                tenants: vec![tb.id.clone()],
                ttl_seconds: None,
            })
            .await
        ),
        (404, "not_found".into())
    );

    // Listing: an operator sees its tenants' and its auditors' tokens.
    let ids = |v: Vec<TokenInfo>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    let seen = ids(a.tokens().await.expect("list"));
    assert!(
        seen.contains(&dev_a.id) && seen.contains(&aud_a.id),
        "{seen:?}"
    );
    assert!(!seen.contains(&dev_b.id), "{seen:?}");
    let all = ids(p.admin.tokens().await.expect("list"));
    assert!(all.contains(&dev_a.id) && all.contains(&dev_b.id));
    // Developers and auditors manage no tokens.
    let dev = p.client(&dev_a.token);
    assert_eq!(api_err(dev.tokens().await).0, 403);
    assert_eq!(api_err(dev.revoke_token(&dev_b.id).await).0, 403);
    assert_eq!(api_err(auditor.revoke_token(&dev_a.id).await).0, 403);

    // Another operator's tenant's token, or auditor: 404, and still valid.
    assert_eq!(api_err(b.revoke_token(&dev_a.id).await).0, 404);
    assert_eq!(api_err(b.revoke_token(&aud_a.id).await).0, 404);
    dev.whoami().await.expect("still valid");
    // An operator cannot revoke operator tokens (its own included: the
    // admin issues those).
    let op_tokens = p.admin.tokens().await.expect("list");
    let op_a_token = op_tokens
        .iter()
        .find(|t| t.subject == op_a.id)
        .expect("op-a token");
    assert_eq!(api_err(a.revoke_token(&op_a_token.id).await).0, 404);
    // Its own: yes.
    a.revoke_token(&dev_a.id)
        .await
        .expect("revoke own tenant's");
    a.revoke_token(&aud_a.id).await.expect("revoke own auditor");
    assert_eq!(api_err(dev.whoami().await), (401, "token_revoked".into()));
    assert_eq!(
        api_err(auditor.whoami().await),
        (401, "token_revoked".into())
    );

    // The log: created and revoked entries, verifiable offline.
    let key = p.admin.audit_key().await.expect("key");
    let (_, entries) = p.admin.audit_log_entries(0, None).await.expect("entries");
    let mut seen = Vec::new();
    for e in &entries {
        if let EntryBody::Credential(c) = &e.entry.body {
            seen.push((c.action.clone(), c.token_id.clone(), c.tenant.clone()));
            let r = p.admin.entry_receipt(e.index).await.expect("receipt");
            let v = verify_receipt(&r, &key, None).expect("verifies");
            assert_eq!(v.entry, e.entry);
            assert_eq!(
                c.by_role,
                if c.role == "operator" {
                    "admin"
                } else {
                    "operator"
                }
            );
        }
    }
    for want in [
        ("created".to_string(), dev_a.id.clone(), ta.id.clone()),
        ("created".into(), aud_a.id.clone(), ta.id.clone()),
        ("revoked".into(), dev_a.id.clone(), ta.id.clone()),
        ("revoked".into(), aud_a.id.clone(), ta.id.clone()),
        ("created".into(), dev_b.id.clone(), tb.id.clone()),
        ("created".into(), op_a_token.id.clone(), String::new()),
    ] {
        assert!(seen.contains(&want), "{want:?} not in {seen:?}");
    }
    // The tenant's own view of the log has its credential entries.
    let tenant_view = p.client(&b.tenant_token(&tb.id).await.expect("t").token);
    let (_, mine) = tenant_view
        .audit_log_entries(0, None)
        .await
        .expect("entries");
    assert!(mine.iter().any(|e| matches!(&e.entry.body,
        EntryBody::Credential(c) if c.token_id == dev_b.id)));
    assert!(!mine.iter().any(|e| matches!(&e.entry.body,
        EntryBody::Credential(c) if c.tenant == ta.id)));
}

/// Tokens from a database made before token ids and expiry existed get an
/// id and the default lifetime at start, and keep working.
#[tokio::test]
async fn tokens_from_before_expiry_get_an_id_and_an_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = "kbh_old_token_from_an_earlier_version";
    {
        let c = rusqlite::Connection::open(dir.path().join("kasbah.db")).expect("db");
        c.execute_batch(
            "CREATE TABLE tokens (hash TEXT PRIMARY KEY, role TEXT NOT NULL,
                 subject TEXT NOT NULL, name TEXT, created_at INTEGER NOT NULL);
             CREATE TABLE auditors (id TEXT PRIMARY KEY, name TEXT NOT NULL,
                 created_at INTEGER NOT NULL);",
        )
        .expect("old schema");
        c.execute(
            "INSERT INTO tokens VALUES (?1, 'admin', 'admin', 'bootstrap', 1)",
            [kasbah_server::ids::hash_token(old)],
        )
        .expect("old token");
    }
    let server = kasbah_server::start(kasbah_tests::platform::config(dir.path()))
        .await
        .expect("starts on the old database");
    assert!(server.admin_token.is_none(), "the old admin token is live");
    let admin = Client::new(&format!("http://{}", server.addr), old);
    assert_eq!(admin.whoami().await.expect("still valid").role, Role::Admin);
    let list = admin.tokens().await.expect("list");
    assert_eq!(list.len(), 1);
    assert!(list[0].id.starts_with("tk_"), "{:?}", list[0]);
    let left = list[0].expires_at.expect("given an expiry") - kasbah_server::ids::now_ms();
    assert!(left > 89 * 86_400_000, "{left}");
    // Revoking the only admin token: a new one is issued at the next start.
    admin.revoke_token(&list[0].id).await.expect("revoke");
    assert_eq!(api_err(admin.whoami().await), (401, "token_revoked".into()));
    server.shutdown().await.expect("shutdown");
    let again = kasbah_server::start(kasbah_tests::platform::config(dir.path()))
        .await
        .expect("restart");
    let fresh = again.admin_token.clone().expect("a new admin token");
    let admin = Client::new(&format!("http://{}", again.addr), &fresh);
    assert_eq!(admin.whoami().await.expect("valid").role, Role::Admin);
}
