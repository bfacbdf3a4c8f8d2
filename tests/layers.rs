//! The dependency rule of `src/` (docs/architecture.md, "Layers and the dependency rule"):
//! every top-level module of the crate has a rank, and a module imports only modules of its own
//! rank or below. This test reads every `src/**/*.rs`, finds the crate-internal paths in its
//! code (`use crate::…`, `crate::x::…` anywhere, `use crate::{a, b::c}` groups, the
//! `litefs_py::` spelling of the crate, and `super::` chains that climb out of a top-level
//! module), and fails naming the file, the import and the rule.
//!
//! Comments, strings and character literals are skipped: a doc link is no dependency.
//! `lib.rs` and `main.rs` are the crate root, which declares every module and is ranked
//! above all of them, so they are not checked. Test-only files (`tests.rs`, `test_support.rs`)
//! are checked like the rest: a test of a lower layer must not need a higher one either.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. Same rank: may import each other.
const RANKS: &[(&str, u32)] = &[
    // litefs-py.yml, and a helper with no domain knowledge.
    ("config", 0),
    ("poll", 0),
    ("task_set", 0),
    ("die_with_parent", 0),
    // Consensus only: storage, state machine, transport, RaftNode, membership.
    ("raft", 1),
    // Everything that knows LiteFS.
    ("litefs", 2),
    // The fencer `run` forks: kills LiteFS when its lease runs out unrenewed.
    ("fence", 2),
    // Who says primary: raft facts + lease holder + LiteFS hold -> the view.
    ("role", 3),
    // The Consul-compatible lease API, its rules and records, the freshest-node check.
    ("lease", 4),
    // The planned primary move.
    ("handoff", 5),
    // The App: builds and composes everything, owns the HTTP routers.
    ("node", 6),
    // litefs-py's HTTP proxy: the node's view (the role) and raft handle, its own runtime.
    ("proxy", 7),
    // `litefs-py run`: node, LiteFS, shim, proxy, app.
    ("run", 8),
    // The commands.
    ("cli", 9),
];

const RULE: &str = "a module of src/ imports only modules of its own rank or below \
    (docs/architecture.md, \"Layers and the dependency rule\"; ranks at the top of tests/layers.rs)";

fn rank(module: &str) -> Option<u32> {
    RANKS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("read src/").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's module path below the crate root: `src/raft/node.rs` -> `[raft, node]`,
/// `src/raft/mod.rs` -> `[raft]`, `src/role.rs` -> `[role]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src/");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

/// The code of a Rust file with comments, strings and char literals blanked out (replaced by
/// spaces, newlines kept), so that paths in them are not taken for imports and braces in them
/// do not count.
fn code_only(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(b.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !b[..i]
                .last()
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|h| b.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.extend(b[i..j.min(b.len())].iter().map(|c| blank(*c)));
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{7f}'), else a lifetime ('a).
            let end = if next == Some('\\') {
                (i + 2..b.len()).find(|k| b[*k] == '\'')
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    for _ in i..=e {
                        out.push(' ');
                    }
                    i = e + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn ident_at(s: &[char], i: usize) -> String {
    s[i..].iter().take_while(|c| is_ident(**c)).collect()
}

fn skip_ws(s: &[char], mut i: usize) -> usize {
    while i < s.len() && s[i].is_whitespace() {
        i += 1;
    }
    i
}

/// Whether `word` starts at `i` as a whole path segment followed by `::`; the index after
/// the `::` if so.
fn segment(s: &[char], i: usize, word: &str) -> Option<usize> {
    let w: Vec<char> = word.chars().collect();
    if i > 0 && (is_ident(s[i - 1]) || s[i - 1] == ':') {
        return None;
    }
    if s.get(i..i + w.len())? != w.as_slice() {
        return None;
    }
    let j = skip_ws(s, i + w.len());
    (s.get(j) == Some(&':') && s.get(j + 1) == Some(&':')).then(|| skip_ws(s, j + 2))
}

/// The first segments after `crate::` at `i`: one ident, or every group member's first one.
fn heads(s: &[char], i: usize) -> Vec<String> {
    if s.get(i) != Some(&'{') {
        let id = ident_at(s, i);
        return if id.is_empty() { vec![] } else { vec![id] };
    }
    // `{a, b::c, d::{e, f}}`: the first ident of each top-level member.
    let mut out = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    let mut k = i;
    while k < s.len() {
        match s[k] {
            '{' => {
                depth += 1;
                expect_head = depth == 1;
                k += 1;
            }
            '}' => {
                depth -= 1;
                k += 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => {
                expect_head = true;
                k += 1;
            }
            c if is_ident(c) && expect_head => {
                let id = ident_at(s, k);
                k += id.chars().count();
                out.push(id);
                expect_head = false;
            }
            _ => k += 1,
        }
    }
    out
}

/// One crate-internal import found in a file.
struct Import {
    line: usize,
    /// As written, for the message.
    text: String,
    /// The top-level module it reaches.
    target: String,
}

/// Every import in `code` (comments and strings blanked) of the module at `path`.
fn imports(code: &str, path: &[String]) -> Vec<Import> {
    let s: Vec<char> = code.chars().collect();
    let line_of = |i: usize| s[..i].iter().filter(|c| **c == '\n').count() + 1;
    // The path as written: `crate::a::b`, or up to the end of its `{...}` group.
    let shown = |i: usize| -> String {
        let mut end = i;
        while end < s.len() && (is_ident(s[end]) || s[end] == ':' || s[end].is_whitespace()) {
            end += 1;
        }
        if s.get(end) == Some(&'{') {
            let mut depth = 0;
            while end < s.len() {
                match s[end] {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                end += 1;
                if depth == 0 {
                    break;
                }
            }
        }
        let text: String = s[i..end].iter().collect();
        text.split_whitespace().collect()
    };
    let mut found = Vec::new();
    // Inline modules (`mod tests { ... }`): (name, brace depth inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            '{' => {
                depth += 1;
                i += 1;
                continue;
            }
            '}' => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
                continue;
            }
            _ => {}
        }
        let at_word_start = i == 0 || !is_ident(s[i - 1]);
        if at_word_start && ident_at(&s, i) == "mod" {
            let j = skip_ws(&s, i + 3);
            let name = ident_at(&s, j);
            let k = skip_ws(&s, j + name.chars().count());
            if !name.is_empty() && s.get(k) == Some(&'{') {
                inline.push((name, depth + 1));
            }
        }
        for krate in ["crate", "litefs_py"] {
            if let Some(j) = segment(&s, i, krate) {
                for target in heads(&s, j) {
                    found.push(Import {
                        line: line_of(i),
                        text: shown(i),
                        target,
                    });
                }
            }
        }
        if let Some(mut j) = segment(&s, i, "super") {
            // The module `super` is relative to: the file's path plus its inline modules.
            let mut here: Vec<String> = path.to_vec();
            here.extend(inline.iter().map(|(n, _)| n.clone()));
            let mut ups = 1;
            while let Some(k) = segment(&s, j, "super") {
                ups += 1;
                j = k;
            }
            if ups >= here.len() {
                // Out of the top-level module, into the crate root: the next segment is
                // the top-level module reached.
                for target in heads(&s, j) {
                    found.push(Import {
                        line: line_of(i),
                        text: shown(i),
                        target,
                    });
                }
            }
            i = j;
            continue;
        }
        i += 1;
    }
    found
}

/// Every file's imports of other top-level modules: (file, its module, imports).
fn scan() -> Vec<(String, String, Vec<Import>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let path = module_path(&src, &file);
        let shown = format!("src/{}", file.strip_prefix(&src).unwrap().display());
        let Some(top) = path.first().cloned().filter(|t| t != "lib" && t != "main") else {
            continue; // The crate root (lib.rs, main.rs).
        };
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let found = imports(&code_only(&text), &path)
            .into_iter()
            .filter(|i| i.target != top && i.target != "self")
            .collect();
        out.push((shown, top, found));
    }
    out
}

/// The violations of the rule in `files`, one message each.
fn violations(files: &[(String, String, Vec<Import>)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (file, top, found) in files {
        let Some(mine) = rank(top) else {
            bad.push(format!(
                "{file}: module `{top}` has no rank; add it to RANKS in tests/layers.rs"
            ));
            continue;
        };
        for i in found {
            match rank(&i.target) {
                None => bad.push(format!(
                    "{file}:{}: `{}` reaches `{}`, which has no rank; add it to RANKS in tests/layers.rs",
                    i.line, i.text, i.target
                )),
                Some(theirs) if theirs > mine => bad.push(format!(
                    "{file}:{}: `{}`: `{top}` (rank {mine}) imports `{}` (rank {theirs}), ranked above it; {RULE}",
                    i.line, i.text, i.target
                )),
                Some(_) => {}
            }
        }
    }
    bad
}

#[test]
fn no_module_imports_one_ranked_above_it() {
    let files = scan();
    assert!(
        files.iter().any(|(_, top, _)| top == "raft"),
        "found no src/raft: wrong directory?"
    );
    let bad = violations(&files);
    // The graph between top-level modules, lowest first: what the layers look like now.
    let mut graph: BTreeMap<(u32, &str), BTreeSet<(u32, &str)>> = BTreeMap::new();
    for (_, top, found) in &files {
        let from = (rank(top).unwrap_or(u32::MAX), top.as_str());
        let edges = graph.entry(from).or_default();
        for i in found {
            edges.insert((rank(&i.target).unwrap_or(u32::MAX), i.target.as_str()));
        }
    }
    eprintln!("imports between the top-level modules of src/ (rank module -> modules):");
    for ((r, m), to) in &graph {
        let to: Vec<&str> = to.iter().map(|(_, t)| *t).collect();
        eprintln!("  {r} {m:<8} -> {}", to.join(", "));
    }
    assert!(bad.is_empty(), "\n{}\n", bad.join("\n"));
}

#[test]
fn the_scanner_finds_every_spelling_and_skips_comments_and_strings() {
    let code = code_only(
        r##"
use crate::lease::LeaseService;
use crate::{handoff, node::Node, raft::{NodeId, Request}};
// use crate::cli::nothing;
/// [`crate::run`] is a doc link.
fn f() {
    let s = "crate::cli::in_a_string {";
    let r = r#"crate::cli "# ;
    let c = '{';
    let x = crate::litefs::info::get;
    let y = litefs_py::config::Config::find;
    let z = litefs_py_fuse::mount;
}
mod tests {
    use super::*;
    fn g<'a>(_: &'a str) {}
}
"##,
    );
    let found: Vec<String> = imports(&code, &["role".to_string()])
        .into_iter()
        .map(|i| i.target)
        .collect();
    assert_eq!(
        found,
        ["lease", "handoff", "node", "raft", "litefs", "config"],
        "`super` inside `role::tests` is `role`, not the crate root"
    );
    // `super::x` in a top-level module's own file is the crate root's `x`.
    let up = imports(&code_only("use super::lease::X;"), &["role".to_string()]);
    assert_eq!(
        up.iter().map(|i| i.target.as_str()).collect::<Vec<_>>(),
        ["lease"]
    );
    // ... and one level down it is the module itself.
    let down = imports(
        &code_only("use super::records::X;"),
        &["lease".to_string(), "service".to_string()],
    );
    assert!(down.is_empty());
}

#[test]
fn a_bad_import_is_named_with_its_file_and_the_rule() {
    let found = imports(
        &code_only("\nuse crate::handoff::Handoff;\n"),
        &["raft".to_string(), "node".to_string()],
    );
    let bad = violations(&[("src/raft/node.rs".into(), "raft".into(), found)]);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].starts_with("src/raft/node.rs:2: `crate::handoff::Handoff`: `raft` (rank 1) imports `handoff` (rank 5)"),
        "{}",
        bad[0]
    );
    assert!(
        bad[0].contains("Layers and the dependency rule"),
        "{}",
        bad[0]
    );
}
