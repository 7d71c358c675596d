//! A TCP proxy for the tests: it forwards every connection to one address, can hold the
//! client-to-server direction (a stalled server, as far as the client can tell), can
//! delay the server-to-client direction by a fixed time (a slow network: every byte
//! arrives, late), and can refuse connections past a number (a server that lets no one
//! back in). Its threads end when it is dropped, or at the latest after `MAX_LIFE`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// No proxy thread outlives this.
const MAX_LIFE: Duration = Duration::from_secs(120);
/// How often a blocked thread looks at the stop and pause flags.
const TICK: Duration = Duration::from_millis(20);

pub struct Proxy {
    pub addr: SocketAddr,
    /// While set, bytes from clients are held (not read on to the server).
    pub paused: Arc<AtomicBool>,
    /// Connections accepted after this many are closed at once, never forwarded.
    pub refuse_after: Arc<AtomicUsize>,
    /// Connections closed at once for `refuse_after`.
    pub refused: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Forwards connections to `to`; server-to-client bytes arrive `delay` after the
    /// server sent them.
    pub fn start(to: SocketAddr, delay: Duration) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let paused = Arc::new(AtomicBool::new(false));
        let refuse_after = Arc::new(AtomicUsize::new(usize::MAX));
        let refused = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, st) = (paused.clone(), stop.clone());
        let (limit, no) = (refuse_after.clone(), refused.clone());
        std::thread::spawn(move || {
            let born = Instant::now();
            let mut accepted = 0usize;
            while !st.load(Ordering::Relaxed) && born.elapsed() < MAX_LIFE {
                match l.accept() {
                    Ok((c, _)) => {
                        accepted += 1;
                        if accepted > limit.load(Ordering::Relaxed) {
                            no.fetch_add(1, Ordering::Relaxed);
                            drop(c);
                            continue;
                        }
                        let Ok(s) = TcpStream::connect(to) else {
                            continue;
                        };
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_nodelay(true);
                        let _ = s.set_nodelay(true);
                        up(
                            c.try_clone().unwrap(),
                            s.try_clone().unwrap(),
                            &p,
                            &st,
                            born,
                        );
                        down(s, c, delay, &st, born);
                    }
                    Err(_) => std::thread::sleep(TICK),
                }
            }
        });
        Proxy {
            addr,
            paused,
            refuse_after,
            refused,
            stop,
        }
    }

    /// `ws://<proxy>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://<proxy>`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn alive(stop: &AtomicBool, born: Instant) -> bool {
    !stop.load(Ordering::Relaxed) && born.elapsed() < MAX_LIFE
}

/// Client to server, held while `paused`.
fn up(
    mut from: TcpStream,
    mut to: TcpStream,
    paused: &Arc<AtomicBool>,
    stop: &Arc<AtomicBool>,
    born: Instant,
) {
    let (paused, stop) = (paused.clone(), stop.clone());
    std::thread::spawn(move || {
        from.set_read_timeout(Some(TICK)).unwrap();
        let mut buf = [0u8; 16 * 1024];
        while alive(&stop, born) {
            if paused.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                continue;
            }
            let Some(n) = read_some(&mut from, &mut buf) else {
                break;
            };
            if n > 0 && to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// One read within the socket's timeout: `Some(n)` bytes (0: none yet), `None` at the
/// end of the stream or on an error.
fn read_some(from: &mut TcpStream, buf: &mut [u8]) -> Option<usize> {
    match from.read(buf) {
        Ok(0) => None,
        Ok(n) => Some(n),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Some(0)
        }
        Err(_) => None,
    }
}

/// Server to client, each chunk written `delay` after it was read.
fn down(
    mut from: TcpStream,
    mut to: TcpStream,
    delay: Duration,
    stop: &Arc<AtomicBool>,
    born: Instant,
) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let st = stop.clone();
    std::thread::spawn(move || {
        from.set_read_timeout(Some(TICK)).unwrap();
        let mut buf = [0u8; 16 * 1024];
        while alive(&st, born) {
            let Some(n) = read_some(&mut from, &mut buf) else {
                break;
            };
            if n > 0 && tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                break;
            }
        }
        // Dropping `tx` ends the writer once it has written what was read.
    });
    let st = stop.clone();
    std::thread::spawn(move || {
        while alive(&st, born) {
            match rx.recv_timeout(TICK) {
                Ok((at, bytes)) => {
                    let due = at + delay;
                    while Instant::now() < due && alive(&st, born) {
                        std::thread::sleep(TICK.min(due.saturating_duration_since(Instant::now())));
                    }
                    if to.write_all(&bytes).is_err() {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
