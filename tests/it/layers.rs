//! The file-level import graph of `src/` follows the layers written in
//! ARCHITECTURE.md ("Layers"): no file imports from a layer above its own,
//! and no files import each other in a circle.
//!
//! Every `crate::`, `super::`, `self::` path (in `use` trees, grouped or
//! not, and inline in code), every path through a name a `use` brought in
//! (`use crate::telemetry;` then `telemetry::Fault`) and through a child
//! module is resolved to the file that *defines* the name it reaches,
//! following `pub use` re-exports and glob imports, so taking a type
//! through a parent's re-export counts as taking it from its own file.
//! Two kinds of import are left out: a module's root file (`lib.rs`,
//! `mod.rs`) using its own submodules, since it declares them (its
//! children may still use it), and test code (`#[cfg(test)]` items and
//! the files of `#[cfg(test)] mod x;`), which may use any layer (the
//! simulator for input, say). `main.rs` is read as its own crate whose
//! `calllog_bridge::` paths lead into the library. Comments, strings and
//! character literals are skipped by a small tokenizer; no extra crate, no
//! network, a fraction of a second.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

/// The tokens of Rust source that matter for paths, with their lines;
/// comments, strings, characters, lifetimes and numbers are dropped.
fn tokenize(src: &str) -> Vec<(Tok, usize)> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut line) = (0usize, 1usize);
    let ident_start = |c: u8| c.is_ascii_alphabetic() || c == b'_';
    let ident_cont = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            _ if c.is_ascii_whitespace() => i += 1,
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        line += usize::from(b[i] == b'\n');
                        i += 1;
                    }
                }
            }
            b'"' => i = skip_string(b, i + 1, &mut line),
            b'r' | b'b' | b'c' if raw_or_byte_string(b, i).is_some() => {
                let (start, hashes) = raw_or_byte_string(b, i).unwrap_or_default();
                i = match hashes {
                    Some(n) => skip_raw(b, start, n, &mut line),
                    None => skip_string(b, start, &mut line),
                };
            }
            b'\'' => {
                // A character literal ('x', '\n', '\u{..}') or a lifetime / label.
                if b.get(i + 1) == Some(&b'\\') {
                    i += 3;
                    while i < b.len() && b[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    let ch_len = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                    if b.get(i + 1 + ch_len) == Some(&b'\'') {
                        i += 2 + ch_len;
                    } else {
                        i += 1;
                        while i < b.len() && ident_cont(b[i]) {
                            i += 1;
                        }
                    }
                }
            }
            b'$' if src[i + 1..].starts_with("crate") => {
                out.push((Tok::Ident("crate".into()), line));
                i += 6;
            }
            _ if ident_start(c) => {
                let mut s = i;
                if c == b'r' && b.get(i + 1) == Some(&b'#') && b.get(i + 2).is_some_and(|&d| ident_start(d)) {
                    s = i + 2;
                }
                let mut e = s;
                while e < b.len() && ident_cont(b[e]) {
                    e += 1;
                }
                out.push((Tok::Ident(src[s..e].to_string()), line));
                i = e;
            }
            _ if c.is_ascii_digit() => {
                while i < b.len() && (ident_cont(b[i]) || (b[i] == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))) {
                    i += 1;
                }
            }
            b':' if b.get(i + 1) == Some(&b':') => {
                out.push((Tok::PathSep, line));
                i += 2;
            }
            _ if c.is_ascii() => {
                out.push((Tok::Punct(c as char), line));
                i += 1;
            }
            _ => i += src[i..].chars().next().map_or(1, char::len_utf8),
        }
    }
    out
}

/// At `i`, a `b"`, `c"`, `r"`, `r#"`, `br#"`...: where its text starts and,
/// for a raw string, how many `#` close it.
fn raw_or_byte_string(b: &[u8], i: usize) -> Option<(usize, Option<usize>)> {
    if i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') {
        return None;
    }
    let mut j = i;
    if b[j] == b'b' || b[j] == b'c' {
        j += 1;
    }
    if b.get(j) == Some(&b'r') {
        j += 1;
        let mut n = 0;
        while b.get(j) == Some(&b'#') {
            n += 1;
            j += 1;
        }
        return (b.get(j) == Some(&b'"')).then_some((j + 1, Some(n)));
    }
    if j > i && b.get(j) == Some(&b'"') {
        return Some((j + 1, None));
    }
    if j > i && b.get(j) == Some(&b'\'') {
        // b'x': a byte literal.
        let mut k = j + 1;
        if b.get(k) == Some(&b'\\') {
            k += 1;
        }
        k += 1;
        while k < b.len() && b[k] != b'\'' {
            k += 1;
        }
        return Some((k, Some(usize::MAX)));
    }
    None
}

fn skip_string(b: &[u8], mut i: usize, line: &mut usize) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            c => {
                *line += usize::from(c == b'\n');
                i += 1;
            }
        }
    }
    i
}

fn skip_raw(b: &[u8], mut i: usize, hashes: usize, line: &mut usize) -> usize {
    if hashes == usize::MAX {
        return i + 1; // the closing quote of a byte literal
    }
    while i < b.len() {
        if b[i] == b'"' && b[i + 1..].iter().take(hashes).filter(|&&c| c == b'#').count() == hashes {
            return i + 1 + hashes;
        }
        *line += usize::from(b[i] == b'\n');
        i += 1;
    }
    i
}

/// A module path inside the library crate (`["telemetry", "status"]`).
type ModPath = Vec<String>;

/// One `use` leaf: the path as written, the name it binds (none for `as _`
/// and globs).
#[derive(Clone, Debug)]
struct UseLeaf {
    path: Vec<String>,
    bind: Option<String>,
    glob: bool,
    line: usize,
}

/// What one module (a file or an inline `mod x { }`) declares.
#[derive(Debug, Default)]
struct Module {
    file: PathBuf,
    /// Items defined here (struct, enum, fn, trait, ...).
    items: HashSet<String>,
    /// Names bound by `use`, to the path they stand for.
    binds: HashMap<String, Vec<String>>,
    /// Paths of `use ...::*`.
    globs: Vec<Vec<String>>,
    children: HashSet<String>,
}

/// A path found in a file, to resolve in the module it was written in.
#[derive(Debug)]
struct Reference {
    module: ModPath,
    path: Vec<String>,
    glob: bool,
    line: usize,
}

struct Crate {
    modules: BTreeMap<ModPath, Module>,
    /// `#[macro_export]` macros: at the crate root, defined in this file.
    exported_macros: HashMap<String, PathBuf>,
    refs: Vec<(PathBuf, Reference)>,
    /// Modules declared under `#[cfg(test)]` (`mod model_tests;`).
    test_only: HashSet<ModPath>,
}

/// The module path of a file under `src/` (`src/a/mod.rs` and `src/a.rs`
/// are `a`; `lib.rs` the root).
fn module_of(rel: &Path) -> ModPath {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read src").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Reads one file's modules, items, `use` leaves and inline paths.
fn read_file(krate: &mut Crate, file: &Path, root_mod: ModPath, toks: &[(Tok, usize)]) {
    let ident = |k: usize| match toks.get(k) {
        Some((Tok::Ident(s), _)) => Some(s.as_str()),
        _ => None,
    };
    let punct = |k: usize, c: char| matches!(toks.get(k), Some((Tok::Punct(p), _)) if *p == c);
    let sep = |k: usize| matches!(toks.get(k), Some((Tok::PathSep, _)));
    // Inline modules open at a brace depth: (their path, the depth of their body).
    let mut stack: Vec<(ModPath, usize)> = vec![(root_mod.clone(), 0)];
    krate.modules.entry(root_mod).or_default().file = file.to_path_buf();
    let mut depth = 0usize;
    let mut macro_export = false;
    let mut k = 0;
    while k < toks.len() {
        let here = stack.last().map(|s| s.0.clone()).unwrap_or_default();
        let at_item_level = stack.last().is_some_and(|s| s.1 == depth);
        match &toks[k].0 {
            Tok::Punct('{') => {
                depth += 1;
                k += 1;
            }
            Tok::Punct('}') => {
                if stack.len() > 1 && stack.last().is_some_and(|s| s.1 == depth) {
                    stack.pop();
                }
                depth = depth.saturating_sub(1);
                k += 1;
            }
            Tok::Punct('#')
                if punct(k + 1, '[')
                    && ident(k + 2) == Some("cfg")
                    && punct(k + 3, '(')
                    && ident(k + 4) == Some("test")
                    && punct(k + 5, ')') =>
            {
                // Test code may use any layer (the simulator for input, say):
                // the item is skipped, a test module's file left out.
                let mut j = k + 7;
                while punct(j, '#') && punct(j + 1, '[') {
                    while j < toks.len() && !punct(j, ']') {
                        j += 1;
                    }
                    j += 1;
                }
                let mut open = 0usize;
                while j < toks.len() {
                    if punct(j, '{') {
                        open += 1;
                    } else if punct(j, '}') {
                        open -= 1;
                        if open == 0 {
                            break;
                        }
                    } else if punct(j, ';') && open == 0 {
                        break;
                    }
                    if ident(j) == Some("mod") && punct(j + 2, ';') && open == 0 {
                        let mut child = here.clone();
                        child.push(ident(j + 1).unwrap_or_default().to_string());
                        krate.test_only.insert(child);
                    }
                    j += 1;
                }
                k = j + 1;
            }
            Tok::Punct('#') if punct(k + 1, '[') && ident(k + 2) == Some("macro_export") => {
                macro_export = true;
                k += 3;
            }
            Tok::Ident(kw) if kw == "use" && !sep(k + 1) => {
                let line = toks[k].1;
                let mut leaves = Vec::new();
                let end = parse_use_tree(toks, k + 1, Vec::new(), &mut leaves, line);
                let m = krate.modules.entry(here.clone()).or_default();
                for l in &leaves {
                    if l.glob {
                        m.globs.push(l.path.clone());
                    } else if let Some(b) = &l.bind {
                        m.binds.insert(b.clone(), l.path.clone());
                    }
                }
                for l in leaves {
                    krate.refs.push((file.to_path_buf(), Reference { module: here.clone(), path: l.path, glob: l.glob, line: l.line }));
                }
                k = end;
            }
            Tok::Ident(kw) if kw == "mod" && ident(k + 1).is_some() && !sep(k + 1) => {
                let name = ident(k + 1).unwrap_or_default().to_string();
                let mut child = here.clone();
                child.push(name.clone());
                krate.modules.entry(here.clone()).or_default().children.insert(name);
                if punct(k + 2, '{') {
                    depth += 1;
                    stack.push((child.clone(), depth));
                    krate.modules.entry(child).or_default().file = file.to_path_buf();
                    k += 3;
                } else {
                    k += 2;
                }
            }
            Tok::Ident(kw) if kw == "macro_rules" && punct(k + 1, '!') => {
                if let Some(name) = ident(k + 2) {
                    if macro_export {
                        krate.exported_macros.insert(name.to_string(), file.to_path_buf());
                    }
                    krate.modules.entry(here).or_default().items.insert(name.to_string());
                }
                macro_export = false;
                k += 3;
            }
            Tok::Ident(kw)
                if at_item_level
                    && matches!(kw.as_str(), "struct" | "enum" | "fn" | "trait" | "type" | "const" | "static" | "union")
                    && !sep(k + 1) =>
            {
                if let Some(name) = ident(k + 1).filter(|n| *n != "mut" && *n != "fn") {
                    krate.modules.entry(here).or_default().items.insert(name.to_string());
                } else if let Some(name) = ident(k + 2) {
                    krate.modules.entry(here).or_default().items.insert(name.to_string());
                }
                k += 2;
            }
            Tok::Ident(first) if !(k > 0 && sep(k - 1)) && sep(k + 1) => {
                // A path in code: `crate::a::B`, `super::x`, `alias::Y`.
                let line = toks[k].1;
                let mut path = vec![first.clone()];
                let mut j = k + 1;
                while sep(j) {
                    match ident(j + 1) {
                        Some(s) => {
                            path.push(s.to_string());
                            j += 2;
                        }
                        None => break, // `::<T>` or `::{`
                    }
                }
                krate.refs.push((file.to_path_buf(), Reference { module: here, path, glob: false, line }));
                k = j;
            }
            _ => {
                if !matches!(&toks[k].0, Tok::Punct('#') | Tok::Punct('[') | Tok::Punct(']') | Tok::Ident(_)) {
                    macro_export = false;
                }
                k += 1;
            }
        }
    }
}

/// Parses a use tree from `k` (after `use` or inside braces); returns the
/// index after it (past the `;` at the top level).
fn parse_use_tree(toks: &[(Tok, usize)], mut k: usize, mut prefix: Vec<String>, out: &mut Vec<UseLeaf>, line: usize) -> usize {
    let line = toks.get(k).map_or(line, |t| t.1);
    if matches!(toks.get(k), Some((Tok::PathSep, _))) {
        k += 1; // `use ::std::..`
    }
    loop {
        match toks.get(k).map(|t| &t.0) {
            Some(Tok::Ident(s)) => {
                let s = s.clone();
                k += 1;
                if matches!(toks.get(k), Some((Tok::PathSep, _))) {
                    prefix.push(s);
                    k += 1;
                    continue;
                }
                let mut bind = Some(s.clone());
                if matches!(toks.get(k), Some((Tok::Ident(a), _)) if a == "as") {
                    bind = match toks.get(k + 1) {
                        Some((Tok::Ident(n), _)) if n != "_" => Some(n.clone()),
                        _ => None, // `as _`
                    };
                    k += 2;
                }
                let path = if s == "self" {
                    bind = bind.filter(|b| b != "self").or_else(|| prefix.last().cloned());
                    prefix.clone()
                } else {
                    let mut p = prefix.clone();
                    p.push(s);
                    p
                };
                out.push(UseLeaf { path, bind, glob: false, line });
                break;
            }
            Some(Tok::Punct('*')) => {
                out.push(UseLeaf { path: prefix.clone(), bind: None, glob: true, line });
                k += 1;
                break;
            }
            Some(Tok::Punct('{')) => {
                k += 1;
                loop {
                    match toks.get(k).map(|t| &t.0) {
                        Some(Tok::Punct('}')) => {
                            k += 1;
                            break;
                        }
                        Some(Tok::Punct(',')) => k += 1,
                        None => break,
                        _ => k = parse_use_tree(toks, k, prefix.clone(), out, line),
                    }
                }
                break;
            }
            _ => break,
        }
    }
    // At the top level, run to the `;`.
    if matches!(toks.get(k), Some((Tok::Punct(';'), _))) {
        k += 1;
    }
    k
}

/// Where a path leads: an item defined in a file, or a module.
#[derive(Clone, Debug, PartialEq)]
enum Target {
    Item(PathBuf),
    Module(ModPath),
}

impl Crate {
    fn file_of(&self, m: &ModPath) -> Option<&PathBuf> {
        self.modules.get(m).map(|x| &x.file)
    }

    /// Resolves `path` written in module `here`; `None` when it leaves the
    /// crate (std, a dependency, a local name).
    fn resolve(&self, here: &ModPath, path: &[String], seen: &mut HashSet<(ModPath, Vec<String>)>) -> Option<Target> {
        self.resolve_in(here, path, false, seen)
    }

    /// As `resolve`; `strict`: a name the module does not declare is not
    /// found (a glob is tried for names it really has).
    fn resolve_in(&self, here: &ModPath, path: &[String], strict: bool, seen: &mut HashSet<(ModPath, Vec<String>)>) -> Option<Target> {
        if !seen.insert((here.clone(), path.to_vec())) || path.is_empty() {
            return None;
        }
        let (mut cur, mut rest): (ModPath, &[String]) = match path[0].as_str() {
            "crate" | "calllog_bridge" => (Vec::new(), &path[1..]),
            "self" => (here.clone(), &path[1..]),
            "super" => {
                let mut m = here.clone();
                let mut r = path;
                while r.first().is_some_and(|s| s == "super") {
                    m.pop();
                    r = &r[1..];
                }
                (m, r)
            }
            _ => (here.clone(), path),
        };
        let mut first = !matches!(path[0].as_str(), "crate" | "calllog_bridge" | "self" | "super");
        while let Some(seg) = rest.first() {
            let module = self.modules.get(&cur)?;
            if module.children.contains(seg) {
                cur.push(seg.clone());
            } else if module.items.contains(seg) {
                return Some(Target::Item(module.file.clone()));
            } else if cur.is_empty() && self.exported_macros.contains_key(seg) {
                return Some(Target::Item(self.exported_macros[seg].clone()));
            } else if let Some(bound) = module.binds.get(seg) {
                let t = self.resolve(&cur, bound, seen)?;
                return match t {
                    Target::Module(m) if rest.len() > 1 => {
                        let mut p = vec!["crate".to_string()];
                        p.extend(m);
                        p.extend(rest[1..].iter().cloned());
                        self.resolve(&cur, &p, seen)
                    }
                    t => Some(t),
                };
            } else {
                for g in &module.globs {
                    if let Some(Target::Module(m)) = self.resolve(&cur, g, seen) {
                        let mut p = vec!["crate".to_string()];
                        p.extend(m);
                        p.extend(rest.iter().cloned());
                        if let Some(t) = self.resolve_in(&cur, &p, true, seen) {
                            return Some(t);
                        }
                    }
                }
                // A name this module does not declare: outside the crate when
                // it starts the path (std, a dependency, a local), else
                // something of the module's file (a variant, a method).
                return if first || strict { None } else { Some(Target::Item(module.file.clone())) };
            }
            first = false;
            rest = &rest[1..];
        }
        Some(Target::Module(cur))
    }
}

/// One row of the layer table: a layer number and the module paths in it.
fn read_layers(doc: &str) -> Vec<(u32, Vec<ModPath>)> {
    let doc = format!("\n{doc}");
    let Some(section) = doc.split("\n## Layers").nth(1) else { return Vec::new() };
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.trim_start().starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(n) = cells.get(1).and_then(|c| c.parse::<u32>().ok()) else { continue };
        let mods = cells[2]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|m| m.trim_end_matches('/').split("::").flat_map(|s| s.split('/')).map(str::to_string).collect())
            .collect();
        rows.push((n, mods));
    }
    rows
}

/// The layer of a module: the row with the longest entry that is a prefix of it.
fn layer_of(layers: &[(u32, Vec<ModPath>)], m: &ModPath) -> Option<(u32, String)> {
    layers
        .iter()
        .flat_map(|(n, ms)| ms.iter().map(move |p| (*n, p)))
        .filter(|(_, p)| m.starts_with(p) && !p.is_empty())
        .max_by_key(|(_, p)| p.len())
        .map(|(n, p)| (n, p.join("::")))
}

/// Strongly connected components (Tarjan), the ones of two files or more.
fn circles(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct State<'a> {
        edges: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: HashMap<&'a PathBuf, usize>,
        low: HashMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on: HashSet<&'a PathBuf>,
        out: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a PathBuf) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let l = s.low[w].min(s.low[v]);
                s.low.insert(v, l);
            } else if s.on.contains(w) {
                let l = s.index[w].min(s.low[v]);
                s.low.insert(v, l);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State { edges, index: HashMap::new(), low: HashMap::new(), stack: Vec::new(), on: HashSet::new(), out: Vec::new() };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// An import of one file from another: where it is written and as what.
#[derive(Clone, Debug)]
struct Import {
    line: usize,
    path: String,
}

/// Reads the crate under `src`: the file-level imports (from, to, how).
fn imports(src: &Path) -> (Crate, BTreeMap<(PathBuf, PathBuf), Vec<Import>>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut krate = Crate { modules: BTreeMap::new(), exported_macros: HashMap::new(), refs: Vec::new(), test_only: HashSet::new() };
    for f in &files {
        let rel = f.strip_prefix(src).expect("under src").to_path_buf();
        if rel == Path::new("main.rs") {
            continue; // below
        }
        let text = std::fs::read_to_string(f).expect("read source");
        read_file(&mut krate, &rel, module_of(&rel), &tokenize(&text));
    }
    // Test modules in files of their own are left out with their files.
    let test_only = std::mem::take(&mut krate.test_only);
    let is_test = |f: &Path| test_only.iter().any(|t| module_of(f).starts_with(t));
    krate.modules.retain(|_, m| !is_test(&m.file));
    krate.refs.retain(|(f, _)| !is_test(f));
    for t in &test_only {
        let parent = &t[..t.len() - 1];
        if let Some(m) = krate.modules.get_mut(parent) {
            m.children.remove(&t[t.len() - 1]);
        }
    }
    // The binary is its own crate on top of the library: its module is
    // `<main>`, and its `calllog_bridge::` paths lead to the library's root.
    if let Ok(text) = std::fs::read_to_string(src.join("main.rs")) {
        read_file(&mut krate, Path::new("main.rs"), vec!["<main>".into()], &tokenize(&text));
    }
    let mut out: BTreeMap<(PathBuf, PathBuf), Vec<Import>> = BTreeMap::new();
    for (file, r) in &krate.refs {
        let target = match krate.resolve(&r.module, &r.path, &mut HashSet::new()) {
            Some(Target::Item(f)) => Some(f),
            Some(Target::Module(m)) if r.glob => krate.file_of(&m).cloned(),
            _ => None,
        };
        if let Some(to) = target.filter(|t| t != file) {
            out.entry((file.clone(), to)).or_default().push(Import { line: r.line, path: r.path.join("::") });
        }
    }
    (krate, out)
}

/// True when `from` is the root file of a module that contains `to`'s
/// module (a parent declaring and using its own submodules).
fn declares(from: &Path, to_mod: &ModPath) -> bool {
    let name = from.file_name().and_then(|n| n.to_str()).unwrap_or("");
    (name == "mod.rs" || name == "lib.rs") && to_mod.starts_with(&module_of(from))
}

/// Every problem of the tree under `src` against the layer table in
/// `doc`, one a line (empty when none), and how many imports it read.
fn check(src: &Path, doc: &str) -> (String, usize) {
    let layers = read_layers(doc);
    let (krate, imports) = imports(src);
    let mut problems = String::new();
    if layers.len() < 2 {
        problems.push_str("ARCHITECTURE.md `## Layers` has no table rows\n");
    }

    // Every file has a layer, and every module the table names exists.
    let files: BTreeMap<PathBuf, ModPath> = krate.modules.values().map(|m| (m.file.clone(), module_of(&m.file))).collect();
    for (f, m) in &files {
        if !m.is_empty() && layer_of(&layers, m).is_none() {
            let _ = writeln!(problems, "src/{}: module `{}` is in no layer of ARCHITECTURE.md", f.display(), m.join("::"));
        }
    }
    for (_, ms) in &layers {
        for m in ms {
            if !files.values().any(|f| f.starts_with(m)) {
                let _ = writeln!(problems, "ARCHITECTURE.md layers name `{}`, which is no module under src/", m.join("::"));
            }
        }
    }

    // No import from a layer above.
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for ((from, to), how) in &imports {
        let (fm, tm) = (&files[from], &files[to]);
        if declares(from, tm) {
            continue;
        }
        edges.entry(from.clone()).or_default().insert(to.clone());
        if let (Some((fl, fname)), Some((tl, tname))) = (layer_of(&layers, fm), layer_of(&layers, tm)) {
            if tl > fl {
                for i in how {
                    let _ = writeln!(
                        problems,
                        "src/{}:{}: `{}` runs up the layers: `{fname}` (layer {fl}) takes from src/{} of `{tname}` (layer {tl})",
                        from.display(),
                        i.line,
                        i.path,
                        to.display()
                    );
                }
            }
        }
    }

    // No circle among files.
    for c in circles(&edges) {
        let names: Vec<String> = c.iter().map(|f| format!("src/{}", f.display())).collect();
        let _ = writeln!(problems, "files import each other in a circle: {}", names.join(", "));
        for a in &c {
            for b in c.iter().filter(|b| edges.get(a).is_some_and(|e| e.contains(*b))) {
                for i in &imports[&(a.clone(), b.clone())] {
                    let _ = writeln!(problems, "  src/{}:{}: `{}` -> src/{}", a.display(), i.line, i.path, b.display());
                }
            }
        }
    }
    (problems, imports.len())
}

#[test]
fn imports_follow_the_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("read ARCHITECTURE.md");
    let (problems, found) = check(&root.join("src"), &doc);
    assert!(problems.is_empty(), "the import graph breaks the layers of ARCHITECTURE.md:\n{problems}");
    // A reading that finds nothing would pass: the tree has hundreds.
    assert!(found > 150, "only {found} file-level imports found");
}

mod reading {
    use super::*;

    fn leaves(src: &str) -> Vec<(String, Option<String>, bool)> {
        let toks = tokenize(src);
        let mut out = Vec::new();
        parse_use_tree(&toks, 1, Vec::new(), &mut out, 1);
        out.into_iter().map(|l| (l.path.join("::"), l.bind, l.glob)).collect()
    }

    #[test]
    fn use_trees_are_read_whole() {
        let got = leaves("use crate::{a, b::{c as d, self}, e::*, f::g as _};");
        let want = vec![
            ("crate::a".to_string(), Some("a".to_string()), false),
            ("crate::b::c".into(), Some("d".into()), false),
            ("crate::b".into(), Some("b".into()), false),
            ("crate::e".into(), None, true),
            ("crate::f::g".into(), None, false),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn comments_strings_and_chars_hide_no_code_and_show_none() {
        let toks = tokenize("let s = \"crate::a::B\"; /* crate::c::D /* nested */ */ // crate::e::F\n let c = '\"'; let r = r#\"crate::g\"#; let l: &'a str = x; crate::h::I");
        let idents: Vec<&str> = toks.iter().filter_map(|(t, _)| if let Tok::Ident(s) = t { Some(s.as_str()) } else { None }).collect();
        assert_eq!(idents, ["let", "s", "let", "c", "let", "r", "let", "l", "str", "x", "crate", "h", "I"]);
    }

    /// A small crate in a temp dir: a circle through a parent's re-export, a
    /// `super::` path in code and an alias, one import running up (and one
    /// from test code, which may).
    #[test]
    fn circles_through_reexports_and_aliases_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path();
        let write = |p: &str, s: &str| {
            let p = src.join(p);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, s).expect("write");
        };
        write("lib.rs", "pub mod low;\npub mod high;\n");
        write("low/mod.rs", "mod a;\nmod b;\npub use a::A;\npub use b::B;\n");
        write("low/a.rs", "pub struct A;\nfn f() -> super::B { todo!() }\nfn g(_: crate::high::H) {}\n");
        write("low/b.rs", "use crate::low;\npub struct B(low::A);\n#[cfg(test)]\nmod tests {\n    use crate::high::H;\n}\n");
        write("main.rs", "use calllog_bridge::high;\nfn main() {\n    let _ = high::H;\n}\n");
        write("high.rs", "pub struct H;\n");
        let doc = "## Layers\n\n| Layer | Modules |\n|---|---|\n| 2 | `high`, `main` |\n| 1 | `low` |\n";
        let (problems, _) = check(src, doc);
        let want = "src/low/a.rs:3: `crate::high::H` runs up the layers: `low` (layer 1) takes from src/high.rs of `high` (layer 2)\n\
                    files import each other in a circle: src/low/a.rs, src/low/b.rs\n\
                    \x20 src/low/a.rs:2: `super::B` -> src/low/b.rs\n\
                    \x20 src/low/b.rs:2: `low::A` -> src/low/a.rs\n";
        assert_eq!(problems, want);
    }
}
