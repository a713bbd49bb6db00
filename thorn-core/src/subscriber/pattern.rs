//! Event patterns: Thorn's matching rules and the shape a pattern must have.

/// True when `pattern` selects `event` under Thorn's rules (see the module
/// docs).
pub fn pattern_matches(pattern: &str, event: &str) -> bool {
    if pattern == "*" || pattern == event {
        return true;
    }
    match event.split_once('.') {
        Some((first, rest)) => {
            pattern.strip_suffix(".*") == Some(first) || pattern.strip_prefix("*.") == Some(rest)
        }
        None => false,
    }
}

/// Calls `f` with each of the (at most four) patterns that select
/// `event`: `*`, the event itself, `<first>.*` and `*.<rest>`. A store
/// indexed by pattern finds every subscriber of an event with these
/// lookups.
pub(crate) fn candidate_patterns(event: &str, mut f: impl FnMut(&str)) {
    f("*");
    f(event);
    if let Some((first, rest)) = event.split_once('.') {
        // `<first>.*` and `*.<rest>` share one buffer: `<first>.**.<rest>`.
        let mut both = String::with_capacity(event.len() + 4);
        both.push_str(first);
        both.push_str(".*");
        let mid = both.len();
        both.push_str("*.");
        both.push_str(rest);
        f(&both[..mid]);
        f(&both[mid..]);
    }
}

/// Checks an event pattern's shape: dot-separated words of letters,
/// digits, `_` and `-`, where a `*` may stand alone, as the first word
/// (`*.created`) or as the last (`article.*`).
///
/// ```
/// use thorn_core::subscriber::validate_pattern;
/// assert!(validate_pattern("article.*").is_ok());
/// assert!(validate_pattern("*.created").is_ok());
/// assert!(validate_pattern("article..created").is_err());
/// assert!(validate_pattern("art*cle").is_err());
/// ```
pub fn validate_pattern(pattern: &str) -> std::result::Result<(), String> {
    if pattern == "*" {
        return Ok(());
    }
    if pattern.is_empty() {
        return Err("the event pattern is empty".into());
    }
    if pattern.len() > 255 {
        return Err("the event pattern is longer than 255 characters".into());
    }
    let words: Vec<&str> = pattern.split('.').collect();
    let last = words.len() - 1;
    for (i, word) in words.iter().enumerate() {
        if *word == "*" {
            if words.len() == 1 || (i != 0 && i != last) || (i == last && i == 0) {
                return Err(format!(
                    "`*` may only be the first or last word of `{pattern}`"
                ));
            }
            if i == last && words[0] == "*" {
                return Err(format!("`{pattern}` has `*` at both ends; use `*` alone"));
            }
            continue;
        }
        if word.is_empty() {
            return Err(format!("`{pattern}` has an empty word"));
        }
        if let Some(c) = word
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(format!(
                "`{pattern}` contains `{c}`: use letters, digits, `_`, `-` and `.`"
            ));
        }
    }
    Ok(())
}
