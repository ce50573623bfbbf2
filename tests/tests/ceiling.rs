//! Operator ceilings bound every policy field (issue 13, item 1) and policy
//! changes behave (item 2): admin-granted host directories survive an
//! operator's change, an identical policy makes no version and no audit
//! entry, and every version says who set it.

use std::collections::BTreeSet;

use kasbah_client::Client;
use kasbah_core::api::*;
use kasbah_policy::{
    Ceiling, DirGrant, DirMode, EnvCeiling, EnvGrant, GpuGrant, Limits, NetworkCeiling,
    NetworkGrant, Policy, SecretGrant, SignatureCeiling, SignaturePolicy,
};
use kasbah_tests::platform::{Platform, api_err};

const NODE_ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

async fn platform() -> Platform {
    Platform::start_with(|c| {
        c.zones.node = NODE_ZONES.iter().map(|z| z.to_string()).collect();
        c.gpu.adapters.clear();
    })
    .await
}

/// `(status, code, fields named)` of a refusal: the fields are what the
/// `policy_exceeds_ceiling` message lists (`field: why; field: why`, list
/// indices dropped).
fn refusal<T: std::fmt::Debug>(r: kasbah_client::Result<T>) -> (u16, String, BTreeSet<String>) {
    match r {
        Err(kasbah_client::Error::Api {
            status,
            code,
            message,
        }) => {
            let fields = message
                .split_once("exceeds the operator's ceiling: ")
                .map(|(_, rest)| {
                    rest.split("; ")
                        .filter_map(|part| part.split_once(": ").map(|(f, _)| f))
                        .map(|f| f.split('[').next().unwrap_or(f).to_string())
                        .collect()
                })
                .unwrap_or_default();
            (status, code, fields)
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Ed25519 public keys (base64 of 32 bytes) for the `signatures` rows.
const KEYS: [&str; 4] = [
    "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
    "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=",
    "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=",
    "BAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ=",
];

fn sigs(keys: &[usize], threshold: u32) -> Option<SignaturePolicy> {
    Some(SignaturePolicy {
        keys: keys.iter().map(|&i| KEYS[i].to_string()).collect(),
        threshold,
    })
}

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The operator's ceiling in the table test: every part set, every quota
/// low enough that one more is still within the platform's hard ceilings.
fn table_ceiling() -> Ceiling {
    Ceiling {
        limits: Limits {
            fuel: Some(1_000_000_000),
            ..Limits::default()
        },
        datasets: false,
        secrets: false,
        env: EnvCeiling {
            vars: names(&["MODEL"]),
            inherit: names(&["LANG"]),
        },
        network: NetworkCeiling {
            allow: ["0.0.0.0/0:443", "*.example.org:443", "10.9.0.0/16:5432"]
                .iter()
                .map(|r| r.parse().expect("rule"))
                .collect(),
        },
        gpu: Some(GpuGrant {
            zones: names(&["zone-a"]),
            max_workgroups_per_dimension: 1024,
            ..GpuGrant::default()
        }),
        // A floor: at least 2 signatures, by keys among the first three.
        signatures: Some(SignatureCeiling {
            threshold: 2,
            keys: KEYS[..3].iter().map(|k| k.to_string()).collect(),
        }),
    }
}

/// A policy that sets every field to something other than its default, by
/// exhaustive struct literals: a field added to the policy does not compile
/// here until it is set, and then it shows up in [`policy_fields`], which
/// the table must cover.
fn maximal_policy(admin_dir: &std::path::Path) -> Policy {
    Policy {
        zones: names(&["zone-a", "zone-b"]),
        datasets: true,
        files: vec![DirGrant {
            host: admin_dir.to_path_buf(),
            guest: "/data".into(),
            mode: DirMode::Rw,
        }],
        env: EnvGrant {
            vars: [("MODEL".to_string(), "small".to_string())].into(),
            inherit: names(&["LANG"]),
        },
        network: NetworkGrant {
            allow: vec!["93.184.216.34:443".parse().expect("target")],
        },
        limits: Limits {
            memory_bytes: 1,
            wall_time_ms: 1,
            fuel: Some(1),
            max_input_bytes: 1,
            max_output_bytes: 1,
            max_stdio_bytes: 1,
            max_log_bytes: 1,
            max_table_elements: 1,
            max_module_bytes: 1,
            max_concurrent_runs: 1,
            max_log_records: 1,
            max_open_files: 1,
            max_write_bytes: 1,
            max_files_created: 1,
            max_dir_depth: 1,
            max_http_requests: 1,
            max_http_bytes: 1,
            http_timeout_ms: 1,
        },
        gpu: Some(GpuGrant {
            zones: names(&["zone-a"]),
            max_buffer_bytes: 1,
            max_total_bytes: 1,
            max_dispatches: 1,
            max_workgroups_per_dimension: 1,
            max_kernels: 1,
            max_invocations_per_dispatch: 1,
            max_invocations: 1,
            max_transfer_bytes: 1,
            max_resident_bytes: 1,
        }),
        signatures: sigs(&[0], 1),
        secrets: [(
            "api_key".to_string(),
            SecretGrant {
                env: Some("API_KEY".into()),
                file: Some("/secrets/api_key".into()),
            },
        )]
        .into(),
    }
}

/// Every field of a policy as its serialized form names it: top-level keys,
/// and the keys of top-level tables (`limits.fuel`, `gpu.max_kernels`).
fn policy_fields(p: &Policy) -> BTreeSet<String> {
    let v = serde_json::to_value(p).expect("json");
    let mut out = BTreeSet::new();
    for (k, v) in v.as_object().expect("object") {
        match v.as_object() {
            Some(inner) => out.extend(inner.keys().map(|i| format!("{k}.{i}"))),
            None => {
                out.insert(k.clone());
            }
        }
    }
    out
}

type Edit = Box<dyn Fn(&mut Policy)>;

fn edit(f: impl Fn(&mut Policy) + 'static) -> Edit {
    Box::new(f)
}

/// One row per policy field: an edit within the ceiling (accepted) and
/// edits above it (each refused with `422 policy_exceeds_ceiling` naming
/// exactly that field).
fn table(other_dir: std::path::PathBuf) -> Vec<(&'static str, Edit, Vec<Edit>)> {
    let c = table_ceiling();
    let lim = c.limits.clone();
    let gpu = c.gpu.clone().expect("gpu ceiling");
    macro_rules! limit {
        ($f:ident) => {{
            let (at, over) = (lim.$f, lim.$f + 1);
            (
                concat!("limits.", stringify!($f)),
                edit(move |p| p.limits.$f = at),
                vec![edit(move |p| p.limits.$f = over)],
            )
        }};
    }
    macro_rules! gpu_quota {
        ($f:ident) => {{
            let (at, over) = (gpu.$f, gpu.$f + 1);
            (
                concat!("gpu.", stringify!($f)),
                edit(move |p| {
                    if let Some(g) = p.gpu.as_mut() {
                        g.$f = at
                    }
                }),
                vec![edit(move |p| {
                    if let Some(g) = p.gpu.as_mut() {
                        g.$f = over
                    }
                })],
            )
        }};
    }
    let fuel = lim.fuel.expect("fuel ceiling");
    let targets = |list: &'static [&'static str]| -> Vec<Edit> {
        list.iter()
            .map(|t| {
                let t: kasbah_policy::NetTarget = t.parse().expect("target");
                edit(move |p: &mut Policy| p.network.allow = vec![t.clone()])
            })
            .collect()
    };
    vec![
        (
            "zones",
            edit(|p| p.zones = names(&["zone-a"])),
            vec![
                edit(|p| p.zones = names(&["zone-a", "zone-c"])),
                edit(|p| {
                    // No zones = every node zone: beyond the operator's.
                    p.zones.clear();
                }),
            ],
        ),
        (
            "datasets",
            edit(|p| p.datasets = false),
            vec![edit(|p| p.datasets = true)],
        ),
        (
            "files",
            // The admin's rw grant kept, or narrowed to ro.
            edit(|p| p.files[0].mode = DirMode::Ro),
            vec![edit(move |p| {
                p.files.push(DirGrant {
                    host: other_dir.clone(),
                    guest: "/more".into(),
                    mode: DirMode::Ro,
                })
            })],
        ),
        (
            "env.vars",
            edit(|p| p.env.vars = [("MODEL".into(), "large".into())].into()),
            vec![edit(|p| {
                p.env.vars.insert("AWS_SECRET".into(), "x".into());
            })],
        ),
        (
            "env.inherit",
            edit(|p| p.env.inherit = names(&["LANG"])),
            vec![
                edit(|p| p.env.inherit = names(&["PATH"])),
                edit(|p| p.env.inherit = names(&["LANG", "HOME"])),
            ],
        ),
        (
            "network.allow",
            edit(|p| {
                p.network.allow = ["8.8.8.8:443", "api.example.org:443", "10.9.1.2:5432"]
                    .iter()
                    .map(|t| t.parse().expect("target"))
                    .collect()
            }),
            targets(&[
                "169.254.169.254:80",
                "169.254.169.254:443",
                "127.0.0.1:443",
                "10.0.0.5:443",
                "192.168.1.1:443",
                "[::1]:443",
                "[::ffff:169.254.169.254]:443",
                "[fe80::1]:443",
                "8.8.8.8:80",
                "10.9.1.2:443",
                "evil.test:443",
                "example.org:443",
            ]),
        ),
        limit!(memory_bytes),
        limit!(wall_time_ms),
        (
            "limits.fuel",
            edit(move |p| p.limits.fuel = Some(fuel)),
            vec![
                edit(move |p| p.limits.fuel = Some(fuel + 1)),
                edit(|p| p.limits.fuel = None),
            ],
        ),
        limit!(max_input_bytes),
        limit!(max_output_bytes),
        limit!(max_stdio_bytes),
        limit!(max_log_bytes),
        limit!(max_table_elements),
        limit!(max_module_bytes),
        limit!(max_concurrent_runs),
        limit!(max_log_records),
        limit!(max_open_files),
        limit!(max_write_bytes),
        limit!(max_files_created),
        limit!(max_dir_depth),
        limit!(max_http_requests),
        limit!(max_http_bytes),
        limit!(http_timeout_ms),
        (
            "gpu.zones",
            edit(|p| {
                if let Some(g) = p.gpu.as_mut() {
                    g.zones = names(&["zone-a"])
                }
            }),
            vec![
                edit(|p| {
                    if let Some(g) = p.gpu.as_mut() {
                        g.zones = names(&["zone-b"])
                    }
                }),
                edit(|p| {
                    // Empty: the policy's zones, zone-b among them.
                    if let Some(g) = p.gpu.as_mut() {
                        g.zones.clear()
                    }
                }),
            ],
        ),
        gpu_quota!(max_buffer_bytes),
        gpu_quota!(max_total_bytes),
        gpu_quota!(max_dispatches),
        gpu_quota!(max_workgroups_per_dimension),
        gpu_quota!(max_kernels),
        gpu_quota!(max_invocations_per_dispatch),
        gpu_quota!(max_invocations),
        gpu_quota!(max_transfer_bytes),
        gpu_quota!(max_resident_bytes),
        (
            "secrets.api_key",
            edit(|p| p.secrets.clear()),
            vec![edit(|p| {
                p.secrets.insert(
                    "api_key".into(),
                    SecretGrant {
                        env: Some("API_KEY".into()),
                        file: None,
                    },
                );
            })],
        ),
        (
            "signatures.keys",
            edit(|p| p.signatures = sigs(&[0, 2], 2)),
            vec![edit(|p| p.signatures = sigs(&[0, 3], 2))],
        ),
        (
            "signatures.threshold",
            edit(|p| p.signatures = sigs(&[0, 1, 2], 3)),
            vec![edit(|p| p.signatures = sigs(&[0, 1], 1))],
        ),
    ]
}

/// A policy within [`table_ceiling`] that uses every part of it.
fn base_policy(admin_dir: &std::path::Path) -> Policy {
    let c = table_ceiling();
    Policy {
        zones: names(&["zone-a", "zone-b"]),
        datasets: false,
        files: vec![DirGrant {
            host: admin_dir.to_path_buf(),
            guest: "/data".into(),
            mode: DirMode::Rw,
        }],
        env: EnvGrant {
            vars: [("MODEL".to_string(), "small".to_string())].into(),
            inherit: names(&["LANG"]),
        },
        network: NetworkGrant {
            allow: vec!["93.184.216.34:443".parse().expect("target")],
        },
        limits: c.limits.clone(),
        gpu: c.gpu.clone(),
        signatures: sigs(&[0, 1], 2),
        secrets: Default::default(),
    }
}

async fn operator_with(p: &Platform, name: &str, ceiling: Option<Ceiling>) -> (Operator, Client) {
    let op = p
        .admin
        .create_operator(&CreateOperator {
            name: name.into(),
            ceiling,
            max_tenants: 10,
            zones: vec!["zone-a".into(), "zone-b".into()],
        })
        .await
        .expect("operator");
    let token = p.admin.operator_token(&op.id).await.expect("token").token;
    (op, p.client(&token))
}

#[tokio::test]
async fn the_ceiling_bounds_every_policy_field() {
    let p = platform().await;
    let dirs = tempfile::tempdir().expect("tmp");
    let (admin_dir, other_dir) = (dirs.path().join("admin"), dirs.path().join("other"));
    std::fs::create_dir_all(&admin_dir).expect("dir");
    std::fs::create_dir_all(&other_dir).expect("dir");

    // The table covers every field the policy has.
    let rows = table(other_dir);
    let covered: BTreeSet<String> = rows.iter().map(|(f, _, _)| f.to_string()).collect();
    assert_eq!(
        covered,
        policy_fields(&maximal_policy(&admin_dir)),
        "every policy field needs a ceiling rule and a row in this table"
    );

    let (op, operator) = operator_with(&p, "telecom", Some(table_ceiling())).await;
    // The admin grants a host directory (only admins may).
    let tenant = p
        .admin
        .create_tenant(&CreateTenant {
            name: "ministry".into(),
            operator_id: Some(op.id.clone()),
            policy: Some(base_policy(&admin_dir)),
        })
        .await
        .expect("tenant within the ceiling, with the admin's files");
    let base = base_policy(&admin_dir);
    operator
        .set_policy(&tenant.id, &base)
        .await
        .expect("the base policy is within the ceiling");

    for (field, within, above) in &rows {
        // Each row starts from the base policy with the admin's rw grant
        // (an operator's narrowing to ro is one-way for the operator).
        p.admin
            .set_policy(&tenant.id, &base)
            .await
            .expect("admin restores the base");
        let mut ok = base.clone();
        within(&mut ok);
        operator
            .set_policy(&tenant.id, &ok)
            .await
            .unwrap_or_else(|e| panic!("{field}: within the ceiling was refused: {e}"));
        for (i, over) in above.iter().enumerate() {
            let mut bad = base.clone();
            over(&mut bad);
            let (status, code, named) = refusal(operator.set_policy(&tenant.id, &bad).await);
            assert_eq!(
                (status, code.as_str(), &named),
                (422, "policy_exceeds_ceiling", &names(&[field])),
                "{field} above the ceiling (case {i}) must be refused naming exactly it"
            );
            // Creating a tenant with it is refused the same way (new
            // tenants have no admin grants: `files` is checked above).
            if *field == "files" {
                continue;
            }
            let (status, code, named) = refusal(
                operator
                    .create_tenant(&CreateTenant {
                        name: format!("new-{i}"),
                        operator_id: None,
                        policy: Some(Policy {
                            files: Vec::new(),
                            ..bad.clone()
                        }),
                    })
                    .await,
            );
            assert_eq!(
                (status, code.as_str(), &named),
                (422, "policy_exceeds_ceiling", &names(&[field])),
                "creating a tenant with {field} above the ceiling"
            );
        }
    }

    // Several fields above at once: each is named.
    let mut bad = base.clone();
    bad.env.inherit = names(&["PATH"]);
    bad.network.allow = vec!["169.254.169.254:80".parse().expect("target")];
    bad.limits.memory_bytes += 1;
    bad.datasets = true;
    let (_, _, named) = refusal(operator.set_policy(&tenant.id, &bad).await);
    assert_eq!(
        named,
        names(&[
            "env.inherit",
            "network.allow",
            "limits.memory_bytes",
            "datasets"
        ])
    );
    // Nothing stored was lost: the tenant's policy is the last accepted one.
    let current = operator.policy(&tenant.id).await.expect("policy");
    assert_eq!(current.policy.files.len(), 1);
}

#[tokio::test]
async fn the_standard_ceiling_keeps_host_env_and_special_addresses_admin_only() {
    let p = platform().await;
    let (op, operator) = operator_with(&p, "telecom", None).await;
    assert_eq!(op.ceiling, Ceiling::standard());
    let tenant = operator
        .create_tenant(&CreateTenant {
            name: "t".into(),
            operator_id: None,
            policy: None,
        })
        .await
        .expect("tenant");
    let with = |f: &dyn Fn(&mut Policy)| {
        let mut p = Policy {
            zones: names(&["zone-a"]),
            ..Policy::default()
        };
        f(&mut p);
        p
    };
    // What the standard ceiling grants.
    operator
        .set_policy(
            &tenant.id,
            &with(&|p| {
                p.datasets = true;
                p.env.vars.insert("ANY_NAME".into(), "v".into());
                p.network.allow = vec!["93.184.216.34:443".parse().expect("t")];
                p.gpu = Some(GpuGrant::in_zones(["zone-a"]));
                p.limits.memory_bytes = Limits::hard_ceiling().memory_bytes;
            }),
        )
        .await
        .expect("within the standard ceiling");
    // What it keeps for the admin.
    for (field, bad) in [
        ("env.inherit", with(&|p| p.env.inherit = names(&["PATH"]))),
        (
            "network.allow",
            with(&|p| p.network.allow = vec!["169.254.169.254:80".parse().expect("t")]),
        ),
        (
            "network.allow",
            with(&|p| p.network.allow = vec!["127.0.0.1:8080".parse().expect("t")]),
        ),
        (
            "network.allow",
            with(&|p| p.network.allow = vec!["metadata.internal:80".parse().expect("t")]),
        ),
    ] {
        let (status, code, named) = refusal(operator.set_policy(&tenant.id, &bad).await);
        assert_eq!(
            (status, code.as_str(), named),
            (422, "policy_exceeds_ceiling", names(&[field]))
        );
    }
    // The admin may widen the ceiling; then the operator may grant it.
    let mut wider = Ceiling::standard();
    wider.env.inherit = names(&["LANG"]);
    wider
        .network
        .allow
        .push("169.254.169.254/32:80".parse().expect("rule"));
    assert_eq!(
        api_err(operator.set_operator_ceiling(&op.id, &wider).await).0,
        403,
        "operators cannot set their own ceiling"
    );
    p.admin
        .set_operator_ceiling(&op.id, &wider)
        .await
        .expect("admin widens");
    operator
        .set_policy(
            &tenant.id,
            &with(&|p| {
                p.env.inherit = names(&["LANG"]);
                p.network.allow = vec!["169.254.169.254:80".parse().expect("t")];
            }),
        )
        .await
        .expect("now within");
    // A ceiling beyond the platform's hard ceilings is refused.
    let mut huge = Ceiling::standard();
    huge.limits.memory_bytes = u64::MAX;
    huge.gpu = Some(GpuGrant::in_zones(["zone-z"]));
    let e = p
        .admin
        .create_operator(&CreateOperator {
            name: "huge".into(),
            ceiling: Some(huge),
            max_tenants: 1,
            zones: Vec::new(),
        })
        .await;
    match e {
        Err(kasbah_client::Error::Api {
            status,
            code,
            message,
        }) => {
            assert_eq!((status, code.as_str()), (422, "invalid_ceiling"));
            assert!(
                message.contains("limits.memory_bytes") && message.contains("zone-z"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn policy_changes_keep_admin_files_skip_identical_versions_and_say_who() {
    let p = platform().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (op, operator) = operator_with(&p, "telecom", None).await;
    let files = vec![DirGrant {
        host: dir.path().to_path_buf(),
        guest: "/data".into(),
        mode: DirMode::Rw,
    }];
    let tenant = p
        .admin
        .create_tenant(&CreateTenant {
            name: "t".into(),
            operator_id: Some(op.id.clone()),
            policy: Some(Policy {
                zones: names(&["zone-a"]),
                files: files.clone(),
                ..Policy::default()
            }),
        })
        .await
        .expect("tenant with the admin's files");

    // The operator changes a limit and says nothing of files: they stay.
    let mut change = Policy {
        zones: names(&["zone-a"]),
        ..Policy::default()
    };
    change.limits.memory_bytes *= 2;
    let v2 = operator
        .set_policy(&tenant.id, &change)
        .await
        .expect("an operator's change to a tenant with admin files");
    assert_eq!((v2.version, v2.unchanged), (2, false));
    assert_eq!(
        v2.policy.files, files,
        "the admin's files are carried forward"
    );
    assert_eq!(v2.set_by.as_deref(), Some(op.id.as_str()));

    // Sending them back as they are is fine too; adding one is not.
    let mut explicit = v2.policy.clone();
    explicit.limits.wall_time_ms += 1;
    assert_eq!(
        operator
            .set_policy(&tenant.id, &explicit)
            .await
            .expect("kept")
            .version,
        3
    );
    let mut more = explicit.clone();
    more.files.push(DirGrant {
        host: "/etc".into(),
        guest: "/etc".into(),
        mode: DirMode::Ro,
    });
    let (status, code, named) = refusal(operator.set_policy(&tenant.id, &more).await);
    assert_eq!(
        (status, code.as_str(), named),
        (422, "policy_exceeds_ceiling", names(&["files"]))
    );

    // Identical: no new version, no audit entry, 200 with the current one.
    let size = p.admin.audit_entries(0, None).await.expect("log").size;
    let same = operator
        .set_policy(&tenant.id, &explicit)
        .await
        .expect("identical");
    assert_eq!((same.version, same.unchanged), (3, true));
    let same_by_admin = p
        .admin
        .set_policy(&tenant.id, &explicit)
        .await
        .expect("identical, from the admin");
    assert_eq!((same_by_admin.version, same_by_admin.unchanged), (3, true));
    assert_eq!(
        p.admin.audit_entries(0, None).await.expect("log").size,
        size
    );
    assert_eq!(
        operator.policy(&tenant.id).await.expect("policy").version,
        3
    );

    // Who set each version.
    let versions = operator
        .policy_versions(&tenant.id)
        .await
        .expect("versions");
    let who: Vec<(u32, Option<&str>)> = versions
        .iter()
        .map(|v| (v.version, v.set_by.as_deref()))
        .collect();
    assert_eq!(
        who,
        [
            (1, Some("admin")),
            (2, Some(op.id.as_str())),
            (3, Some(op.id.as_str()))
        ]
    );
    assert!(versions.iter().all(|v| !v.unchanged));
    assert_eq!(
        p.admin
            .policy(&tenant.id)
            .await
            .expect("policy")
            .set_by
            .as_deref(),
        Some(op.id.as_str())
    );
    // The admin may drop its grant; its versions say "admin".
    let v4 = p
        .admin
        .set_policy(&tenant.id, &change)
        .await
        .expect("admin replaces");
    assert!(v4.policy.files.is_empty());
    assert_eq!((v4.version, v4.set_by.as_deref()), (4, Some("admin")));
    // Other tenants' versions are not visible.
    let (_, dev) = p.tenant("other", None).await;
    assert_eq!(api_err(dev.policy_versions(&tenant.id).await).0, 404);
}
