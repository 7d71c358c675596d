//! How chat events read in a terminal: one line each, shared by the interactive client
//! and the selftest's transcript.

use crate::conn::{Event, Resume};

/// The line for `ev`, or None for events that show nothing: presence updates replayed
/// as history are only bookkeeping (the member list after them is what counts).
pub fn line(ev: &Event) -> Option<String> {
    Some(match ev {
        Event::Connected { session } => format!("-- connected (session {session})"),
        Event::Joined { topic, seq, resume } => joined(topic, *seq, resume),
        Event::Message {
            seq,
            from,
            text,
            history,
        } => format!(
            "[{seq}] {from}: {text}{}",
            if *history { "   (history)" } else { "" }
        ),
        Event::Presence { history: true, .. } => return None,
        Event::Presence {
            online,
            members,
            joined,
            left,
            ..
        } => {
            let mut what: Vec<String> = joined.iter().map(|u| format!("{u} joined")).collect();
            what.extend(left.iter().map(|u| format!("{u} left")));
            what.push(format!("online {online}: {}", members.join(", ")));
            format!("* {}", what.join("; "))
        }
        Event::Who { room, members } => format!(
            "* in room {room} ({}): {}",
            members.len(),
            members.join(", ")
        ),
        Event::Other(v) => format!("-- push: {v}"),
        Event::Refused { code, message } => format!("!! refused ({code}): {message}"),
        Event::Notice(text) => format!("-- {text}"),
        Event::Disconnected { reason, retry_in } => format!(
            "-- disconnected: {reason}; reconnecting in {} ms",
            retry_in.as_millis()
        ),
        Event::ConnectFailed { error, retry_in } => format!(
            "-- cannot connect: {error}; retrying in {} ms",
            retry_in.as_millis()
        ),
        Event::Gone { reason } => format!("-- disconnected for good: {reason}"),
    })
}

fn joined(topic: &str, seq: u64, resume: &Resume) -> String {
    match resume {
        Resume::Fresh => format!("-- joined {topic} (the room is at seq {seq})"),
        Resume::Replaying { since, upto } if since == upto => {
            format!("-- back in {topic}: nothing was missed (seq {seq})")
        }
        Resume::Replaying { since, upto } => format!(
            "-- back in {topic}: replaying what was missed, seq {} to {upto} (history)",
            since + 1
        ),
        Resume::Unavailable { since: Some(since) } => format!(
            "-- back in {topic}: history not available (resumed:false): what was said after \
             seq {since} is lost; continuing from seq {seq}"
        ),
        Resume::Unavailable { since: None } => format!(
            "-- back in {topic}: history not available (the room's epoch was not known yet); \
             continuing from seq {seq}"
        ),
    }
}
