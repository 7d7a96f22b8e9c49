//! The module graph of `src/` has no cycle (ARCHITECTURE.md: dependencies point one
//! way). Read from the source text: every `crate::…`, `super::…` and `self::…` path
//! outside comments and test modules is an edge from the file's module to the longest
//! module that path names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`http::ws::socket`) → its source text.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix("src").unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|p| p == "mod") {
                    parts.pop();
                }
                let name = match parts.as_slice() {
                    [one] if one == "lib" || one == "main" => "crate".to_owned(),
                    _ => parts.join("::"),
                };
                out.insert(name, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(Path::new("src"), &mut out);
    out
}

/// The text without comments and without the test modules at the end of a file.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .filter(|l| !l.contains("pub(in "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Paths starting with `crate::`, `super::` or `self::`.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let at = from + at;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            out.push(
                code[at..end]
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            );
        }
    }
    out
}

fn edges(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, text) in modules {
        let here: Vec<String> = if name == "crate" {
            Vec::new()
        } else {
            name.split("::").map(str::to_owned).collect()
        };
        let targets = edges.entry(name.clone()).or_default();
        for path in paths(&code(text)) {
            let (mut base, rest): (Vec<String>, &[String]) = match path[0].as_str() {
                "crate" => (Vec::new(), &path[1..]),
                "self" => (here.clone(), &path[1..]),
                _ => {
                    let supers = path.iter().take_while(|s| *s == "super").count();
                    let keep = here.len().saturating_sub(supers);
                    (here[..keep].to_vec(), &path[supers..])
                }
            };
            let target = (0..=rest.len()).rev().find_map(|i| {
                let mut candidate = base.clone();
                candidate.extend_from_slice(&rest[..i]);
                let candidate = if candidate.is_empty() {
                    "crate".to_owned()
                } else {
                    candidate.join("::")
                };
                modules.contains_key(&candidate).then_some(candidate)
            });
            base.clear();
            if let Some(target) = target {
                let related = target == *name
                    || target.starts_with(&format!("{name}::"))
                    || name.starts_with(&format!("{target}::"))
                    || target == "crate"
                    || name == "crate";
                if !related {
                    targets.insert(target);
                }
            }
        }
    }
    edges
}

/// One cycle of the graph, if there is one.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                0 => {
                    if let Some(c) = visit(next, edges, state, stack) {
                        return Some(c);
                    }
                }
                1 => {
                    let from = stack.iter().position(|s| s == next).unwrap_or(0);
                    let mut c = stack[from..].to_vec();
                    c.push(next.clone());
                    return Some(c);
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(node, edges, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_two_modules_import_each_other_directly_or_around_a_loop() {
    let modules = modules();
    assert!(
        modules.contains_key("http::state"),
        "run from the crate root"
    );
    let files = edges(&modules);
    assert_eq!(cycle(&files), None, "a cycle between files");
    // And between the top-level modules (`http` → `engine`, never back).
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in &files {
        let a = from.split("::").next().unwrap_or_default().to_owned();
        for to in tos {
            let b = to.split("::").next().unwrap_or_default().to_owned();
            if a != b {
                top.entry(a.clone()).or_default().insert(b);
            }
        }
    }
    assert_eq!(cycle(&top), None, "a cycle between top-level modules");
    assert!(
        top["app"].contains("http"),
        "app assembles http: {:?}",
        top["app"]
    );
    assert!(!top.get("http").is_some_and(|t| t.contains("app")));
}

#[test]
fn the_checker_finds_a_cycle() {
    let mut modules = BTreeMap::new();
    modules.insert("crate".to_owned(), String::new());
    modules.insert("a".to_owned(), "use crate::b::Thing;".to_owned());
    modules.insert("b".to_owned(), "use super::a::Other;".to_owned());
    modules.insert("c".to_owned(), "// use crate::a;".to_owned());
    let e = edges(&modules);
    assert!(cycle(&e).is_some(), "{e:?}");
    assert!(e["c"].is_empty());
}
