//! Module signing: `kasbah key generate|show|revoke`, `kasbah sign`.
//! Keys and envelopes are `kasbah_audit::dsse`'s: Ed25519 in PEM files, a
//! DSSE envelope around an in-toto statement naming the module's sha256.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use kasbah_audit::dsse::{ModuleSigner, PublicKey};

use crate::remote::Ctx;

/// Private key file name in a `--out` directory.
pub const KEY_FILE: &str = "kasbah-signing.key";

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Make a new Ed25519 signing key: the private key (PKCS#8 PEM, mode
    /// 0600) and `<key>.pub` (SubjectPublicKeyInfo PEM). Prints the public
    /// key as policies list it and its key id (hex SHA-256 of the raw key).
    Generate {
        /// A directory (the key goes to DIR/kasbah-signing.key) or the key file to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a key's public key and key id (a private or public PEM file).
    Show {
        /// The key file (`KEY` or `KEY.pub`).
        file: PathBuf,
        /// Print only the public key (base64 of the raw 32 bytes), as a policy's `signatures.keys` lists it.
        #[arg(long)]
        raw: bool,
    },
    /// Stop a key counting for a tenant's new publishes (admin; the tenant's
    /// operator). The revocation is an audit entry.
    Revoke {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The key id, a public key (base64), or a key file.
        key: String,
    },
}

#[derive(Args)]
pub struct SignArgs {
    /// The component file to sign.
    file: PathBuf,
    /// The private key file (`kasbah key generate`).
    #[arg(long)]
    key: PathBuf,
    /// Where to write the envelope (default: FILE.sig.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The subject name in the statement (default: the file name).
    #[arg(long)]
    name: Option<String>,
}

/// The public half of a PEM key file (private or public).
fn public_of(path: &Path) -> anyhow::Result<PublicKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if text.contains("PRIVATE KEY") {
        return Ok(ModuleSigner::load(path)?.public());
    }
    Ok(PublicKey::from_pem_or_base64(&text)?)
}

/// A key id from a key id, a base64 public key, or a key file.
fn key_id_of(arg: &str) -> anyhow::Result<String> {
    if arg.len() == 64 && arg.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(arg.to_ascii_lowercase());
    }
    if let Ok(k) = arg.parse::<PublicKey>() {
        return Ok(k.key_id());
    }
    Ok(public_of(Path::new(arg))?.key_id())
}

fn print_key(ctx: &Ctx, k: &PublicKey, files: Option<(&Path, &Path)>) -> anyhow::Result<ExitCode> {
    let v = serde_json::json!({
        "public_key": k.to_string(),
        "key_id": k.key_id(),
        "private_key_file": files.map(|f| f.0.display().to_string()),
        "public_key_file": files.map(|f| f.1.display().to_string()),
    });
    ctx.print(&v, |_| {
        if let Some((key, pubf)) = files {
            crate::outln!("private key  {} (mode 0600)", key.display());
            crate::outln!("public key   {}", pubf.display());
        }
        crate::outln!("public key: {k}");
        crate::outln!("key id: {}", k.key_id());
    })
}

pub async fn key(ctx: &Ctx, c: KeyCmd) -> anyhow::Result<ExitCode> {
    match c {
        KeyCmd::Generate { out } => {
            let key = if out.is_dir() {
                out.join(KEY_FILE)
            } else {
                out
            };
            let mut pubf = key.clone().into_os_string();
            pubf.push(".pub");
            let pubf = PathBuf::from(pubf);
            if key.exists() || pubf.exists() {
                anyhow::bail!(
                    "{} or {} exists already; not overwriting a key",
                    key.display(),
                    pubf.display()
                );
            }
            let signer = ModuleSigner::generate()?;
            signer
                .save(&key)
                .with_context(|| format!("writing {}", key.display()))?;
            std::fs::write(&pubf, signer.public().to_pem())
                .with_context(|| format!("writing {}", pubf.display()))?;
            print_key(ctx, &signer.public(), Some((&key, &pubf)))
        }
        KeyCmd::Show { file, raw: true } => {
            crate::outln!("{}", public_of(&file)?);
            Ok(ExitCode::SUCCESS)
        }
        KeyCmd::Show { file, raw: false } => print_key(ctx, &public_of(&file)?, None),
        KeyCmd::Revoke { tenant, key } => {
            let id = key_id_of(&key)?;
            let r = ctx.client()?.revoke_signing_key(&tenant, &id).await?;
            ctx.print(&r, |r| {
                crate::outln!(
                    "revoked signing key {} for tenant {} (by {} {})",
                    r.key_id,
                    r.tenant_id,
                    r.by_role,
                    r.by_subject
                )
            })
        }
    }
}

pub fn sign(ctx: &Ctx, a: SignArgs) -> anyhow::Result<ExitCode> {
    let signer = ModuleSigner::load(&a.key)?;
    let bytes = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let name = match a.name {
        Some(n) => n,
        None => a
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .context("give --name")?
            .to_string(),
    };
    let env = signer.sign_module(&name, &bytes);
    let out = a.out.unwrap_or_else(|| {
        let mut p = a.file.clone().into_os_string();
        p.push(".sig.json");
        PathBuf::from(p)
    });
    let json = serde_json::to_string_pretty(&env)?;
    std::fs::write(&out, format!("{json}\n"))
        .with_context(|| format!("writing {}", out.display()))?;
    let digest = kasbah_core::Digest::of(&bytes);
    let v = serde_json::json!({
        "envelope": out.display().to_string(),
        "subject": digest.to_string(),
        "key_id": signer.public().key_id(),
    });
    ctx.print(&v, |_| {
        crate::outln!(
            "signed {} ({digest}) with key {}: {}",
            name,
            signer.public().key_id(),
            out.display()
        )
    })
}
