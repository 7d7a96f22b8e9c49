//! The few differences of SQL between the two databases that the shared read queries
//! meet: placeholders (`?` → `$1`, `$2` …) and SQLite's `IS ?` for a comparison that
//! treats NULL as a value (`IS NOT DISTINCT FROM` in PostgreSQL).

/// `sql`, written for SQLite, in PostgreSQL's dialect.
pub fn postgres(sql: &str) -> String {
    let sql = sql.replace(" IS ?", " IS NOT DISTINCT FROM ?");
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    let mut quoted = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::postgres;

    #[test]
    fn placeholders_are_numbered_and_null_safe_comparisons_kept() {
        assert_eq!(
            postgres("SELECT a FROM t WHERE id = ? AND owner IS ? AND k = '?' LIMIT ?"),
            "SELECT a FROM t WHERE id = $1 AND owner IS NOT DISTINCT FROM $2 AND k = '?' LIMIT $3"
        );
        assert_eq!(postgres("SELECT 1"), "SELECT 1");
    }
}
