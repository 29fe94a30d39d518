//! Names of configuration entries that are also path segments of the admin API (entities
//! of the cluster store, consumers, credential ids): one rule wherever they are checked.

/// The rule, as error messages state it.
pub const RULE: &str = "1 to 128 letters, digits, `-`, `_`, `.` or `~`";

/// Whether `name` follows [`RULE`]: it fits a URL path segment unescaped.
pub fn is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}
