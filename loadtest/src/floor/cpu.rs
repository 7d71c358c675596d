//! CPU time of this process and of another, for the floor's per-operation figures.

use std::time::Duration;

/// User and system CPU time this process has used so far.
pub fn own() -> (Duration, Duration) {
    // SAFETY: getrusage writes only the struct we pass, which is zeroed and of its type.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF always exists.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (Duration::ZERO, Duration::ZERO);
    }
    let d = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    (d(ru.ru_utime), d(ru.ru_stime))
}

/// CPU time (user and system together) process `pid` has used so far, from
/// `/proc/<pid>/stat`; `None` once it is gone.
pub fn of_pid(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_stat_ticks(&stat)?;
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, read after the command
/// name's closing parenthesis (the name may hold spaces).
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let u: u64 = f.next()?.parse().ok()?;
    let s: u64 = f.next()?.parse().ok()?;
    Some(u + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_are_read_after_a_name_with_spaces() {
        let line = "42 (a b) c) S 1 42 42 0 -1 4194304 100 0 0 0 17 5 0 0 20 0 1 0 9 0 0";
        assert_eq!(parse_stat_ticks(line), Some(22));
        assert_eq!(parse_stat_ticks("42 (x) S 1"), None);
    }

    #[test]
    fn own_time_grows_with_work() {
        let (u0, s0) = own();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let (u1, s1) = own();
        assert!(u1 + s1 > u0 + s0, "{u0:?}+{s0:?} -> {u1:?}+{s1:?}");
        assert!(of_pid(std::process::id()).is_some());
    }
}
