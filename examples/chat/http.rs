//! Just enough of an HTTP/1.1 server for the upstream: one thread per connection,
//! keep-alive, bodies framed by `Content-Length` (what Throng's events POSTs use).
//! Not a general server: no chunked bodies, no pipelining beyond reading in order.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest request head; Throng's are a few hundred bytes.
const MAX_HEAD: u64 = 16 * 1024;
/// Largest body: an events batch is at most about 1 MiB (docs/protocol.md 6).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// An idle keep-alive connection is closed after this; Throng reconnects when it needs to.
const IDLE: Duration = Duration::from_secs(60);

pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Response {
    pub status: u16,
    /// JSON text, or empty.
    pub body: String,
}

impl Response {
    pub fn new(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            body: body.into(),
        }
    }
}

pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// A running server; `stop` ends its accept loop (connections end with their peers).
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Binds `listen` and serves `handler` on a background thread.
    pub fn start(listen: &str, handler: Handler) -> Result<Server, String> {
        let listener =
            TcpListener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address of {listen}: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("upstream-accept".into())
            .spawn(move || accept_loop(&listener, &handler, &stopping))
            .map_err(|e| format!("cannot start the accept thread: {e}"))?;
        Ok(Server { addr, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // The accept loop blocks in accept(): one connection wakes it to see the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: &TcpListener, handler: &Handler, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = conn else {
            // A connection that failed before accept (reset): nothing to serve.
            continue;
        };
        let handler = Arc::clone(handler);
        let spawned = std::thread::Builder::new()
            .name("upstream-conn".into())
            .spawn(move || {
                if let Err(e) = serve(stream, &handler) {
                    eprintln!("[upstream] connection ended with an error: {e}");
                }
            });
        if let Err(e) = spawned {
            eprintln!("[upstream] cannot start a connection thread: {e}");
        }
    }
}

/// Answers the requests of one connection in order until the peer closes it, asks for
/// `Connection: close`, stays idle for `IDLE`, or sends something this server refuses.
fn serve(stream: TcpStream, handler: &Handler) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(IDLE))?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let req = match read_request(&mut reader) {
            Ok(Some(req)) => req,
            Ok(None) => return Ok(()),
            Err(Refusal { status, message }) => {
                let body = serde_json::json!({"error": "bad_request", "message": message});
                return write_response(&mut out, &Response::new(status, body.to_string()), true);
            }
        };
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        write_response(&mut out, &handler(&req), close)?;
        if close {
            return Ok(());
        }
    }
}

/// Why a request was not read: answered with `status`, then the connection closes.
struct Refusal {
    status: u16,
    message: String,
}

fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// The next request, or None when the peer closed (or went idle) between requests.
fn read_request(reader: &mut BufReader<TcpStream>) -> Result<Option<Request>, Refusal> {
    let mut head = Vec::new();
    let mut limited = reader.by_ref().take(MAX_HEAD);
    loop {
        let before = head.len();
        match limited.read_until(b'\n', &mut head) {
            Ok(0) if head.is_empty() => return Ok(None),
            Ok(0) => return Err(refuse(400, "the connection ended inside a request head")),
            Ok(_) => {}
            Err(e) if head.is_empty() && is_timeout(&e) => return Ok(None),
            Err(e) => return Err(refuse(400, format!("cannot read the request head: {e}"))),
        }
        if !head.ends_with(b"\n") {
            return Err(refuse(431, format!("request head over {MAX_HEAD} bytes")));
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let text = std::str::from_utf8(&head).map_err(|_| refuse(400, "request head is not UTF-8"))?;
    let mut lines = text.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(path), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse(
            400,
            format!("malformed request line {request_line:?}"),
        ));
    };
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(refuse(400, format!("malformed header line {line:?}")));
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding").is_some() {
        return Err(refuse(
            411,
            "chunked bodies are not supported; send Content-Length",
        ));
    }
    let length = match req.header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| refuse(400, format!("bad Content-Length {v:?}")))?,
    };
    if length > MAX_BODY {
        return Err(refuse(
            413,
            format!("body of {length} bytes; at most {MAX_BODY}"),
        ));
    }
    req.body.resize(length, 0);
    reader
        .read_exact(&mut req.body)
        .map_err(|e| refuse(400, format!("cannot read the {length}-byte body: {e}")))?;
    Ok(Some(req))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn write_response(out: &mut TcpStream, resp: &Response, close: bool) -> io::Result<()> {
    let reason = match resp.status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Status",
    };
    let mut msg = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\n",
        resp.status,
        resp.body.len()
    );
    if !resp.body.is_empty() {
        msg.push_str("Content-Type: application/json\r\n");
    }
    if close {
        msg.push_str("Connection: close\r\n");
    }
    msg.push_str("\r\n");
    msg.push_str(&resp.body);
    out.write_all(msg.as_bytes())?;
    out.flush()
}
