//! `kasbah secret set|list|delete`: a tenant's secrets (developer token).
//!
//! `set NAME` reads the value from stdin: piped, every byte up to EOF, less
//! **one** trailing newline (`\n` or `\r\n`, what `echo` or a file editor
//! adds; `--keep-newline` keeps it); from a terminal, one line typed with
//! echo off. The value is never printed, and the server never returns it.

use std::io::Read;
use std::process::ExitCode;

use clap::Subcommand;
use kasbah_core::api::SecretRecord;

use crate::remote::{Ctx, table};

use kasbah_server::secrets::service::MAX_SECRET_BYTES;

#[derive(Subcommand)]
pub enum SecretCmd {
    /// Store a secret (a new version if NAME exists); the value comes from stdin.
    Set {
        /// `[a-z0-9_-]{1,64}`: what a policy's `[secrets.NAME]` grants.
        name: String,
        /// Keep a trailing newline (by default one `\n` or `\r\n` at the end is removed).
        #[arg(long)]
        keep_newline: bool,
    },
    /// List the tenant's secrets: names and versions (never values).
    List,
    /// Delete a secret.
    Delete {
        /// The secret's name.
        name: String,
    },
}

pub async fn secret(ctx: &Ctx, c: SecretCmd) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    let show = |r: &SecretRecord| crate::outln!("secret {} version {}", r.name, r.version);
    match c {
        SecretCmd::Set { name, keep_newline } => {
            let value = read_value(&name, keep_newline)?;
            ctx.print(&client.set_secret(&name, value).await?, show)
        }
        SecretCmd::List => {
            let list = client.secrets().await?;
            ctx.print(&list, |l| {
                table(
                    &["NAME", "VERSION", "CREATED"],
                    l.iter()
                        .map(|r| {
                            vec![
                                r.name.clone(),
                                r.version.to_string(),
                                r.created_at.to_string(),
                            ]
                        })
                        .collect(),
                )
            })
        }
        SecretCmd::Delete { name } => {
            client.delete_secret(&name).await?;
            if !ctx.json {
                crate::outln!("secret {name} deleted");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The value from stdin (see the module docs).
fn read_value(name: &str, keep_newline: bool) -> anyhow::Result<Vec<u8>> {
    let mut v = if is_terminal() {
        eprint!("value of secret {name} (not echoed): ");
        let line = read_line_without_echo()?;
        eprintln!();
        line
    } else {
        let mut v = Vec::new();
        std::io::stdin()
            .lock()
            .take(MAX_SECRET_BYTES as u64 + 3)
            .read_to_end(&mut v)?;
        v
    };
    if !keep_newline && v.last() == Some(&b'\n') {
        v.pop();
        if v.last() == Some(&b'\r') {
            v.pop();
        }
    }
    anyhow::ensure!(
        v.len() <= MAX_SECRET_BYTES,
        "a secret value is at most {MAX_SECRET_BYTES} bytes"
    );
    Ok(v)
}

fn is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}

/// One line from the terminal with echo off (restored afterwards).
#[cfg(unix)]
fn read_line_without_echo() -> anyhow::Result<Vec<u8>> {
    // SAFETY: termios is a plain C struct; tcgetattr fills it for fd 0,
    // which is a terminal (checked by the caller).
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    anyhow::ensure!(
        unsafe { libc::tcgetattr(0, &mut saved) } == 0,
        "cannot read the terminal's settings"
    );
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: as above; the settings are restored below whatever happens.
    unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
    let mut line = String::new();
    let read = std::io::stdin().read_line(&mut line);
    // SAFETY: restoring what tcgetattr returned.
    unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
    read?;
    Ok(line.into_bytes())
}

#[cfg(not(unix))]
fn read_line_without_echo() -> anyhow::Result<Vec<u8>> {
    anyhow::bail!("pipe the value into `kasbah secret set` (no terminal input here)")
}
