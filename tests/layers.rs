//! Imports go one way: every `crate::` path in `src/` is checked against the table in
//! `docs/architecture.md` ("Imports go one way"), which is the one place the layering is written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The table: module -> the modules it may import.
fn allowed() -> BTreeMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let section = doc.split("## Imports go one way").nth(1).expect("docs/architecture.md has the section 'Imports go one way'");
    let mut table = BTreeMap::new();
    for line in section.lines().skip_while(|l| !l.starts_with("| module")).skip(2) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let names = |cell: &str| cell.split(',').map(|n| n.trim().trim_matches('`').to_string()).filter(|n| !n.is_empty() && n != "—").collect();
        let module: BTreeSet<String> = names(cells[0]);
        table.insert(module.into_iter().next().expect("a module name"), names(cells[1]));
    }
    assert!(table.len() > 5, "the table in docs/architecture.md was not read: {table:?}");
    table
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `src/source/polling.rs` -> `source`.
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(root().join("src")).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// What the crate root re-exports (`pub use error::{Error, Result};`): name -> module.
fn reexports() -> BTreeMap<String, String> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let mut map = BTreeMap::new();
    for line in lib.lines().filter_map(|l| l.trim().strip_prefix("pub use ")) {
        let line = line.trim_end_matches(';');
        let Some((module, items)) = line.split_once("::") else { continue };
        for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
            let name = item.trim().rsplit("::").next().unwrap_or("").to_string();
            map.insert(name, module.to_string());
        }
    }
    map
}

/// The top-level modules a file names through `crate::` (comments left out).
fn imports(text: &str) -> BTreeSet<String> {
    let names = reexports();
    imports_with(text, &names)
}

fn imports_with(text: &str, reexported: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            // `use crate::{a, b::c}`
            if name.is_empty() && rest.starts_with('{') {
                let group = &rest[1..rest.find('}').unwrap_or(rest.len())];
                found.extend(group.split(',').map(|n| n.trim().split("::").next().unwrap_or("").to_string()).filter(|n| !n.is_empty()));
            } else if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found.into_iter().map(|n| reexported.get(&n).cloned().unwrap_or(n)).collect()
}

#[test]
fn imports_go_the_way_docs_architecture_says() {
    let table = allowed();
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let module = module_of(file);
        if module == "main" || module == "bin" || module == "lib" {
            continue;
        }
        let Some(may) = table.get(&module) else {
            wrong.push(format!("{}: module {module} is not in the table of docs/architecture.md", file.display()));
            continue;
        };
        for used in imports(&std::fs::read_to_string(file).unwrap()) {
            if used != module && !may.contains(&used) {
                wrong.push(format!("{}: {module} imports {used}, which the table does not allow", file.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering:\n{}", wrong.join("\n"));
}

#[test]
fn the_check_reads_grouped_and_inline_paths() {
    let text = "use crate::{checkpoint::State, error::Error};\n// crate::sink in a comment\nlet x = crate::position::format_lsn(1);";
    let found: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(found, ["checkpoint", "error", "position"]);
    // A name the crate root re-exports counts as its module.
    let found: Vec<String> = imports("fn f() -> crate::Result<()> { Err(crate::Error::Shutdown) }").into_iter().collect();
    assert_eq!(found, ["error"]);
}

/// The table itself goes one way: no module may reach, through the modules it may import, back
/// to itself.
#[test]
fn the_table_has_no_cycle() {
    let table = allowed();
    fn reaches(table: &BTreeMap<String, BTreeSet<String>>, from: &str, target: &str, seen: &mut BTreeSet<String>) -> bool {
        table.get(from).into_iter().flatten().any(|next| next == target || (seen.insert(next.clone()) && reaches(table, next, target, seen)))
    }
    for module in table.keys() {
        assert!(!reaches(&table, module, module, &mut BTreeSet::new()), "{module} reaches itself through the table");
    }
}
