//! ARCHITECTURE.md's rule, checked: a module uses only modules listed
//! above it in the module table. Every `crate::<module>` path in a
//! module's files counts (imports and inline paths alike, tests included).

use std::collections::BTreeSet;
use std::path::Path;

/// Module names in the table's order (`util/` → `util`, `cli.rs` → `cli`).
fn table_order(doc: &str) -> Vec<String> {
    doc.lines()
        .skip_while(|l| !l.starts_with("| module |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1))
        .map(|cell| {
            cell.trim()
                .trim_matches('`')
                .trim_end_matches('/')
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect()
}

fn sources(path: &Path, out: &mut Vec<String>) {
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap().flatten() {
            sources(&e.path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(std::fs::read_to_string(path).unwrap());
    }
}

/// The crate modules a module's files name through `crate::`.
fn uses(src: &Path, module: &str) -> BTreeSet<String> {
    let mut texts = Vec::new();
    let dir = src.join(module);
    let path = if dir.is_dir() {
        dir
    } else {
        src.join(format!("{module}.rs"))
    };
    sources(&path, &mut texts);
    let mut out = BTreeSet::new();
    for t in texts {
        for (i, _) in t.match_indices("crate::") {
            let name: String = t[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn modules_use_only_modules_above_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let order = table_order(&doc);
    assert!(order.len() >= 10, "module table not found: {order:?}");
    let src = root.join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    // Every module of lib.rs is in the table, and nothing else is.
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').to_string())
        .collect();
    let listed: BTreeSet<String> = order.iter().cloned().collect();
    assert_eq!(
        declared, listed,
        "lib.rs modules vs ARCHITECTURE.md's table"
    );
    let mut wrong = Vec::new();
    for (pos, module) in order.iter().enumerate() {
        for dep in uses(&src, module) {
            match order.iter().position(|m| *m == dep) {
                Some(p) if p < pos => {}
                Some(_) => wrong.push(format!("{module} uses {dep}, listed below it")),
                None => wrong.push(format!("{module} uses crate::{dep}, which is not a module")),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "ARCHITECTURE.md's order is broken:\n{}",
        wrong.join("\n")
    );
}
