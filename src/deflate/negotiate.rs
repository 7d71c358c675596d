//! Reading a client's permessage-deflate offers and answering the first one that can be
//! met (RFC 7692 section 7.1).

/// An accepted offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// `server_max_window_bits` the client asked for (8-15), echoed in the answer: the
    /// server then compresses only messages no longer than that window, so no
    /// back-reference can reach further.
    pub server_max_window_bits: Option<u8>,
}

impl Agreed {
    /// The window the server's compressed messages must fit in, in bits.
    pub fn window_bits(self) -> u8 {
        self.server_max_window_bits.unwrap_or(15)
    }

    /// The `Sec-WebSocket-Extensions` value of the 101: no context takeover either way.
    pub fn response(self) -> String {
        let mut s = String::from(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        if let Some(bits) = self.server_max_window_bits {
            s.push_str(&format!("; server_max_window_bits={bits}"));
        }
        s
    }
}

/// The first permessage-deflate offer in `headers` (the values of every
/// `Sec-WebSocket-Extensions` header, in order) that is valid; `None` when there is none.
/// An offer with an unknown or repeated parameter, or a bad value, is declined (the next
/// one is tried), as RFC 7692 section 5 requires.
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<Agreed> {
    headers
        .into_iter()
        .flat_map(|h| h.split(','))
        .find_map(offer)
}

/// One offer: `permessage-deflate; param[=value]; ...`.
fn offer(text: &str) -> Option<Agreed> {
    let mut parts = text.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen = [false; 4];
    let mut agreed = Agreed {
        server_max_window_bits: None,
    };
    for p in parts {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                agreed.server_max_window_bits = Some(window_bits(value?)?);
                2
            }
            // The client may limit its own window (with or without a value); the server
            // inflates with the largest window, which reads any smaller one.
            "client_max_window_bits" => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
    }
    Some(agreed)
}

/// A window size of 8 to 15 bits, written as plain digits.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_offers_are_accepted() {
        // Chromium and Firefox, Python's websockets, a bare offer.
        for h in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; client_max_window_bits=12",
        ] {
            let a = negotiate([h]).unwrap_or_else(|| panic!("{h}"));
            assert_eq!(a.window_bits(), 15, "{h}");
            assert_eq!(
                a.response(),
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            );
        }
    }

    #[test]
    fn a_server_window_is_echoed() {
        let a = negotiate(["permessage-deflate; server_max_window_bits=10"]).unwrap();
        assert_eq!(a.window_bits(), 10);
        assert!(a.response().ends_with("; server_max_window_bits=10"));
    }

    #[test]
    fn invalid_offers_are_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=1x",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; unknown",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(negotiate([bad]), None, "{bad}");
        }
        let a = negotiate([
            "permessage-deflate; server_max_window_bits=99, permessage-deflate; server_max_window_bits=9",
        ]);
        assert_eq!(a.map(Agreed::window_bits), Some(9));
        // Offers may span several headers.
        let a = negotiate(["foo", "permessage-deflate"]);
        assert!(a.is_some());
    }
}
