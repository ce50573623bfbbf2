//! # kasbah SDK
//!
//! Write a kasbah pipeline in a handful of lines:
//!
//! ```ignore
//! use kasbah_sdk::{Pipeline, Request, Response, Error};
//!
//! struct Upper;
//! impl Pipeline for Upper {
//!     fn run(request: Request) -> Result<Response, Error> {
//!         Ok(Response::text(request.text()?.to_uppercase()))
//!     }
//! }
//! kasbah_sdk::export!(Upper);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2`: the output is a component
//! that targets the `kasbah:pipeline/pipeline` world (see `wit/pipeline.wit`).
//! What the pipeline may touch (files, env, network, memory, time, GPU) is
//! decided by the tenant's policy on the host, not by the guest.
//!
//! GPU compute goes through [`gpu`]: buffers from slices, kernels from WGSL,
//! a dispatch builder, batched submissions and typed read-back. With the
//! `tensor` feature, [`tensor`] adds f32 tensors, the kernels of a
//! transformer encoder (tiled linear, attention, layer norm, GELU, softmax,
//! pooling, L2 normalization) and safetensors loading.
//!
//! With the `http` feature, [`http`] is a small outgoing HTTP client
//! (`http::get`, `http::post`) over `wasi:http`; the host sends a request
//! only to a destination in the tenant's `[network] allow` list and
//! verifies TLS itself.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "kasbah:pipeline/guest",
        pub_export_macro: true,
        export_macro_name: "__export_guest",
        default_bindings_module: "kasbah_sdk::bindings",
        // kasbah:gpu@0.2.0 lives in its own WIT package
        // (wit/deps/kasbah-gpu-0.2.0); `generate_all` would also generate
        // @0.1.0 and give both versioned module names.
        with: { "kasbah:gpu/compute@0.2.0": generate },
    });
}

pub use bindings::kasbah::pipeline::types::{Error, Request, Response};

/// A pipeline: one request in, one response (or a typed error) out.
pub trait Pipeline {
    fn run(request: Request) -> Result<Response, Error>;
}

/// Export a type implementing [`Pipeline`] as this component's entry point.
#[macro_export]
macro_rules! export {
    ($ty:ty) => {
        const _: () = {
            struct KasbahExport;
            impl $crate::bindings::exports::kasbah::pipeline::handler::Guest for KasbahExport {
                fn run(
                    request: $crate::Request,
                ) -> ::core::result::Result<$crate::Response, $crate::Error> {
                    <$ty as $crate::Pipeline>::run(request)
                }
            }
    $crate::bindings::__export_guest!(KasbahExport with_types_in $crate::bindings);
        };
    };
}

impl Request {
    /// The body as UTF-8, or an `invalid-input` error.
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.body)
            .map_err(|e| Error::InvalidInput(format!("body is not UTF-8: {e}")))
    }

    /// The first metadata value for `key`.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl Response {
    /// A `text/plain; charset=utf-8` response.
    pub fn text(body: impl Into<String>) -> Self {
        Response {
            content_type: "text/plain; charset=utf-8".into(),
            body: body.into().into_bytes(),
        }
    }

    /// A response with an explicit content type.
    pub fn bytes(content_type: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Response {
            content_type: content_type.into(),
            body: body.into(),
        }
    }
}

impl Error {
    pub fn invalid_input(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }
    pub fn denied(msg: impl Into<String>) -> Self {
        Error::Denied(msg.into())
    }
    pub fn unavailable(msg: impl Into<String>) -> Self {
        Error::Unavailable(msg.into())
    }
    pub fn failed(msg: impl Into<String>) -> Self {
        Error::Failed(msg.into())
    }
}

pub mod gpu;

#[cfg(feature = "http")]
pub mod http;

#[cfg(feature = "tensor")]
pub mod tensor;

/// Structured logging to the host (bounded per run by the tenant's policy).
/// Compiled for a native target (a pipeline's own `cargo test`), records
/// go to stderr instead: there is no host to take them.
pub mod log {
    #[cfg(target_arch = "wasm32")]
    use crate::bindings::kasbah::pipeline::log::{Level, log};

    #[cfg(not(target_arch = "wasm32"))]
    #[derive(Debug)]
    enum Level {
        Trace,
        Debug,
        Info,
        Warn,
        Error,
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn log(level: Level, msg: &str) {
        eprintln!("[{level:?}] {msg}");
    }

    pub fn trace(msg: &str) {
        log(Level::Trace, msg)
    }
    pub fn debug(msg: &str) {
        log(Level::Debug, msg)
    }
    pub fn info(msg: &str) {
        log(Level::Info, msg)
    }
    pub fn warn(msg: &str) {
        log(Level::Warn, msg)
    }
    pub fn error(msg: &str) {
        log(Level::Error, msg)
    }
}
