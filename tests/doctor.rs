//! `throng doctor` against fake `/proc` and `/sys` trees: a well-tuned host passes, a
//! default-ish host fails on RLIMIT_NOFILE, a host tuned with an older 99-throng.conf gets
//! warnings, a missing file is a WARN and no crash; and the library report for the same
//! trees.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use throng::doctor::{self, Status, Target};

const BIN: &str = env!("CARGO_BIN_EXE_throng");

/// A temporary directory holding `proc/` and `sys/`, removed on drop.
struct FakeHost {
    dir: PathBuf,
}

impl FakeHost {
    fn new(files: &[(&str, &str)]) -> FakeHost {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "throng-doctor-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for (rel, content) in files {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, content).expect("write fake file");
        }
        std::fs::create_dir_all(dir.join("proc")).expect("mkdir proc");
        std::fs::create_dir_all(dir.join("sys")).expect("mkdir sys");
        FakeHost { dir }
    }

    fn proc_root(&self) -> PathBuf {
        self.dir.join("proc")
    }

    fn sys_root(&self) -> PathBuf {
        self.dir.join("sys")
    }

    fn run(&self, target: u64) -> Output {
        self.run_with(target, &[])
    }

    fn run_with(&self, target: u64, extra: &[&str]) -> Output {
        Command::new(BIN)
            .arg("doctor")
            .args(extra)
            .arg("--target-connections")
            .arg(target.to_string())
            .arg("--proc-root")
            .arg(self.proc_root())
            .arg("--sys-root")
            .arg(self.sys_root())
            .output()
            .expect("run throng doctor")
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn limits(soft: &str, hard: &str) -> String {
    format!(
        "Limit                     Soft Limit           Hard Limit           Units     \n\
         Max cpu time              unlimited            unlimited            seconds   \n\
         Max open files            {soft:<20} {hard:<20} files     \n\
         Max locked memory         8388608              8388608              bytes     \n"
    )
}

const MEMINFO_64G: &str = "MemTotal:       65806272 kB\n\
                           MemFree:        60000000 kB\n\
                           MemAvailable:   63000000 kB\n\
                           Buffers:          100000 kB\n";

/// `tcp_mem` as the kernel shows it for these sizes in bytes: in pages of this host.
fn tcp_mem(low: u64, pressure: u64, max: u64) -> String {
    let page = doctor::page_size();
    format!("{}\t{}\t{}\n", low / page, pressure / page, max / page)
}

const GIB: u64 = 1 << 30;

/// A host tuned as `tuning/sysctl.d/99-throng.conf` and `tuning/throng.service` say (with
/// `backlog = 65535` in throng.toml), on a systemd host (fs.file-max and fs.nr_open at the
/// maximum systemd sets).
fn tuned() -> Vec<(&'static str, String)> {
    vec![
        ("proc/self/limits", limits("2097152", "2097152")),
        ("proc/sys/fs/file-max", "9223372036854775807\n".into()),
        ("proc/sys/fs/nr_open", "1073741816\n".into()),
        ("proc/sys/net/core/somaxconn", "65535\n".into()),
        // The kernel default, which 99-throng.conf no longer sets: unused with cookies on.
        ("proc/sys/net/ipv4/tcp_max_syn_backlog", "2048\n".into()),
        ("proc/sys/net/ipv4/tcp_syncookies", "1\n".into()),
        ("proc/sys/net/ipv4/tcp_available_ulp", "mptcp tls\n".into()),
        (
            "proc/sys/net/ipv4/ip_local_port_range",
            "10240\t65535\n".into(),
        ),
        // 3, 4 and 6 GiB (786432 1048576 1572864 where a page is 4 KiB).
        (
            "proc/sys/net/ipv4/tcp_mem",
            tcp_mem(3 * GIB, 4 * GIB, 6 * GIB),
        ),
        // The kernel's defaults (99-throng.conf leaves them alone).
        (
            "proc/sys/net/ipv4/tcp_rmem",
            "4096\t131072\t6291456\n".into(),
        ),
        (
            "proc/sys/net/ipv4/tcp_wmem",
            "4096\t16384\t4194304\n".into(),
        ),
        ("proc/sys/net/ipv4/tcp_notsent_lowat", "131072\n".into()),
        ("proc/meminfo", MEMINFO_64G.into()),
        ("proc/cpuinfo", "processor\t: 0\n\nprocessor\t: 1\n".into()),
        ("sys/devices/system/cpu/online", "0-7\n".into()),
    ]
}

/// A distribution default: nofile 1024/4096, somaxconn 4096, SYN cookies on with a short
/// tcp_max_syn_backlog, short port range.
fn default_ish() -> Vec<(&'static str, String)> {
    vec![
        ("proc/self/limits", limits("1024", "4096")),
        ("proc/sys/fs/file-max", "9223372036854775807\n".into()),
        ("proc/sys/fs/nr_open", "1048576\n".into()),
        ("proc/sys/net/core/somaxconn", "4096\n".into()),
        ("proc/sys/net/ipv4/tcp_max_syn_backlog", "512\n".into()),
        ("proc/sys/net/ipv4/tcp_syncookies", "1\n".into()),
        (
            "proc/sys/net/ipv4/ip_local_port_range",
            "32768\t60999\n".into(),
        ),
        // Pages: too small for a broadcast to 1M connections at 4 KiB and 64 KiB pages alike.
        ("proc/sys/net/ipv4/tcp_mem", "20000\t30000\t40000\n".into()),
        (
            "proc/sys/net/ipv4/tcp_rmem",
            "4096\t131072\t6291456\n".into(),
        ),
        (
            "proc/sys/net/ipv4/tcp_wmem",
            "4096\t16384\t4194304\n".into(),
        ),
        ("proc/meminfo", MEMINFO_64G.into()),
        ("sys/devices/system/cpu/online", "0-3\n".into()),
    ]
}

fn host(files: &[(&'static str, String)]) -> FakeHost {
    let refs: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    FakeHost::new(&refs)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status column of the row for `name`.
fn row_status(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let status = f.next()?;
        (f.next()? == name).then(|| status.to_string())
    })
}

#[test]
fn well_tuned_host_is_all_ok_and_exits_0() {
    let h = host(&tuned());
    let out = h.run(100_000);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for name in [
        "RLIMIT_NOFILE",
        "fs.file-max",
        "fs.nr_open",
        "net.core.somaxconn",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_mem",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
        "cpus",
        "kTLS",
        "memory",
    ] {
        assert_eq!(
            row_status(&text, name).as_deref(),
            Some("OK"),
            "{name}:\n{text}"
        );
    }
    assert!(text.contains("0 FAIL, 0 WARN, 12 OK"), "{text}");
    assert!(!text.contains("WARN  "), "{text}");
    // tcp_max_syn_backlog is not a row of its own: with cookies on it is not used.
    assert!(
        row_status(&text, "net.ipv4.tcp_max_syn_backlog").is_none(),
        "{text}"
    );
    assert!(text.contains("tcp_notsent_lowat (131072) bounds"), "{text}");
    // The memory projection is printed with both per-connection figures.
    assert!(text.contains("100000 x 512 B"), "{text}");
    assert!(text.contains("100000 x 4096 B"), "{text}");
}

#[test]
fn tls_projects_the_tls_state_of_each_connection() {
    let h = host(&tuned());
    let out = h.run_with(100_000, &["--tls"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("100000 x 1536 B"), "{text}");
    assert!(text.contains("wss://"), "{text}");
    let target = Target {
        connections: 1_000_000,
        outbound_budget: None,
        tls: true,
        api_max_connections: 1024,
        backlog: doctor::SERVER_BACKLOG,
    };
    let r = doctor::check_target(&h.proc_root(), &h.sys_root(), &target);
    assert_eq!(
        r.memory.total_bytes,
        1_000_000 * (doctor::USER_BYTES_PER_TLS_CONNECTION + doctor::KERNEL_BYTES_PER_SOCKET)
    );
    assert!(r.memory.tls);
    assert_eq!(r.item("memory").expect("memory").status, Status::Ok);
    // With 5 GB available a million connections fit in plain (4.6 GB, a WARN for the
    // headroom) but not over TLS (5.6 GB).
    let mut small = tuned();
    small.retain(|(path, _)| *path != "proc/meminfo");
    small.push((
        "proc/meminfo",
        "MemTotal: 8000000 kB\nMemAvailable: 5000000 kB\n".into(),
    ));
    let h = host(&small);
    let plain = doctor::check_target(
        &h.proc_root(),
        &h.sys_root(),
        &Target {
            tls: false,
            ..target
        },
    );
    assert_eq!(plain.item("memory").expect("memory").status, Status::Warn);
    let tls = doctor::check_target(&h.proc_root(), &h.sys_root(), &target);
    assert_eq!(tls.item("memory").expect("memory").status, Status::Fail);
}

#[test]
fn well_tuned_host_report_from_the_library() {
    let h = host(&tuned());
    let r = doctor::check(&h.proc_root(), &h.sys_root(), 1_000_000);
    assert_eq!(r.worst(), Status::Ok, "{r:#?}");
    let nofile = r.item("RLIMIT_NOFILE").expect("nofile item");
    assert_eq!(nofile.current, "2097152 (hard 2097152)");
    assert_eq!(r.item("cpus").expect("cpus").current, "8 (online)");
    assert_eq!(r.memory.connections, 1_000_000);
    assert_eq!(
        r.memory.total_bytes,
        1_000_000 * (doctor::USER_BYTES_PER_CONNECTION + doctor::KERNEL_BYTES_PER_SOCKET)
    );
    assert_eq!(r.memory.available_bytes, Some(63_000_000 * 1024));
}

#[test]
fn default_host_fails_on_nofile_and_exits_1() {
    let h = host(&default_ish());
    let out = h.run(100_000);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(
        row_status(&text, "RLIMIT_NOFILE").as_deref(),
        Some("FAIL"),
        "{text}"
    );
    assert!(text.contains("1024 (hard 4096)"), "{text}");
    assert!(text.contains(">= 101280"), "{text}");
    // A tcp_max_syn_backlog of 512 is no warning while SYN cookies are on.
    assert_eq!(
        row_status(&text, "net.ipv4.tcp_syncookies").as_deref(),
        Some("OK"),
        "{text}"
    );
    assert_eq!(
        row_status(&text, "net.ipv4.ip_local_port_range").as_deref(),
        Some("WARN"),
        "{text}"
    );
    assert_eq!(
        row_status(&text, "net.core.somaxconn").as_deref(),
        Some("OK"),
        "{text}"
    );
    assert_eq!(
        row_status(&text, "fs.file-max").as_deref(),
        Some("OK"),
        "{text}"
    );
    assert!(text.contains("not ready (exit 1)"), "{text}");
}

#[test]
fn grading_rules_from_the_library() {
    let mut files = tuned();
    for (path, content) in files.iter_mut() {
        match *path {
            // Below N + 1280 the server's client ceiling (limit - 256 - 1024) is below N.
            "proc/self/limits" => *content = limits("101000", "101000"),
            "proc/sys/fs/file-max" => *content = "50000\n".into(),
            "proc/sys/net/core/somaxconn" => *content = "128\n".into(),
            // 488 MiB projected against 256 MiB available.
            "proc/meminfo" => *content = "MemAvailable:     262144 kB\n".into(),
            _ => {}
        }
    }
    let h = host(&files);
    let r = doctor::check(&h.proc_root(), &h.sys_root(), 100_000);
    let status = |n: &str| r.item(n).map(|i| i.status);
    assert_eq!(status("RLIMIT_NOFILE"), Some(Status::Fail), "{r:#?}");
    assert_eq!(status("fs.file-max"), Some(Status::Fail), "{r:#?}");
    assert_eq!(status("net.core.somaxconn"), Some(Status::Warn), "{r:#?}");
    assert_eq!(status("memory"), Some(Status::Fail), "{r:#?}");
    assert!(r.has_fail());

    // 1.1M connections: a small tcp_mem fails, and so does nr_open (1048576).
    let h = host(&default_ish());
    let r = doctor::check(&h.proc_root(), &h.sys_root(), 1_100_000);
    assert_eq!(
        r.item("net.ipv4.tcp_mem").map(|i| i.status),
        Some(Status::Fail)
    );
    assert_eq!(r.item("fs.nr_open").map(|i| i.status), Some(Status::Fail));
}

/// `tuned()` with these files replaced (or added).
fn tuned_with(changes: &[(&'static str, &str)]) -> FakeHost {
    let mut files = tuned();
    for (path, content) in changes {
        files.retain(|(p, _)| p != path);
        files.push((path, content.to_string()));
    }
    host(&files)
}

#[test]
fn an_older_tuning_file_on_a_small_host_gets_warnings() {
    // What 99-throng.conf used to set: tcp_rmem default 4096, and tcp_mem up to 6 GiB
    // whatever the host's memory; here on an 8 GiB host.
    let old_mem = tcp_mem(3 * GIB, 4 * GIB, 6 * GIB);
    let h = tuned_with(&[
        ("proc/sys/net/ipv4/tcp_rmem", "4096\t4096\t6291456\n"),
        ("proc/sys/net/ipv4/tcp_wmem", "4096\t4096\t4194304\n"),
        ("proc/sys/net/ipv4/tcp_mem", old_mem.as_str()),
        (
            "proc/meminfo",
            "MemTotal:  8388608 kB\nMemAvailable:  7340032 kB\n",
        ),
    ]);
    let out = h.run(100_000);
    let text = stdout(&out);
    // Warnings, not failures: the host holds the target.
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        row_status(&text, "net.ipv4.tcp_rmem").as_deref(),
        Some("WARN"),
        "{text}"
    );
    assert!(text.contains("initial receive window"), "{text}");
    assert_eq!(
        row_status(&text, "net.ipv4.tcp_mem").as_deref(),
        Some("WARN"),
        "{text}"
    );
    assert!(text.contains("exceed MemTotal (8.0 GiB)"), "{text}");
    assert_eq!(
        row_status(&text, "net.ipv4.tcp_wmem").as_deref(),
        Some("OK"),
        "{text}"
    );
    assert!(text.contains("0 FAIL, 2 WARN, 10 OK"), "{text}");

    // The same tcp_mem on 64 GiB is fine.
    let h = tuned_with(&[("proc/sys/net/ipv4/tcp_mem", old_mem.as_str())]);
    let r = doctor::check(&h.proc_root(), &h.sys_root(), 1_000_000);
    let item = r.item("net.ipv4.tcp_mem").expect("tcp_mem");
    assert_eq!(item.status, Status::Ok, "{item:?}");
    assert_eq!(r.memory.mem_total_bytes, Some(65_806_272 * 1024));
}

#[test]
fn the_syn_backlog_matters_only_with_syncookies_off() {
    // Off, with a short tcp_max_syn_backlog: new clients past 384 half-open connections
    // are dropped, fewer than the backlog of 4096.
    let h = tuned_with(&[
        ("proc/sys/net/ipv4/tcp_syncookies", "0\n"),
        ("proc/sys/net/ipv4/tcp_max_syn_backlog", "512\n"),
    ]);
    let text = stdout(&h.run(100_000));
    assert_eq!(
        row_status(&text, "net.ipv4.tcp_syncookies").as_deref(),
        Some("WARN"),
        "{text}"
    );
    assert!(text.contains("0, tcp_max_syn_backlog 512"), "{text}");
    assert!(text.contains("past about 384 half-open"), "{text}");
    // Off, with a long one: OK.
    let h = tuned_with(&[
        ("proc/sys/net/ipv4/tcp_syncookies", "0\n"),
        ("proc/sys/net/ipv4/tcp_max_syn_backlog", "65535\n"),
    ]);
    let text = stdout(&h.run(100_000));
    assert_eq!(
        row_status(&text, "net.ipv4.tcp_syncookies").as_deref(),
        Some("OK"),
        "{text}"
    );
    // somaxconn above the default backlog: OK, with a reminder to raise `backlog`.
    let r = doctor::check(&h.proc_root(), &h.sys_root(), 100_000);
    let somaxconn = r.item("net.core.somaxconn").expect("somaxconn");
    assert_eq!(somaxconn.status, Status::Ok);
    assert!(
        somaxconn.note.contains("set `backlog` up to 65535"),
        "{r:#?}"
    );
}

#[test]
fn the_backlog_checks_take_the_servers_backlog() {
    // somaxconn 65535 against a server run with `backlog = 65535`: enough, and no advice
    // to raise `backlog`; against one with 100000, the kernel cuts it.
    let h = host(&tuned());
    let out = h.run_with(100_000, &["--backlog", "65535"]);
    let text = stdout(&out);
    assert_eq!(
        row_status(&text, "net.core.somaxconn").as_deref(),
        Some("OK"),
        "{text}"
    );
    assert!(text.contains(">= 65535 (`backlog`)"), "{text}");
    assert!(!text.contains("set `backlog` up to"), "{text}");
    let text = stdout(&h.run_with(100_000, &["--backlog", "100000"]));
    assert_eq!(
        row_status(&text, "net.core.somaxconn").as_deref(),
        Some("WARN"),
        "{text}"
    );
    assert!(text.contains("(`backlog` 100000;"), "{text}");
    // SYN cookies off: a tcp_max_syn_backlog of 65535 leaves 49,152 half-open connections
    // to new peers, enough for the default 4096 but not for a backlog of 65535.
    let h = tuned_with(&[
        ("proc/sys/net/ipv4/tcp_syncookies", "0\n"),
        ("proc/sys/net/ipv4/tcp_max_syn_backlog", "65535\n"),
    ]);
    let text = stdout(&h.run(100_000));
    assert_eq!(
        row_status(&text, "net.ipv4.tcp_syncookies").as_deref(),
        Some("OK"),
        "{text}"
    );
    let text = stdout(&h.run_with(100_000, &["--backlog", "65535"]));
    assert_eq!(
        row_status(&text, "net.ipv4.tcp_syncookies").as_deref(),
        Some("WARN"),
        "{text}"
    );
    // A backlog the server itself would refuse is refused here too, by name.
    for bad in ["0", "2147483648", "x"] {
        let out = h.run_with(100_000, &["--backlog", bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("--backlog"), "{bad}: {err}");
    }
}

/// A tree like `tuned()` with this open-file limit (soft and hard).
fn with_nofile(limit: u64) -> FakeHost {
    let mut files = tuned();
    for (path, content) in files.iter_mut() {
        if *path == "proc/self/limits" {
            *content = limits(&limit.to_string(), &limit.to_string());
        }
    }
    host(&files)
}

#[test]
fn nofile_fails_when_the_server_would_refuse_the_target() {
    // The server stops admitting clients at fdlimit::client_ceiling: 2000 - 256 - 436 =
    // 1308 and 20000 - 256 - 1024 = 18720. A target above that is a FAIL, exit 1.
    for (limit, target) in [(2_000u64, 1_500u64), (20_000, 19_000)] {
        let ceiling = throng::fdlimit::client_ceiling(limit, 1024);
        assert!(ceiling < target);
        let h = with_nofile(limit);
        let out = h.run(target);
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert_eq!(
            row_status(&text, "RLIMIT_NOFILE").as_deref(),
            Some("FAIL"),
            "{text}"
        );
        assert!(
            text.contains(&format!("past about {ceiling} connections")),
            "{text}"
        );
        // At the ceiling itself the clients fit.
        let out = h.run(ceiling);
        assert_ne!(
            row_status(&stdout(&out), "RLIMIT_NOFILE").as_deref(),
            Some("FAIL"),
            "{}",
            stdout(&out)
        );
    }
}

#[test]
fn nofile_warns_when_only_the_api_reserve_is_short() {
    // 3000: the server admits 3000 - 256 - 686 = 2058 clients, with 686 of the 1024 API
    // connections. 2000 clients fit, so WARN (exit 0) naming the API's share.
    let h = with_nofile(3_000);
    let out = h.run(2_000);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        row_status(&text, "RLIMIT_NOFILE").as_deref(),
        Some("WARN"),
        "{text}"
    );
    assert!(text.contains(">= 3280 (N + 1280)"), "{text}");
    assert!(text.contains("only 686 of its 1024"), "{text}");
    // A smaller api_max_connections needs less: 2000 + 256 + 100 fits in 3000.
    let out = h.run_with(2_000, &["--api-max-connections", "100"]);
    let text = stdout(&out);
    assert_eq!(
        row_status(&text, "RLIMIT_NOFILE").as_deref(),
        Some("OK"),
        "{text}"
    );
    assert!(text.contains(">= 2356 (N + 356)"), "{text}");
    // A larger one raises the need, and the FAIL point, as the server's reserve does.
    let out = h.run_with(2_000, &["--api-max-connections", "5000"]);
    let text = stdout(&out);
    assert!(text.contains(">= 7256 (N + 5256)"), "{text}");
}

#[test]
fn low_soft_limit_is_ok_when_the_hard_limit_allows_it() {
    // `throng serve` raises its soft limit to the hard limit, so only the hard one counts.
    let mut files = tuned();
    for (path, content) in files.iter_mut() {
        if *path == "proc/self/limits" {
            *content = limits("1024", "1048576");
        }
    }
    let h = host(&files);
    let r = doctor::check(&h.proc_root(), &h.sys_root(), 100_000);
    let nofile = r.item("RLIMIT_NOFILE").expect("nofile item");
    assert_eq!(nofile.status, Status::Ok, "{r:#?}");
    assert!(
        nofile.note.contains("raises it to the hard limit"),
        "{r:#?}"
    );
}

#[test]
fn missing_file_is_a_warn_not_a_crash() {
    let files: Vec<_> = tuned()
        .into_iter()
        .filter(|(p, _)| *p != "proc/sys/net/core/somaxconn" && *p != "proc/meminfo")
        .collect();
    let h = host(&files);
    let out = h.run(100_000);
    let text = stdout(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        row_status(&text, "net.core.somaxconn").as_deref(),
        Some("WARN"),
        "{text}"
    );
    assert_eq!(
        row_status(&text, "memory").as_deref(),
        Some("WARN"),
        "{text}"
    );
    assert!(text.contains("cannot read"), "{text}");
    assert!(text.contains("somaxconn"), "{text}");
    assert!(text.contains("MemAvailable"), "{text}");
    assert!(text.contains("0 FAIL, 2 WARN"), "{text}");
}

#[test]
fn garbage_and_empty_trees_warn_without_crashing() {
    let mut files = tuned();
    for (path, content) in files.iter_mut() {
        if path.starts_with("proc/sys/") || *path == "proc/self/limits" {
            *content = "\u{0}garbage\n".into();
        }
    }
    // No /sys cpu list: the cpu count falls back to /proc/cpuinfo.
    files.retain(|(p, _)| !p.starts_with("sys/"));
    let h = host(&files);
    let out = h.run(100_000);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("cannot parse"), "{text}");
    assert_eq!(
        row_status(&text, "RLIMIT_NOFILE").as_deref(),
        Some("WARN"),
        "{text}"
    );
    assert_eq!(row_status(&text, "cpus").as_deref(), Some("OK"), "{text}");
    assert!(text.contains("2 (cpuinfo)"), "{text}");

    let empty = FakeHost::new(&[]);
    let out = empty.run(10);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("0 FAIL, 12 WARN, 0 OK"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn rejects_a_zero_target() {
    let h = FakeHost::new(&[]);
    let out = Command::new(BIN)
        .args(["doctor", "--target-connections", "0", "--proc-root"])
        .arg(h.proc_root())
        .output()
        .expect("run throng doctor");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn reads_the_live_host_without_crashing() {
    // Whatever this machine's limits are, the command finishes with 0 or 1 and a summary.
    let out = Command::new(BIN)
        .args(["doctor", "--target-connections", "1000"])
        .output()
        .expect("run throng doctor");
    let text = stdout(&out);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{text}");
    assert!(text.contains("FAIL,") && text.contains("WARN,"), "{text}");
}

#[test]
fn outbound_budget_is_reported_and_graded() {
    // 64 GiB of memory: the default budget is a quarter, capped at 4 GiB.
    let h = host(&tuned());
    let r = doctor::check(&h.proc_root(), &h.sys_root(), 100_000);
    assert_eq!(r.memory.outbound_budget_bytes, 4 << 30);
    assert!(r.memory.outbound_budget_is_default);
    let text = stdout(&h.run(100_000));
    assert!(
        text.contains("max_outbound_total_bytes, the default: a quarter of MemTotal"),
        "{text}"
    );

    // 1 GiB available: 100,000 idle connections fit (about 440 MiB), but not with a
    // 1 GiB outbound budget on top: a WARN that names the key.
    let mut files = tuned();
    for (path, content) in files.iter_mut() {
        if *path == "proc/meminfo" {
            *content = "MemTotal:  4194304 kB\nMemAvailable:  1048576 kB\n".into();
        }
    }
    let h = host(&files);
    let r = doctor::check_with_budget(&h.proc_root(), &h.sys_root(), 100_000, None);
    let memory = r.item("memory").expect("memory item");
    assert_eq!(memory.status, Status::Warn, "{r:#?}");
    assert!(memory.note.contains("max_outbound_total_bytes"), "{r:#?}");
    // A budget that fits is OK, and the report shows the given value.
    let r = doctor::check_with_budget(&h.proc_root(), &h.sys_root(), 100_000, Some(64 << 20));
    assert_eq!(
        r.item("memory").map(|i| i.status),
        Some(Status::Ok),
        "{r:#?}"
    );
    let out = Command::new(BIN)
        .args(["doctor", "--target-connections", "100000"])
        .arg("--max-outbound-total-bytes")
        .arg((64u64 << 20).to_string())
        .arg("--proc-root")
        .arg(h.proc_root())
        .arg("--sys-root")
        .arg(h.sys_root())
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(
        text.contains("64.0 MiB  (max_outbound_total_bytes:"),
        "{text}"
    );
}
