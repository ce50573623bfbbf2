//! Checks the host makes on WGSL itself before handing it to wgpu.
//!
//! wgpu 30 validates most WebGPU pipeline limits but not
//! `maxComputeWorkgroupStorageSize` (gfx-rs/wgpu#8946); drivers differ in
//! what they do with an oversized `var<workgroup>` (lavapipe accepts
//! megabytes and allocates them in host memory per workgroup). So the host
//! computes the WebGPU figure itself: the sum of `roundUp(16, SizeOf(T))`
//! over the workgroup variables the entry point statically uses.

use naga::valid::{Capabilities, ValidationFlags, Validator};

/// Parse and validate `code` (naga, the same front end and validator wgpu
/// runs, with every capability allowed so that nothing wgpu accepts is
/// refused here), then check the workgroup storage `entry_point` uses
/// against `limit`. `Err` is the message for an `invalid-shader` error.
pub(crate) fn check_workgroup_storage(
    code: &str,
    entry_point: &str,
    limit: u32,
) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(code).map_err(|e| e.emit_to_string(code))?;
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .map_err(|e| e.emit_to_string(code))?;
    let Some(index) = module
        .entry_points
        .iter()
        .position(|ep| ep.name == entry_point && ep.stage == naga::ShaderStage::Compute)
    else {
        return Err(format!("no @compute entry point named {entry_point:?}"));
    };
    let uses = info.get_entry_point(index);
    let mut total: u64 = 0;
    for (handle, var) in module.global_variables.iter() {
        if var.space != naga::AddressSpace::WorkGroup || uses[handle].is_empty() {
            continue;
        }
        let size = type_size(&module, var.ty).ok_or_else(|| {
            format!(
                "the size of workgroup variable {:?} cannot be determined when the pipeline is created",
                var.name.as_deref().unwrap_or("?")
            )
        })?;
        total = total.saturating_add(size.next_multiple_of(16));
    }
    if total > u64::from(limit) {
        return Err(format!(
            "entry point {entry_point:?} uses {total} bytes of workgroup storage; the device allows {limit}"
        ));
    }
    Ok(())
}

/// Byte size of a type, `None` if an array length is not a constant (an
/// override without a constant default): fail closed.
fn type_size(module: &naga::Module, ty: naga::Handle<naga::Type>) -> Option<u64> {
    let ctx = module.to_ctx();
    match &module.types[ty].inner {
        naga::TypeInner::Array { base, size, stride } => {
            let count = match size.resolve(ctx) {
                Ok(naga::proc::IndexableLength::Known(n)) => u64::from(n),
                _ => return None,
            };
            // Nested arrays must be resolvable too.
            type_size(module, *base)?;
            u64::from(*stride).checked_mul(count)
        }
        naga::TypeInner::Struct { members, span } => {
            for m in members {
                type_size(module, m.ty)?;
            }
            Some(u64::from(*span))
        }
        other => other.try_size(ctx).map(u64::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u32 = 16 * 1024;

    #[test]
    fn counts_only_what_the_entry_point_uses_rounded_to_16() {
        let src = "
            var<workgroup> a: array<f32, 4096>;
            var<workgroup> b: array<u32, 4096>;
            var<workgroup> small: f32;
            @compute @workgroup_size(1) fn uses_a() { a[0] = 1.0; }
            @compute @workgroup_size(1) fn uses_both() { a[0] = 1.0; b[0] = 1u; }
            @compute @workgroup_size(1) fn uses_small() { small = 1.0; }
        ";
        assert_eq!(check_workgroup_storage(src, "uses_a", LIMIT), Ok(()));
        let e = check_workgroup_storage(src, "uses_both", LIMIT).expect_err("32 KiB > 16 KiB");
        assert!(e.contains("32768 bytes"), "{e}");
        assert_eq!(check_workgroup_storage(src, "uses_small", 16), Ok(()));
        assert!(check_workgroup_storage(src, "uses_small", 15).is_err());
    }

    #[test]
    fn override_sized_workgroup_arrays_use_their_default_or_are_refused() {
        let with_default = "
            override n: u32 = 8192u;
            var<workgroup> a: array<f32, n>;
            @compute @workgroup_size(1) fn main() { a[0] = 1.0; }
        ";
        let e = check_workgroup_storage(with_default, "main", LIMIT).expect_err("32 KiB");
        assert!(e.contains("32768"), "{e}");
        let without = "
            override n: u32;
            var<workgroup> a: array<f32, n>;
            @compute @workgroup_size(1) fn main() { a[0] = 1.0; }
        ";
        assert!(check_workgroup_storage(without, "main", LIMIT).is_err());
    }

    #[test]
    fn parse_errors_and_missing_entry_points_are_reported() {
        assert!(check_workgroup_storage("fn (", "main", LIMIT).is_err());
        let e = check_workgroup_storage("@compute @workgroup_size(1) fn other() {}", "main", LIMIT)
            .expect_err("no main");
        assert!(e.contains("main"), "{e}");
    }
}

/// What the platform needs to know about an admitted entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShaderFacts {
    pub workgroup_size: [u32; 3],
}

/// Bounds on the source before naga sees it (TEMPORARY: replaced by the
/// lexical pre-pass on branch `shader`).
pub(crate) fn admit(code: &str) -> Result<(), String> {
    if code.len() > crate::host::MAX_WGSL_BYTES {
        return Err("WGSL source too large".into());
    }
    Ok(())
}

/// TEMPORARY wrapper (branch `shader` extends the checks).
pub(crate) fn check(code: &str, entry_point: &str, limit: u32) -> Result<ShaderFacts, String> {
    check_workgroup_storage(code, entry_point, limit)?;
    let module = naga::front::wgsl::parse_str(code).map_err(|e| e.emit_to_string(code))?;
    let ep = module
        .entry_points
        .iter()
        .find(|ep| ep.name == entry_point)
        .ok_or("no entry point")?;
    Ok(ShaderFacts {
        workgroup_size: ep.workgroup_size,
    })
}
