//! Server runs' logs in the terminal: `kasbah runs logs [-f] run_…`,
//! `kasbah runs cancel run_…`, and `kasbah run` (server) showing a run's
//! logs and stdio on stderr as they come.

use std::process::ExitCode;

use futures_util::StreamExt;
use kasbah_client::Client;
use kasbah_core::LogEvent;
use kasbah_core::api::{CreateRun, RunLogs, RunRecord};

use crate::remote::Ctx;

/// One event on stderr (the run's output stays on stdout).
pub fn show_event(e: &LogEvent) {
    match e {
        LogEvent::Log { level, message } => {
            eprintln!("log      {} {message}", format!("{level:?}").to_lowercase())
        }
        LogEvent::Stdout { bytes } => show_lines("stdout", bytes),
        LogEvent::Stderr { bytes } => show_lines("stderr", bytes),
        LogEvent::Gap { missed } => eprintln!(
            "log      ({missed} events skipped: this client fell behind; the run record has them)"
        ),
        LogEvent::End { .. } => {}
    }
}

fn show_lines(name: &str, bytes: &[u8]) {
    for line in String::from_utf8_lossy(bytes).lines() {
        eprintln!("{name}   | {line}");
    }
}

/// `kasbah run` on the server: start the run without waiting, follow its
/// events to stderr until it ends, then read its record. A server without
/// the logs endpoint, or a broken stream: the record is polled instead.
pub async fn run_following(client: &Client, mut req: CreateRun) -> anyhow::Result<RunRecord> {
    req.wait = false;
    let accepted = client.run(&req).await?;
    if accepted.outcome.is_some() {
        return Ok(accepted);
    }
    if let Ok(events) = client.follow_logs(&accepted.id).await {
        let mut events = std::pin::pin!(events);
        while let Some(Ok(e)) = events.next().await {
            show_event(&e);
            if matches!(e, LogEvent::End { .. }) {
                break;
            }
        }
    }
    loop {
        let r = client.get_run(&accepted.id).await?;
        if r.outcome.is_some() || r.status == kasbah_core::api::RunStatus::Interrupted {
            return Ok(r);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `kasbah runs logs [-f] run_…`.
pub async fn logs(ctx: &Ctx, id: &str, follow: bool) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    if !follow {
        let l = client.run_logs(id).await?;
        return ctx.print(&l, show_logs);
    }
    let mut events = std::pin::pin!(client.follow_logs(id).await?);
    let mut ok = true;
    while let Some(e) = events.next().await {
        let e = e?;
        if ctx.json {
            crate::outln!("{}", serde_json::to_string(&e)?);
        } else {
            show_event(&e);
        }
        if let LogEvent::End { status, outcome } = &e {
            ok = outcome.as_ref().is_some_and(|o| o.is_ok());
            if !ctx.json {
                eprintln!(
                    "outcome  {}",
                    outcome
                        .as_ref()
                        .map_or(status.clone(), |o| o.kind().to_string())
                );
            }
            break;
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn show_logs(l: &RunLogs) {
    for r in &l.logs.records {
        show_event(&LogEvent::Log {
            level: r.level,
            message: r.message.clone(),
        });
    }
    show_lines("stdout", &l.stdout.bytes);
    show_lines("stderr", &l.stderr.bytes);
    if !l.complete {
        eprintln!("(run {} is {}: logs so far)", l.id, l.status.as_str());
    }
}

/// `kasbah runs cancel run_…`.
pub async fn cancel(ctx: &Ctx, id: &str) -> anyhow::Result<ExitCode> {
    let r = ctx.client()?.cancel_run(id).await?;
    ctx.print(&r, |r| {
        eprintln!(
            "run      {} ({}) {}",
            r.id,
            r.status.as_str(),
            r.outcome.as_ref().map_or("stopping", |o| o.kind())
        )
    })
}
