//! Each setting's name is written in `src/` once: in its declaration in `src/settings.rs`.
//! Everywhere else a message names a setting through the declaration (`{PG_DSN}` in a format
//! string, `PG_DSN.name`), which the compiler checks; help text names another setting as
//! `{NAME}`. This reads every string literal of `src/` outside tests and fails on a setting's
//! name (or an older name, or a `DB_*` part of the connection) written out as text.

use std::path::{Path, PathBuf};

use pg2es::settings::{expand, PG_PARTS, SETTINGS};

fn names() -> Vec<&'static str> {
    let mut names: Vec<&str> = SETTINGS.iter().flat_map(|s| std::iter::once(s.name).chain(s.aliases.iter().copied())).collect();
    // The course's names for parts of the connection; libpq's own (PGHOST, PGPASSWORD) are
    // libpq's, not pg2es's settings.
    names.extend(PG_PARTS.iter().map(|(course, _)| *course));
    // The longest first, so that ES_INDEX_PREFIX is not read as ES_INDEX.
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    names
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "tests.rs") {
            out.push(path);
        }
    }
}

/// The string literals of `text` (comments skipped), each with its line; the code before a
/// file's `#[cfg(test)] mod tests` only.
fn literals(text: &str) -> Vec<(usize, String)> {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    let chars: Vec<char> = text.chars().collect();
    let (mut out, mut line, mut i) = (Vec::new(), 1, 0);
    while i < chars.len() {
        match chars[i] {
            '\n' => line += 1,
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            // A char literal ('"', '\'') but not a lifetime ('a).
            '\'' if chars.get(i + 2) == Some(&'\'') => i += 2,
            '\'' if chars.get(i + 1) == Some(&'\\') => {
                while i + 1 < chars.len() && chars[i + 1] != '\'' {
                    i += 1;
                }
                i += 1;
            }
            'r' if chars.get(i + 1).is_some_and(|c| *c == '#' || *c == '"')
                && !chars.get(i.wrapping_sub(1)).is_some_and(|c| c.is_alphanumeric() || *c == '_') =>
            {
                let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
                let start = i + 1 + hashes + 1;
                let close: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
                let rest: String = chars[start..].iter().collect();
                let end = rest.find(&close).expect("a raw string ends");
                out.push((line, rest[..end].to_string()));
                line += rest[..end].matches('\n').count();
                i = start + rest[..end].chars().count() + close.len();
                continue;
            }
            '"' => {
                let (start_line, mut s) = (line, String::new());
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        s.push(chars[i]);
                        i += 1;
                    }
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    s.push(chars[i]);
                    i += 1;
                }
                out.push((start_line, s));
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The names written out in `literal`: format arguments (`{PG_DSN}`, `{x:?}`) left out.
fn written_names(literal: &str, names: &[&str]) -> Vec<String> {
    let mut text = String::new();
    let mut depth = 0;
    for c in literal.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            _ if depth == 0 => text.push(c),
            _ => {}
        }
    }
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    let mut found = Vec::new();
    for name in names {
        let mut from = 0;
        while let Some(at) = text[from..].find(name).map(|a| a + from) {
            let after = text[at + name.len()..].strip_prefix("_FILE").unwrap_or(&text[at + name.len()..]);
            if !word(text[..at].chars().next_back()) && !word(after.chars().next()) {
                found.push(name.to_string());
            }
            from = at + name.len();
        }
    }
    found
}

#[test]
fn each_setting_name_is_written_once() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let names = names();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    let mut written = Vec::new();
    for file in &files {
        let declarations = file.ends_with("settings.rs") && file.parent() == Some(root.as_path());
        for (line, literal) in literals(&std::fs::read_to_string(file).unwrap()) {
            // The declaration's own literals: an older name, a part of the connection.
            if declarations && names.contains(&literal.as_str()) {
                continue;
            }
            for name in written_names(&literal, &names) {
                written.push(format!("{}:{line}: {name} in {literal:?}", file.strip_prefix(&root).unwrap().display()));
            }
        }
    }
    assert!(files.len() > 20, "src/ was not read: {files:?}");
    assert!(
        written.is_empty(),
        "setting names written out as text; name them through the declaration (`{{NAME}}` with `use crate::settings::NAME`, or `NAME.name`):\n{}",
        written.join("\n")
    );
}

#[test]
fn help_names_only_declared_settings() {
    for s in SETTINGS {
        for text in [s.help, s.unset] {
            let expanded = expand(text);
            assert!(!expanded.contains('{'), "{}: {{...}} in its help that names no setting: {expanded}", s.name);
        }
    }
}

/// The checker sees what it must: a name in a message, in a raw string, across lines, and not
/// in a comment or a format argument.
#[test]
fn the_checker_finds_written_names() {
    let names = names();
    let found = |src: &str| literals(src).into_iter().flat_map(|(line, l)| written_names(&l, &names).into_iter().map(move |n| (line, n))).collect::<Vec<_>>();
    assert_eq!(found("let a = \"set PG_DSN\";"), [(1, "PG_DSN".to_string())]);
    assert_eq!(found("// PG_DSN\nlet a = format!(\"{PG_DSN} and {x:?}\");"), []);
    assert_eq!(found("let c = '\"'; let a = \"x\n ES_INDEX_PREFIX=\";"), [(1, "ES_INDEX_PREFIX".to_string())]);
    assert_eq!(found("let a = r#\"PG_PASSWORD_FILE\"#;"), [(1, "PG_PASSWORD".to_string())]);
    assert_eq!(found("fn f<'a>(x: &'a str) { \"ES_INDEXES DB_HOST\" }"), [(1, "DB_HOST".to_string())]);
    assert_eq!(found("let a = \"x\";\n#[cfg(test)]\nmod tests { \"PG_DSN\" }"), []);
}
