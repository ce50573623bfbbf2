//! The web console (issue 17): a handful of hand-written ES modules, HTML
//! and CSS embedded in the binary (`assets.rs`, `include_str!`), plus the
//! in-browser verifier (`host/audit-wasm`, built by `build.rs`). Served at
//! `/` and `/console/{name}` under a strict Content-Security-Policy; the
//! page talks to the same `/v1/...` API with a bearer token the user pastes
//! (kept in `sessionStorage`, never a cookie), so it sees exactly what that
//! token may see. See ARCHITECTURE.md, "The web console".

pub mod assets;
pub mod handlers;
