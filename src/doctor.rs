//! `throng doctor`: can this host hold N connections?
//!
//! Reads the host's limits from `/proc` and `/sys` (both roots can be pointed at fake
//! trees, which is how the tests drive it), compares each with what N connections need,
//! and grades it OK, WARN or FAIL. [`check`] returns a structured [`Report`]; [`render`]
//! turns it into the text the command prints. Nothing read from the host is trusted: a
//! missing or malformed file is a WARN that says what could not be read, never a panic.
//!
//! The rules and the memory arithmetic are explained in `tuning/README.md`; the sysctl
//! values that pass every check are in `tuning/sysctl.d/99-throng.conf`.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use clap::Args;

/// Connections `throng doctor` checks for when `--target-connections` is not given.
pub const DEFAULT_TARGET_CONNECTIONS: u64 = 100_000;

/// User-space bytes per idle connection (`U` in `tuning/README.md`): the server's RSS
/// growth per idle connection (connection slot, user entry, user table, allocator
/// overhead; docs/memory.md).
///
/// Measured: 142-143 B at 15,000 idle connections with a `topics` claim
/// (`scripts/idle-memory.sh`, docs/memory.md); kept at 512 so the projection stays
/// conservative across allocators and session/topic mixes.
pub const USER_BYTES_PER_CONNECTION: u64 = 512;

/// User-space bytes per idle connection over TLS (`--tls`): rustls's state beside the
/// connection. Measured: 549 B at 15,000 idle `wss://` connections (`TLS=1
/// scripts/idle-memory.sh`); kept at about three times that, as the plain figure is.
pub const USER_BYTES_PER_TLS_CONNECTION: u64 = 1536;

/// Kernel bytes per idle TCP socket: `struct tcp_sock` (TCP slab, about 2.3 KiB;
/// TCPv6 about 2.5 KiB), socket inode (about 0.8 KiB), `struct file` and dentry (about
/// 0.2 KiB each) and the epoll item (about 0.2 KiB), rounded up to 4 KiB. An idle socket
/// holds no buffer memory: `tcp_rmem`/`tcp_wmem` are limits, and buffers are allocated
/// only while data is queued.
pub const KERNEL_BYTES_PER_SOCKET: u64 = 4096;

/// TCP buffer memory (counted against `net.ipv4.tcp_mem`) per connection when every
/// connection has one small frame in flight at once, as during a broadcast: about one
/// page of skb per socket until the client acknowledges it.
pub const TCP_BUFFER_BYTES_PER_BUSY_SOCKET: u64 = 4096;

/// Files the process needs besides its connections: listeners, epoll and waker
/// descriptors and logs (`fdlimit::HEADROOM`), plus the push API's reserve at the default
/// `api_max_connections` (1024).
pub const NOFILE_HEADROOM: u64 = nofile_headroom(crate::config::API_MAX_CONNECTIONS);

/// Files the process needs besides its connections when the push API may hold
/// `api_max_connections`: `fdlimit::HEADROOM` plus one descriptor per API connection.
pub const fn nofile_headroom(api_max_connections: usize) -> u64 {
    crate::fdlimit::HEADROOM.saturating_add(api_max_connections as u64)
}

/// System-wide files beyond the server's own that `fs.file-max` must leave for the rest
/// of the host.
pub const FILE_MAX_MARGIN: u64 = 65_536;

/// Throng's `backlog` default (`src/config.rs`): the listen backlog the client listener
/// asks for. The kernel caps it at `net.core.somaxconn`, so the accept queue holds
/// `min(backlog, somaxconn)`, and with `tcp_syncookies` on (the default) the queue of
/// handshakes in progress is bounded by the same number. `somaxconn` is checked against it.
pub const SERVER_BACKLOG: u64 = crate::config::DEFAULT_BACKLOG as u64;

/// `tcp_rmem` default (its middle value) below which a new connection's initial receive
/// window shrinks: the kernel's default was 87380 before Linux 5.4 and is 131072 since.
pub const MIN_RMEM_DEFAULT: u64 = 87_380;

/// Smallest ephemeral port range width that does not make a load generator or proxy on
/// this host run out of source ports early.
pub const MIN_PORT_RANGE_WIDTH: u64 = 50_000;

/// Projected memory above this share of `MemAvailable` is a WARN (headroom for outbound
/// queues, page cache and bursts); above all of it is a FAIL.
pub const MEMORY_WARN_PERCENT: u64 = 80;

/// Flags of `throng doctor`.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Connections this host should hold.
    #[arg(long, default_value_t = DEFAULT_TARGET_CONNECTIONS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub target_connections: u64,
    /// The server terminates TLS (`--tls-cert`): project each connection's TLS state too.
    #[arg(long)]
    pub tls: bool,
    /// The server's `max_outbound_total_bytes`, if set [default: the server's default for
    /// this host's memory].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_outbound_total_bytes: Option<u64>,
    /// The server's `api_max_connections`: the push API's descriptor reserve, which the
    /// open-file limit must leave besides the client connections.
    #[arg(long, value_name = "N", default_value_t = crate::config::API_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub api_max_connections: usize,
    /// The server's `backlog` (the client listener's queue), which `net.core.somaxconn`
    /// must not cut and SYN cookies (or `tcp_max_syn_backlog`) must cover.
    #[arg(long, value_name = "N", default_value_t = SERVER_BACKLOG,
          value_parser = clap::value_parser!(u64).range(1..=i32::MAX as u64))]
    pub backlog: u64,
    /// Root of the proc filesystem to read (tests point it at a fake tree).
    #[arg(long, value_name = "DIR", default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Root of the sys filesystem to read (tests point it at a fake tree).
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    pub sys_root: PathBuf,
}

/// The grade of one check. Ordered: `Ok < Warn < Fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Enough for the target.
    Ok,
    /// Works, but with less headroom than advised, or could not be read.
    Warn,
    /// The target cannot be reached on this host as it is.
    Fail,
}

impl Status {
    /// `OK`, `WARN` or `FAIL`.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.label())
    }
}

/// One checked item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// What was checked: a sysctl name, `RLIMIT_NOFILE`, `cpus` or `memory`.
    pub name: &'static str,
    /// The value found, or `?` when it could not be read.
    pub current: String,
    /// What the target needs.
    pub needed: String,
    /// The grade.
    pub status: Status,
    /// Why, and what to do about it; may be empty.
    pub note: String,
}

/// Projected memory for the target number of connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryProjection {
    /// Connections projected for.
    pub connections: u64,
    /// [`USER_BYTES_PER_CONNECTION`], or [`USER_BYTES_PER_TLS_CONNECTION`] with TLS.
    pub user_bytes_per_connection: u64,
    /// Projected for connections over TLS.
    pub tls: bool,
    /// [`KERNEL_BYTES_PER_SOCKET`].
    pub kernel_bytes_per_connection: u64,
    /// `connections × user_bytes_per_connection`.
    pub user_bytes: u64,
    /// `connections × kernel_bytes_per_connection`.
    pub kernel_bytes: u64,
    /// `user_bytes + kernel_bytes`.
    pub total_bytes: u64,
    /// `MemAvailable`, when it could be read.
    pub available_bytes: Option<u64>,
    /// `MemTotal`, when it could be read: what `tcp_mem` max is compared with.
    pub mem_total_bytes: Option<u64>,
    /// `max_outbound_total_bytes`: what slow clients may hold on top of the projection.
    pub outbound_budget_bytes: u64,
    /// Whether the budget is the server's default for this host (not a given value).
    pub outbound_budget_is_default: bool,
}

/// Everything `throng doctor` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Connections checked for.
    pub target_connections: u64,
    /// Where `/proc` was read from.
    pub proc_root: PathBuf,
    /// Where `/sys` was read from.
    pub sys_root: PathBuf,
    /// The checks, in the order they are printed.
    pub items: Vec<Item>,
    /// The memory projection (also graded as the `memory` item).
    pub memory: MemoryProjection,
}

impl Report {
    /// The item with this name.
    pub fn item(&self, name: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.name == name)
    }

    /// The worst grade of all items.
    pub fn worst(&self) -> Status {
        self.items
            .iter()
            .map(|i| i.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    /// Whether any item failed (the command then exits 1).
    pub fn has_fail(&self) -> bool {
        self.worst() == Status::Fail
    }

    /// How many items have this grade.
    pub fn count(&self, status: Status) -> usize {
        self.items.iter().filter(|i| i.status == status).count()
    }
}

/// Why a host value could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file was read but its content is not what was expected.
    #[error("cannot parse {path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

/// A resource limit: soft and hard, `None` meaning unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The soft limit (what the process gets).
    pub soft: Option<u64>,
    /// The hard limit (how far the soft one may be raised without privilege).
    pub hard: Option<u64>,
}

// ---------------------------------------------------------------------------------------
// Parsers (pure, unit-tested below)

fn parse_limit_value(s: &str) -> Result<Option<u64>, String> {
    if s == "unlimited" {
        return Ok(None);
    }
    s.parse::<u64>()
        .map(Some)
        .map_err(|_| format!("{s:?} is not a number"))
}

/// The "Max open files" line of `/proc/<pid>/limits`.
pub fn parse_limits_nofile(text: &str) -> Result<Limit, String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or_else(|| "no \"Max open files\" line".to_string())?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    let soft = fields.next().ok_or("no soft limit")?;
    let hard = fields.next().ok_or("no hard limit")?;
    Ok(Limit {
        soft: parse_limit_value(soft)?,
        hard: parse_limit_value(hard)?,
    })
}

/// Whitespace-separated unsigned numbers (a sysctl with one or more values).
pub fn parse_numbers(text: &str) -> Result<Vec<u64>, String> {
    text.split_whitespace()
        .map(|w| {
            w.parse::<u64>()
                .map_err(|_| format!("{w:?} is not a number"))
        })
        .collect()
}

fn parse_n<const K: usize>(text: &str) -> Result<[u64; K], String> {
    let v = parse_numbers(text)?;
    <[u64; K]>::try_from(v.as_slice())
        .map_err(|_| format!("expected {K} number(s), found {}", v.len()))
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
pub fn parse_meminfo_available(text: &str) -> Result<u64, String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .ok_or_else(|| "no MemAvailable line".to_string())?;
    let mut fields = line["MemAvailable:".len()..].split_whitespace();
    let n = fields
        .next()
        .ok_or("MemAvailable has no value")?
        .parse::<u64>()
        .map_err(|_| "MemAvailable is not a number".to_string())?;
    match fields.next() {
        Some("kB") | None => Ok(n.saturating_mul(1024)),
        Some(u) => Err(format!("unknown unit {u:?}")),
    }
}

/// The number of CPUs in a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty CPU list".into());
    }
    let mut n: u64 = 0;
    for part in text.split(',') {
        let num = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("{s:?} is not a CPU number"))
        };
        let count = match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if b < a {
                    return Err(format!("bad range {part:?}"));
                }
                b - a + 1
            }
            None => {
                num(part)?;
                1
            }
        };
        n = n.saturating_add(count);
    }
    Ok(n)
}

/// The number of `processor` entries in `/proc/cpuinfo`.
pub fn parse_cpuinfo(text: &str) -> Result<u64, String> {
    let n = text
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(k, _)| k.trim() == "processor")
        })
        .count() as u64;
    if n == 0 {
        Err("no processor entries".into())
    } else {
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------
// Reading the host

fn read(root: &Path, rel: &str) -> Result<(String, String), ReadError> {
    let path = root.join(rel);
    let shown = path.display().to_string();
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((text, shown)),
        Err(source) => Err(ReadError::Io {
            path: shown,
            source,
        }),
    }
}

fn read_parsed<T>(
    root: &Path,
    rel: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, ReadError> {
    let (text, path) = read(root, rel)?;
    parse(&text).map_err(|reason| ReadError::Parse { path, reason })
}

fn unreadable(name: &'static str, needed: String, e: &ReadError) -> Item {
    Item {
        name,
        current: "?".into(),
        needed,
        status: Status::Warn,
        note: e.to_string(),
    }
}

/// Bytes in binary units with one decimal: `97.7 MiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

fn opt_limit(v: Option<u64>) -> String {
    v.map_or_else(|| "unlimited".into(), |n| n.to_string())
}

/// The kernel's page size: the unit of `net.ipv4.tcp_mem` (4 KiB on x86-64; 16 or 64 KiB on
/// some arm64 and ppc64 kernels).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 on error.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

fn check_nofile(proc_root: &Path, n: u64, api_max: usize) -> Item {
    let headroom = nofile_headroom(api_max);
    let need = n.saturating_add(headroom);
    let needed = format!(">= {need} (N + {headroom})");
    let limit = match read_parsed(proc_root, "self/limits", parse_limits_nofile) {
        Ok(l) => l,
        Err(e) => return unreadable("RLIMIT_NOFILE", needed, &e),
    };
    let soft = limit.soft.unwrap_or(u64::MAX);
    let hard = limit.hard.unwrap_or(u64::MAX);
    let current = format!("{} (hard {})", opt_limit(limit.soft), opt_limit(limit.hard));
    // `throng serve` raises its soft limit to the hard limit at start, so the hard limit
    // is what the server gets; a low soft limit only matters to other programs.
    let effective = soft.max(hard);
    let raise = "raise the hard limit (limits.d/throng.conf, or `ulimit -Hn` as root)";
    // The server stops admitting clients at this ceiling (503 over_capacity), so a target
    // above it cannot be reached however the rest of the host is tuned.
    let ceiling = crate::fdlimit::client_ceiling(effective, api_max);
    let (status, note) = if effective >= need {
        let note = if soft < need {
            format!(
                "the soft limit is low, but throng serve raises it to the hard limit ({hard}) \
                 at start"
            )
        } else {
            String::new()
        };
        (Status::Ok, note)
    } else if ceiling >= n {
        // Below N + headroom the server still admits N clients, but cuts the push API's
        // reserve to a quarter of what the limit leaves after fdlimit::HEADROOM.
        (
            Status::Warn,
            format!(
                "the server admits up to {ceiling} clients, but the push API gets only {} of \
                 its {api_max} connections (api_max_connections); {raise}, or LimitNOFILE= in \
                 throng.service",
                crate::fdlimit::api_reserve(effective, api_max).max(1)
            ),
        )
    } else {
        (
            Status::Fail,
            format!(
                "one file per connection: past about {ceiling} connections new clients get 503 \
                 over_capacity; {raise}, or LimitNOFILE= in throng.service. These are the \
                 doctor's own limits: run it under the server's (`systemctl show -p \
                 LimitNOFILE throng`)"
            ),
        )
    };
    Item {
        name: "RLIMIT_NOFILE",
        current,
        needed,
        status,
        note,
    }
}

fn check_file_max(proc_root: &Path, n: u64) -> Item {
    let need = n.saturating_add(FILE_MAX_MARGIN);
    let needed = format!(">= {need} (N + {FILE_MAX_MARGIN})");
    let [v] = match read_parsed(proc_root, "sys/fs/file-max", parse_n::<1>) {
        Ok(v) => v,
        Err(e) => return unreadable("fs.file-max", needed, &e),
    };
    let (status, note) = if v >= need {
        (Status::Ok, String::new())
    } else if v >= n {
        (
            Status::Warn,
            "little left for the rest of the host once the server is full; \
             raise fs.file-max (sysctl.d/99-throng.conf)"
                .to_string(),
        )
    } else {
        (
            Status::Fail,
            "the system-wide file table is smaller than the target; \
             raise fs.file-max (sysctl.d/99-throng.conf)"
                .to_string(),
        )
    };
    Item {
        name: "fs.file-max",
        current: v.to_string(),
        needed,
        status,
        note,
    }
}

fn check_nr_open(proc_root: &Path, n: u64, api_max: usize) -> Item {
    let headroom = nofile_headroom(api_max);
    let need = n.saturating_add(headroom);
    let needed = format!(">= {need} (N + {headroom})");
    let [v] = match read_parsed(proc_root, "sys/fs/nr_open", parse_n::<1>) {
        Ok(v) => v,
        Err(e) => return unreadable("fs.nr_open", needed, &e),
    };
    let note = "the ceiling for RLIMIT_NOFILE, even for root; raise fs.nr_open \
                (sysctl.d/99-throng.conf)";
    // RLIMIT_NOFILE cannot exceed nr_open, so it is graded as a limit of that size.
    let status = if v >= need {
        Status::Ok
    } else if crate::fdlimit::client_ceiling(v, api_max) >= n {
        Status::Warn
    } else {
        Status::Fail
    };
    Item {
        name: "fs.nr_open",
        current: v.to_string(),
        needed,
        status,
        note: if status == Status::Ok {
            String::new()
        } else {
            note.into()
        },
    }
}

fn check_somaxconn(proc_root: &Path, backlog: u64) -> Item {
    let name = "net.core.somaxconn";
    let needed = format!(">= {backlog} (`backlog`)");
    let [v] = match read_parsed(proc_root, "sys/net/core/somaxconn", parse_n::<1>) {
        Ok(v) => v,
        Err(e) => return unreadable(name, needed, &e),
    };
    let (status, note) = if v < backlog {
        (
            Status::Warn,
            format!(
                "the kernel cuts the client listener's queue (`backlog` {backlog}; `--backlog` \
                 here names yours) to {v}: in a reconnect storm after a restart, clients past it are dropped and \
                 retry after 1 s, 3 s, ...; raise it to at least `backlog` \
                 (sysctl.d/99-throng.conf)"
            ),
        )
    } else if v > backlog {
        (
            Status::Ok,
            format!(
                "the queue is the smaller of this and Throng's `backlog` ({backlog}): set \
                 `backlog` up to {v} to use it"
            ),
        )
    } else {
        (Status::Ok, String::new())
    };
    Item {
        name,
        current: v.to_string(),
        needed,
        status,
        note,
    }
}

/// `tcp_max_syn_backlog` that leaves a queue of `backlog` half-open connections to new
/// peers: without SYN cookies the kernel keeps its last quarter for peers it already knows.
pub fn syn_backlog_for(backlog: u64) -> u64 {
    backlog.saturating_add(backlog.saturating_sub(1) / 3)
}

/// Half-open connections to new peers that `tcp_max_syn_backlog` admits without SYN
/// cookies: the kernel drops a SYN from an unknown peer once fewer than a quarter of its
/// entries are free.
fn syn_queue_for_new_peers(tcp_max_syn_backlog: u64) -> u64 {
    tcp_max_syn_backlog - tcp_max_syn_backlog / 4
}

/// SYN cookies decide what a SYN that finds the queue full gets. With them on (the
/// default) that queue is bounded by the listen backlog and `tcp_max_syn_backlog` is not
/// read at all; only with them off does `tcp_max_syn_backlog` matter.
fn check_syncookies(proc_root: &Path, backlog: u64) -> Item {
    let name = "net.ipv4.tcp_syncookies";
    let need_syn = syn_backlog_for(backlog);
    let needed = format!("1, or tcp_max_syn_backlog >= {need_syn}");
    let [cookies] = match read_parsed(proc_root, "sys/net/ipv4/tcp_syncookies", parse_n::<1>) {
        Ok(v) => v,
        Err(e) => return unreadable(name, needed, &e),
    };
    if cookies != 0 {
        return Item {
            name,
            current: cookies.to_string(),
            needed,
            status: Status::Ok,
            note: "a SYN that finds the listener's queue full (the smaller of `backlog` and \
                   somaxconn) gets a cookie instead of being dropped; tcp_max_syn_backlog is \
                   not used while cookies are on"
                .into(),
        };
    }
    let [syn] = match read_parsed(proc_root, "sys/net/ipv4/tcp_max_syn_backlog", parse_n::<1>) {
        Ok(v) => v,
        Err(e) => {
            return Item {
                current: "0, tcp_max_syn_backlog ?".into(),
                ..unreadable(name, needed, &e)
            }
        }
    };
    let current = format!("0, tcp_max_syn_backlog {syn}");
    let (status, note) = if syn_queue_for_new_peers(syn) >= backlog {
        (
            Status::Ok,
            "without cookies, SYNs past the listener's queue are dropped in a reconnect storm \
             or a SYN flood (clients retry after 1 s, 3 s, ...); tcp_syncookies = 1, the \
             kernel default, answers them instead"
                .to_string(),
        )
    } else {
        (
            Status::Warn,
            format!(
                "without cookies the kernel keeps the last quarter of tcp_max_syn_backlog for \
                 peers it already knows, so new clients' SYNs are dropped past about {} \
                 half-open connections, fewer than `backlog` ({backlog}); set tcp_syncookies \
                 = 1 (the kernel default) or raise tcp_max_syn_backlog",
                syn_queue_for_new_peers(syn)
            ),
        )
    };
    Item {
        name,
        current,
        needed,
        status,
        note,
    }
}

/// Whether the kernel offers TLS offload (the `tls` upper layer protocol). Informational:
/// Throng seals TLS records in user space with about 200 bytes per connection either way.
fn check_kernel_tls(proc_root: &Path) -> Item {
    let name = "kTLS";
    let needed = "optional".to_string();
    let ulps = match read_parsed(proc_root, "sys/net/ipv4/tcp_available_ulp", |s| {
        Ok(s.trim().to_string())
    }) {
        Ok(v) => v,
        Err(e) => return unreadable(name, needed, &e),
    };
    let (current, note) = if ulps.split_whitespace().any(|u| u == "tls") {
        (
            "offered".to_string(),
            "the kernel could take over TLS records after the handshake; Throng does not use \
             it yet and seals records in user space",
        )
    } else {
        (
            format!("not offered ({ulps})"),
            "wss:// works all the same: Throng seals TLS records in user space (about 200 \
             bytes per connection); `modprobe tls` would offer kernel TLS",
        )
    };
    Item {
        name,
        current,
        needed,
        status: Status::Ok,
        note: note.to_string(),
    }
}

fn check_port_range(proc_root: &Path, n: u64) -> Item {
    let name = "net.ipv4.ip_local_port_range";
    let needed = format!("width >= {MIN_PORT_RANGE_WIDTH} (outbound only)");
    let [lo, hi] = match read_parsed(proc_root, "sys/net/ipv4/ip_local_port_range", parse_n::<2>) {
        Ok(v) => v,
        Err(e) => return unreadable(name, needed, &e),
    };
    if hi < lo {
        return Item {
            name,
            current: format!("{lo} {hi}"),
            needed,
            status: Status::Warn,
            note: "the range is empty (high end below low end)".into(),
        };
    }
    let width = hi - lo + 1;
    let sources = n.div_ceil(width);
    let status = if width >= MIN_PORT_RANGE_WIDTH {
        Status::Ok
    } else {
        Status::Warn
    };
    let mut note = format!(
        "only outbound connections use it: a load generator or a proxy on this host needs \
         {sources} source address(es) (or server ports) for {n} connections"
    );
    if status == Status::Warn {
        note.push_str("; widen it, e.g. 10240 65535 (sysctl.d/99-throng.conf)");
    }
    Item {
        name,
        current: format!("{lo} {hi} (width {width})"),
        needed,
        status,
        note,
    }
}

/// The most TCP buffer memory (`tcp_mem` max, in bytes) the host can give once the
/// target's connections (`N x (U + K)`) and the outbound budget have theirs: `MemTotal`
/// minus both. `None` when `MemTotal` could not be read.
pub fn tcp_mem_room(m: &MemoryProjection) -> Option<u64> {
    Some(
        m.mem_total_bytes?
            .saturating_sub(m.total_bytes)
            .saturating_sub(m.outbound_budget_bytes),
    )
}

fn check_tcp_mem(proc_root: &Path, n: u64, page: u64, m: &MemoryProjection) -> Item {
    let name = "net.ipv4.tcp_mem";
    let need_bytes = n.saturating_mul(TCP_BUFFER_BYTES_PER_BUSY_SOCKET);
    let need_pages = need_bytes.div_ceil(page);
    let room = tcp_mem_room(m);
    let mut needed = format!(
        "pressure & max >= {need_pages} pages ({})",
        human_bytes(need_bytes)
    );
    if let Some(room) = room {
        let _ = write!(needed, ", max <= {} pages", room / page);
    }
    let [low, pressure, max] = match read_parsed(proc_root, "sys/net/ipv4/tcp_mem", parse_n::<3>) {
        Ok(v) => v,
        Err(e) => return unreadable(name, needed, &e),
    };
    let max_bytes = max.saturating_mul(page);
    let current = format!(
        "{low} {pressure} {max} pages (max {})",
        human_bytes(max_bytes)
    );
    let (mut status, mut note) = if pressure >= need_pages {
        (Status::Ok, String::new())
    } else if max >= need_pages {
        (
            Status::Warn,
            format!(
                "a broadcast with one page in flight per connection ({}) puts TCP under \
                 memory pressure (buffers trimmed, windows shrink); raise tcp_mem \
                 (sysctl.d/99-throng.conf)",
                human_bytes(need_bytes)
            ),
        )
    } else {
        (
            Status::Fail,
            format!(
                "a broadcast with one page in flight per connection ({}) exceeds the TCP \
                 memory limit: the kernel drops packets and logs \"out of memory\"; raise \
                 tcp_mem (sysctl.d/99-throng.conf)",
                human_bytes(need_bytes)
            ),
        )
    };
    // From above: tcp_mem is what stops TCP buffers from taking the host's memory, so
    // its max must fit beside what the connections and the outbound queues may hold.
    if let (Some(room), Some(total)) = (room, m.mem_total_bytes) {
        if max_bytes > room {
            status = status.max(Status::Warn);
            if !note.is_empty() {
                note.push_str("; and ");
            }
            let _ = write!(
                note,
                "tcp_mem max ({}) plus the connections themselves ({}) and \
                 max_outbound_total_bytes ({}) exceed MemTotal ({}): under a broadcast to \
                 slow clients the host can run out of memory before tcp_mem stops TCP \
                 buffers; lower tcp_mem to max <= {} pages (scale all three values, as \
                 sysctl.d/99-throng.conf shows), or lower max_outbound_total_bytes or the \
                 target",
                human_bytes(max_bytes),
                human_bytes(m.total_bytes),
                human_bytes(m.outbound_budget_bytes),
                human_bytes(total),
                room / page
            );
        }
    }
    Item {
        name,
        current,
        needed,
        status,
        note,
    }
}

fn check_rmem(proc_root: &Path) -> Item {
    let name = "net.ipv4.tcp_rmem";
    let needed = format!("default >= {MIN_RMEM_DEFAULT}");
    let [min, def, max] = match read_parsed(proc_root, "sys/net/ipv4/tcp_rmem", parse_n::<3>) {
        Ok(v) => v,
        Err(e) => return unreadable(name, needed, &e),
    };
    let (status, note) = if def < MIN_RMEM_DEFAULT {
        (
            Status::Warn,
            format!(
                "the default sets every new TCP connection's initial receive window on this \
                 host: at {def} B peers (the upstream's push API batches too) start at about \
                 one segment per round trip, and an idle socket saves nothing (it holds no \
                 buffer); set it back to the kernel's (`sysctl -w net.ipv4.tcp_rmem=\"{min} \
                 131072 {max}\"`) and drop the tcp_rmem line an older 99-throng.conf had"
            ),
        )
    } else {
        (
            Status::Ok,
            format!(
                "min/default/max per socket, allocated only while data waits to be read (an \
                 idle socket holds none); autotuning grows a busy socket toward max ({})",
                human_bytes(max)
            ),
        )
    };
    Item {
        name,
        current: format!("{min} {def} {max}"),
        needed,
        status,
        note,
    }
}

/// Informational: what a client that stops reading can leave in the kernel.
fn check_wmem(proc_root: &Path) -> Item {
    let name = "net.ipv4.tcp_wmem";
    let needed = "allocated on demand".to_string();
    let [min, def, max] = match read_parsed(proc_root, "sys/net/ipv4/tcp_wmem", parse_n::<3>) {
        Ok(v) => v,
        Err(e) => return unreadable(name, needed, &e),
    };
    let mut note = format!(
        "min/default/max per socket, allocated only while data is queued; an established \
         socket's send buffer follows its congestion window whatever the default, so a \
         client that stops reading can leave up to max ({}) in the kernel besides \
         max_outbound_bytes, unless TCP_NOTSENT_LOWAT bounds the unsent part: Throng sets \
         it on its client sockets (`tcp_notsent_lowat`, {} by default)",
        human_bytes(max),
        crate::config::DEFAULT_TCP_NOTSENT_LOWAT
    );
    match read_parsed(proc_root, "sys/net/ipv4/tcp_notsent_lowat", parse_n::<1>) {
        Ok([lowat]) if lowat < max => {
            let _ = write!(
                note,
                "; tcp_notsent_lowat ({lowat}) bounds the part not sent yet: the rest waits \
                 in Throng's queue"
            );
        }
        Ok(_) => note.push_str(
            "; tcp_notsent_lowat is off host-wide: it matters for a server run with \
             `tcp_notsent_lowat = 0` and for the host's other sockets \
             (sysctl.d/99-throng.conf sets it)",
        ),
        Err(e) => {
            let _ = write!(note, "; {e}");
        }
    }
    Item {
        name,
        current: format!("{min} {def} {max}"),
        needed,
        status: Status::Ok,
        note,
    }
}

fn check_cpus(proc_root: &Path, sys_root: &Path) -> Item {
    let name = "cpus";
    let needed = "one shard per core".to_string();
    let found = read_parsed(sys_root, "devices/system/cpu/online", parse_cpu_list)
        .map(|n| (n, "online"))
        .or_else(|first| {
            read_parsed(proc_root, "cpuinfo", parse_cpuinfo)
                .map(|n| (n, "cpuinfo"))
                .map_err(|second| (first, second))
        });
    match found {
        Ok((n, from)) => Item {
            name,
            current: format!("{n} ({from})"),
            needed,
            status: Status::Ok,
            note: String::new(),
        },
        Err((first, second)) => Item {
            name,
            current: "?".into(),
            needed,
            status: Status::Warn,
            note: format!("{first}; {second}"),
        },
    }
}

fn project_memory(proc_root: &Path, t: &Target) -> (MemoryProjection, Item) {
    let (n, budget) = (t.connections, t.outbound_budget);
    let per_connection = if t.tls {
        USER_BYTES_PER_TLS_CONNECTION
    } else {
        USER_BYTES_PER_CONNECTION
    };
    let user_bytes = n.saturating_mul(per_connection);
    let kernel_bytes = n.saturating_mul(KERNEL_BYTES_PER_SOCKET);
    let total = user_bytes.saturating_add(kernel_bytes);
    let needed = format!(
        "{} = N x ({per_connection} + {KERNEL_BYTES_PER_SOCKET}) B",
        human_bytes(total)
    );
    let available = read_parsed(proc_root, "meminfo", parse_meminfo_available);
    let mem_total = read(proc_root, "meminfo")
        .ok()
        .and_then(|(text, _)| crate::config::mem_total_bytes(&text));
    let outbound_budget_bytes =
        budget.unwrap_or_else(|| crate::config::outbound_total_for(mem_total));
    let projection = MemoryProjection {
        connections: n,
        user_bytes_per_connection: per_connection,
        tls: t.tls,
        kernel_bytes_per_connection: KERNEL_BYTES_PER_SOCKET,
        user_bytes,
        kernel_bytes,
        total_bytes: total,
        available_bytes: available.as_ref().ok().copied(),
        mem_total_bytes: mem_total,
        outbound_budget_bytes,
        outbound_budget_is_default: budget.is_none(),
    };
    let item = match available {
        Err(e) => unreadable("memory", needed, &e),
        Ok(avail) => {
            let warn_at = avail / 100 * MEMORY_WARN_PERCENT;
            let (status, note) = if total > avail {
                (
                    Status::Fail,
                    "the projection exceeds MemAvailable: lower the target or add memory"
                        .to_string(),
                )
            } else if total > warn_at {
                (
                    Status::Warn,
                    format!(
                        "the projection is above {MEMORY_WARN_PERCENT}% of MemAvailable: little \
                         left for outbound queues during bursts"
                    ),
                )
            } else if total.saturating_add(outbound_budget_bytes) > avail {
                (
                    Status::Warn,
                    format!(
                        "idle connections plus a full outbound budget ({} of \
                         max_outbound_total_bytes) exceed MemAvailable: lower \
                         max_outbound_total_bytes so slow clients are closed (4008) before \
                         the host runs out of memory",
                        human_bytes(outbound_budget_bytes)
                    ),
                )
            } else {
                (Status::Ok, String::new())
            };
            Item {
                name: "memory",
                current: format!("{} MemAvailable", human_bytes(avail)),
                needed,
                status,
                note,
            }
        }
    };
    (projection, item)
}

/// What a host is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Connections it should hold.
    pub connections: u64,
    /// The server's `max_outbound_total_bytes`, when it is not the default.
    pub outbound_budget: Option<u64>,
    /// The connections are TLS (`wss://`).
    pub tls: bool,
    /// The server's `api_max_connections` (its push API descriptor reserve).
    pub api_max_connections: usize,
    /// The server's `backlog` (the client listener's queue).
    pub backlog: u64,
}

/// Checks the host under `proc_root` and `sys_root` for `target_connections`.
pub fn check(proc_root: &Path, sys_root: &Path, target_connections: u64) -> Report {
    check_with_budget(proc_root, sys_root, target_connections, None)
}

/// Like [`check`], with the server's `max_outbound_total_bytes` when it is not the default.
pub fn check_with_budget(
    proc_root: &Path,
    sys_root: &Path,
    target_connections: u64,
    outbound_budget: Option<u64>,
) -> Report {
    let target = Target {
        connections: target_connections,
        outbound_budget,
        tls: false,
        api_max_connections: crate::config::API_MAX_CONNECTIONS,
        backlog: SERVER_BACKLOG,
    };
    check_target(proc_root, sys_root, &target)
}

/// Checks the host under `proc_root` and `sys_root` for `target`.
pub fn check_target(proc_root: &Path, sys_root: &Path, target: &Target) -> Report {
    let n = target.connections;
    let page = page_size();
    let (memory, memory_item) = project_memory(proc_root, target);
    let items = vec![
        check_nofile(proc_root, n, target.api_max_connections),
        check_file_max(proc_root, n),
        check_nr_open(proc_root, n, target.api_max_connections),
        check_somaxconn(proc_root, target.backlog),
        check_syncookies(proc_root, target.backlog),
        check_port_range(proc_root, n),
        check_tcp_mem(proc_root, n, page, &memory),
        check_rmem(proc_root),
        check_wmem(proc_root),
        check_cpus(proc_root, sys_root),
        check_kernel_tls(proc_root),
        memory_item,
    ];
    Report {
        target_connections: n,
        proc_root: proc_root.to_path_buf(),
        sys_root: sys_root.to_path_buf(),
        items,
        memory,
    }
}

/// Width at which notes are wrapped.
const NOTE_WIDTH: usize = 88;

/// Splits `text` into lines of at most `width` characters at spaces (a longer word
/// gets a line of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// The report as the text `throng doctor` prints.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let n = report.target_connections;
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "throng doctor: can this host hold {n} connections? (reading {} and {})\n",
        report.proc_root.display(),
        report.sys_root.display()
    );
    let w_name = report
        .items
        .iter()
        .map(|i| i.name.len())
        .max()
        .unwrap_or(0)
        .max("check".len());
    let w_cur = report
        .items
        .iter()
        .map(|i| i.current.len())
        .max()
        .unwrap_or(0)
        .max("current".len());
    let _ = writeln!(
        out,
        "{:<4}  {:<w_name$}  {:<w_cur$}  needed for {n}",
        "", "check", "current"
    );
    for item in &report.items {
        let _ = writeln!(
            out,
            "{:<4}  {:<w_name$}  {:<w_cur$}  {}",
            item.status, item.name, item.current, item.needed
        );
        if !item.note.is_empty() {
            for (i, line) in wrap(&item.note, NOTE_WIDTH).iter().enumerate() {
                let arrow = if i == 0 { "->" } else { "  " };
                let _ = writeln!(out, "      {arrow} {line}");
            }
        }
    }
    let m = &report.memory;
    let _ = writeln!(out, "\nMemory for {} connections:", m.connections);
    let measured = if m.tls {
        "549 B measured at 15,000 idle wss:// connections"
    } else {
        "142 B measured at 15,000 idle connections"
    };
    let _ = writeln!(
        out,
        "  user space    N x U = {} x {} B  {:>10}  (U: {measured}, kept about 3x higher; \
         docs/memory.md)",
        m.connections,
        m.user_bytes_per_connection,
        human_bytes(m.user_bytes)
    );
    let _ = writeln!(
        out,
        "  kernel        N x K = {} x {} B  {:>10}  (K: idle socket: sock, file, dentry/inode, \
         epoll item)",
        m.connections,
        m.kernel_bytes_per_connection,
        human_bytes(m.kernel_bytes)
    );
    let pad = format!(
        "N x U = {} x {} B",
        m.connections, m.user_bytes_per_connection
    )
    .len();
    let _ = writeln!(
        out,
        "  total         {:pad$}  {:>10}",
        "",
        human_bytes(m.total_bytes)
    );
    let _ = writeln!(
        out,
        "  outbound      {:pad$}  {:>10}  (max_outbound_total_bytes{}: what slow clients may \
         hold on top; past it the largest queues are closed with 4008)",
        "",
        human_bytes(m.outbound_budget_bytes),
        if m.outbound_budget_is_default {
            ", the default: a quarter of MemTotal, at most 4 GiB"
        } else {
            ""
        }
    );
    match m.available_bytes {
        Some(a) => {
            let pct = if a == 0 {
                f64::INFINITY
            } else {
                m.total_bytes as f64 * 100.0 / a as f64
            };
            let _ = writeln!(
                out,
                "  MemAvailable  {:pad$}  {:>10}  (the projection is {pct:.1}% of it)",
                "",
                human_bytes(a)
            );
        }
        None => {
            let _ = writeln!(out, "  MemAvailable  ? (could not be read)");
        }
    }
    let (f, w, o) = (
        report.count(Status::Fail),
        report.count(Status::Warn),
        report.count(Status::Ok),
    );
    let verdict = match report.worst() {
        Status::Ok => "ready",
        Status::Warn => "usable, with warnings",
        Status::Fail => "not ready (exit 1)",
    };
    let _ = writeln!(
        out,
        "\n{f} FAIL, {w} WARN, {o} OK: {verdict}. See tuning/README.md."
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max open files            20000                1048576              files     
Max locked memory         8388608              8388608              bytes     
";

    #[test]
    fn limits_nofile() {
        assert_eq!(
            parse_limits_nofile(LIMITS),
            Ok(Limit {
                soft: Some(20000),
                hard: Some(1048576)
            })
        );
        let unl = "Max open files            unlimited            unlimited            files\n";
        assert_eq!(
            parse_limits_nofile(unl),
            Ok(Limit {
                soft: None,
                hard: None
            })
        );
        assert!(parse_limits_nofile("Max cpu time 1 2 s\n").is_err());
        assert!(parse_limits_nofile("Max open files  x  y files\n").is_err());
        assert!(parse_limits_nofile("Max open files  10\n").is_err());
        assert!(parse_limits_nofile("").is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_n::<1>("4096\n"), Ok([4096]));
        assert_eq!(parse_n::<2>("32768\t60999\n"), Ok([32768, 60999]));
        assert_eq!(
            parse_n::<3>("287901\t383868\t575802\n"),
            Ok([287901, 383868, 575802])
        );
        assert_eq!(
            parse_n::<1>("9223372036854775807\n"),
            Ok([9223372036854775807])
        );
        assert!(parse_n::<1>("").is_err());
        assert!(parse_n::<1>("-1").is_err());
        assert!(parse_n::<2>("1 2 3").is_err());
        assert!(parse_n::<3>("1 x 3").is_err());
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       25165824 kB\nMemFree:  1 kB\nMemAvailable:   24398224 kB\n";
        assert_eq!(parse_meminfo_available(text), Ok(24398224 * 1024));
        assert!(parse_meminfo_available("MemTotal: 1 kB\n").is_err());
        assert!(parse_meminfo_available("MemAvailable: lots kB\n").is_err());
        assert!(parse_meminfo_available("MemAvailable: 1 MB\n").is_err());
    }

    #[test]
    fn cpu_list() {
        assert_eq!(parse_cpu_list("0-1\n"), Ok(2));
        assert_eq!(parse_cpu_list("0\n"), Ok(1));
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Ok(7));
        assert!(parse_cpu_list("\n").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a-b").is_err());
    }

    #[test]
    fn cpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: x\n\nprocessor\t: 1\nmodel name\t: y\n";
        assert_eq!(parse_cpuinfo(text), Ok(2));
        assert!(parse_cpuinfo("vendor_id : x\n").is_err());
    }

    #[test]
    fn bytes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(4096), "4.0 KiB");
        assert_eq!(human_bytes(100_000 * 1024), "97.7 MiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn wraps_notes() {
        assert_eq!(wrap("aa bb cc", 5), vec!["aa bb", "cc"]);
        assert_eq!(wrap("averylongword x", 4), vec!["averylongword", "x"]);
        assert!(wrap("", 10).is_empty());
    }

    #[test]
    fn status_order_and_labels() {
        assert!(Status::Ok < Status::Warn && Status::Warn < Status::Fail);
        assert_eq!(format!("{:<5}|", Status::Warn), "WARN |");
    }

    /// A temporary `/proc` tree with these files (paths relative to it), removed on drop.
    struct FakeProc(PathBuf);

    impl FakeProc {
        fn new(files: &[(&str, &str)]) -> FakeProc {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "throng-doctor-unit-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("mkdir");
            for (rel, content) in files {
                let path = dir.join(rel);
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                std::fs::write(&path, content).expect("write");
            }
            FakeProc(dir)
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn server_backlog_is_the_config_default() {
        let secret = "s".repeat(crate::config::MIN_SECRET_BYTES);
        let cfg =
            crate::config::Config::from_args(["--jwt-secret", secret.as_str()]).expect("config");
        assert_eq!(u64::from(cfg.backlog), SERVER_BACKLOG);
    }

    #[test]
    fn somaxconn_is_compared_with_the_backlog() {
        let at = |v: &str| {
            let p = FakeProc::new(&[("sys/net/core/somaxconn", v)]);
            check_somaxconn(&p.0, 4096)
        };
        // The kernel default since 5.4 equals Throng's default backlog: nothing to say.
        let i = at("4096\n");
        assert_eq!((i.status, i.note.as_str()), (Status::Ok, ""), "{i:?}");
        assert_eq!(i.needed, ">= 4096 (`backlog`)");
        // Above it: OK, and the note says the backlog must be raised too to use it.
        let i = at("65535\n");
        assert_eq!(i.status, Status::Ok, "{i:?}");
        assert!(i.note.contains("set `backlog` up to 65535"), "{i:?}");
        // Below it the kernel cuts the queue.
        let i = at("128\n");
        assert_eq!(i.status, Status::Warn, "{i:?}");
        assert!(i.note.contains("to 128"), "{i:?}");
        // Against a larger backlog, 4096 is short.
        let p = FakeProc::new(&[("sys/net/core/somaxconn", "4096\n")]);
        assert_eq!(check_somaxconn(&p.0, 65535).status, Status::Warn);
    }

    #[test]
    fn syn_backlog_matters_only_without_cookies() {
        // The smallest value whose first three quarters hold the backlog.
        for b in [1, 2, 3, 4, 5, 6, 7, 100, 4096, 65535] {
            let m = syn_backlog_for(b);
            assert!(syn_queue_for_new_peers(m) >= b, "{b}: {m}");
            assert!(syn_queue_for_new_peers(m - 1) < b, "{b}: {m}");
        }
        assert_eq!(syn_backlog_for(4096), 5461);
        let at = |cookies: Option<&str>, syn: Option<&str>| {
            let mut files = Vec::new();
            if let Some(c) = cookies {
                files.push(("sys/net/ipv4/tcp_syncookies", c));
            }
            if let Some(s) = syn {
                files.push(("sys/net/ipv4/tcp_max_syn_backlog", s));
            }
            let p = FakeProc::new(&files);
            check_syncookies(&p.0, 4096)
        };
        // Cookies on (1, the default, or 2, always): a small tcp_max_syn_backlog is fine,
        // and so is none at all.
        for c in ["1\n", "2\n"] {
            let i = at(Some(c), Some("128\n"));
            assert_eq!(i.status, Status::Ok, "{i:?}");
            assert!(i.note.contains("not used while cookies are on"), "{i:?}");
            assert_eq!(at(Some(c), None).status, Status::Ok);
        }
        // Cookies off: only a tcp_max_syn_backlog whose first three quarters hold the
        // backlog will do.
        let i = at(Some("0\n"), Some("5460\n"));
        assert_eq!(i.status, Status::Warn, "{i:?}");
        assert_eq!(i.current, "0, tcp_max_syn_backlog 5460");
        assert!(i.note.contains("past about 4095 half-open"), "{i:?}");
        let i = at(Some("0\n"), Some("512\n"));
        assert!(i.note.contains("past about 384 half-open"), "{i:?}");
        let i = at(Some("0\n"), Some("5461\n"));
        assert_eq!(i.status, Status::Ok, "{i:?}");
        assert!(i.note.contains("tcp_syncookies = 1"), "{i:?}");
        // Unreadable: a WARN that says what.
        let i = at(None, Some("65535\n"));
        assert_eq!(i.status, Status::Warn);
        assert!(i.note.contains("cannot read"), "{i:?}");
        let i = at(Some("0\n"), None);
        assert_eq!(i.status, Status::Warn);
        assert_eq!(i.current, "0, tcp_max_syn_backlog ?");
        assert!(i.note.contains("tcp_max_syn_backlog"), "{i:?}");
    }

    /// A projection of `n` connections on a host with `mem_total` bytes and an outbound
    /// budget of a quarter of it, at most 4 GiB (the server's default).
    fn projection(n: u64, mem_total: Option<u64>) -> MemoryProjection {
        let per = USER_BYTES_PER_CONNECTION + KERNEL_BYTES_PER_SOCKET;
        MemoryProjection {
            connections: n,
            user_bytes_per_connection: USER_BYTES_PER_CONNECTION,
            tls: false,
            kernel_bytes_per_connection: KERNEL_BYTES_PER_SOCKET,
            user_bytes: n * USER_BYTES_PER_CONNECTION,
            kernel_bytes: n * KERNEL_BYTES_PER_SOCKET,
            total_bytes: n * per,
            available_bytes: mem_total,
            mem_total_bytes: mem_total,
            outbound_budget_bytes: crate::config::outbound_total_for(mem_total),
            outbound_budget_is_default: true,
        }
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn tcp_mem_room_leaves_the_connections_and_the_outbound_budget() {
        // 16 GiB: 1M connections take 4.29 GiB, the outbound budget 4 GiB.
        let m = projection(1_000_000, Some(16 * GIB));
        assert_eq!(m.outbound_budget_bytes, 4 * GIB);
        assert_eq!(
            tcp_mem_room(&m),
            Some(16 * GIB - 1_000_000 * 4608 - 4 * GIB)
        );
        // Nothing left: zero, not an underflow.
        assert_eq!(
            tcp_mem_room(&projection(4_000_000, Some(16 * GIB))),
            Some(0)
        );
        assert_eq!(tcp_mem_room(&projection(1, None)), None);
    }

    #[test]
    fn tcp_mem_is_checked_from_above_against_memtotal() {
        // The values sysctl.d/99-throng.conf ships (pages of 4 KiB; the page is passed in,
        // so this holds on any host): 3, 4 and 6 GiB.
        const SHIPPED: &str = "786432\t1048576\t1572864\n";
        let p = FakeProc::new(&[("sys/net/ipv4/tcp_mem", SHIPPED)]);
        let at = |n: u64, mem: Option<u64>| check_tcp_mem(&p.0, n, 4096, &projection(n, mem));
        // 1M connections on 16 GiB: 6 + 4.29 + 4 GiB fit.
        let i = at(1_000_000, Some(16 * GIB));
        assert_eq!((i.status, i.note.as_str()), (Status::Ok, ""), "{i:?}");
        assert!(i.needed.contains(", max <= "), "{i:?}");
        // 100k on 8 GiB: 6 + 0.43 + 2 GiB do not: WARN, with the max that would fit.
        let i = at(100_000, Some(8 * GIB));
        assert_eq!(i.status, Status::Warn, "{i:?}");
        let room_pages = (8 * GIB - 100_000 * 4608 - 2 * GIB) / 4096;
        assert!(
            i.note
                .contains(&format!("lower tcp_mem to max <= {room_pages} pages")),
            "{i:?}"
        );
        assert!(i.note.contains("exceed MemTotal (8.0 GiB)"), "{i:?}");
        // More than the whole host: WARN as well.
        assert_eq!(at(1_000, Some(4 * GIB)).status, Status::Warn);
        // MemTotal unknown: only the check from below.
        let i = at(100_000, None);
        assert_eq!(i.status, Status::Ok, "{i:?}");
        assert!(!i.needed.contains("max <="), "{i:?}");
        // Too small from below and too large from above at once (a broadcast to 1.6M
        // connections needs more than 6 GiB, and 8 GiB leave no room): the FAIL stays, and
        // both reasons are given.
        let i = at(1_600_000, Some(8 * GIB));
        assert_eq!(i.status, Status::Fail, "{i:?}");
        assert!(
            i.note.contains("exceeds the TCP memory limit") && i.note.contains("; and tcp_mem max"),
            "{i:?}"
        );
        // The page size scales the bytes: at 64 KiB pages the shipped values allow 96 GiB.
        let i = check_tcp_mem(&p.0, 100_000, 65536, &projection(100_000, Some(64 * GIB)));
        assert_eq!(i.status, Status::Warn, "{i:?}");
        assert!(i.current.contains("(max 96.0 GiB)"), "{i:?}");
    }

    #[test]
    fn a_small_rmem_default_warns() {
        let at = |v: &str| {
            let p = FakeProc::new(&[("sys/net/ipv4/tcp_rmem", v)]);
            check_rmem(&p.0)
        };
        // What an older 99-throng.conf set: the initial receive window shrinks.
        let i = at("4096\t4096\t6291456\n");
        assert_eq!(i.status, Status::Warn, "{i:?}");
        assert!(
            i.note
                .contains("sysctl -w net.ipv4.tcp_rmem=\"4096 131072 6291456\""),
            "{i:?}"
        );
        // The kernel's defaults, before 5.4 and since.
        for v in ["4096\t87380\t6291456\n", "4096\t131072\t33554432\n"] {
            let i = at(v);
            assert_eq!(i.status, Status::Ok, "{i:?}");
            assert!(i.note.contains("an idle socket holds none"), "{i:?}");
        }
        assert_eq!(at("1 2\n").status, Status::Warn);
    }

    #[test]
    fn wmem_note_says_whether_notsent_lowat_bounds_the_kernel_side() {
        let at = |lowat: Option<&str>| {
            let mut files = vec![("sys/net/ipv4/tcp_wmem", "4096\t16384\t4194304\n")];
            if let Some(l) = lowat {
                files.push(("sys/net/ipv4/tcp_notsent_lowat", l));
            }
            let p = FakeProc::new(&files);
            check_wmem(&p.0)
        };
        let i = at(Some("131072\n"));
        assert_eq!(i.status, Status::Ok);
        assert!(i.note.contains("up to max (4.0 MiB)"), "{i:?}");
        assert!(
            i.note.contains("tcp_notsent_lowat (131072) bounds"),
            "{i:?}"
        );
        // The kernel default (4294967295) bounds nothing.
        let i = at(Some("4294967295\n"));
        assert_eq!(i.status, Status::Ok);
        assert!(i.note.contains("tcp_notsent_lowat is off"), "{i:?}");
        // Unreadable lowat: still OK, and the note says so.
        let i = at(None);
        assert_eq!(i.status, Status::Ok);
        assert!(i.note.contains("cannot read"), "{i:?}");
    }

    #[test]
    fn missing_roots_warn_without_panicking() {
        let nowhere = Path::new("/nonexistent/throng-doctor");
        let r = check(nowhere, nowhere, 1000);
        assert!(r.items.iter().all(|i| i.status == Status::Warn), "{r:?}");
        assert!(r.items.iter().all(|i| i.note.contains("cannot read")));
        assert!(!r.has_fail());
        assert_eq!(
            r.memory.total_bytes,
            1000 * (USER_BYTES_PER_CONNECTION + KERNEL_BYTES_PER_SOCKET)
        );
        assert!(render(&r).contains("0 FAIL"));
    }
}
