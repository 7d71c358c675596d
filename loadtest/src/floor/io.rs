//! The socket chores both sides of the floor share: reading what a socket has, and
//! accepting what waits on the listener.

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read};
use std::process::Child;
use std::time::{Duration, Instant};

/// Reads what `c` has, handing each read's length to `on_bytes` (which may write to
/// `c`); a read that does not fill `buf` ends it (as in Throng). True when the other side
/// closed (or reset) the connection.
pub fn read_all(
    c: &mut TcpStream,
    buf: &mut [u8],
    mut on_bytes: impl FnMut(&mut TcpStream, usize) -> Result<(), String>,
) -> Result<bool, String> {
    loop {
        match c.read(buf) {
            Ok(0) => return Ok(true),
            Ok(k) => {
                on_bytes(c, k)?;
                if k < buf.len() {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(true),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Accepts what waits on `listener`, at most up to `n` connections in all, registering
/// each for reads under its index in `conns` (TCP_NODELAY comes from the listener).
pub fn accept_waiting(
    listener: &TcpListener,
    poll: &Poll,
    conns: &mut Vec<TcpStream>,
    n: usize,
) -> Result<(), String> {
    while conns.len() < n {
        match listener.accept() {
            Ok((mut s, _)) => {
                poll.registry()
                    .register(&mut s, Token(conns.len()), Interest::READABLE)
                    .map_err(|e| format!("epoll: {e}"))?;
                conns.push(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
    Ok(())
}

/// Fails once `deadline` has passed or the clients' process `child` has ended; `done`
/// says how far the server side got ("12 of 100 handshakes").
pub fn still_running(deadline: Instant, child: &mut Child, done: &str) -> Result<(), String> {
    if Instant::now() >= deadline {
        return Err(format!("only {done} in time"));
    }
    if let Ok(Some(status)) = child.try_wait() {
        return Err(format!(
            "the clients' process ended ({status}) after {done}"
        ));
    }
    Ok(())
}

/// Waits at most `timeout` for `poll`'s events; a wait a signal interrupted is an empty one
/// (mio clears `events` before it waits).
pub fn wait(poll: &mut Poll, events: &mut Events, timeout: Duration) -> Result<(), String> {
    match poll.poll(events, Some(timeout)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
        Err(e) => Err(format!("epoll: {e}")),
    }
}
