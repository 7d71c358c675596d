//! A nesting-depth check over raw JSON bytes, run before any recursive parser or value tree
//! sees input that a client or upstream controls.

/// Returns `Err(max)` when `json` nests objects and arrays deeper than `max` levels.
///
/// One linear pass that skips string contents (escapes included), so brackets inside
/// strings do not count. It does not validate JSON; the real parser does that afterwards.
pub(crate) fn check(json: &[u8], max: usize) -> Result<(), usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(max);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn counts_levels_outside_strings() {
        assert_eq!(check(b"[[1]]", 2), Ok(()));
        assert_eq!(check(b"[[[1]]]", 2), Err(2));
        assert_eq!(check(br#"{"a":{"b":[]}}"#, 3), Ok(()));
        assert_eq!(check(br#"{"a":{"b":[{}]}}"#, 3), Err(3));
        // Brackets inside strings, escaped quotes included, do not count.
        assert_eq!(check(br#"["[[[[\"[[[[", "{{{{"]"#, 1), Ok(()));
        assert_eq!(check(br#"["\\", [[1]]]"#, 2), Err(2));
        // Stray closers do not underflow.
        assert_eq!(check(b"]]]][[", 2), Ok(()));
        assert_eq!(check(b"", 0), Ok(()));
    }
}
