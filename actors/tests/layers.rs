//! The actors crate is layered (docs/architecture.md §12): no module imports one above it.
//! This reads every source file and fails on an import that points up, naming the file and line.

use std::collections::BTreeSet;
use std::path::Path;

/// Lowest first. A module may import only modules before it in this list (and itself).
const LAYERS: &[&str] = &[
    "types",
    "fatal",
    "faults",
    "testing",
    "wire",
    "shard",
    "events",
    "metrics",
    "state",
    "workers",
    "transport",
    "membership",
    "consensus",
    "lease",
    "serving",
    "shard_manager",
    "proxy",
    "node",
    "client",
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|m| *m == module)
}

/// The `crate::X` modules a source text names, outside comments and its trailing test module.
fn imports(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") && line.starts_with('#') {
            break; // the file's test module: tests may reach anywhere
        }
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + 7..];
            let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.push((n + 1, name));
            }
            rest = after;
        }
        // `use crate::{a, b}` lists.
        if let Some(i) = code.find("crate::{") {
            let list = &code[i + 8..code[i..].find('}').map_or(code.len(), |j| i + j)];
            for name in list.split(',') {
                let name: String = name.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    out.push((n + 1, name));
                }
            }
        }
    }
    out
}

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, files);
        } else if p.extension().is_some_and(|x| x == "rs") {
            files.push(p);
        }
    }
}

#[test]
fn no_module_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut seen = BTreeSet::new();
    let mut violations = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let name = rel.file_name().unwrap().to_str().unwrap();
        // Test-only modules (declared under #[cfg(test)]) may reach anywhere.
        if name == "tests.rs" || name == "sim.rs" || rel == Path::new("lib.rs") {
            continue;
        }
        let module = rel.components().next().unwrap().as_os_str().to_str().unwrap().trim_end_matches(".rs").to_string();
        let Some(me) = rank(&module) else { panic!("{}: module {module} is not in LAYERS", rel.display()) };
        seen.insert(module.clone());
        for (line, target) in imports(&std::fs::read_to_string(f).unwrap()) {
            let Some(them) = rank(&target) else { continue };
            if them > me {
                violations.push(format!("{}:{line}: {module} imports {target}, a layer above it", rel.display()));
            }
        }
    }
    assert!(violations.is_empty(), "layering violations:\n{}", violations.join("\n"));
    assert!(seen.len() >= LAYERS.len() - 1, "the check read the modules: {seen:?}");
}

#[test]
fn the_check_catches_an_upward_import() {
    let text = "use crate::types::NodeId;\nuse crate::{proxy, shard};\n// crate::node in a comment\n";
    let found: Vec<String> = imports(text).into_iter().map(|(_, m)| m).collect();
    assert_eq!(found, ["types", "proxy", "shard"]);
    assert!(rank("proxy") > rank("wire"), "wire importing proxy would be refused");
}
