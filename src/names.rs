//! The names Postgres and Elasticsearch accept, one rule each: for a definition's names and for
//! the settings that name the same things. A leaf.

/// A plain Postgres identifier pg2es writes unquoted in messages and settings: lower case,
/// `[a-z0-9_]`, not starting with a digit, at most 63 bytes.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_') && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') && s.len() <= 63
}

/// [`is_index_name`] in words, for the messages that refuse a name.
pub const INDEX_NAME_RULE: &str =
    "a lower-case index name of at most 255 bytes, not . or .., without spaces or any of \\/*?\"<>|,#: and not starting with -, _ or +";

/// A name Elasticsearch and OpenSearch accept for an index: lower case, at most 255 bytes, not
/// `.` or `..`, none of `\/*?"<>|,#:` or spaces, not starting with `-`, `_` or `+`.
pub fn is_index_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s != "."
        && s != ".."
        && !s.starts_with(['-', '_', '+'])
        && s.chars().all(|c| !c.is_ascii_uppercase() && !c.is_whitespace() && !"\\/*?\"<>|,#:".contains(c))
}

/// A replication slot or publication name from another name: lower case, `[a-z0-9_]`, at most
/// 63. A name that had to change (other characters, upper case, too long) gets a hash of the
/// original, so `a-c`, `a.c` and `a_c` never share a slot; one that fits is kept as it is.
pub fn replication_name(base: &str) -> String {
    let mut name: String = base.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    if name == base && name.len() <= 63 {
        return name;
    }
    // FNV-1a: stable across builds and platforms, which a slot name must be.
    let hash = base.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    name.truncate(63 - 9);
    format!("{name}_{hash:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_replication_names_never_collide() {
        assert_eq!(replication_name("pg2es_movies"), "pg2es_movies");
        let names: Vec<String> = ["pg2es_a-c", "pg2es_a_c", "pg2es_a.c", "pg2es_A_c"].iter().map(|n| replication_name(n)).collect();
        assert_eq!(names[1], "pg2es_a_c");
        for (i, a) in names.iter().enumerate() {
            assert!(a.len() <= 63 && a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{a}");
            assert!(names[i + 1..].iter().all(|b| a != b), "{names:?}");
        }
        let long = replication_name(&format!("pg2es_{}", "x".repeat(80)));
        assert_eq!(long.len(), 63);
        assert_ne!(long, replication_name(&format!("pg2es_{}", "x".repeat(81))));
    }
}
