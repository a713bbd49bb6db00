//! The shape of thorn-core's source: its top-level modules import each
//! other one way only (no cycle), and no file outgrows ~500 lines of code
//! without saying why at its top.
//!
//! A module's imports are the `crate::…` paths in its code (comments and
//! its `#[cfg(test)]` block excluded); a name re-exported at the crate root
//! (`crate::Thorn`) counts as the module it comes from.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Lines of code (tests excluded) a file may have without a stated reason.
const MAX_LINES: usize = 500;
/// How a long file states its reason, in its module docs.
const REASON: &str = "//! Long because";

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code: comment lines dropped, and everything from its test
/// module on.
fn code(text: &str) -> String {
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file belongs to (`outbox/store.rs` → `outbox`).
fn top_module(path: &Path) -> String {
    let relative = path.strip_prefix(src()).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_str().unwrap().trim_end_matches(".rs").to_owned()
}

/// The first segment of each path inside `crate::{…}` (nested braces kept
/// whole) or after `crate::`.
fn imported(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut part = String::new();
            let mut parts = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if c == ',' && depth == 1 {
                    parts.push(std::mem::take(&mut part));
                } else {
                    part.push(c);
                }
            }
            parts.push(part);
            found.extend(parts.iter().filter_map(|p| first_ident(p.trim())));
        } else if let Some(name) = first_ident(rest) {
            found.push(name);
        }
    }
    found
}

fn first_ident(s: &str) -> Option<String> {
    let name: String = s
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// Names `lib.rs` re-exports at the root, with the module each comes from.
fn root_names() -> BTreeMap<String, String> {
    let lib = code(&fs::read_to_string(src().join("lib.rs")).unwrap());
    let mut names = BTreeMap::new();
    for statement in lib.split(';') {
        let Some(path) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = path.split_once("::") else {
            continue;
        };
        let items = items.trim_matches(|c| c == '{' || c == '}');
        for item in items.split(',') {
            let item = item.trim();
            let name = item.rsplit(" as ").next().unwrap().trim();
            let name = name.rsplit("::").next().unwrap();
            if !name.is_empty() {
                names.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    names
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let roots = root_names();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = top_module(&file);
        if module == "lib" {
            continue;
        }
        let code = code(&fs::read_to_string(&file).unwrap());
        let targets = edges.entry(module.clone()).or_default();
        for name in imported(&code) {
            let target = roots.get(&name).cloned().unwrap_or(name);
            if target != module && target != "self" && target != "super" {
                targets.insert(target);
            }
        }
    }
    edges
}

/// A cycle through `start`, if there is one.
fn cycle_from(
    edges: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    at: &str,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    for next in edges.get(at).into_iter().flatten() {
        if next == start {
            let mut cycle = path.clone();
            cycle.push(start.to_owned());
            return Some(cycle);
        }
        if seen.insert(next.clone()) {
            path.push(next.clone());
            if let Some(c) = cycle_from(edges, start, next, path, seen) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn modules_import_each_other_one_way() {
    let edges = graph();
    assert!(
        edges.len() > 10,
        "the walk found too few modules: {edges:?}"
    );
    let cycles: Vec<String> = edges
        .keys()
        .filter_map(|m| {
            cycle_from(&edges, m, m, &mut vec![m.clone()], &mut BTreeSet::new())
                .map(|c| c.join(" -> "))
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "thorn-core's modules import each other in a cycle:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_check_sees_a_cycle() {
    let mut edges = graph();
    // `app` (Thorn) sits above `dispatch`; an import back would be a cycle.
    assert!(edges["app"].contains("dispatch"), "{:?}", edges["app"]);
    edges.get_mut("dispatch").unwrap().insert("app".into());
    let cycle = cycle_from(
        &edges,
        "dispatch",
        "dispatch",
        &mut vec![],
        &mut BTreeSet::new(),
    );
    assert!(cycle.is_some());
    assert_eq!(
        imported("use crate::{Error, outbox::{A, B}, app::frames::Frames};"),
        ["Error", "outbox", "app"]
    );
}

#[test]
fn long_files_say_why() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut long = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
        let lines = text[..end].lines().count();
        let explained = text
            .lines()
            .take_while(|l| l.starts_with("//!") || l.is_empty())
            .any(|l| l.starts_with(REASON));
        if lines > MAX_LINES && !explained {
            long.push(format!("{} ({lines} lines)", file.display()));
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines of code without a `{REASON} …` line in their module docs:\n{}",
        long.join("\n")
    );
}
