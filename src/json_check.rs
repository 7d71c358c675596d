//! A check over raw JSON bytes, run before any parser or value tree sees input that a
//! client or upstream controls: nesting depth (recursive parsers overflow the stack), and
//! `\u` escapes of lone UTF-16 surrogates (simd-json decodes a lone high one as U+0000,
//! and raw `data` passed on verbatim would reach clients whose parsers refuse it).

/// What the check refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Problem {
    /// Objects and arrays nest deeper than this many levels.
    TooDeep(usize),
    /// A `\uD800`-`\uDBFF` escape not followed by a `\uDC00`-`\uDFFF` one, or the latter
    /// alone: not a character (RFC 8259 8.2).
    LoneSurrogate,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::TooDeep(max) => write!(f, "JSON nested deeper than {max} levels"),
            Problem::LoneSurrogate => {
                f.write_str("a \\u escape of a lone UTF-16 surrogate is not a character")
            }
        }
    }
}

/// Refuses `json` nesting objects and arrays deeper than `max` levels, or escaping a lone
/// surrogate.
///
/// One linear pass that skips string contents (escapes included), so brackets inside
/// strings do not count. It does not validate JSON otherwise; the real parser does that
/// afterwards (a malformed escape is left to it).
pub(crate) fn check(json: &[u8], max: usize) -> Result<(), Problem> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = 0;
    while i < json.len() {
        let b = json[i];
        if in_string {
            match b {
                b'\\' if json.get(i + 1) == Some(&b'u') => {
                    i += escape_len(json, i)?;
                    continue;
                }
                // Any other escape is two bytes (or the parser refuses it).
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(Problem::TooDeep(max));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The length of the `\u` escape at `at` (with its pair, for a surrogate pair).
fn escape_len(json: &[u8], at: usize) -> Result<usize, Problem> {
    let Some(unit) = hex4(json, at + 2) else {
        return Ok(2);
    };
    match unit {
        0xD800..=0xDBFF => {
            let low = (json.get(at + 6..at + 8) == Some(b"\\u"))
                .then(|| hex4(json, at + 8))
                .flatten();
            match low {
                Some(0xDC00..=0xDFFF) => Ok(12),
                _ => Err(Problem::LoneSurrogate),
            }
        }
        0xDC00..=0xDFFF => Err(Problem::LoneSurrogate),
        _ => Ok(6),
    }
}

/// The four hex digits at `at`, as a number; None if they are not there.
fn hex4(json: &[u8], at: usize) -> Option<u32> {
    let digits = json.get(at..at + 4)?;
    digits
        .iter()
        .try_fold(0u32, |n, &d| char::from(d).to_digit(16).map(|v| n * 16 + v))
}

#[cfg(test)]
mod tests {
    use super::{check, Problem};

    #[test]
    fn counts_levels_outside_strings() {
        assert_eq!(check(b"[[1]]", 2), Ok(()));
        assert_eq!(check(b"[[[1]]]", 2), Err(Problem::TooDeep(2)));
        assert_eq!(check(br#"{"a":{"b":[]}}"#, 3), Ok(()));
        assert_eq!(check(br#"{"a":{"b":[{}]}}"#, 3), Err(Problem::TooDeep(3)));
        // Brackets inside strings, escaped quotes included, do not count.
        assert_eq!(check(br#"["[[[[\"[[[[", "{{{{"]"#, 1), Ok(()));
        assert_eq!(check(br#"["\\", [[1]]]"#, 2), Err(Problem::TooDeep(2)));
        assert_eq!(check(br#"["\u005b\"[", [1]]"#, 2), Ok(()));
        // Stray closers do not underflow.
        assert_eq!(check(b"]]]][[", 2), Ok(()));
        assert_eq!(check(b"", 0), Ok(()));
    }

    #[test]
    fn lone_surrogate_escapes_are_refused_pairs_are_not() {
        let lone = Err(Problem::LoneSurrogate);
        for bad in [
            r#""\ud800""#,
            r#""a\uD800bcdef""#,
            r#""\ud800\u0041""#,
            r#""\udbff\ud800""#,
            r#""\udc00""#,
            r#""\ud800\uzzzz""#,
            r#""\ud800\"#,
            r#"{"ref":"x\udfff"}"#,
        ] {
            assert_eq!(check(bad.as_bytes(), 4), lone, "{bad}");
        }
        for good in [
            r#""\ud83d\ude00""#,
            r#""\uD83D\uDE00 and \u00e9""#,
            r#""\\ud800""#,
            r#""\u12""#,
            r#""\uzzzz""#,
            "\"\u{1F600}\"",
            r#"{"a":"\ud7ff\ue000"}"#,
        ] {
            assert_eq!(check(good.as_bytes(), 4), Ok(()), "{good}");
        }
    }
}
