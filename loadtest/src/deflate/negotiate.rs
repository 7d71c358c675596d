//! The offer in the upgrade request and the checks on the server's answer
//! (`Sec-WebSocket-Extensions` of the 101, RFC 6455 9.1 and RFC 7692 7.1).

/// What the upgrade request offers with `--compression`: what browsers send.
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// What an accepted answer agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Agreed {
    /// `server_max_window_bits`: the window the server compresses with (15 when absent);
    /// the inflater reads any window, so it needs nothing of this.
    pub server_max_window_bits: Option<u8>,
    /// `client_max_window_bits`: only for messages this client would compress (it
    /// compresses none).
    pub client_max_window_bits: Option<u8>,
    /// `client_no_context_takeover`: likewise.
    pub client_no_context_takeover: bool,
}

/// The longest piece of the server's answer quoted in a cause.
const SHOWN: usize = 40;

/// Checks the `Sec-WebSocket-Extensions` values of a 101 (every such header, in order)
/// for a request that `offered` permessage-deflate or not: `Ok(None)` when no extension is
/// in use, `Ok(Some(_))` when permessage-deflate was accepted in a form this client can
/// inflate, else the connect error's cause. An extension the request did not offer is an
/// error (RFC 6455 4.1): any at all without the offer, and any but one
/// permessage-deflate with it. The answer must say `server_no_context_takeover`: every
/// message is then inflated on its own, and no connection keeps a 32 KiB window.
pub fn negotiate<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
    offered: bool,
) -> Result<Option<Agreed>, String> {
    let mut agreed: Option<Agreed> = None;
    for v in values {
        let v = std::str::from_utf8(v).map_err(|_| {
            "bad_extension_answer: Sec-WebSocket-Extensions is not text".to_string()
        })?;
        for ext in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let mut parts = ext.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            if !offered || !name.eq_ignore_ascii_case("permessage-deflate") {
                return Err(format!(
                    "extension_not_offered: the server answered {}{}",
                    shown(name),
                    if offered {
                        ""
                    } else {
                        " (no extension was offered: give --compression to offer permessage-deflate)"
                    }
                ));
            }
            if agreed.is_some() {
                return Err("bad_extension_answer: permessage-deflate answered twice".into());
            }
            agreed = Some(params(parts)?);
        }
    }
    Ok(agreed)
}

/// The parameters of an answered permessage-deflate.
fn params<'a>(parts: impl Iterator<Item = &'a str>) -> Result<Agreed, String> {
    let bad = |what: String| Err(format!("bad_extension_answer: {what}"));
    let mut a = Agreed::default();
    let mut seen = [false; 4];
    let mut server_no_context_takeover = false;
    for p in parts {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim()))),
            None => (p, None),
        };
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return bad(format!("unknown parameter {}", shown(name))),
        };
        if std::mem::replace(&mut seen[slot], true) {
            return bad(format!("parameter {} repeated", name.to_ascii_lowercase()));
        }
        match (slot, value) {
            (0 | 1, Some(v)) => {
                return bad(format!(
                    "{} takes no value (got {})",
                    name.to_ascii_lowercase(),
                    shown(v)
                ))
            }
            (0, None) => server_no_context_takeover = true,
            (1, None) => a.client_no_context_takeover = true,
            // In an answer both window sizes carry a value (RFC 7692 7.1.2).
            (_, None) => return bad(format!("{} without a value", name.to_ascii_lowercase())),
            (_, Some(v)) => {
                let Some(bits) = window_bits(v) else {
                    return bad(format!(
                        "{}={} is not a window of 8 to 15 bits",
                        name.to_ascii_lowercase(),
                        shown(v)
                    ));
                };
                if slot == 2 {
                    a.server_max_window_bits = Some(bits);
                } else {
                    a.client_max_window_bits = Some(bits);
                }
            }
        }
    }
    if !server_no_context_takeover {
        return bad(
            "permessage-deflate without server_no_context_takeover (this client inflates \
             every message on its own and keeps no window per connection)"
                .into(),
        );
    }
    Ok(a)
}

/// A parameter value without the quotes of a quoted-string.
fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// A window size: 8 to 15, plain digits without a leading zero.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// A piece of the server's answer as a cause quotes it: at most [`SHOWN`] characters,
/// anything but printable ASCII as `?`.
fn shown(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(SHOWN)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    if s.chars().count() > SHOWN {
        out.push_str("...");
    }
    if out.is_empty() {
        out.push_str("an empty extension name");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(values: &[&str], offered: bool) -> Result<Option<Agreed>, String> {
        negotiate(values.iter().map(|v| v.as_bytes()), offered)
    }

    #[test]
    fn throngs_answers_are_accepted() {
        let a = answer(
            &["permessage-deflate; server_no_context_takeover; client_no_context_takeover"],
            true,
        )
        .unwrap()
        .unwrap();
        assert!(a.client_no_context_takeover);
        assert_eq!(a.server_max_window_bits, None);
        let a = answer(
            &["permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"],
            true,
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.server_max_window_bits, Some(10));
        // Case, spacing, quoting and the client's window (which it offered).
        let a = answer(
            &[" Permessage-Deflate ;SERVER_NO_CONTEXT_TAKEOVER; client_max_window_bits=\"12\" "],
            true,
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.client_max_window_bits, Some(12));
        // Declined: no header, or an empty one.
        assert_eq!(answer(&[], true), Ok(None));
        assert_eq!(answer(&[""], true), Ok(None));
        assert_eq!(answer(&[], false), Ok(None));
    }

    fn err(values: &[&str], offered: bool, want: &str) {
        match answer(values, offered) {
            Ok(a) => panic!("{values:?} (offered {offered}) accepted: {a:?}"),
            Err(e) => {
                assert!(e.contains(want), "{values:?}: {e:?} does not say {want:?}");
                assert!(!e.contains('\n'), "{e:?}");
            }
        }
    }

    #[test]
    fn extensions_not_offered_fail_the_connection() {
        let ok = "permessage-deflate; server_no_context_takeover";
        // Without --compression nothing may be answered (RFC 6455 4.1).
        err(
            &[ok],
            false,
            "extension_not_offered: the server answered permessage-deflate",
        );
        err(&[ok], false, "--compression");
        err(&["x-webkit-deflate-frame"], true, "x-webkit-deflate-frame");
        err(&[&format!("{ok}, foo")], true, "answered foo");
        err(&[ok, "bar"], true, "answered bar");
        err(&[ok, ok], true, "answered twice");
        err(&[&"z".repeat(500)], true, "...");
        err(&["caf\u{e9}"], true, "caf?");
        match negotiate([&b"\xff\xfe"[..]], true) {
            Err(e) => assert!(e.contains("not text"), "{e}"),
            Ok(a) => panic!("{a:?}"),
        }
    }

    #[test]
    fn parameters_it_cannot_accept_fail_the_connection() {
        let p = "permessage-deflate; server_no_context_takeover";
        err(
            &["permessage-deflate"],
            true,
            "without server_no_context_takeover",
        );
        err(
            &["permessage-deflate; client_no_context_takeover"],
            true,
            "without server_no_context_takeover",
        );
        err(
            &[&format!("{p}; x_unknown")],
            true,
            "unknown parameter x_unknown",
        );
        err(
            &[&format!("{p}; server_no_context_takeover")],
            true,
            "server_no_context_takeover repeated",
        );
        err(&[&format!("{p}=1")], true, "takes no value");
        for bad in ["7", "16", "010", "", "1x", "99999"] {
            err(
                &[&format!("{p}; server_max_window_bits={bad}")],
                true,
                "not a window of 8 to 15 bits",
            );
        }
        err(
            &[&format!("{p}; server_max_window_bits")],
            true,
            "server_max_window_bits without a value",
        );
        err(
            &[&format!("{p}; client_max_window_bits")],
            true,
            "client_max_window_bits without a value",
        );
    }
}
