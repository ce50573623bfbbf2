//! The smallest kasbah pipeline: upper-cases its UTF-8 input.
use kasbah_sdk::{Error, Pipeline, Request, Response, log};

struct Hello;

impl Pipeline for Hello {
    fn run(request: Request) -> Result<Response, Error> {
        let text = request.text()?;
        log::info(&format!("hello: {} bytes in", text.len()));
        Ok(Response::text(text.to_uppercase()))
    }
}

kasbah_sdk::export!(Hello);
