//! The load bench's baseline (`tests/benches/load.rs`): a wasi-http
//! hello world for `wasmtime serve` doing the same work as
//! `guest-examples/hello` — read the whole request body, upper-case it as
//! UTF-8, answer it as `text/plain` (400 if the body is not UTF-8).
//!
//!     cargo build -p http-hello --target wasm32-wasip2 --profile guest
//!     wasmtime serve --addr 127.0.0.1:8080 target/wasm32-wasip2/guest/http_hello.wasm
//!     curl -d 'hello kasbah' http://127.0.0.1:8080/    # HELLO KASBAH

use std::io::{Read as _, Write as _};

use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct HttpHello;

impl wasi::exports::http::incoming_handler::Guest for HttpHello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let (status, body) = match read_body(request) {
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(text) => (200, text.to_uppercase().into_bytes()),
                Err(_) => (400, b"input is not UTF-8\n".to_vec()),
            },
            None => (400, b"cannot read the request body\n".to_vec()),
        };
        respond(response_out, status, &body);
    }
}

fn read_body(request: IncomingRequest) -> Option<Vec<u8>> {
    let incoming = request.consume().ok()?;
    let mut bytes = Vec::new();
    {
        let mut stream = incoming.stream().ok()?;
        stream.read_to_end(&mut bytes).ok()?;
    }
    let _trailers = IncomingBody::finish(incoming);
    Some(bytes)
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::new();
    // Both calls fail only for invalid names/values, which these are not.
    let _ = headers.set("content-type", &[b"text/plain; charset=utf-8".to_vec()]);
    let _ = headers.set("content-length", &[body.len().to_string().into_bytes()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(mut stream) = outgoing.write() {
        let _ = stream.write_all(body);
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

wasi::http::proxy::export!(HttpHello);
