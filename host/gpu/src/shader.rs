//! Checks the host makes on WGSL itself before and after naga parses it.
//!
//! [`admit`] (in `lex.rs`) is a lexical pass that runs before any compiler:
//! naga 30 lowers long expression, `else if` and declaration chains
//! recursively, and a stack overflow aborts the host, so source shape is
//! bounded first.
//!
//! [`check`] parses and validates with naga and then enforces what wgpu 30
//! does not:
//! - `maxComputeWorkgroupStorageSize` (gfx-rs/wgpu#8946); drivers differ in
//!   what they do with an oversized `var<workgroup>` (lavapipe accepts
//!   megabytes and allocates them in host memory per workgroup). The host
//!   computes the WebGPU figure itself: the sum of `roundUp(16, SizeOf(T))`
//!   over the workgroup variables the entry point statically uses.
//! - WGSL's 8 KiB limits on the private variables an entry point statically
//!   uses and on the function-scope variables each function declares
//!   (lavapipe allocates them per invocation: a 64 MiB private array made
//!   the host grow by 1 GB/s).
//! - no single array or structure value handled by a function (a `let`
//!   of `array<f32, N>()`, a whole storage array loaded into a value, a
//!   `const` table) may exceed the same 8 KiB: the SPIR-V back end spills a
//!   dynamically indexed value array into a function-scope variable, which
//!   is the same per-invocation allocation by another route.
//!
//! Byte sizes are naga's layout sizes (stride × count for arrays, the
//! padded span for structures), which is WGSL's `SizeOf`.

// An explicit path, so that the fuzz crate (which includes this file by
// path, see fuzz/Cargo.toml) finds it too.
#[path = "shader/lex.rs"]
mod lex;

pub(crate) use lex::admit;

use naga::valid::{Capabilities, ValidationFlags, Validator};

/// WGSL: maximum combined byte size of the private variables a shader
/// statically accesses, and of the function-scope variables one function
/// declares.
pub(crate) const MAX_PRIVATE_BYTES: u64 = 8192;
/// See [`MAX_PRIVATE_BYTES`].
pub(crate) const MAX_FUNCTION_BYTES: u64 = 8192;
/// Largest array or structure value an expression may have.
pub(crate) const MAX_VALUE_BYTES: u64 = 8192;

/// What the host learns about an admitted entry point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShaderFacts {
    /// `@workgroup_size` of the entry point. An override in it is resolved
    /// to its default, which is what the pipeline gets (the host passes no
    /// pipeline constants); an override without a default, or a size that
    /// is an expression over overrides rather than a plain override or
    /// constant, is refused: the host only dispatches kernels whose
    /// workgroup size it knows.
    pub workgroup_size: [u32; 3],
    /// `(group, binding)` of every storage variable declared `read_write`
    /// (the host refuses to bind a read-only buffer there).
    pub writable: Vec<(u32, u32)>,
}

/// Parse and validate `code` (naga, the same front end and validator wgpu
/// runs, with every capability allowed so that nothing wgpu accepts is
/// refused here), then check `entry_point`'s workgroup storage against
/// `workgroup_storage_limit` and the module against WGSL's private and
/// function-scope limits. Runs [`admit`] first itself (a linear pass; it
/// must never be skipped before naga). `Err` is the message for an
/// `invalid-shader` error.
pub(crate) fn check(
    code: &str,
    entry_point: &str,
    workgroup_storage_limit: u32,
) -> Result<ShaderFacts, String> {
    admit(code)?;
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
    let mut layouter = naga::proc::Layouter::default();
    layouter
        .update(module.to_ctx())
        .map_err(|e| format!("type layout: {e}"))?;
    let size_of = |ty: naga::Handle<naga::Type>| -> Option<u64> {
        resolvable(&module, ty).then(|| u64::from(layouter[ty].size))
    };

    // Module-scope variables the entry point statically uses.
    let uses = info.get_entry_point(index);
    let mut workgroup: u64 = 0;
    let mut private: u64 = 0;
    for (handle, var) in module.global_variables.iter() {
        let counter = match var.space {
            naga::AddressSpace::WorkGroup => &mut workgroup,
            naga::AddressSpace::Private => &mut private,
            _ => continue,
        };
        if uses[handle].is_empty() {
            continue;
        }
        let size = size_of(var.ty).ok_or_else(|| {
            format!(
                "the size of module-scope variable {:?} cannot be determined when the pipeline is created",
                var.name.as_deref().unwrap_or("?")
            )
        })?;
        *counter = counter.saturating_add(if var.space == naga::AddressSpace::WorkGroup {
            size.next_multiple_of(16)
        } else {
            size
        });
    }
    if workgroup > u64::from(workgroup_storage_limit) {
        return Err(format!(
            "entry point {entry_point:?} uses {workgroup} bytes of workgroup storage; the device allows {workgroup_storage_limit}"
        ));
    }
    if private > MAX_PRIVATE_BYTES {
        return Err(format!(
            "entry point {entry_point:?} uses {private} bytes of private variables; WGSL allows {MAX_PRIVATE_BYTES}"
        ));
    }

    // Every function, entry points included.
    let functions = module.functions.iter().map(|(h, f)| (f, &info[h])).chain(
        module
            .entry_points
            .iter()
            .enumerate()
            .map(|(i, ep)| (&ep.function, info.get_entry_point(i))),
    );
    for (function, finfo) in functions {
        let name = function.name.as_deref().unwrap_or("?");
        let mut locals: u64 = 0;
        for (_, local) in function.local_variables.iter() {
            let size = size_of(local.ty).ok_or_else(|| {
                format!("function {name:?}: a local variable's size is not a constant")
            })?;
            locals = locals.saturating_add(size);
        }
        if locals > MAX_FUNCTION_BYTES {
            return Err(format!(
                "function {name:?} declares {locals} bytes of function-scope variables; WGSL allows {MAX_FUNCTION_BYTES}"
            ));
        }
        for (handle, _) in function.expressions.iter() {
            let ty = match finfo[handle].ty {
                naga::proc::TypeResolution::Handle(ty) => ty,
                // Scalars, vectors, matrices and pointers: small.
                naga::proc::TypeResolution::Value(_) => continue,
            };
            if !matches!(
                module.types[ty].inner,
                naga::TypeInner::Array { .. } | naga::TypeInner::Struct { .. }
            ) {
                continue;
            }
            let size = u64::from(layouter[ty].size);
            if size > MAX_VALUE_BYTES {
                let line = function
                    .expressions
                    .get_span(handle)
                    .location(code)
                    .line_number;
                return Err(format!(
                    "line {line}: function {name:?} handles a value of {size} bytes; the host allows values of at most {MAX_VALUE_BYTES}"
                ));
            }
        }
    }

    let ep = &module.entry_points[index];
    let mut workgroup_size = ep.workgroup_size;
    if let Some(overrides) = &ep.workgroup_size_overrides {
        for (dim, expr) in workgroup_size.iter_mut().zip(overrides) {
            if let Some(expr) = *expr {
                *dim = resolve_u32(&module, expr).ok_or_else(|| {
                    format!(
                        "entry point {entry_point:?}: the workgroup size must be a constant or an override with a constant default"
                    )
                })?;
            }
        }
    }
    let writable = module
        .global_variables
        .iter()
        .filter_map(|(_, var)| match (var.space, &var.binding) {
            (naga::AddressSpace::Storage { access }, Some(b))
                if access.contains(naga::StorageAccess::STORE) =>
            {
                Some((b.group, b.binding))
            }
            _ => None,
        })
        .collect();
    Ok(ShaderFacts {
        workgroup_size,
        writable,
    })
}

/// The value of a global expression that is a literal, a constant, or an
/// override with a default, following references (no arithmetic).
fn resolve_u32(module: &naga::Module, mut expr: naga::Handle<naga::Expression>) -> Option<u32> {
    // Each step moves to a different handle; the arena bounds the walk.
    for _ in 0..=module.global_expressions.len() {
        match *module.global_expressions.try_get(expr).ok()? {
            naga::Expression::Literal(naga::Literal::U32(n)) => return Some(n),
            naga::Expression::Literal(naga::Literal::I32(n)) => return u32::try_from(n).ok(),
            naga::Expression::Literal(naga::Literal::AbstractInt(n)) => {
                return u32::try_from(n).ok();
            }
            naga::Expression::Constant(c) => expr = module.constants.try_get(c).ok()?.init,
            naga::Expression::Override(o) => expr = module.overrides.try_get(o).ok()?.init?,
            _ => return None,
        }
    }
    None
}

/// Whether every array length inside `ty` is known now (a constant or an
/// override with a constant default): fail closed otherwise. Iterative,
/// over the type graph (structures may nest as deep as the module has
/// declarations).
fn resolvable(module: &naga::Module, ty: naga::Handle<naga::Type>) -> bool {
    let ctx = module.to_ctx();
    let mut seen = vec![false; module.types.len()];
    let mut todo = vec![ty];
    while let Some(ty) = todo.pop() {
        match seen.get_mut(ty.index()) {
            Some(s) if !*s => *s = true,
            Some(_) => continue,
            None => return false,
        }
        let Some(t) = module.types.get_handle(ty).ok() else {
            return false;
        };
        match &t.inner {
            naga::TypeInner::Array { base, size, .. } => {
                if !matches!(size.resolve(ctx), Ok(naga::proc::IndexableLength::Known(_))) {
                    return false;
                }
                todo.push(*base);
            }
            naga::TypeInner::Struct { members, .. } => todo.extend(members.iter().map(|m| m.ty)),
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u32 = 16 * 1024;

    /// The workgroup-storage part of `check`, as the original tests used it.
    fn check_workgroup_storage(code: &str, entry: &str, limit: u32) -> Result<(), String> {
        check(code, entry, limit).map(|_| ())
    }

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

/// The limits of `admit` and `check`, and the shaders of this repository.
#[cfg(test)]
mod limit_tests {
    use super::lex::{
        MAX_BLOCK_DEPTH, MAX_CHAIN, MAX_DECLARATIONS, MAX_ELSE_IF, MAX_NESTING, MAX_SOURCE_BYTES,
    };
    use super::*;
    use std::time::{Duration, Instant};

    const LIMIT: u32 = 16 * 1024;

    /// naga runs in the GPU process on a thread with a 256 MiB stack
    /// (child.rs); run it here on 16 MiB, a sixteenth of that, so that an
    /// input at the limits is shown to compile in a debug build with a wide
    /// margin.
    fn on_worker_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(16 * 1024 * 1024)
            .spawn(f)
            .expect("spawn")
            .join()
            .expect("no panic")
    }

    fn compiles(src: String) -> Result<ShaderFacts, String> {
        on_worker_stack(move || check(&src, "main", LIMIT))
    }

    fn refused_quickly(src: &str, needle: &str) {
        let start = Instant::now();
        let e = admit(src).expect_err("refused");
        let took = start.elapsed();
        assert!(e.contains(needle), "{e}");
        assert!(took < Duration::from_millis(100), "{took:?}");
        // `check` runs `admit` first: naga never sees it (a 2 MiB test
        // thread would abort if it did).
        let e = check(src, "main", LIMIT).expect_err("refused");
        assert!(e.contains(needle), "{e}");
    }

    fn chain(n: usize, first: &str, link: &str) -> String {
        let mut s = String::with_capacity(n * link.len() + first.len());
        s.push_str(first);
        for _ in 0..n {
            s.push_str(link);
        }
        s
    }

    fn in_main(decls: &str, body: &str) -> String {
        format!("{decls}\n@compute @workgroup_size(1) fn main() {{\n{body}\n}}\n")
    }

    // ---- admit: each limit, within and just above ----

    #[test]
    fn source_size() {
        assert_eq!(admit(&" ".repeat(MAX_SOURCE_BYTES)), Ok(()));
        let e = admit(&" ".repeat(MAX_SOURCE_BYTES + 1)).expect_err("too big");
        assert!(e.contains("bytes"), "{e}");
    }

    #[test]
    fn bracket_nesting() {
        for (open, close) in [("(", ")"), ("[", "]"), ("{", "}")] {
            let ok = format!("{}{}", open.repeat(MAX_NESTING), close.repeat(MAX_NESTING));
            assert_eq!(admit(&ok), Ok(()), "{open}");
            let bad = format!(
                "{}{}",
                open.repeat(MAX_NESTING + 1),
                close.repeat(MAX_NESTING + 1)
            );
            let e = admit(&bad).expect_err("too deep");
            assert!(
                e.contains("nested deeper than 64") && e.contains("line 1"),
                "{e}"
            );
        }
        // An expression nested to the limit compiles.
        let depth = MAX_NESTING - 2; // fn body and the return's own bracket
        let src = in_main(
            "",
            &format!(
                "var x = 1.0;\nlet y = {}x{};",
                "(".repeat(depth),
                ")".repeat(depth)
            ),
        );
        assert_eq!(admit(&src), Ok(()));
        assert!(compiles(src).is_ok());
    }

    #[test]
    fn binary_chains() {
        let n = MAX_CHAIN as usize;
        assert_eq!(admit(&chain(n, "x", "+x")), Ok(()));
        let e = admit(&chain(n + 1, "x", "+x")).expect_err("too long");
        assert!(e.contains("expression chain longer than 1024"), "{e}");
        // At the limit (less the `=`), naga compiles it on the worker's stack.
        let body = format!("var x = 1.0;\nx = {};", chain(n - 2, "x", "+x"));
        let src = in_main("", &body);
        assert_eq!(admit(&src), Ok(()));
        assert!(compiles(src).is_ok());
        // The 100,000-term attack: refused at once, never compiled.
        let attack = in_main(
            "",
            &format!("var x = 1.0;\nx = {};", chain(99_999, "x", "+x")),
        );
        refused_quickly(&attack, "line 4: expression chain");
        // Split across lines and comments, still one expression.
        let attack = in_main(
            "",
            &format!(
                "var x = 1.0;\nx = {};",
                chain(50_000, "x", " /* + */ // +\n+x")
            ),
        );
        refused_quickly(&attack, "expression chain");
    }

    #[test]
    fn unary_member_index_and_call_chains() {
        for (first, link) in [
            ("x", " -"),
            ("b", "!"),
            ("u", "~"),
            ("v", ".x"),
            ("v", ".xyzw"),
            ("a", "[0]"),
        ] {
            let ok = chain(MAX_CHAIN as usize, first, link);
            let ok_src = if link.starts_with(['.', '[']) {
                ok
            } else {
                // Prefix operators: the chain is the links, then the operand.
                format!("{}{first}", link.repeat(MAX_CHAIN as usize))
            };
            assert_eq!(admit(&ok_src), Ok(()), "{link}");
            let attack = in_main(
                "",
                &format!(
                    "var v = vec4<f32>();\nlet y = {};",
                    if link.starts_with(['.', '[']) {
                        chain(100_000, first, link)
                    } else {
                        format!("{}{first}", link.repeat(100_000))
                    }
                ),
            );
            refused_quickly(&attack, "expression chain");
        }
        // Swizzle chain at the limit compiles.
        let src = in_main(
            "",
            &format!(
                "var v = vec4<f32>();\nlet y = {};",
                chain(MAX_CHAIN as usize - 2, "v", ".xyzw")
            ),
        );
        assert!(compiles(src).is_ok());
        // Commas inside template lists do not end the chain.
        for link in [
            "+array<f32,1>(x)[0]",
            "+vec2<f32>(x,x).x",
            "+bitcast<f32>(x)",
        ] {
            let attack = in_main(
                "",
                &format!("var x = 1.0;\nx = {};", chain(50_000, "x", link)),
            );
            refused_quickly(&attack, "expression chain");
        }
        // A comma after a less-than makes the count stricter, not looser.
        assert!(admit(&format!("f(a < b, {})", chain(1030, "x", "+x"))).is_err());
        // Sibling expressions do not add up: 8 arguments of 1000 each.
        let arg = chain(1000, "x", "+x");
        let list = vec![arg; 8].join(", ");
        assert_eq!(admit(&format!("let a = array<f32, 8>({list});")), Ok(()));
        // Nested ones do: each level's chain counts along the path.
        let nested = format!("{}(x{})", chain(600, "x", "+x"), chain(600, "", "+x"));
        assert!(admit(&nested).is_err());
    }

    #[test]
    fn else_if_chains() {
        let chain_of = |n: usize| {
            let mut s = String::from("var x = 0u;\nif x == 0u { x = 1u; }");
            for i in 0..n {
                s.push_str(&format!(" else if x == {i}u {{ x = 2u; }}"));
            }
            s.push_str(" else { x = 3u; }\nx = 4u;");
            s
        };
        let ok = in_main("", &chain_of(MAX_ELSE_IF as usize));
        assert_eq!(admit(&ok), Ok(()));
        assert!(compiles(ok).is_ok());
        let bad = in_main("", &chain_of(MAX_ELSE_IF as usize + 1));
        let e = admit(&bad).expect_err("too long");
        assert!(e.contains("`else if`") && e.contains("line 4"), "{e}");
        refused_quickly(&in_main("", &chain_of(3000)), "`else if`");
        // Comments between `else` and `if` do not hide a link.
        let hidden = in_main(
            "",
            &chain_of(MAX_ELSE_IF as usize + 1).replace("else if", "else /* */ // c\n if"),
        );
        assert!(admit(&hidden).is_err());
        // Consecutive chains do not add up.
        let two = in_main(
            "",
            &format!(
                "{}\n{}",
                chain_of(MAX_ELSE_IF as usize),
                chain_of(MAX_ELSE_IF as usize).replace("var x", "var z")
            ),
        );
        assert_eq!(admit(&two), Ok(()));
        // A chain nested in the last link of another does: naga nests it.
        let inner = chain_of(100).replace("var x = 0u;", "");
        let nested = chain_of(100).replace(" else { x = 3u; }", &format!(" else {{ {inner} }}"));
        let e = admit(&in_main("", &nested)).expect_err("too deep");
        assert!(e.contains(&format!("deeper than {MAX_BLOCK_DEPTH}")), "{e}");
    }

    #[test]
    fn declaration_chains() {
        // Declared in reverse order, each using the next: the front end's
        // dependency sort recurses once per declaration.
        let fns = |n: usize| {
            let mut s = String::new();
            for i in (1..n).rev() {
                s.push_str(&format!("fn f{i}() -> u32 {{ return f{}(); }}\n", i - 1));
            }
            s.push_str("fn f0() -> u32 { return 1u; }\n");
            s
        };
        // The entry point is one more declaration.
        let ok = in_main(&fns(MAX_DECLARATIONS as usize - 1), "");
        assert_eq!(admit(&ok), Ok(()));
        assert!(compiles(ok).is_ok());
        let bad = in_main(&fns(MAX_DECLARATIONS as usize), "");
        let e = admit(&bad).expect_err("too many");
        assert!(e.contains("module-scope declarations"), "{e}");
        // Local declarations do not count.
        let locals = in_main("", &"{ var a = 1u; const b = 2u; }\n".repeat(2000));
        assert_eq!(admit(&locals), Ok(()));
    }

    #[test]
    fn every_limit_at_once_compiles_on_the_worker_stack() {
        // 1,022 module-scope functions chained in reverse order, an `else
        // if` chain of 128 whose last block holds 60 nested blocks, and in
        // the innermost one an expression of 1,000 operators.
        let mut decls = String::new();
        let n = MAX_DECLARATIONS as usize - 2;
        for i in (1..n).rev() {
            decls.push_str(&format!("fn g{i}() -> f32 {{ return g{}(); }}\n", i - 1));
        }
        decls.push_str("fn g0() -> f32 { return 1.0; }\n");
        let mut body = String::from("var x = g_last();\nif x == 0.0 { x = 1.0; }");
        for i in 0..MAX_ELSE_IF {
            body.push_str(&format!(" else if x == {i}.0 {{ x = 2.0; }}"));
        }
        body.push_str(&format!(
            " else {{ {}x = {};{} }}",
            "{".repeat(60),
            chain(998, "x", "+x"),
            "}".repeat(60)
        ));
        let src = in_main(&decls, &body.replace("g_last", &format!("g{}", n - 1)));
        assert_eq!(admit(&src), Ok(()));
        compiles(src).expect("compiles");
    }

    #[test]
    fn const_expansion() {
        // Doubling chains: shared in the module, copied at each use.
        let doubling = |n: usize, reverse: bool, local: bool| {
            let mut decls: Vec<String> = vec!["const c0 = array(1.0, 1.0);".into()];
            for i in 1..n {
                decls.push(format!("const c{i} = array(c{}, c{});", i - 1, i - 1));
            }
            if reverse {
                decls.reverse();
            }
            let decls = decls.join("\n");
            let use_ = format!("let v = c{}; o[0] = 1.0;", n - 1);
            let out = "@group(0) @binding(0) var<storage, read_write> o: array<f32>;";
            if local {
                in_main(out, &format!("{decls}\n{use_}"))
            } else {
                in_main(&format!("{decls}\n{out}"), &use_)
            }
        };
        // c14 is 2^15 values; its declarations' references count too
        // (about 2^16): within.
        let ok = doubling(15, false, false);
        assert_eq!(admit(&ok), Ok(()));
        // (naga then copies it, and `check` refuses values over 8 KiB.)
        let e = compiles(ok).expect_err("value too large");
        assert!(e.contains("the host allows values"), "{e}");
        for (reverse, local) in [(false, false), (true, false), (false, true)] {
            let src = doubling(17, reverse, local);
            let e = admit(&src).expect_err("2^17 values and more");
            assert!(e.contains("expand to more than 131072"), "{e}");
            refused_quickly(&doubling(22, reverse, local), "expand to more than");
        }
        // A lookup table used a few times is fine.
        let table = format!(
            "const t = array<f32, 2047>({});",
            vec!["0.5"; 2047].join(", ")
        );
        let uses = "o[0] = t[u32(o[1])];\n".repeat(8);
        let src = in_main(
            &format!("{table}\n@group(0) @binding(0) var<storage, read_write> o: array<f32>;"),
            &uses,
        );
        assert_eq!(admit(&src), Ok(()));
        assert!(compiles(src).is_ok());
    }

    #[test]
    fn comments_nest_without_recursion_and_hide_their_content() {
        let deep = format!("{}x{}", "/*".repeat(200_000), "*/".repeat(200_000));
        assert_eq!(admit(&deep), Ok(()));
        assert_eq!(admit(&format!("/*{}", "/*".repeat(100_000))), Ok(()));
        assert_eq!(admit(&"// ((((( + + + [[[[\n".repeat(10_000)), Ok(()));
        assert_eq!(admit(&format!("/* {} */", "(".repeat(10_000))), Ok(()));
        // `/*/` opens one comment, it does not close it.
        assert!(admit(&format!("/*/ {} */", "(".repeat(100))).is_ok());
        // After a comment, brackets count again.
        assert!(admit(&format!("/* */ {}", "(".repeat(100))).is_err());
    }

    #[test]
    fn numbers_and_non_ascii_do_not_confuse_the_count() {
        // Exponent signs are part of the literal; a hex `e` is a digit.
        assert_eq!(
            admit(&chain(MAX_CHAIN as usize, "1e+5", "+1.5e-3f")),
            Ok(())
        );
        assert!(admit(&chain(MAX_CHAIN as usize + 1, "0x1e", "+0x1e")).is_err());
        assert!(admit(&chain(MAX_CHAIN as usize + 1, "x", "+.5")).is_err());
        assert_eq!(admit("let é = 1.0; let ÿ = é + é; // ∑ ("), Ok(()));
    }

    #[test]
    fn admit_never_panics_on_arbitrary_bytes_and_is_linear() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"()[]{}+-*/!~.<>=,;/*\n ifelsexfnvar0x1e+";
        for len in [0usize, 1, 2, 7, 64, 1000, 20_000] {
            for _ in 0..50 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        alphabet[(state % alphabet.len() as u64) as usize]
                    })
                    .collect();
                let s = String::from_utf8_lossy(&bytes);
                let _ = admit(&s);
            }
        }
        // A full megabyte of accepted source is one quick pass.
        let src = "x = y + 1.0; // c\n".repeat(MAX_SOURCE_BYTES / 18);
        let start = Instant::now();
        assert_eq!(admit(&src), Ok(()));
        let took = start.elapsed();
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    // ---- check: the WGSL limits naga/wgpu 30 do not enforce ----

    #[test]
    fn private_variables_statically_used() {
        let at = |n: usize, used: bool| {
            in_main(
                &format!("var<private> p: array<f32, {n}>;"),
                if used { "p[0] = 1.0;" } else { "" },
            )
        };
        assert!(compiles(at(2048, true)).is_ok());
        let e = compiles(at(2049, true)).expect_err("8196 bytes");
        assert!(e.contains("8196 bytes of private"), "{e}");
        assert!(compiles(at(2049, false)).is_ok(), "not used by main");
        // Summed over variables, and the 64 MiB attack.
        let two = in_main(
            "var<private> a: array<f32, 1024>; var<private> b: array<f32, 1025>;",
            "a[0] = b[0];",
        );
        assert!(compiles(two).is_err());
        assert!(compiles(at(16 * 1024 * 1024, true)).is_err());
        // Used through a helper function counts too.
        let via = format!(
            "var<private> p: array<f32, 2049>;\nfn h() {{ p[1] = 2.0; }}\n{}",
            in_main("", "h();")
        );
        assert!(compiles(via).is_err());
    }

    #[test]
    fn function_scope_variables_per_function() {
        assert!(compiles(in_main("", "var a: array<f32, 2048>; a[0] = 1.0;")).is_ok());
        let e = compiles(in_main(
            "",
            "var a: array<f32, 2048>; var b: f32; a[0] = b;",
        ))
        .expect_err("8196");
        assert!(
            e.contains("\"main\" declares 8196 bytes of function-scope"),
            "{e}"
        );
        // In a helper, even one the entry point does not call.
        let helper = format!(
            "fn h() {{ var a: array<vec4<f32>, 513>; a[0].x = 1.0; }}\n{}",
            in_main("", "")
        );
        let e = compiles(helper).expect_err("8208");
        assert!(e.contains("\"h\" declares 8208"), "{e}");
        // Per function: two functions of 8 KiB each are fine.
        let two = format!(
            "fn h() {{ var a: array<f32, 2048>; a[0] = 1.0; }}\n{}",
            in_main("", "var a: array<f32, 2048>; a[0] = 1.0; h();")
        );
        assert!(compiles(two).is_ok());
    }

    #[test]
    fn large_array_values() {
        let at = |n: usize| {
            in_main(
                "@group(0) @binding(0) var<storage, read_write> o: array<f32>;",
                &format!("let a = array<f32, {n}>(); o[0] = a[u32(o[1])];"),
            )
        };
        assert!(compiles(at(2048)).is_ok());
        let e = compiles(at(2049)).expect_err("8196");
        assert!(
            e.contains("value of 8196 bytes") && e.contains("line 3"),
            "{e}"
        );
        // Loading a whole storage array into a value.
        let load = in_main(
            "@group(0) @binding(0) var<storage, read_write> o: array<f32, 16777216>;",
            "let all = o; o[0] = all[u32(o[1])];",
        );
        assert!(compiles(load).is_err());
    }

    #[test]
    fn workgroup_size_facts() {
        let f = compiles("@compute @workgroup_size(8, 4) fn main() {}".into()).expect("ok");
        assert_eq!(f.workgroup_size, [8, 4, 1]);
        let f = compiles(
            "override w: u32 = 32u; const h = 2u;\n@compute @workgroup_size(w, h, 3) fn main() {}"
                .into(),
        )
        .expect("ok");
        assert_eq!(f.workgroup_size, [32, 2, 3]);
        let f = compiles(
            "override a: u32 = 16u; override w: u32 = a;\n@compute @workgroup_size(w) fn main() {}"
                .into(),
        )
        .expect("override of an override");
        assert_eq!(f.workgroup_size, [16, 1, 1]);
        let e = compiles("override w: u32;\n@compute @workgroup_size(w) fn main() {}".into())
            .expect_err("no default");
        assert!(e.contains("workgroup size"), "{e}");
        let e =
            compiles("override w: u32 = 4u;\n@compute @workgroup_size(w * 2u) fn main() {}".into())
                .expect_err("expression");
        assert!(e.contains("workgroup size"), "{e}");
    }

    // ---- the shaders of this repository pass ----

    /// `(entry point names, source)` of every `@compute` entry point in `src`.
    fn entry_points(src: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = src;
        while let Some(at) = rest.find("@compute") {
            rest = &rest[at + 8..];
            if let Some(f) = rest.find("fn ") {
                let name: String = rest[f + 3..]
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                names.push(name);
            }
        }
        names
    }

    fn passes(what: &str, src: String) {
        let names = entry_points(&src);
        assert!(!names.is_empty(), "{what}: no entry point");
        admit(&src).unwrap_or_else(|e| panic!("{what}: {e}"));
        for name in names {
            let (src, n) = (src.clone(), name.clone());
            on_worker_stack(move || check(&src, &n, LIMIT))
                .unwrap_or_else(|e| panic!("{what} {name}: {e}"));
        }
    }

    /// The WGSL string constants (`const NAME: &str = "…";`) of a Rust file.
    fn rust_wgsl_consts(rs: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = rs;
        while let Some(at) = rest.find(": &str = \"") {
            rest = &rest[at + 10..];
            if let Some(end) = rest.find("\";") {
                if rest[..end].contains("@compute") {
                    out.push(rest[..end].to_string());
                }
                rest = &rest[end..];
            }
        }
        out
    }

    const SDK: &str = "../../sdk/src/tensor/wgsl/";
    const ROWS: &str = include_str!("../../../sdk/src/tensor/wgsl/rows.wgsl");
    const ERF: &str = include_str!("../../../sdk/src/tensor/wgsl/erf.wgsl");
    const LINEAR: &str = include_str!("../../../sdk/src/tensor/wgsl/linear.wgsl");
    const ELEMENTWISE: &str = include_str!("../../../sdk/src/tensor/wgsl/elementwise.wgsl");

    /// A copy of `linear_source` in sdk/src/tensor/mod.rs (the SDK is a
    /// guest crate; keep the two in step).
    fn linear_source(rb: usize, parts: usize, k: usize) -> String {
        use std::fmt::Write;
        let x_binding = |part: usize| if part == 0 { 0 } else { 5 + part };
        let rows = rb * parts;
        let mut decl = String::new();
        for p in 0..parts {
            let _ = writeln!(
                decl,
                "@group(0) @binding({}) var<uniform> x{p}: array<vec4<f32>, {}>;",
                x_binding(p),
                rb * k / 4
            );
        }
        let mut body = String::new();
        for r in 0..rows {
            let _ = writeln!(body, "    var acc{r} = 0.0;");
        }
        body.push_str("    for (var q = 0u; q < k4; q = q + 1u) {\n        let wv = w[wo + q];\n");
        for r in 0..rows {
            let _ = writeln!(
                body,
                "        acc{r} = acc{r} + dot(x{}[{}u * k4 + q], wv);",
                r / rb,
                r % rb
            );
        }
        body.push_str("    }\n    if (col >= n) {\n        return;\n    }\n");
        for r in 0..rows {
            let _ = writeln!(
                body,
                "    if (dims.row0 + {r}u < dims.m) {{\n        let i{r} = (dims.row0 + {r}u) * n + col;\n        y[i{r}] = epilogue(acc{r} + bias[col], i{r});\n    }}"
            );
        }
        LINEAR
            .replace("//X_BINDINGS", &decl)
            .replace("//ERF", ERF)
            .replace("//BODY", &body)
    }

    #[test]
    fn sdk_tensor_kernels_pass() {
        // As Ops assembles them in sdk/src/tensor/mod.rs.
        for (rb, parts, k) in [(16, 1, 384), (16, 2, 1536), (8, 4, 1536), (4, 8, 2048)] {
            passes(
                &format!("linear {rb}x{parts} k={k}"),
                linear_source(rb, parts, k),
            );
        }
        for d4 in [8, 16, 32] {
            let src = include_str!("../../../sdk/src/tensor/wgsl/attention.wgsl")
                .replace("HEAD_DIM_4u", &format!("{d4}u"));
            passes(&format!("attention D4={d4}"), src);
        }
        for file in [
            include_str!("../../../sdk/src/tensor/wgsl/layer_norm.wgsl"),
            include_str!("../../../sdk/src/tensor/wgsl/softmax.wgsl"),
            include_str!("../../../sdk/src/tensor/wgsl/embed.wgsl"),
            include_str!("../../../sdk/src/tensor/wgsl/pool.wgsl"),
            include_str!("../../../sdk/src/tensor/wgsl/l2_normalize.wgsl"),
        ] {
            passes(SDK, format!("{ROWS}\n{file}"));
        }
        let bias = ELEMENTWISE
            .replace(
                "//BIAS_BINDING",
                "@group(0) @binding(2) var<storage, read> bias: array<f32>;",
            )
            .replace("OP", "x[i] + bias[i % p.b]");
        passes("bias_add", format!("{ROWS}\n{bias}"));
        let gelu = ELEMENTWISE.replace("OP", "gelu_f32(x[i])");
        passes("gelu", format!("{ROWS}\n{ERF}\n{gelu}"));
    }

    #[test]
    fn example_and_test_guest_shaders_pass() {
        passes(
            "gpu-matmul",
            include_str!("../../../guest-examples/gpu-matmul/src/matmul.wgsl").to_string(),
        );
        let hostile =
            rust_wgsl_consts(include_str!("../../../tests/guests/gpu-hostile/src/lib.rs"));
        assert!(hostile.len() >= 4, "{}", hostile.len());
        for (i, src) in hostile.into_iter().enumerate() {
            passes(&format!("gpu-hostile #{i}"), src);
        }
        // The SDK's doc example.
        passes(
            "sdk gpu.rs",
            "@group(0) @binding(0) var<storage, read_write> x: array<f32>;
             @compute @workgroup_size(64) fn double(@builtin(global_invocation_id) id: vec3<u32>) {
                 if id.x < arrayLength(&x) { x[id.x] = 2.0 * x[id.x]; }
             }"
            .to_string(),
        );
    }
}

/// Replays the committed fuzz corpus (fuzz/corpus/wgsl_admission) through
/// the fuzz target's path, on the worker's stack: a cheap regression run of
/// what the fuzzer found interesting, without the fuzz toolchain.
#[cfg(test)]
mod fuzz_corpus {
    #[test]
    fn committed_corpus_replays_without_crashing() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus/wgsl_admission");
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("corpus directory") {
            let path = entry.expect("entry").path();
            inputs.push(std::fs::read(&path).expect("read"));
        }
        assert!(
            inputs.len() >= 20,
            "{}: {} inputs",
            dir.display(),
            inputs.len()
        );
        std::thread::Builder::new()
            .stack_size(16 * 1024 * 1024)
            .spawn(move || {
                for data in inputs {
                    if let Ok(code) = std::str::from_utf8(&data)
                        && super::admit(code).is_ok()
                    {
                        let _ = super::check(code, "main", 16 * 1024);
                    }
                }
            })
            .expect("spawn")
            .join()
            .expect("no panic");
    }
}
