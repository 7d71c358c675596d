//! The capacity ramp: raise the connection allowance step by step, and per step measure
//! memory per connection and the push-to-client latency of a short push probe, until
//! the target, the first connect error, a probe that loses messages or cannot push, or
//! --max-secs.

use crate::cli::{secs, CapacityArgs, PushArgs};
use crate::client::{Target, NO_STEP};
use crate::local::{check_server_pid, Local, Probe};
use crate::push::PushOut;
use crate::report::{step_line, Mem, Report, Step};
use crate::worker::{sock_args, split_users, WorkerIo, Workers};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Where a ramp stands after a step's connection attempts ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepState {
    /// Connections open now.
    pub open: u64,
    /// Connect failures so far.
    pub failed: u64,
    /// Connect failures so far, by cause.
    pub errors: BTreeMap<String, u64>,
}

/// Why a ramp stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    Target(u64),
    ConnectErrors {
        open: u64,
        errors: BTreeMap<String, u64>,
    },
    ProbeLost {
        open: u64,
        missing: u64,
    },
    /// A probe that could not push: pushes given up (`errors`, by cause), pushes never
    /// sent, or none accepted at all. A server whose API stops taking pushes at some
    /// connection count is what the ramp is to find.
    ProbeFailed {
        open: u64,
        accepted: u64,
        not_sent: u64,
        errors: BTreeMap<String, u64>,
    },
    MaxSecs {
        secs: f64,
        open: u64,
    },
    /// Every connection up to the target was allowed, without a connect error, but fewer
    /// are open (attempts still pending at the step's bound, or connections dropped).
    TargetNotHeld {
        target: u64,
        open: u64,
    },
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Target(n) => write!(f, "reached the target of {n} connections"),
            Stop::ConnectErrors { open, errors } => {
                let causes: Vec<String> = errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(
                    f,
                    "connect errors at {open} connections: {}",
                    causes.join(" ")
                )
            }
            Stop::ProbeLost { open, missing } => {
                write!(f, "probe lost {missing} messages at {open} connections")
            }
            Stop::ProbeFailed {
                open,
                accepted,
                not_sent,
                errors,
            } => {
                write!(
                    f,
                    "probe failed at {open} connections: {accepted} pushes accepted"
                )?;
                if !errors.is_empty() {
                    let causes: Vec<String> =
                        errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    write!(f, ", given up: {}", causes.join(" "))?;
                }
                if *not_sent > 0 {
                    write!(
                        f,
                        ", {not_sent} not sent (the push API held the probe past its end)"
                    )?;
                }
                Ok(())
            }
            Stop::MaxSecs { secs, open } => {
                write!(f, "--max-secs {secs} reached at {open} connections")
            }
            Stop::TargetNotHeld { target, open } => write!(
                f,
                "attempted the target of {target} connections without connect errors, \
                 but only {open} were open (attempts pending or connections dropped)"
            ),
        }
    }
}

/// Splits an allowance of `total` connections over workers that can hold `caps`: equal
/// shares, and what a full worker cannot take goes to the others.
pub fn split_allowance(caps: &[u64], total: u64) -> Vec<u64> {
    let mut out = vec![0u64; caps.len()];
    let mut left = total.min(caps.iter().sum());
    // Each round fills at least one worker or hands out everything, so it ends.
    while left > 0 {
        let open: Vec<usize> = (0..caps.len()).filter(|&i| out[i] < caps[i]).collect();
        if open.is_empty() {
            break;
        }
        let n = open.len() as u64;
        let (share, extra) = (left / n, left % n);
        let mut given = 0;
        for (j, &i) in open.iter().enumerate() {
            let want = share + u64::from((j as u64) < extra);
            let take = want.min(caps[i] - out[i]);
            out[i] += take;
            given += take;
        }
        left -= given;
    }
    out
}

/// What a step's probe did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeOut {
    /// Pushes the API accepted.
    pub accepted: u64,
    /// Messages missing so far (every probe's).
    pub missing: u64,
    /// Pushes whose slot came but that were never sent.
    pub not_sent: u64,
    /// Pushes given up, by cause.
    pub errors: BTreeMap<String, u64>,
}

impl ProbeOut {
    /// The `PROBED` answer of a worker (after the word).
    fn to_wire(&self) -> Result<String, String> {
        let errs = serde_json::to_string(&self.errors).map_err(|e| e.to_string())?;
        Ok(format!(
            "{} {} {} {errs}",
            self.accepted, self.missing, self.not_sent
        ))
    }

    /// Reads what [`ProbeOut::to_wire`] wrote.
    fn from_wire(s: &str) -> Option<ProbeOut> {
        let mut w = s.trim().splitn(4, ' ');
        let mut num = || w.next()?.parse::<u64>().ok();
        let (accepted, missing, not_sent) = (num()?, num()?, num()?);
        let errors = serde_json::from_str(w.next()?).ok()?;
        Some(ProbeOut {
            accepted,
            missing,
            not_sent,
            errors,
        })
    }

    /// Adds another worker's probe.
    fn add(&mut self, o: ProbeOut) {
        self.accepted += o.accepted;
        self.missing += o.missing;
        self.not_sent += o.not_sent;
        crate::client::merge_counts(&mut self.errors, o.errors);
    }
}

/// One ramp, in this process or over workers.
trait Ramp {
    /// Allows `total` connections in all and waits until every attempt has ended.
    fn step(&mut self, total: u64) -> Result<StepState, String>;
    /// Waits `d`, showing progress.
    fn settle(&mut self, d: Duration) -> Result<(), String>;
    /// Runs step `idx`'s probe.
    fn probe(&mut self, idx: usize) -> Result<ProbeOut, String>;
    /// Prints a message without garbling the progress bar.
    fn note(&self, msg: &str);
    /// Closes everything and returns the report (probe figures, per-step histograms).
    fn finish(self: Box<Self>) -> Result<Report, String>;
}

/// A ramp in this process.
struct LocalRamp {
    l: Local,
    probe: PushArgs,
    spu: u32,
    pushed: PushOut,
    probe_secs: f64,
    /// Pushes the probes so far took on: the next probe carries on from there, so that
    /// the users connected at later steps are probed too (review s23 R1).
    probe_base: u64,
}

impl LocalRamp {
    fn start(a: &CapacityArgs) -> Result<LocalRamp, String> {
        let c = a.connect_args();
        let probe = a.push_args();
        let l = Local::start(&c, Some(&probe), None, true)?;
        Ok(LocalRamp {
            l,
            probe,
            spu: a.sessions_per_user.min(u32::MAX as u64) as u32,
            pushed: PushOut::new(),
            probe_secs: 0.0,
            probe_base: 0,
        })
    }

    fn state(&self) -> StepState {
        StepState {
            open: self.l.sh.open_now.load(Relaxed),
            failed: self.l.sh.failed.load(Relaxed),
            errors: self.l.sh.connect_errors_now(),
        }
    }

    /// The probe's pushes and deliveries (step latency goes to histogram `idx`). It
    /// pushes to the users whose connections the ramp has allowed so far (connections
    /// open in number order, so those are the first `allowed / spu`), carrying on from
    /// where the last probe ended.
    fn run_probe(&mut self, idx: usize) -> ProbeOut {
        let sh = self.l.sh.clone();
        sh.step.store(idx, Relaxed);
        let t0 = Instant::now();
        let allowed = sh.allowed.load(Relaxed).min(self.l.cfg.connections);
        let probe = Probe {
            full_sessions: self.spu,
            user_base: self.probe_base,
            user_span: (allowed / u64::from(self.spu.max(1))).max(1),
        };
        let out = self.l.push(&self.probe, false, Some(probe));
        self.l.drain(Target::User, secs(self.probe.drain_secs));
        self.probe_secs += t0.elapsed().as_secs_f64();
        sh.step.store(NO_STEP, Relaxed);
        self.probe_base += out.scheduled;
        let res = ProbeOut {
            accepted: out.accepted,
            missing: self.l.missing_now(Target::User),
            not_sent: out.not_sent,
            errors: out.errors.clone(),
        };
        self.pushed.merge(out);
        res
    }

    fn report(self, mode: &str) -> Report {
        let LocalRamp {
            l,
            pushed,
            probe_secs,
            ..
        } = self;
        let mut rep = Report {
            mode: mode.into(),
            procs: 1,
            connections_target: l.cfg.connections,
            connections_opened: l.sh.opened.load(Relaxed),
            connect_secs: l.connect_secs(),
            target: Some("user".into()),
            push_via: Some(crate::push::Via::Api.name().into()),
            ..Default::default()
        };
        let t = l.close();
        let mut pushed = pushed;
        pushed.secs = probe_secs;
        rep.fill_closed(&t, Some((Some(&pushed), probe_secs)), false);
        rep
    }
}

impl Ramp for LocalRamp {
    fn step(&mut self, total: u64) -> Result<StepState, String> {
        self.l.allow(total);
        self.l.wait_connected();
        Ok(self.state())
    }
    fn settle(&mut self, d: Duration) -> Result<(), String> {
        self.l.sleep_ticking(d);
        Ok(())
    }
    fn probe(&mut self, idx: usize) -> Result<ProbeOut, String> {
        Ok(self.run_probe(idx))
    }
    fn note(&self, msg: &str) {
        self.l.ticker.note(msg);
    }
    fn finish(self: Box<Self>) -> Result<Report, String> {
        Ok(self.report("capacity"))
    }
}

/// A ramp over worker processes.
struct ParentRamp {
    ws: Workers,
    caps: Vec<u64>,
    /// Each worker's allowance so far.
    shares: Vec<u64>,
    a: CapacityArgs,
}

impl ParentRamp {
    fn start(a: &CapacityArgs) -> Result<ParentRamp, String> {
        let k = a.procs;
        let split = split_users(a.target, a.sessions_per_user, a.user_offset, k);
        let mut args = Vec::new();
        for &(conns, offset) in &split {
            let share = conns as f64 / a.target.max(1) as f64;
            let mut v: Vec<String> = vec!["capacity".into()];
            let mut kv = |k: &str, x: String| {
                v.push(format!("--{k}"));
                v.push(x);
            };
            kv("url", a.url.clone());
            kv("target", conns.to_string());
            kv("sessions-per-user", a.sessions_per_user.to_string());
            kv("user-offset", offset.to_string());
            kv("api", a.api.clone());
            kv("probe-rate", (a.probe_rate / k as f64).to_string());
            kv("probe-secs", a.probe_secs.to_string());
            kv("max-secs", a.max_secs.to_string());
            let first = (offset - a.user_offset) * a.sessions_per_user;
            v.extend(sock_args(&a.sock, share, k, first));
            v.push("--worker".into());
            args.push((v, format!("up to {conns} connections, users u{offset}..")));
        }
        let mut env = vec![("THRONG_JWT_SECRET", a.jwt_secret.as_str())];
        if let Some(key) = a.api_key.as_deref() {
            env.push(("THRONG_API_KEY", key));
        }
        let ws = Workers::spawn(args, &env, a.target)?;
        Ok(ParentRamp {
            ws,
            caps: split.iter().map(|s| s.0).collect(),
            shares: vec![0; split.len()],
            a: a.clone(),
        })
    }

    fn step_bound(&self, shares: &[u64]) -> Instant {
        let pace = step_pace(
            &self.caps,
            &self.shares,
            shares,
            self.a.target,
            self.a.sock.connect_rate,
        );
        Instant::now() + secs(pace + self.a.sock.handshake_timeout_secs + 30.0)
    }
}

/// Seconds the slowest worker needs to pace its part of a step from `before` to `after`
/// connections: each worker connects at the rate's share of its `caps` (as `start`
/// gives it), but the allowance is split evenly, so a small worker may take longer than
/// the step at the whole rate.
fn step_pace(caps: &[u64], before: &[u64], after: &[u64], target: u64, rate: f64) -> f64 {
    if rate <= 0.0 {
        return 0.0;
    }
    caps.iter()
        .zip(before.iter().zip(after))
        .filter(|(&cap, _)| cap > 0)
        .map(|(&cap, (&b, &a))| {
            let my_rate = rate * cap as f64 / target.max(1) as f64;
            a.saturating_sub(b) as f64 / my_rate
        })
        .fold(0.0, f64::max)
}

impl Ramp for ParentRamp {
    fn step(&mut self, total: u64) -> Result<StepState, String> {
        let shares = split_allowance(&self.caps, total);
        for (i, n) in shares.iter().enumerate() {
            self.ws.send(i, &format!("STEP {n}"));
        }
        let bound = self.step_bound(&shares);
        self.shares = shares;
        let answers = self.ws.await_all(Some("STEPPED"), bound)?;
        let mut st = StepState::default();
        for (i, ans) in answers.iter().enumerate() {
            let mut parts = ans.splitn(3, ' ');
            let bad = || format!("worker {i}: bad STEPPED answer: {ans}");
            st.open += parts
                .next()
                .and_then(|x| x.parse::<u64>().ok())
                .ok_or_else(bad)?;
            st.failed += parts
                .next()
                .and_then(|x| x.parse::<u64>().ok())
                .ok_or_else(bad)?;
            let errs: BTreeMap<String, u64> =
                serde_json::from_str(parts.next().unwrap_or("{}")).map_err(|_| bad())?;
            crate::client::merge_counts(&mut st.errors, errs);
        }
        Ok(st)
    }
    fn settle(&mut self, d: Duration) -> Result<(), String> {
        self.ws.await_all(None, Instant::now() + d).map(|_| ())
    }
    fn probe(&mut self, idx: usize) -> Result<ProbeOut, String> {
        self.ws.send_all(&format!("PROBE {idx}"));
        // The probe, the push driver's grace after it (10 s), the drain (5 s), margin.
        let bound = Instant::now() + secs(self.a.probe_secs + 10.0 + 5.0 + 30.0);
        let answers = self.ws.await_all(Some("PROBED"), bound)?;
        let mut all = ProbeOut::default();
        for (i, ans) in answers.iter().enumerate() {
            let one = ProbeOut::from_wire(ans)
                .ok_or_else(|| format!("worker {i}: bad PROBED answer: {ans}"))?;
            all.add(one);
        }
        Ok(all)
    }
    fn note(&self, msg: &str) {
        self.ws.note(msg);
    }
    fn finish(self: Box<Self>) -> Result<Report, String> {
        let reports = self.ws.close(secs(self.a.sock.close_timeout_secs + 30.0))?;
        let mut m = Report::merge(&reports);
        m.mode = "capacity".into();
        Ok(m)
    }
}

/// Runs the whole ramp (in this process, or over --procs workers) and returns the report.
pub fn run(a: &CapacityArgs) -> Result<Report, String> {
    check_server_pid(a.server_pid)?;
    let mem0 = Mem::read(a.server_pid);
    let ramp: Box<dyn Ramp> = if a.procs > 1 {
        Box::new(ParentRamp::start(a)?)
    } else {
        Box::new(LocalRamp::start(a)?)
    };
    drive(a, ramp, mem0)
}

fn per_conn(before: Option<u64>, now: Option<u64>, conns: u64) -> Option<f64> {
    match (before, now) {
        (Some(b), Some(n)) if conns > 0 => {
            Some(((n as f64 - b as f64) / conns as f64 * 10.0).round() / 10.0)
        }
        _ => None,
    }
}

fn drive(a: &CapacityArgs, mut ramp: Box<dyn Ramp>, mem0: Mem) -> Result<Report, String> {
    let start = Instant::now();
    let end = start + secs(a.max_secs);
    let mut rows: Vec<Step> = Vec::new();
    let mut allowed = 0u64;
    let mut held = 0u64;
    let r = (|| -> Result<Stop, String> {
        loop {
            if Instant::now() >= end {
                return Ok(Stop::MaxSecs {
                    secs: a.max_secs,
                    open: held,
                });
            }
            allowed = (allowed + a.step).min(a.target);
            let st = ramp.step(allowed)?;
            ramp.settle(secs(a.settle_secs))?;
            let mem = Mem::read(a.server_pid);
            let mut row = Step {
                connections: st.open,
                connect_errors: st.errors.clone(),
                server_rss_bytes: mem.rss,
                server_rss_bytes_per_conn: per_conn(mem0.rss, mem.rss, st.open),
                kernel_tcp_bytes_per_conn: per_conn(mem0.tcp, mem.tcp, st.open),
                kernel_slab_bytes_per_conn: per_conn(mem0.slab, mem.slab, st.open),
                ..Default::default()
            };
            held = held.max(st.open);
            if st.failed > 0 || !st.errors.is_empty() {
                ramp.note(step_line(rows.len(), &row, true).trim_end());
                rows.push(row);
                return Ok(Stop::ConnectErrors {
                    open: st.open,
                    errors: st.errors,
                });
            }
            let mut probe = ProbeOut::default();
            if a.probe_rate > 0.0 {
                probe = ramp.probe(rows.len())?;
                row.probe_pushes = probe.accepted;
                row.probe_push_errors = probe.errors.clone();
                row.probe_pushes_not_sent = probe.not_sent;
            }
            ramp.note(step_line(rows.len(), &row, true).trim_end());
            rows.push(row);
            let failed = !probe.errors.is_empty() || probe.not_sent > 0 || probe.accepted == 0;
            if a.probe_rate > 0.0 && failed {
                return Ok(Stop::ProbeFailed {
                    open: st.open,
                    accepted: probe.accepted,
                    not_sent: probe.not_sent,
                    errors: probe.errors,
                });
            }
            if probe.missing > 0 {
                return Ok(Stop::ProbeLost {
                    open: st.open,
                    missing: probe.missing,
                });
            }
            if allowed >= a.target {
                if st.open < a.target {
                    return Ok(Stop::TargetNotHeld {
                        target: a.target,
                        open: st.open,
                    });
                }
                return Ok(Stop::Target(a.target));
            }
        }
    })();
    // Close the ramp either way; when the ramp failed, its error is the one to report
    // (closing after it tends to fail too, for the same reason, less clearly).
    let fin = ramp.finish();
    let stop = r?;
    let mut rep = fin?;
    for (i, row) in rows.iter_mut().enumerate() {
        row.latency_us = rep.step_latency(i);
    }
    rep.connections_target = a.target;
    rep.steps = Some(rows);
    rep.stopped_because = Some(stop.to_string());
    rep.max_connections_held = Some(held);
    Ok(rep)
}

/// Writes the ramp's plot: latency percentiles and memory per connection per step.
pub fn draw(path: &std::path::Path, rep: &Report) -> Result<(), String> {
    let points: Vec<crate::plot::StepPoint> = rep
        .steps
        .iter()
        .flatten()
        .map(|s| {
            let has = s.latency_us.count > 0;
            crate::plot::StepPoint {
                connections: s.connections,
                latency_p50_us: has.then_some(s.latency_us.p50),
                latency_p99_us: has.then_some(s.latency_us.p99),
                latency_p999_us: has.then_some(s.latency_us.p999),
                server_rss_bytes_per_conn: s.server_rss_bytes_per_conn,
                kernel_tcp_bytes_per_conn: s.kernel_tcp_bytes_per_conn,
            }
        })
        .collect();
    let title = format!(
        "throng capacity ramp: {}",
        rep.stopped_because.as_deref().unwrap_or("")
    );
    crate::plot::write_svg(path, &title, &points)
        .map_err(|e| format!("--plot {}: {e}", path.display()))
}

/// Runs this process as a capacity worker: STEP and PROBE commands until CLOSE.
pub fn run_worker(a: &CapacityArgs) -> Result<(), String> {
    let io = WorkerIo::start();
    let mut r = LocalRamp::start(a)?;
    // Bounded: the parent drives the steps; a parent silent this long ends the run. From
    // the last command, since a ramp's last step may begin just before --max-secs.
    let silence = secs(a.max_secs + 120.0);
    let mut bound = Instant::now() + silence;
    loop {
        if Instant::now() > bound {
            eprintln!("throng-load worker: no command from the parent in time; closing");
            break;
        }
        let Some(cmd) = io.recv(Duration::from_millis(200)) else {
            r.l.tick();
            continue;
        };
        let mut words = cmd.split_whitespace();
        match words.next() {
            Some("STEP") => {
                let n = words.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                r.l.allow(n);
                r.l.wait_connected();
                let st = r.state();
                let errs = serde_json::to_string(&st.errors).map_err(|e| e.to_string())?;
                WorkerIo::send(&format!("STEPPED {} {} {errs}", st.open, st.failed));
            }
            Some("PROBE") => {
                let idx = words.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                let probe = r.run_probe(idx);
                WorkerIo::send(&format!("PROBED {}", probe.to_wire()?));
            }
            Some("CLOSE") | Some("EOF") => break,
            _ => {}
        }
        bound = Instant::now() + silence;
    }
    let rep = r.report("capacity");
    WorkerIo::send(&format!(
        "RESULT {}",
        serde_json::to_string(&rep).map_err(|e| e.to_string())?
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowance_split_even_and_capped() {
        assert_eq!(split_allowance(&[500, 500], 1000), vec![500, 500]);
        assert_eq!(split_allowance(&[500, 500], 301), vec![151, 150]);
        assert_eq!(split_allowance(&[100, 500, 500], 900), vec![100, 400, 400]);
        assert_eq!(split_allowance(&[100, 500], 5000), vec![100, 500]);
        assert_eq!(split_allowance(&[3, 3, 3], 0), vec![0, 0, 0]);
        assert_eq!(split_allowance(&[], 10), Vec::<u64>::new());
        let s = split_allowance(&[7, 1, 9, 4], 15);
        assert_eq!(s.iter().sum::<u64>(), 15);
        assert!(s.iter().zip([7, 1, 9, 4]).all(|(a, c)| *a <= c));
    }

    #[test]
    fn stop_reason_text() {
        let errors = BTreeMap::from([
            ("too_many_open_files".to_string(), 12),
            ("http_503_over_capacity".to_string(), 3),
        ]);
        assert_eq!(
            Stop::ConnectErrors {
                open: 19000,
                errors
            }
            .to_string(),
            "connect errors at 19000 connections: http_503_over_capacity=3 too_many_open_files=12"
        );
        assert_eq!(
            Stop::Target(2000).to_string(),
            "reached the target of 2000 connections"
        );
        assert_eq!(
            Stop::ProbeLost {
                open: 500,
                missing: 7
            }
            .to_string(),
            "probe lost 7 messages at 500 connections"
        );
        assert_eq!(
            Stop::MaxSecs {
                secs: 60.0,
                open: 10
            }
            .to_string(),
            "--max-secs 60 reached at 10 connections"
        );
    }

    /// A ramp with no connections behind it: each step opens `open_per_step` more, or
    /// fails with `step_err`; `finish` fails when `finish_err` is set.
    struct FakeRamp {
        open: u64,
        open_per_step: u64,
        step_err: Option<String>,
        finish_err: Option<String>,
        /// What every probe answers.
        probe_out: ProbeOut,
    }

    impl Ramp for FakeRamp {
        fn step(&mut self, _total: u64) -> Result<StepState, String> {
            if let Some(e) = &self.step_err {
                return Err(e.clone());
            }
            self.open += self.open_per_step;
            Ok(StepState {
                open: self.open,
                ..Default::default()
            })
        }
        fn settle(&mut self, _d: Duration) -> Result<(), String> {
            Ok(())
        }
        fn probe(&mut self, _idx: usize) -> Result<ProbeOut, String> {
            Ok(self.probe_out.clone())
        }
        fn note(&self, _msg: &str) {}
        fn finish(self: Box<Self>) -> Result<Report, String> {
            match self.finish_err {
                Some(e) => Err(e),
                None => Ok(Report::default()),
            }
        }
    }

    fn args(extra: &[&str]) -> CapacityArgs {
        let mut v = vec!["throng-load", "capacity", "--jwt-secret", "s"];
        v.extend_from_slice(extra);
        match <crate::cli::Cli as clap::Parser>::parse_from(v).cmd {
            crate::cli::Cmd::Capacity(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_failed_step_is_reported_not_the_close_after_it() {
        let a = args(&["--target", "10", "--step", "5", "--probe-rate", "0"]);
        let ramp = FakeRamp {
            open: 0,
            open_per_step: 5,
            step_err: Some("worker 1 exited early".into()),
            finish_err: Some("workers did not send their results in time".into()),
            probe_out: ProbeOut::default(),
        };
        let e = drive(&a, Box::new(ramp), Mem::default()).unwrap_err();
        assert_eq!(e, "worker 1 exited early");
        let ramp = FakeRamp {
            open: 0,
            open_per_step: 5,
            step_err: None,
            finish_err: Some("closing failed".into()),
            probe_out: ProbeOut::default(),
        };
        let e = drive(&a, Box::new(ramp), Mem::default()).unwrap_err();
        assert_eq!(e, "closing failed");
    }

    #[test]
    fn the_target_counts_as_reached_only_when_held() {
        let a = args(&["--target", "10", "--step", "5", "--probe-rate", "0"]);
        let full = FakeRamp {
            open: 0,
            open_per_step: 5,
            step_err: None,
            finish_err: None,
            probe_out: ProbeOut::default(),
        };
        let rep = drive(&a, Box::new(full), Mem::default()).unwrap();
        assert_eq!(
            rep.stopped_because.as_deref(),
            Some("reached the target of 10 connections")
        );
        let short = FakeRamp {
            open: 0,
            open_per_step: 4,
            step_err: None,
            finish_err: None,
            probe_out: ProbeOut::default(),
        };
        let rep = drive(&a, Box::new(short), Mem::default()).unwrap();
        let why = rep.stopped_because.unwrap();
        assert!(why.contains("only 8 were open"), "{why}");
        assert_eq!(rep.max_connections_held, Some(8));
        assert_eq!(rep.steps.map(|s| s.len()), Some(2));
    }

    #[test]
    fn a_probe_that_cannot_push_stops_the_ramp() {
        // Review s23 B3: a probe whose pushes are all refused has nothing missing; the
        // ramp went on to "reached the target" with empty latencies, and passed.
        let a = args(&["--target", "30", "--step", "10", "--probe-rate", "100"]);
        let refused = FakeRamp {
            open: 0,
            open_per_step: 10,
            step_err: None,
            finish_err: None,
            probe_out: ProbeOut {
                errors: BTreeMap::from([("http_401_unauthorized".to_string(), 100)]),
                ..Default::default()
            },
        };
        let rep = drive(&a, Box::new(refused), Mem::default()).unwrap();
        assert_eq!(
            rep.stopped_because.as_deref(),
            Some(
                "probe failed at 10 connections: 0 pushes accepted, given up: \
                 http_401_unauthorized=100"
            )
        );
        let steps = rep.steps.unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].probe_push_errors["http_401_unauthorized"], 100);
        // One given up among many accepted stops it too; so do pushes never sent, and a
        // probe with nothing accepted and nothing said about why.
        for (out, why) in [
            (
                ProbeOut {
                    accepted: 99,
                    errors: BTreeMap::from([("api_timeout".to_string(), 1)]),
                    ..Default::default()
                },
                "99 pushes accepted, given up: api_timeout=1",
            ),
            (
                ProbeOut {
                    accepted: 60,
                    not_sent: 40,
                    ..Default::default()
                },
                "60 pushes accepted, 40 not sent (the push API held the probe past its end)",
            ),
            (ProbeOut::default(), "0 pushes accepted"),
        ] {
            let ramp = FakeRamp {
                open: 0,
                open_per_step: 10,
                step_err: None,
                finish_err: None,
                probe_out: out,
            };
            let rep = drive(&a, Box::new(ramp), Mem::default()).unwrap();
            let got = rep.stopped_because.unwrap();
            assert_eq!(got, format!("probe failed at 10 connections: {why}"));
        }
        // A probe that pushed fine goes on to the target.
        let fine = FakeRamp {
            open: 0,
            open_per_step: 10,
            step_err: None,
            finish_err: None,
            probe_out: ProbeOut {
                accepted: 100,
                ..Default::default()
            },
        };
        let rep = drive(&a, Box::new(fine), Mem::default()).unwrap();
        assert_eq!(
            rep.stopped_because.as_deref(),
            Some("reached the target of 30 connections")
        );
    }

    #[test]
    fn probe_answers_cross_the_worker_pipe() {
        let p = ProbeOut {
            accepted: 7,
            missing: 1,
            not_sent: 2,
            errors: BTreeMap::from([("http_503_overloaded".to_string(), 3)]),
        };
        let wire = p.to_wire().unwrap();
        assert_eq!(ProbeOut::from_wire(&wire), Some(p.clone()));
        let mut sum = p.clone();
        sum.add(p);
        assert_eq!((sum.accepted, sum.not_sent), (14, 4));
        assert_eq!(sum.errors["http_503_overloaded"], 6);
        assert_eq!(ProbeOut::from_wire("7 1"), None);
    }

    #[test]
    fn step_bound_follows_the_slowest_worker() {
        // Even shares: each worker paces its half at half the rate, as the whole step.
        let p = step_pace(&[500, 500], &[0, 0], &[250, 250], 1000, 100.0);
        assert!((p - 5.0).abs() < 1e-9, "{p}");
        // A worker with a tenth of the users (and of the rate) gets half the first step.
        let p = step_pace(&[100, 900], &[0, 0], &[100, 100], 1000, 100.0);
        assert!((p - 10.0).abs() < 1e-9, "{p}");
        assert_eq!(step_pace(&[100, 900], &[0, 0], &[100, 100], 1000, 0.0), 0.0);
        assert_eq!(step_pace(&[0, 10], &[0, 0], &[0, 10], 10, 5.0), 2.0);
    }

    #[test]
    fn memory_per_connection() {
        assert_eq!(per_conn(Some(1000), Some(3000), 4), Some(500.0));
        assert_eq!(per_conn(Some(1000), Some(3000), 0), None);
        assert_eq!(per_conn(None, Some(3000), 4), None);
    }
}
