//! Starting and stopping a whole server: listeners, acceptor, shards and push API.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Poll, Waker};
use socket2::{Domain, Protocol, Socket, Type};

use crate::acceptor::Acceptor;
use crate::admission::Admission;
use crate::api::Api;
use crate::auth::{KeyError, Verifier};
use crate::broker;
use crate::config::Config;
use crate::link::Links;
use crate::metrics::Metrics;
use crate::reactor;
use crate::shard::{self, DrainEnd, ReplySink, ShardCluster, ShardShared};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another socket (another server, or this one) already listens on the address.
    #[error("cannot listen on {addr}: address in use (is another server listening there?)")]
    AddrInUse {
        /// The address.
        addr: SocketAddr,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Threads or polls could not be created.
    #[error("cannot start: {0}")]
    Io(#[from] io::Error),
    /// The JWT key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A listener's TLS certificate or key could not be loaded.
    #[error("config error: {keys}: {source}")]
    Tls {
        /// The config keys (and flags) that name the files.
        keys: &'static str,
        /// What was wrong with them.
        source: crate::tls::TlsError,
    },
}

/// A running server.
pub struct Server {
    client_addr: SocketAddr,
    api_addr: SocketAddr,
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
    /// How the shards end the drain together.
    drain_end: Arc<DrainEnd>,
    stop: Arc<AtomicBool>,
    acceptor_wakers: Vec<Arc<Waker>>,
    api_waker: Arc<Waker>,
    shard_wakers: Vec<Arc<Waker>>,
    acceptors: Vec<JoinHandle<()>>,
    shards: Vec<JoinHandle<()>>,
    api: Option<JoinHandle<()>>,
    broker: Vec<JoinHandle<()>>,
    /// Delivers client sends and lifecycle events, when they have a target.
    events: Option<crate::events::Running>,
    /// Reads pushes from Kafka, with `--kafka`.
    kafka: Option<JoinHandle<()>>,
    /// The TLS listener's configuration, which `reload_tls` renews.
    tls: Option<crate::tls::TlsServer>,
    /// The push API's TLS configuration, which `reload_api_tls` renews.
    api_tls: Option<crate::tls::TlsServer>,
    /// Reads `events_ca` again on `SIGHUP`, when one is set.
    events_ca: Option<crate::events::CaReload>,
    /// Reads `events_key_file` again on `SIGHUP`, when one is set.
    events_key: Option<crate::events::KeyReload>,
    /// The JWT keys, which `reload_jwt_keys` renews.
    jwt_keys: Arc<crate::auth::SharedKeys>,
    /// The push API's keys, which `reload_api_keys` renews.
    api_keys: Arc<crate::api::keys::ApiKeys>,
    /// Cluster mode: how Redis links connect, which `reload_redis_tls` renews.
    redis: Option<Arc<broker::RedisConnector>>,
    /// With `jwks_url`: the thread that fetches the keys again.
    jwks_refresher: Option<JoinHandle<()>>,
}

/// A listening socket: `SO_REUSEADDR`, non-blocking, with backlog.
///
/// No `SO_REUSEPORT`: with it a second server started on the same address would join the
/// port's group and silently take a share of the clients; without it binding fails.
fn listen(addr: SocketAddr, backlog: u32) -> Result<std::net::TcpListener, StartError> {
    let bind_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::AddrInUse {
            StartError::AddrInUse { addr }
        } else {
            StartError::Bind { addr, source }
        }
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(bind_err)?;
    // Only lets a restart bind over connections in TIME_WAIT, never over a listener.
    socket.set_reuse_address(true).map_err(bind_err)?;
    socket.set_nonblocking(true).map_err(bind_err)?;
    // Accepted sockets inherit it on Linux: one setsockopt per listener, not per client.
    socket.set_tcp_nodelay(true).map_err(bind_err)?;
    socket.bind(&addr.into()).map_err(bind_err)?;
    socket
        .listen(backlog.min(i32::MAX as u32) as i32)
        .map_err(bind_err)?;
    Ok(socket.into())
}

/// Asks the kernel to hand over a client connection only once its first bytes (the
/// upgrade request or TLS ClientHello) have arrived, or after about `secs` seconds of
/// silence (`TCP_DEFER_ACCEPT`, Linux). The acceptor then reads a new socket's request
/// at once instead of waiting for it through its poll (two `epoll_ctl` calls and a poll
/// turn fewer per handshake), and a client that connects and says nothing holds no
/// descriptor until then. Elsewhere a no-op.
pub(crate) fn defer_accept(listener: &std::net::TcpListener, secs: u32) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    return set_tcp_int(listener, libc::TCP_DEFER_ACCEPT, secs);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (listener, secs);
        Ok(())
    }
}

/// Sets `TCP_NOTSENT_LOWAT` on the client listener, which accepted sockets inherit on
/// Linux (no system call per client): the kernel then takes at most `bytes` unsent per
/// socket, so a slow client's backlog waits in Throng's queue, where the outbound
/// bounds count it, instead of in up to `tcp_wmem`'s max of kernel memory. Elsewhere a
/// no-op.
pub(crate) fn notsent_lowat(listener: &std::net::TcpListener, bytes: u32) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    return set_tcp_int(listener, libc::TCP_NOTSENT_LOWAT, bytes);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (listener, bytes);
        Ok(())
    }
}

/// Sets the `IPPROTO_TCP` option `option` of `listener` to `value` (capped at `c_int`).
#[cfg(target_os = "linux")]
fn set_tcp_int(
    listener: &std::net::TcpListener,
    option: libc::c_int,
    value: u32,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is borrowed from a live listener for the whole call, and the
    // option value points at a local `c_int` whose size is the length passed.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Server {
    /// Binds the listeners and starts every thread.
    pub fn start(config: Config) -> Result<Server, StartError> {
        let config = Arc::new(config);
        let client_listener = listen(config.listen, config.backlog)?;
        // Silent clients wait in the kernel for about one handshake deadline; once handed
        // over the acceptor's own deadline applies.
        let defer_secs = config.handshake_timeout.as_secs_f64().ceil().max(1.0) as u32;
        if let Err(e) = defer_accept(&client_listener, defer_secs) {
            tracing::warn!(error = %e, "TCP_DEFER_ACCEPT not available; accepting at once");
        }
        if config.tcp_notsent_lowat > 0 {
            if let Err(e) = notsent_lowat(&client_listener, config.tcp_notsent_lowat) {
                tracing::warn!(
                    error = %e,
                    "TCP_NOTSENT_LOWAT not available; client sockets keep the host's"
                );
            }
        }
        let api_listener = listen(config.api_listen, 1024)?;
        let client_addr = client_listener.local_addr()?;
        let api_addr = api_listener.local_addr()?;
        // One key set for every verifier (acceptors, shards' `refresh`): SIGHUP replaces it.
        let jwt_keys = crate::auth::SharedKeys::load(&config.jwt)?;
        let tls = config
            .tls
            .as_ref()
            .map(crate::tls::TlsServer::load)
            .transpose()
            .map_err(|source| StartError::Tls {
                keys: "tls_cert, tls_key (--tls-cert, --tls-key)",
                source,
            })?;
        let api_tls = config
            .api_tls
            .as_ref()
            .map(|files| {
                crate::tls::TlsServer::load_api(files, config.api_tls_client_ca.as_deref())
            })
            .transpose()
            .map_err(|source| StartError::Tls {
                keys: "api_tls_cert, api_tls_key, api_tls_client_ca (--api-tls-cert, \
                       --api-tls-key, --api-tls-client-ca)",
                source,
            })?;
        let metrics = Arc::new(Metrics::new(config.shards));
        metrics.tls.enabled.store(tls.is_some(), Relaxed);
        metrics.api_tls.enabled.store(api_tls.is_some(), Relaxed);
        let admission = Arc::new(Admission::new(
            config.max_connections,
            config.max_connections_per_ip,
        ));
        let draining = Arc::new(AtomicBool::new(false));
        let drain_end = Arc::new(DrainEnd::new());
        let stop = Arc::new(AtomicBool::new(false));

        let api_poll = Poll::new()?;
        let api_waker = reactor::waker(&api_poll)?;
        // Replies are bounded by construction: each API connection waits on at most one
        // request, whose replies number at most the shard count.
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        // Bounded by the shards, each keeping at most PUBLISH_IN_FLIGHT unanswered; a list
        // channel, so its room costs memory only while used (an array channel of that
        // size touched 200 KB at startup).
        let (publish_tx, publish_rx) = crossbeam_channel::unbounded();

        let cores = if config.pin_cores {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut handles = Vec::with_capacity(config.shards);
        let mut shard_threads = Vec::with_capacity(config.shards);
        // Cluster mode: each shard gets a queue from the broker and a way to tell it
        // which users and topics it serves.
        let (interest_tx, interest_rx) = crossbeam_channel::unbounded();
        // ... and where to report changed session counts (presence, a batch per ~100 ms).
        let (presence_tx, presence_rx) =
            crossbeam_channel::bounded(broker::presence::CHANGES_QUEUE);
        let presence_shared = broker::PresenceShared::default();
        let node_id: Arc<str> = config
            .cluster
            .as_ref()
            .and_then(|c| c.node_id.clone())
            .unwrap_or_else(|| default_node_id(client_addr))
            .into();
        let redis = config
            .cluster
            .as_ref()
            .map(|c| broker::RedisConnector::new(c).map(Arc::new))
            .transpose()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // Client sends and lifecycle events, when they have somewhere to go.
        let (events, events_thread, events_ca, events_key) = match crate::events::spawn(
            &config,
            Arc::clone(&node_id),
            &metrics,
            &stop,
            redis.as_ref(),
        )? {
            Some(t) => (Some(t.sink), Some(t.thread), t.ca_reload, t.key_reload),
            None => (None, None, None, None),
        };
        let mut remote_senders = Vec::new();
        for id in 0..config.shards {
            let cluster = config.cluster.as_ref().map(|_| {
                let (tx, rx) = crate::link::queue(config.shard_queue_capacity);
                remote_senders.push(tx);
                ShardCluster {
                    interest: interest_tx.clone(),
                    max_interests_waiting: config
                        .cluster
                        .as_ref()
                        .map_or(crate::shard::MAX_INTERESTS_WAITING, |c| {
                            c.max_stream_changes_waiting
                        }),
                    remote: rx,
                    presence: presence_tx.clone(),
                    presence_shared: presence_shared.clone(),
                }
            });
            let shared = ShardShared {
                config: Arc::clone(&config),
                metrics: Arc::clone(&metrics),
                admission: Arc::clone(&admission),
                draining: Arc::clone(&draining),
                drain_end: Arc::clone(&drain_end),
                replies: ReplySink {
                    tx: reply_tx.clone(),
                    waker: Arc::clone(&api_waker),
                },
                cluster,
                publishes: publish_tx.clone(),
                events: events.clone(),
                jwt_keys: Some(Arc::clone(&jwt_keys)),
            };
            let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
            let (ends, thread) = shard::spawn(id, shared, core)?;
            handles.push(ends);
            shard_threads.push(thread);
        }
        drop(interest_tx);
        drop(publish_tx);
        // Only the shards hold the sinks: the events thread ends once they are done.
        drop(events);
        drop(presence_tx);
        let shard_wakers: Vec<Arc<Waker>> = handles.iter().map(|h| Arc::clone(&h.waker)).collect();
        let (broker_links, broker_threads) = match (&config.cluster, &redis) {
            (Some(cluster), Some(redis)) => {
                metrics.broker.enabled.store(true, Relaxed);
                let remote = remote_senders
                    .into_iter()
                    .zip(shard_wakers.iter().cloned())
                    .collect();
                let (links, threads) = broker::spawn(
                    &config,
                    cluster,
                    Arc::clone(&node_id),
                    Arc::clone(&metrics),
                    Arc::clone(&stop),
                    ReplySink {
                        tx: reply_tx.clone(),
                        waker: Arc::clone(&api_waker),
                    },
                    Links::from_parts(remote),
                    interest_rx,
                    broker::PresenceEnds {
                        changes: presence_rx,
                        shared: presence_shared,
                    },
                    Arc::clone(redis),
                )?;
                (Some(links), threads.threads)
            }
            _ => (None, Vec::new()),
        };
        // Each command queue gets exactly one sender, the API; connection queues one per
        // acceptor.
        let mut conn_parts = Vec::with_capacity(handles.len());
        let mut cmd_parts = Vec::with_capacity(handles.len());
        for h in handles {
            conn_parts.push((h.conns, Arc::clone(&h.waker)));
            cmd_parts.push((h.cmds, h.waker));
        }

        // The acceptors share the listener (each polls its own descriptor of it; one
        // accept wins a connection) and the counts behind the bounds (`Gate`).
        let gate = Arc::new(crate::acceptor::Gate::new(&config));
        let mut acceptor_wakers = Vec::with_capacity(config.acceptors);
        let mut acceptors = Vec::with_capacity(config.acceptors);
        for i in 0..config.acceptors {
            let poll = Poll::new()?;
            acceptor_wakers.push(reactor::waker(&poll)?);
            let verifier = Verifier::with_keys(&config.jwt, Arc::clone(&jwt_keys));
            let parts = conn_parts
                .iter()
                .map(|(tx, waker)| (tx.clone(), Arc::clone(waker)))
                .collect();
            let acceptor = Acceptor::new(
                poll,
                client_listener.try_clone()?,
                verifier,
                tls.clone(),
                Arc::clone(&config),
                Arc::clone(&metrics),
                Arc::clone(&admission),
                Arc::clone(&gate),
                Links::from_parts(parts),
                Arc::clone(&draining),
                Arc::clone(&stop),
            )?;
            let name = if config.acceptors == 1 {
                "throng-acceptor".to_string()
            } else {
                format!("throng-acceptor-{i}")
            };
            acceptors.push(
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || acceptor.run())?,
            );
        }
        drop((client_listener, conn_parts));

        // The Kafka ingress hands its pushes to the API thread, like HTTP.
        let (ingress, kafka_thread) = match &config.kafka {
            Some(k) => {
                let (link, thread) = crate::kafka::spawn(
                    k,
                    &node_id,
                    &metrics,
                    &stop,
                    Arc::clone(&api_waker),
                    config.shutdown_grace,
                    // Standalone: stop reading at the drain's start (see `kafka::spawn`).
                    config.cluster.is_none(),
                )
                .map_err(std::io::Error::other)?;
                (Some(link), Some(thread))
            }
            None => (None, None),
        };
        let api_keys = Arc::new(crate::api::keys::ApiKeys::new(
            config
                .api_key
                .iter()
                .chain(&config.extra_api_keys)
                .cloned()
                .collect(),
            config.api_key_file.clone(),
        ));
        let api = Api::new(
            api_poll,
            api_listener,
            Links::from_parts(cmd_parts),
            reply_rx,
            publish_rx,
            Arc::clone(&config),
            Arc::clone(&metrics),
            Arc::clone(&draining),
            Arc::clone(&stop),
            broker_links,
            ingress,
            api_tls.clone(),
            Arc::clone(&api_waker),
            Arc::clone(&api_keys),
        )?;
        let jwks_refresher = match &config.jwt.public_keys {
            Some(crate::config::PublicKeys::JwksUrl { refresh, .. }) => {
                Some(crate::auth::spawn_refresher(
                    Arc::clone(&jwt_keys),
                    *refresh,
                    Arc::clone(&metrics),
                    Arc::clone(&stop),
                )?)
            }
            _ => None,
        };
        let api_thread = std::thread::Builder::new()
            .name("throng-api".into())
            .spawn(move || api.run())?;

        Ok(Server {
            client_addr,
            api_addr,
            metrics,
            draining,
            drain_end,
            stop,
            acceptor_wakers,
            api_waker,
            shard_wakers,
            acceptors,
            shards: shard_threads,
            api: Some(api_thread),
            broker: broker_threads,
            events: events_thread,
            kafka: kafka_thread,
            tls,
            api_tls,
            jwt_keys,
            api_keys,
            redis,
            jwks_refresher,
            events_ca,
            events_key,
        })
    }

    /// Reads `redis_ca` and `redis_client_cert`/`redis_client_key` again (`SIGHUP`): Redis
    /// links opened after it use them, open links stay. `None` without either.
    pub fn reload_redis_tls(&self) -> Option<Result<(), String>> {
        let result = self.redis.as_ref()?.reload()?;
        let counter = match &result {
            Ok(()) => &self.metrics.broker.tls_reloads,
            Err(_) => &self.metrics.broker.tls_reload_errors,
        };
        counter.fetch_add(1, Relaxed);
        Some(result)
    }

    /// Reads the TLS certificate and key files again (`SIGHUP`): the next handshakes use
    /// them, open connections keep theirs. On error the certificate in use stays. `None`
    /// without TLS.
    pub fn reload_tls(&self) -> Option<Result<(), crate::tls::TlsError>> {
        let tls = self.tls.as_ref()?;
        let result = tls.reload();
        let counter = match &result {
            Ok(()) => &self.metrics.tls.reloads,
            Err(_) => &self.metrics.tls.reload_errors,
        };
        counter.fetch_add(1, Relaxed);
        Some(result)
    }

    /// Reads the JWT key file (`jwt_public_key`, `jwt_jwks` or `jwt_secret_file`) again
    /// (`SIGHUP`): every verification after it uses the new keys; on error the keys in
    /// use stay. `None` with keys from no file; else how many keys the file holds. With
    /// `jwks_url` the refresher thread fetches instead (`fetch_jwt_keys`).
    pub fn reload_jwt_keys(&self) -> Option<Result<usize, crate::auth::KeyError>> {
        if self.jwt_keys.from_url() {
            return None;
        }
        let result = self.jwt_keys.reload()?;
        let counter = match &result {
            Ok(_) => &self.metrics.jwt_key_reloads,
            Err(_) => &self.metrics.jwt_key_reload_errors,
        };
        counter.fetch_add(1, Relaxed);
        Some(result)
    }

    /// Reads `api_key_file` again (`SIGHUP`): requests after it need one of its keys; on
    /// error the keys in use stay. `None` without the file; else how many keys it holds.
    pub fn reload_api_keys(&self) -> Option<Result<usize, String>> {
        let result = self.api_keys.reload()?;
        let counter = match &result {
            Ok(_) => &self.metrics.api_key_reloads,
            Err(_) => &self.metrics.api_key_reload_errors,
        };
        counter.fetch_add(1, Relaxed);
        Some(result)
    }

    /// With `jwks_url` (`SIGHUP`): asks the refresher thread to fetch the keys at once,
    /// so the signal thread never waits on the identity provider and fetches never race.
    /// False without one.
    pub fn fetch_jwt_keys(&self) -> bool {
        let from_url = self.jwt_keys.from_url();
        if from_url {
            self.jwt_keys.fetch_soon();
        }
        from_url
    }

    /// Reads the push API's certificate and key again (`SIGHUP`); `None` without HTTPS on
    /// the API.
    pub fn reload_api_tls(&self) -> Option<Result<(), crate::tls::TlsError>> {
        let tls = self.api_tls.as_ref()?;
        let result = tls.reload();
        let counter = match &result {
            Ok(()) => &self.metrics.api_tls.reloads,
            Err(_) => &self.metrics.api_tls.reload_errors,
        };
        counter.fetch_add(1, Relaxed);
        Some(result)
    }

    /// Reads the `events_ca` file again (`SIGHUP`): the events thread's next POST verifies
    /// the upstream against it; on error the roots in use stay. `None` without one; else
    /// how many certificates it holds.
    pub fn reload_events_ca(&self) -> Option<Result<usize, String>> {
        let reload = self.events_ca.as_ref()?;
        let result = reload.reload();
        let counter = match &result {
            Ok(_) => &self.metrics.events.ca_reloads,
            Err(_) => &self.metrics.events.ca_reload_errors,
        };
        counter.fetch_add(1, Relaxed);
        Some(result)
    }

    /// Reads `events_key_file` again (`SIGHUP`): the events thread's next POST sends its
    /// key; on error the key in use stays. `None` without one.
    pub fn reload_events_key(&self) -> Option<Result<(), String>> {
        let reload = self.events_key.as_ref()?;
        let result = reload.reload();
        let counter = match &result {
            Ok(()) => &self.metrics.events.key_reloads,
            Err(_) => &self.metrics.events.key_reload_errors,
        };
        counter.fetch_add(1, Relaxed);
        Some(result)
    }

    /// The DER of the certificate the TLS listener serves now, with TLS.
    pub fn tls_leaf(&self) -> Option<Vec<u8>> {
        self.tls.as_ref()?.certs().leaf()
    }

    /// The WebSocket listener's bound address.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The push API's bound address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether a drain has begun (by [`Server::shutdown`] or `POST /v1/drain`).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Begins a graceful drain (what SIGTERM and `POST /v1/drain` do): `readyz` 503, new
    /// upgrades 503 `draining`, every connection gets a `reconnect` hint spread over
    /// `drain_ms` and close 1001 at its time. Returns at once; `wait` returns when done.
    pub fn shutdown(&self) {
        self.draining.store(true, Relaxed);
        self.metrics.draining.store(true, Relaxed);
        for w in &self.acceptor_wakers {
            let _ = w.wake();
        }
        for w in &self.shard_wakers {
            let _ = w.wake();
        }
        let _ = self.api_waker.wake();
    }

    /// Waits for the drain to finish and every thread to end.
    pub fn wait(mut self) {
        self.join_all();
    }

    /// Like [`Server::wait`], and says which threads panicked (a broken invariant in a
    /// debug build), so tests cannot pass over a dead shard.
    pub fn wait_checked(mut self) -> Result<(), String> {
        let panicked = self.join_all();
        if panicked.is_empty() {
            Ok(())
        } else {
            Err(format!("server threads panicked: {}", panicked.join(", ")))
        }
    }

    /// Joins every thread; returns the names of those that panicked.
    fn join_all(&mut self) -> Vec<String> {
        let mut panicked = Vec::new();
        let mut join = |name: String, t: JoinHandle<()>| {
            if t.join().is_err() {
                panicked.push(name);
            }
        };
        // The acceptor (answering upgrades 503 draining) and the API serve until every
        // shard is drained (a shard that died never says so), then stop; the shards end
        // after them, so every push the API sends finds every shard.
        let shards = &self.shards;
        let gone = |i: usize| shards.get(i).is_none_or(|t| t.is_finished());
        while !self
            .drain_end
            .wait_drained(shards.len(), gone, Duration::from_millis(100))
        {}
        self.stop.store(true, Relaxed);
        let stopped = std::time::Instant::now();
        for w in &self.acceptor_wakers {
            let _ = w.wake();
        }
        let _ = self.api_waker.wake();
        for (i, t) in self.acceptors.drain(..).enumerate() {
            join(format!("acceptor {i}"), t);
        }
        // The Kafka ingress stores the offsets of what the API took, from the API's
        // answers, which it waits for until the API (stopping on the same flag) is gone;
        // it is joined first so that its wait and the API's last turn overlap.
        if let Some(t) = self.kafka.take() {
            join("kafka".into(), t);
        }
        if let Some(t) = self.api.take() {
            join("push API".into(), t);
        }
        self.drain_end.release();
        for w in &self.shard_wakers {
            let _ = w.wake();
        }
        for (i, t) in self.shards.drain(..).enumerate() {
            join(format!("shard {i}"), t);
        }
        for t in self.broker.drain(..) {
            let name = t.thread().name().unwrap_or("broker").to_string();
            join(name, t);
        }
        if let Some(t) = self.events.take() {
            if let Some(t) = t.ended_within_flush(stopped, &self.metrics) {
                join("events".into(), t);
            }
        }
        if let Some(t) = self.jwks_refresher.take() {
            self.jwt_keys.wake_refresher();
            join("jwks".into(), t);
        }
        panicked
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.api.is_some() {
            self.shutdown();
            self.join_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_nodelay_and_notsent_lowat_and_wait_for_their_first_bytes() {
        let listener = listen("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        defer_accept(&listener, 1).unwrap();
        notsent_lowat(&listener, 65_536).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        // Deferred: nothing to accept while the client is silent.
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        io::Write::write_all(&mut client, b"GET").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let accepted = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "never accepted");
                    std::thread::yield_now();
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        assert!(socket2::SockRef::from(&accepted).tcp_nodelay().unwrap());
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let mut value: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: a live socket, and a `c_int` with its size as the length.
            let rc = unsafe {
                libc::getsockopt(
                    accepted.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_NOTSENT_LOWAT,
                    (&mut value as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!((rc, value), (0, 65_536));
        }
    }
}

/// The node id when none is given: the client listener's bound address, or
/// `<hostname>:<port>` when it is unspecified (`0.0.0.0`, `::`), which every host has alike.
pub(crate) fn default_node_id(addr: std::net::SocketAddr) -> String {
    if !addr.ip().is_unspecified() {
        return addr.to_string();
    }
    match hostname() {
        Some(host) => format!("{host}:{}", addr.port()),
        None => addr.to_string(),
    }
}

/// This host's name (`gethostname`), if it has one.
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its whole length, which is what is passed.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.trim();
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod node_id_tests {
    use super::default_node_id;

    #[test]
    fn an_unspecified_listener_gives_the_hostname_and_port() {
        let bound = "127.0.0.1:8700".parse().unwrap();
        assert_eq!(default_node_id(bound), "127.0.0.1:8700");
        for any in ["0.0.0.0:8700", "[::]:8700"] {
            let id = default_node_id(any.parse().unwrap());
            assert!(id.ends_with(":8700"), "{id}");
            assert!(
                !id.starts_with("0.0.0.0") && !id.starts_with("[::]"),
                "{id}"
            );
        }
    }
}
