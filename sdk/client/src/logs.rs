//! A run's logs: so far (JSON), followed as they come (server-sent events),
//! and cancelling a run.

use futures_util::{Stream, StreamExt};
use kasbah_core::LogEvent;
use kasbah_core::api::{RunLogs, RunRecord};

use crate::{Client, Error, Result};

/// Largest server-sent event accepted (a stdout chunk as JSON is at most a
/// few hundred KiB; anything larger is not the kasbah server).
const MAX_EVENT_BYTES: usize = 8 << 20;

impl Client {
    /// `GET /v1/runs/{id}/logs`: the logs and stdio so far.
    pub async fn run_logs(&self, id: &str) -> Result<RunLogs> {
        Self::send(self.req(reqwest::Method::GET, &format!("/v1/runs/{id}/logs"))).await
    }

    /// `GET /v1/runs/{id}/logs?follow=true`: the run's events as they come,
    /// ending with [`LogEvent::End`].
    pub async fn follow_logs(
        &self,
        id: &str,
    ) -> Result<impl Stream<Item = Result<LogEvent>> + Send + 'static> {
        let resp = self
            .req(reqwest::Method::GET, &format!("/v1/runs/{id}/logs"))
            .query(&[("follow", "true")])
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(Self::check(resp)
                .await
                .err()
                .unwrap_or_else(|| Error::Decode("an error status without an error body".into())));
        }
        let state = (resp.bytes_stream().boxed(), Vec::<u8>::new(), false);
        Ok(futures_util::stream::unfold(
            state,
            |(mut body, mut buf, mut done)| async move {
                loop {
                    if done {
                        return None;
                    }
                    if let Some(end) = find_event_end(&buf) {
                        let raw: Vec<u8> = buf.drain(..end.0 + end.1).collect();
                        match parse_event(&raw[..end.0]) {
                            Ok(Some(e)) => {
                                done = matches!(e, LogEvent::End { .. });
                                return Some((Ok(e), (body, buf, done)));
                            }
                            Ok(None) => continue,
                            Err(e) => return Some((Err(e), (body, buf, true))),
                        }
                    }
                    if buf.len() > MAX_EVENT_BYTES {
                        let e = Error::Decode("a log event over 8 MiB".into());
                        return Some((Err(e), (body, buf, true)));
                    }
                    match body.next().await {
                        Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                        Some(Err(e)) => return Some((Err(e.into()), (body, buf, true))),
                        None => {
                            let e = Error::Decode("the log stream ended before `end`".into());
                            return Some((Err(e), (body, buf, true)));
                        }
                    }
                }
            },
        ))
    }

    /// `POST /v1/runs/{id}/cancel`: the run's record once it stopped.
    pub async fn cancel_run(&self, id: &str) -> Result<RunRecord> {
        Self::send(self.req(reqwest::Method::POST, &format!("/v1/runs/{id}/cancel"))).await
    }
}

/// Where the first event ends: (its length, the blank line's length).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buf.len() {
        if buf[i..].starts_with(b"\n\n") {
            return Some((i, 2));
        }
        if buf[i..].starts_with(b"\r\n\r\n") {
            return Some((i, 4));
        }
    }
    None
}

/// One SSE event's lines → the event (`None`: a comment, e.g. keep-alive).
fn parse_event(raw: &[u8]) -> Result<Option<LogEvent>> {
    let text = std::str::from_utf8(raw).map_err(|e| Error::Decode(e.to_string()))?;
    let mut data = String::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    if data.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&data)
        .map(Some)
        .map_err(|e| Error::Decode(format!("log event: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_and_skips_comments() {
        let buf = b": keep-alive\n\nevent: log\ndata: {\"type\":\"log\",\"level\":\"info\",\"message\":\"hi\"}\n\nrest";
        let (n, sep) = find_event_end(buf).expect("end");
        assert_eq!(parse_event(&buf[..n]).expect("ok"), None);
        let rest = &buf[n + sep..];
        let (m, _) = find_event_end(rest).expect("end");
        assert_eq!(
            parse_event(&rest[..m]).expect("ok"),
            Some(LogEvent::Log {
                level: kasbah_core::LogLevel::Info,
                message: "hi".into()
            })
        );
    }
}
