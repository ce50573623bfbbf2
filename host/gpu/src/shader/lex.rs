//! `admit`: a lexical pass over guest WGSL that runs before naga sees it.
//!
//! naga 30 caps its parser's recursion, but it builds some constructs
//! iteratively and then lowers, validates or sorts them recursively: long
//! binary-operator chains (`x+x+…+x`), unary chains (`---x`, `!!!x`),
//! member and index chains (`a.x.x…`, `a[0][0]…`), `else if` chains, and
//! chains of module-scope declarations that refer to each other (the
//! front end orders declarations with a recursive depth-first search). On
//! a few thousand links these overflow the stack of the thread that
//! compiles, and a stack overflow aborts the whole host. This pass bounds
//! each of those shapes with a conservative token count, in one forward
//! scan over the bytes: linear time, no recursion (nested block comments
//! and brackets are counters and an explicit stack), no slicing of the
//! string (so no char-boundary panics), no allocation beyond one stack
//! frame per open bracket (at most [`MAX_NESTING`] + 1).
//!
//! It over-approximates on purpose: multi-character operators (`==`,
//! `<<=`, `->`) count once per character, and `(`/`[` count as an operator
//! (a call, a grouping or an index is one more level of recursion too).
//! The limits are far above what real kernels use (the SDK's generated
//! kernels stay below 40 operators per expression and nesting of 6).

/// Largest source accepted (the host call checks this too).
pub(crate) const MAX_SOURCE_BYTES: usize = 1024 * 1024;
/// Brackets `(`, `[`, `{` open at once.
pub(crate) const MAX_NESTING: usize = 64;
/// Operators along one expression path: the sum, over the enclosing
/// brackets of the current statement, of the operators counted since the
/// last `,` / `;` / `{` / `}` at each level. This bounds the depth of the
/// expression tree naga builds, whatever its shape.
pub(crate) const MAX_CHAIN: u32 = 1024;
/// `else if` links in one chain: naga nests each one block deeper.
pub(crate) const MAX_ELSE_IF: u32 = 128;
/// Block depth as naga sees it: open brackets plus the `else if` links of
/// the chains that enclose the current position.
pub(crate) const MAX_BLOCK_DEPTH: u32 = 192;
/// Module-scope declarations (`fn`, `var`, `const`, `override`, `struct`,
/// `alias`, `const_assert`): the front end's dependency sort recurses
/// along chains of them.
pub(crate) const MAX_DECLARATIONS: u32 = 1024;

/// Values that uses of `const` declarations expand to, summed over every
/// reference in the module. naga keeps a module-scope constant as a DAG
/// (`const c1 = array(c0, c0);` shares `c0`), but each use of it in a
/// function copies the whole tree into the function: a chain of 22 such
/// doublings, 900 bytes of WGSL, took 27 s and 2 GB in a release build.
/// The weight of a constant is the literals in its initializer plus the
/// weights of the constants it names; at ~500 bytes and ~6 µs per value
/// copied, 131,072 values bound that to ~64 MiB and well under a second.
pub(crate) const MAX_CONST_EXPANSION: u64 = 1 << 17;

struct Frame {
    /// Operators counted in the current segment at this level.
    seg: u32,
    /// `else if` links of the chain open at this level.
    chain: u32,
    /// `<` not yet matched by a `>` in the current segment: a `,` inside
    /// a template list (`array<f32, 4>`) separates template arguments, not
    /// expressions, and must not end the segment, or a chain of terms like
    /// `array<f32, 1>(x)[0]` would go uncounted. A `<` that is a less-than
    /// only makes the count stricter until the segment ends.
    templ: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Prev {
    /// Start, or a token that is neither of the others.
    Other,
    /// The identifier `else`.
    Else,
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Check `code` against the limits above. `Err` names the limit and the
/// 1-based line where it was exceeded.
pub(crate) fn admit(code: &str) -> Result<(), String> {
    let bytes = code.as_bytes();
    if bytes.len() > MAX_SOURCE_BYTES {
        return Err(format!(
            "shader source is {} bytes; the limit is {MAX_SOURCE_BYTES}",
            bytes.len()
        ));
    }
    let mut line: usize = 1;
    let mut stack: Vec<Frame> = Vec::with_capacity(MAX_NESTING + 1);
    stack.push(Frame {
        seg: 0,
        chain: 0,
        templ: 0,
    });
    // Sum of `seg` over `stack`.
    let mut path: u32 = 0;
    // Sum of `chain` over `stack`.
    let mut chains: u32 = 0;
    let mut declarations: u32 = 0;
    let mut prev = Prev::Other;
    // The previous token was a `}` that closed back to the current level:
    // an `else` may continue that level's chain; anything else ends it.
    let mut after_close = false;
    let mut i = 0usize;

    // Operators of the current segment are counted at the top frame.
    macro_rules! op {
        () => {{
            if let Some(top) = stack.last_mut() {
                top.seg = top.seg.saturating_add(1);
            }
            path = path.saturating_add(1);
            if path > MAX_CHAIN {
                return Err(format!(
                    "line {line}: expression chain longer than {MAX_CHAIN} operators \
                     (operators, member accesses, indexes and calls along one expression)"
                ));
            }
        }};
    }
    // A `,`, `;`, `{` or `}` ends the segment at the current level.
    macro_rules! end_segment {
        () => {{
            if let Some(top) = stack.last_mut() {
                path = path.saturating_sub(top.seg);
                top.seg = 0;
                top.templ = 0;
            }
        }};
    }

    while let Some(&b) = bytes.get(i) {
        // Whitespace and comments do not change `prev` or `after_close`.
        match b {
            b'\n' => {
                line += 1;
                i += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' | 0x0b | 0x0c => {
                i += 1;
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while let Some(&c) = bytes.get(i) {
                    if c == b'\n' {
                        break;
                    }
                    i += 1;
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                // Block comments nest; a counter, not recursion. An
                // unterminated one runs to the end (naga reports it).
                let mut depth: u64 = 1;
                i += 2;
                while depth > 0 {
                    match (bytes.get(i), bytes.get(i + 1)) {
                        (None, _) => break,
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                        }
                        (Some(b'\n'), _) => {
                            line += 1;
                            i += 1;
                        }
                        _ => i += 1,
                    }
                }
                continue;
            }
            _ => {}
        }

        // A chain at this level ends at the first token after its `}`
        // that is not `else`.
        let continues_chain = after_close;
        after_close = false;

        if b.is_ascii_digit() || (b == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            // A number: digits, letters, `.`, and a sign right after an
            // exponent letter (`e` in decimal, `p` in hexadecimal).
            let hex = b == b'0' && matches!(bytes.get(i + 1), Some(b'x' | b'X'));
            i += 1;
            while let Some(&c) = bytes.get(i) {
                let exponent = if hex {
                    matches!(c, b'p' | b'P')
                } else {
                    matches!(c, b'e' | b'E')
                };
                if exponent && matches!(bytes.get(i + 1), Some(b'+' | b'-')) {
                    i += 2;
                } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' {
                    i += 1;
                } else {
                    break;
                }
            }
            if continues_chain {
                end_chain(&mut stack, &mut chains);
            }
            prev = Prev::Other;
            continue;
        }

        if is_ident_byte(b) {
            let start = i;
            while bytes.get(i).is_some_and(|&c| is_ident_byte(c)) {
                i += 1;
            }
            let word = bytes.get(start..i).unwrap_or_default();
            if continues_chain && word != b"else" {
                end_chain(&mut stack, &mut chains);
            }
            if word == b"if" && prev == Prev::Else {
                if let Some(top) = stack.last_mut() {
                    top.chain = top.chain.saturating_add(1);
                    chains = chains.saturating_add(1);
                    if top.chain > MAX_ELSE_IF {
                        return Err(format!(
                            "line {line}: more than {MAX_ELSE_IF} `else if` in one chain"
                        ));
                    }
                }
                check_depth(stack.len(), chains, line)?;
            }
            if stack.len() == 1
                && matches!(
                    word,
                    b"fn"
                        | b"var"
                        | b"const"
                        | b"override"
                        | b"struct"
                        | b"alias"
                        | b"const_assert"
                )
            {
                declarations = declarations.saturating_add(1);
                if declarations > MAX_DECLARATIONS {
                    return Err(format!(
                        "line {line}: more than {MAX_DECLARATIONS} module-scope declarations"
                    ));
                }
            }
            prev = if word == b"else" {
                Prev::Else
            } else {
                Prev::Other
            };
            continue;
        }

        i += 1;
        if continues_chain {
            end_chain(&mut stack, &mut chains);
        }
        prev = Prev::Other;
        match b {
            b'(' | b'[' | b'{' => {
                if b == b'{' {
                    end_segment!();
                } else {
                    op!();
                }
                if stack.len() > MAX_NESTING {
                    return Err(format!(
                        "line {line}: brackets nested deeper than {MAX_NESTING}"
                    ));
                }
                stack.push(Frame {
                    seg: 0,
                    chain: 0,
                    templ: 0,
                });
                check_depth(stack.len(), chains, line)?;
            }
            b')' | b']' | b'}' => {
                // Mismatched brackets are naga's to report; the root
                // frame is never popped.
                if stack.len() > 1
                    && let Some(top) = stack.pop()
                {
                    path = path.saturating_sub(top.seg);
                    chains = chains.saturating_sub(top.chain);
                }
                if b == b'}' {
                    end_segment!();
                    after_close = true;
                }
            }
            b',' if stack.last().is_some_and(|top| top.templ == 0) => end_segment!(),
            b';' => end_segment!(),
            b'<' => {
                if let Some(top) = stack.last_mut() {
                    top.templ = top.templ.saturating_add(1);
                }
                op!();
            }
            b'>' => {
                if let Some(top) = stack.last_mut() {
                    top.templ = top.templ.saturating_sub(1);
                }
                op!();
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'&' | b'|' | b'^' | b'!' | b'~' | b'=' | b'.' => {
                op!()
            }
            // `@`, `:`, anything else: not an operator.
            _ => {}
        }
    }
    const_expansion(bytes)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tok {
    Ident,
    Number,
    Punct(u8),
}

/// Tokens of `bytes` (comments skipped), with their line: a simpler cut of
/// the scan in `admit`, for the constant pass.
struct Tokens<'a> {
    bytes: &'a [u8],
    i: usize,
    line: usize,
}

impl<'a> Iterator for Tokens<'a> {
    type Item = (Tok, &'a [u8], usize);
    fn next(&mut self) -> Option<Self::Item> {
        let bytes = self.bytes;
        loop {
            let b = *bytes.get(self.i)?;
            match b {
                b'\n' => {
                    self.line += 1;
                    self.i += 1;
                }
                b' ' | b'\t' | b'\r' | 0x0b | 0x0c => self.i += 1,
                b'/' if bytes.get(self.i + 1) == Some(&b'/') => {
                    while bytes.get(self.i).is_some_and(|&c| c != b'\n') {
                        self.i += 1;
                    }
                }
                b'/' if bytes.get(self.i + 1) == Some(&b'*') => {
                    let mut depth: u64 = 1;
                    self.i += 2;
                    while depth > 0 {
                        match (bytes.get(self.i), bytes.get(self.i + 1)) {
                            (None, _) => break,
                            (Some(b'/'), Some(b'*')) => {
                                depth += 1;
                                self.i += 2;
                            }
                            (Some(b'*'), Some(b'/')) => {
                                depth -= 1;
                                self.i += 2;
                            }
                            (Some(b'\n'), _) => {
                                self.line += 1;
                                self.i += 1;
                            }
                            _ => self.i += 1,
                        }
                    }
                }
                _ => break,
            }
        }
        let start = self.i;
        let b = *bytes.get(start)?;
        let kind = if b.is_ascii_digit()
            || (b == b'.' && bytes.get(start + 1).is_some_and(u8::is_ascii_digit))
        {
            let hex = b == b'0' && matches!(bytes.get(start + 1), Some(b'x' | b'X'));
            self.i += 1;
            while let Some(&c) = bytes.get(self.i) {
                let exponent = if hex {
                    matches!(c, b'p' | b'P')
                } else {
                    matches!(c, b'e' | b'E')
                };
                if exponent && matches!(bytes.get(self.i + 1), Some(b'+' | b'-')) {
                    self.i += 2;
                } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' {
                    self.i += 1;
                } else {
                    break;
                }
            }
            Tok::Number
        } else if is_ident_byte(b) {
            while bytes.get(self.i).is_some_and(|&c| is_ident_byte(c)) {
                self.i += 1;
            }
            Tok::Ident
        } else {
            self.i += 1;
            Tok::Punct(b)
        };
        Some((
            kind,
            bytes.get(start..self.i).unwrap_or_default(),
            self.line,
        ))
    }
}

/// One `const` declaration: the literals and the names in its initializer.
struct ConstDecl<'a> {
    literals: u64,
    names: Vec<&'a [u8]>,
}

/// Bound [`MAX_CONST_EXPANSION`]. Module-scope constants may be declared
/// in any order, so their weights are computed first (an iterative
/// depth-first walk over at most [`MAX_DECLARATIONS`] of them); then every
/// use of a constant name anywhere (a function-scope `const` takes the
/// weight of its initializer) adds its weight to the total. Names are not
/// scoped: a local that shadows a constant counts as the constant (an
/// over-approximation), and a name declared twice takes the larger weight.
fn const_expansion(bytes: &[u8]) -> Result<(), String> {
    use std::collections::HashMap;
    let tokens = || Tokens {
        bytes,
        i: 0,
        line: 1,
    };
    // Pass 1: module-scope `const` declarations.
    let mut decls: Vec<ConstDecl<'_>> = Vec::new();
    let mut index: HashMap<&[u8], usize> = HashMap::new();
    let mut depth: usize = 0;
    let mut toks = tokens();
    while let Some((kind, text, _)) = toks.next() {
        match kind {
            Tok::Punct(b'{') => depth += 1,
            Tok::Punct(b'}') => depth = depth.saturating_sub(1),
            Tok::Ident if depth == 0 && text == b"const" => {
                let Some((Tok::Ident, name, _)) = toks.next() else {
                    continue;
                };
                let mut decl = ConstDecl {
                    literals: 0,
                    names: Vec::new(),
                };
                let mut init = false;
                for (kind, text, _) in toks.by_ref() {
                    match kind {
                        Tok::Punct(b';') => break,
                        Tok::Punct(b'=') => init = true,
                        Tok::Number if init => decl.literals += 1,
                        Tok::Ident if init => decl.names.push(text),
                        _ => {}
                    }
                }
                index.insert(name, decls.len());
                decls.push(decl);
            }
            _ => {}
        }
    }
    // Weights, children first. Names that are not module constants (types,
    // functions, builtins) count 0: the literals are the leaves. A cycle
    // (naga refuses it) is cut.
    let mut weight: Vec<Option<u64>> = vec![None; decls.len()];
    let mut on_stack = vec![false; decls.len()];
    for root in 0..decls.len() {
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        while let Some(&mut (d, ref mut next)) = stack.last_mut() {
            if weight.get(d).copied().flatten().is_some() {
                stack.pop();
                continue;
            }
            if let Some(s) = on_stack.get_mut(d) {
                *s = true;
            }
            let names = decls.get(d).map(|c| c.names.as_slice()).unwrap_or_default();
            if let Some(name) = names.get(*next) {
                *next += 1;
                if let Some(&child) = index.get(name)
                    && weight.get(child).copied().flatten().is_none()
                    && !on_stack.get(child).copied().unwrap_or(true)
                {
                    stack.push((child, 0));
                }
                continue;
            }
            let mut w = decls.get(d).map_or(0, |c| c.literals);
            for name in names {
                let child = index
                    .get(name)
                    .and_then(|&c| weight.get(c).copied().flatten());
                w = w.saturating_add(child.unwrap_or(0));
            }
            if let Some(slot) = weight.get_mut(d) {
                *slot = Some(w.max(1));
            }
            if let Some(s) = on_stack.get_mut(d) {
                *s = false;
            }
            stack.pop();
        }
    }
    let mut weights: HashMap<&[u8], u64> = index
        .iter()
        .map(|(&name, &d)| (name, weight.get(d).copied().flatten().unwrap_or(1)))
        .collect();
    // Pass 2: every use of a constant name; function-scope constants are
    // declared before they are used.
    let mut total: u64 = 0;
    let mut depth: usize = 0;
    let mut local: Option<(&[u8], u64)> = None;
    let mut after_const = false;
    let mut local_init = false;
    for (kind, text, line) in tokens() {
        match kind {
            Tok::Punct(b'{') => depth += 1,
            Tok::Punct(b'}') => depth = depth.saturating_sub(1),
            Tok::Punct(b';') => {
                if let Some((name, w)) = local.take() {
                    let slot = weights.entry(name).or_insert(0);
                    *slot = (*slot).max(w.max(1));
                }
                local_init = false;
            }
            Tok::Punct(b'=') if local.is_some() => local_init = true,
            Tok::Number if local_init => {
                if let Some((_, w)) = local.as_mut() {
                    *w = w.saturating_add(1);
                }
            }
            Tok::Ident if after_const && depth > 0 => local = Some((text, 0)),
            // The name of a module-scope constant: not a use.
            Tok::Ident if after_const => {}
            Tok::Ident if text == b"const" => {}
            Tok::Ident => {
                if let Some(&w) = weights.get(text) {
                    total = total.saturating_add(w);
                    if local_init && let Some((_, lw)) = local.as_mut() {
                        *lw = lw.saturating_add(w);
                    }
                    if total > MAX_CONST_EXPANSION {
                        return Err(format!(
                            "line {line}: the uses of `const` values expand to more than \
                             {MAX_CONST_EXPANSION} values"
                        ));
                    }
                }
            }
            _ => {}
        }
        after_const = kind == Tok::Ident && text == b"const";
    }
    Ok(())
}

fn end_chain(stack: &mut [Frame], chains: &mut u32) {
    if let Some(top) = stack.last_mut() {
        *chains = chains.saturating_sub(top.chain);
        top.chain = 0;
    }
}

fn check_depth(open: usize, chains: u32, line: usize) -> Result<(), String> {
    // `open` counts the root frame.
    let depth = u32::try_from(open.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .saturating_add(chains);
    if depth > MAX_BLOCK_DEPTH {
        return Err(format!(
            "line {line}: blocks nested deeper than {MAX_BLOCK_DEPTH} \
             (brackets plus the `else if` links that enclose them)"
        ));
    }
    Ok(())
}
