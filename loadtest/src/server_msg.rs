//! The server's JSON messages, as far as the load generator reads them: one shape for
//! every scenario, with the scenario's own `data` payload.

use serde::Deserialize;
use std::borrow::Cow;

/// A server message; `D` is the `data` this scenario sends (someone else's parses as
/// none, see [`ServerMsg::parse`]).
#[derive(Deserialize)]
pub struct ServerMsg<'a, D> {
    /// `welcome`, `push`, `subscribed`, `published`, `error`, `reconnect`, ...
    #[serde(rename = "type", borrow)]
    pub ty: Cow<'a, str>,
    /// The stream position: the user's, or on topic pushes and answers the topic's.
    pub seq: Option<u64>,
    /// Present on topic pushes, whose `seq` is the topic's, not the user's.
    #[serde(borrow)]
    pub topic: Option<Cow<'a, str>>,
    /// The publishing user of a client publish.
    #[serde(borrow)]
    pub from: Option<Cow<'a, str>>,
    /// The `ref` of the client message answered.
    #[serde(rename = "ref", borrow)]
    pub reference: Option<Cow<'a, str>>,
    /// `error`: why.
    #[serde(borrow)]
    pub code: Option<Cow<'a, str>>,
    /// `welcome` and `subscribed`: the stream's epoch; a topic's first push: the epoch it
    /// starts.
    #[serde(borrow)]
    pub epoch: Option<Cow<'a, str>>,
    /// `welcome` and `subscribed` after a `since`/`epoch`.
    pub resumed: Option<bool>,
    /// `reconnect`: when the server will close this connection.
    pub after_ms: Option<u64>,
    /// The payload, when it is this scenario's.
    pub data: Option<D>,
}

/// Any message, its type and stream position only (its data is not ours).
#[derive(Deserialize)]
struct LooseMsg<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    seq: Option<u64>,
    #[serde(borrow)]
    topic: Option<Cow<'a, str>>,
}

impl<'a, D: Deserialize<'a>> ServerMsg<'a, D> {
    /// Parses `text`; a message whose data is not a `D` (someone else's push) keeps only
    /// its type, `seq` and topic. `None` when it is no server message at all.
    pub fn parse(text: &'a [u8]) -> Option<ServerMsg<'a, D>> {
        if let Ok(m) = serde_json::from_slice(text) {
            return Some(m);
        }
        let l: LooseMsg = serde_json::from_slice(text).ok()?;
        Some(ServerMsg {
            ty: l.ty,
            seq: l.seq,
            topic: l.topic,
            from: None,
            reference: None,
            code: None,
            epoch: None,
            resumed: None,
            after_ms: None,
            data: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Ours {
        n: u64,
    }

    #[test]
    fn foreign_data_keeps_the_type_and_seq() {
        let m = ServerMsg::<Ours>::parse(
            br#"{"type":"push","data":{"n":7,"pad":"xxxx"},"ts":1,"seq":3,"ref":"p1"}"#,
        )
        .unwrap();
        assert_eq!((&*m.ty, m.seq), ("push", Some(3)));
        assert_eq!(m.reference.as_deref(), Some("p1"));
        assert_eq!(m.data.map(|d| d.n), Some(7));
        let m = ServerMsg::<Ours>::parse(br#"{"type":"push","data":"hello","seq":2,"from":"u1"}"#)
            .unwrap();
        assert_eq!((m.seq, m.data.is_none(), m.from), (Some(2), true, None));
        assert!(ServerMsg::<Ours>::parse(b"{\"seq\":1}").is_none());
        assert!(ServerMsg::<Ours>::parse(b"not json").is_none());
    }
}
