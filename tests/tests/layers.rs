//! The layer order of `host/src`, as `docs/architecture.md` states it ("Layers of `host/src`"):
//! every module imports only modules listed above its own row. Read from the doc's table and
//! checked against every file's `crate::…` and `super::…` paths, so the doc and the code cannot
//! drift apart, and every module of `host/src` must have a row.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tollgate_tests::repo_root;

/// The layers in order, from the doc's table (`error.rs` → `error`, `listen/` → `listen`).
fn layers() -> Vec<String> {
    let doc = std::fs::read_to_string(repo_root().join("docs/architecture.md")).unwrap();
    let section = doc
        .split("## Layers of `host/src`")
        .nth(1)
        .expect("the doc has the layers section");
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| {
            let cell = l.split('|').nth(1).unwrap().trim();
            cell.trim_matches('`')
                .trim_end_matches('/')
                .trim_end_matches(".rs")
                .to_owned()
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The file's module path below the crate root: `gateway/mod.rs` → [gateway],
/// `gateway/runtime.rs` → [gateway, runtime].
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_str().unwrap().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
}

/// The code without `//` comments (doc links name modules without importing them).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segments of the paths a `crate::` prefix at `at` opens: one name, or each name of a
/// `crate::{a, b::c}` group.
fn roots_after(code: &str, at: usize) -> Vec<String> {
    let rest = &code[at..];
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    if let Some(group) = rest.strip_prefix('{') {
        // Top-level items of the group.
        let mut depth = 0;
        let mut items = Vec::new();
        let mut start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    items.push(&group[start..i]);
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&group[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        items
            .into_iter()
            .map(ident)
            .filter(|s| !s.is_empty())
            .collect()
    } else {
        vec![ident(rest)]
    }
}

/// The crate-root modules `code` refers to, from a file whose module path is `path`.
fn referenced(code: &str, path: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue; // `tollgate_crate::`, `$crate::`
        }
        out.extend(roots_after(code, at + "crate::".len()));
    }
    // `super::super::x` from depth 2 is `crate::x`.
    let depth = path.len();
    if depth >= 1 {
        let up = "super::".repeat(depth);
        for (at, _) in code.match_indices(&up) {
            if code[at + up.len()..].starts_with("super::") {
                continue;
            }
            let before = code[..at].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            out.extend(roots_after(code, at + up.len()));
        }
    }
    out
}

#[test]
fn every_import_in_host_src_follows_the_documented_layer_order() {
    let order = layers();
    assert!(order.len() >= 8, "layers read from the doc: {order:?}");
    let rank = |m: &str| order.iter().position(|l| l == m);
    let src = repo_root().join("host/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut unlisted = BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let path = module_path(rel);
        // The crate root (lib.rs declares and re-exports) and the binary's entry point.
        if rel == Path::new("lib.rs") || rel == Path::new("main.rs") {
            continue;
        }
        let top = &path[0];
        let Some(own) = rank(top) else {
            unlisted.insert(top.clone());
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for used in referenced(&code(&text), &path) {
            if let Some(r) = rank(&used)
                && r > own
            {
                violations.push(format!(
                    "{} imports {used} (a layer below {top})",
                    rel.display()
                ));
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "modules of host/src without a row in docs/architecture.md: {unlisted:?}"
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// The checker itself: it sees single paths, groups and `super::` chains, and not comments.
#[test]
fn the_checker_finds_each_form_of_import() {
    let path = vec!["gateway".to_owned(), "runtime".to_owned()];
    let found = referenced(
        &code(
            "use crate::{admin::x, error::{A, B}};\nlet y = crate::cli::run();\nuse super::super::planes::P;\n// crate::service\n",
        ),
        &path,
    );
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["admin", "cli", "error", "planes"]
    );
}
