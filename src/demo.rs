//! `serve --dev` only: the demo page at `/demo` on the WebSocket listener. It loads the
//! browser client (clients/js/throng.js, served at `/demo/throng.js`), connects as the dev
//! user `alice` with a token minted for the page, and shows pushes as they arrive, with
//! subscribe and publish. Nothing here exists without `--dev`.

use crate::http;

/// The page, with `__THRONG_DEMO_TOKEN__` where its token goes.
const PAGE: &str = include_str!("demo/index.html");
/// The browser client, as published in clients/js.
const LIBRARY: &str = include_str!("../clients/js/throng.js");
/// What the page's token grants: the topics the dev banner's token grants.
const ROOMS: &str = "room:*";
/// How long the page's token lasts.
const TOKEN_TTL_SECS: u64 = 24 * 3600;

/// The path of a GET request head in `buf`, when it is one.
pub fn get_path(buf: &[u8]) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(buf).ok()?;
    if req.method != Some("GET") {
        return None;
    }
    let target = req.path?;
    Some(
        target
            .split_once('?')
            .map_or(target, |(p, _)| p)
            .to_string(),
    )
}

/// The complete response for a GET of `path`, when it is one of the demo's; `secret`
/// signs the page's token (the dev secret), as `options` say (the server's algorithm,
/// issuer and audience).
pub fn response(
    path: &str,
    secret: &str,
    options: crate::auth::MintOptions<'_>,
) -> Option<Vec<u8>> {
    let (content_type, body) = match path {
        "/demo" | "/demo/" => {
            let rooms = [ROOMS.to_string()];
            let token = crate::auth::mint(
                secret,
                "alice",
                TOKEN_TTL_SECS,
                Some(&rooms),
                Some(&rooms),
                options,
            )
            .ok()?;
            (
                "text/html; charset=utf-8",
                PAGE.replace("__THRONG_DEMO_TOKEN__", &token),
            )
        }
        "/demo/throng.js" => ("text/javascript; charset=utf-8", LIBRARY.to_string()),
        _ => return None,
    };
    Some(http::response(
        200,
        content_type,
        body.as_bytes(),
        false,
        "Cache-Control: no-store\r\n",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_carries_a_token_for_alice_and_the_library_is_served() {
        let secret = "demo-secret-demo-secret-demo-secret";
        let page =
            String::from_utf8(response("/demo", secret, Default::default()).unwrap()).unwrap();
        assert!(page.starts_with("HTTP/1.1 200 "), "{page}");
        assert!(page.contains("text/html"));
        assert!(!page.contains("__THRONG_DEMO_TOKEN__"));
        let token = page
            .split("const TOKEN = \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap();
        let cfg = crate::config::Config::from_args(["--jwt-secret", secret]).unwrap();
        let id = crate::auth::Verifier::new(&cfg.jwt)
            .unwrap()
            .verify(token)
            .unwrap();
        assert_eq!(&*id.user, "alice");
        assert!(crate::topic::allowed(&id.publish, "room:1"));
        let js =
            String::from_utf8(response("/demo/throng.js", secret, Default::default()).unwrap())
                .unwrap();
        assert!(js.contains("text/javascript") && js.contains("ThrongClient"));
        assert!(response("/demo/other", secret, Default::default()).is_none());
        assert_eq!(
            get_path(b"GET /demo?x=1 HTTP/1.1\r\n\r\n").as_deref(),
            Some("/demo")
        );
        assert_eq!(get_path(b"POST /demo HTTP/1.1\r\n\r\n"), None);
    }
}
