//! The shape of src/ that lib.rs promises: imports between files form no cycle, and no file is
//! over 600 lines. (The same check as `python3 ../shared/tools/module-cycles.py src`, kept in the
//! repository so that anyone can run it.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const MAX_LINES: usize = 600;

/// Module path (e.g. `["http", "cors"]`) → file text, tests excluded.
fn modules() -> BTreeMap<Vec<String>, (String, bool)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            let is_folder = parts.last().is_some_and(|l| l == "mod");
            if parts
                .last()
                .is_some_and(|l| ["mod", "lib", "main"].contains(&l.as_str()))
            {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(parts, (text, is_folder));
        }
    }
    out
}

/// The text before a trailing `#[cfg(test)] mod tests { … }`: unit tests may reach anywhere.
fn without_unit_tests(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests {").map_or(text, |at| &text[..at])
}

/// `a::{b, c::{d}}` → `a::b`, `a::c::d`.
fn expand(path: &str) -> Vec<String> {
    let Some(open) = path.find('{') else {
        return vec![path.to_string()];
    };
    let prefix = &path[..open];
    let inner = &path[open + 1..path.rfind('}').unwrap_or(path.len())];
    let (mut depth, mut current, mut parts) = (0, String::new(), Vec::new());
    for ch in inner.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(ch);
    }
    parts.push(current);
    parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(&format!("{prefix}{p}")))
        .collect()
}

fn imports(module: &[String], text: &str, is_folder: bool) -> Vec<Vec<String>> {
    let text = without_unit_tests(text);
    let mut paths = Vec::new();
    for statement in text.split(';') {
        if let Some(at) = statement.find("use ") {
            let before = &statement[..at];
            if before.trim().is_empty() || before.trim_end().ends_with("pub") || before.trim_end().ends_with(')') {
                let body: String = statement[at + 4..].chars().filter(|c| !c.is_whitespace()).collect();
                paths.extend(expand(&body));
            }
        }
    }
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        paths.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    paths
        .into_iter()
        .filter_map(|path| {
            let path = path.split(" as ").next().unwrap_or(&path).to_string();
            let mut parts: Vec<String> = path.split("::").map(String::from).collect();
            match parts.first().map(String::as_str) {
                Some("crate") => Some(parts.split_off(1)),
                Some("super") => {
                    let mut base: Vec<String> = if is_folder {
                        module.to_vec()
                    } else {
                        module[..module.len().saturating_sub(1)].to_vec()
                    };
                    while parts.first().is_some_and(|p| p == "super") {
                        parts.remove(0);
                        if parts.first().is_some_and(|p| p == "super") {
                            base.pop();
                        }
                    }
                    base.extend(parts);
                    Some(base)
                }
                _ => None,
            }
        })
        .collect()
}

#[test]
fn module_imports_form_no_cycle_and_no_file_is_over_600_lines() {
    let modules = modules();
    let resolve = |path: &[String]| {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|candidate| modules.contains_key(candidate))
    };
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, (text, is_folder)) in &modules {
        let targets = edges.entry(module.clone()).or_default();
        if *is_folder {
            for line in without_unit_tests(text).lines() {
                let line = line.trim_start();
                let declared = line
                    .strip_prefix("pub mod ")
                    .or_else(|| line.strip_prefix("pub(crate) mod "))
                    .or_else(|| line.strip_prefix("mod "));
                if let Some(child) = declared.and_then(|d| d.strip_suffix(';')) {
                    let mut child_path = module.clone();
                    child_path.push(child.to_string());
                    if modules.contains_key(&child_path) {
                        targets.insert(child_path);
                    }
                }
            }
        }
        for path in imports(module, text, *is_folder) {
            if let Some(target) = resolve(&path) {
                // A child naming its own folder's mod.rs is how Rust folders are built.
                let is_own_folder = module.len() > target.len() && module.starts_with(&target);
                if target != *module && !is_own_folder {
                    targets.insert(target);
                }
            }
        }
    }
    // A cycle: some module reaches itself.
    let mut cycles = Vec::new();
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&Vec<String>> = edges[start].iter().collect();
        while let Some(next) = stack.pop() {
            if next == start {
                cycles.push(start.join("::"));
                break;
            }
            if seen.insert(next.clone()) {
                stack.extend(edges.get(next).into_iter().flatten());
            }
        }
    }
    assert!(cycles.is_empty(), "modules on an import cycle: {cycles:?}");
    let long: Vec<String> = modules
        .iter()
        .filter(|(_, (text, _))| text.lines().count() > MAX_LINES)
        .map(|(module, (text, _))| format!("{} ({} lines)", module.join("::"), text.lines().count()))
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:?}");
}
