//! The host's WGSL path: `admit`, then (if admitted) naga parse + validate
//! and the host's own limits (`check`), as `ops::create_pipeline` runs them
//! before wgpu sees the shader. A crash is any panic or abort (a stack
//! overflow included). The entry point looked up is `main`.
#![no_main]

#[allow(dead_code)]
#[path = "../../host/gpu/src/shader.rs"]
mod shader;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(code) = std::str::from_utf8(data) else {
        return;
    };
    if shader::admit(code).is_ok() {
        let _ = shader::check(code, "main", 16 * 1024);
    }
});
