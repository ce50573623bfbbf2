//! Data at rest (issue 13, item 7): the data dir is the kasbah user's
//! only, whatever the umask, and an existing one is tightened at start;
//! partial uploads left by a crash are removed. A test binary of its own:
//! it sets the process umask to 0.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use kasbah_tests::platform::config;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn set(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
}

fn assert_private(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "data dir");
    for f in [
        "kasbah.db",
        "kasbah.db-wal",
        "kasbah.db-shm",
        "audit-log.key",
        "compiled.key",
    ] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    // Nothing anywhere in the tree is readable by group or others.
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            let m = mode(&p);
            assert_eq!(m & 0o077, 0, "{} is {m:o}", p.display());
            if e.file_type().expect("type").is_dir() {
                stack.push(p);
            }
        }
    }
}

#[tokio::test]
async fn the_data_dir_is_private_under_any_umask_and_fixed_at_start() {
    // SAFETY: umask is process-wide; this test binary has only this test.
    unsafe { libc::umask(0) };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let server = kasbah_server::start(config(&dir)).await.expect("start");
    let url = format!("http://{}", server.addr);
    let admin = kasbah_client::Client::new(&url, server.admin_token.as_deref().expect("token"));
    let t = admin
        .create_tenant(&kasbah_core::api::CreateTenant {
            name: "acme".into(),
            operator_id: None,
            policy: None,
        })
        .await
        .expect("tenant");
    let dev =
        kasbah_client::Client::new(&url, &admin.tenant_token(&t.id).await.expect("tok").token);
    let ds = dev
        .create_dataset_bytes(b"weights".to_vec(), "weights.bin", None)
        .await
        .expect("dataset");
    let module_like = server.state.blobs.put(b"module bytes").expect("blob");
    assert_eq!(
        mode(&server.state.blobs.path(&ds.digest)),
        0o400,
        "dataset blob"
    );
    assert_eq!(mode(&server.state.blobs.path(&module_like)), 0o600, "blob");
    // A compiled module's artifact on disk (issue 15, item 4).
    let hello = kasbah_tests::guest_bytes("hello");
    server.state.runtime.load(&hello).expect("load hello");
    let artifact = server
        .state
        .runtime
        .artifact_path(&hello)
        .expect("the server keeps compiled modules on disk");
    assert!(artifact.starts_with(dir.join("compiled")));
    assert_eq!(mode(&artifact), 0o600, "compiled artifact");
    assert_private(&dir);
    let dataset_blob = server.state.blobs.path(&ds.digest);
    let blob = server.state.blobs.path(&module_like);
    server.shutdown().await.expect("shutdown");

    // An older version's (or a loose umask's) modes, and a crash's
    // leftovers: a partial upload in blobs/tmp.
    set(&dir, 0o755);
    for f in [
        "kasbah.db",
        "kasbah.db-wal",
        "kasbah.db-shm",
        "audit-log.key",
        "compiled.key",
        "gpu-warm.json",
    ] {
        if dir.join(f).exists() {
            set(&dir.join(f), 0o644);
        }
    }
    set(&blob, 0o644);
    set(&dataset_blob, 0o444);
    set(&artifact, 0o644);
    set(&dir.join("compiled"), 0o755);
    set(blob.parent().expect("parent"), 0o755);
    let partial = dir.join("blobs/tmp/.tmpPARTIAL");
    std::fs::write(&partial, b"half an upload").expect("partial");

    let server = kasbah_server::start(config(&dir)).await.expect("restart");
    assert!(!partial.exists(), "partial upload removed at start");
    assert_eq!(mode(&blob), 0o600);
    assert_eq!(mode(&dataset_blob), 0o400);
    assert_eq!(mode(&artifact), 0o600);
    assert_private(&dir);
    // Still serving what it stored.
    assert_eq!(
        server.state.blobs.get(&module_like).expect("read"),
        Some(b"module bytes".to_vec())
    );
    server.shutdown().await.expect("shutdown");
}
