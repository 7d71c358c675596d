//! A client connection's state on its shard, and the shard's outbound path: per-connection
//! queues that exist only while a socket would block, flushed with one vectored write.

use std::collections::HashMap;

use rustc_hash::FxBuildHasher;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::{IpAddr, Ipv6Addr, Shutdown};

use crate::slots::Slots;
use crate::wire::Wire;
use mio::net::TcpStream;

use crate::wheel::{Place, Timed};

use super::compact::compact;
use super::ticks::{moved, moved_deadline};

/// A server ping is outstanding (no inbound traffic since it was sent).
pub(super) const PING_SENT: u8 = 1;
/// Draining: the connection's timer is its turn to be closed with 1001.
pub(super) const DRAIN_DUE: u8 = 2;
/// Cluster mode: waiting for a stream from Redis (no `welcome` or `subscribed` yet); the
/// socket is not read until then.
pub(super) const PARKED: u8 = 4;
/// Cluster mode: a `subscribe` waits for its topic's stream; the socket is not read until
/// then (pushes of other topics still go out).
pub(super) const WAITING_TOPIC: u8 = 32;
/// In the shard's dirty list, waiting for a flush.
pub(super) const DIRTY: u8 = 8;
/// `token_expiring` was sent for the current token (cleared by a refresh).
pub(super) const EXPIRING_SENT: u8 = 16;
/// The client's address is IPv6, kept in `Conns::v6_peers`.
const IPV6: u8 = 64;
/// The connection speaks TLS: its session is in `Conns::tls`.
pub(super) const TLS: u8 = 128;
/// Plaintext sealed per write on a TLS connection: records for many frames in one
/// write, without holding much more than a socket buffer's worth.
const SEAL_BATCH: usize = 64 * 1024;

/// Where a connection is in its close lifecycle; only ever moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
#[repr(u8)]
pub(super) enum Phase {
    /// Indexed under its user and topics; serving.
    #[default]
    Open,
    /// Out of the indexes; a close frame is queued (or the socket is being dropped).
    Closing,
    /// The close frame is out and the write half shut; waiting for the client's FIN.
    WriteShut,
}

/// Bytes kept between reads: an incomplete frame, and a fragmented message being assembled.
#[derive(Default)]
pub(super) struct Partial {
    /// Start of a frame whose remainder has not arrived.
    pub leftover: Vec<u8>,
    /// Unmasked payload of a fragmented text message so far.
    pub message: Option<Vec<u8>>,
    /// TLS: the start of a record whose remainder has not arrived.
    pub sealed: Vec<u8>,
    /// The message being assembled is compressed (its first frame had RSV1).
    pub compressed: bool,
    /// What the shard's `partial_bytes` total counts for this connection, so a settle
    /// adds only the difference.
    counted: usize,
}

impl Partial {
    /// Bytes held: the buffers of the incomplete frame and of the message assembled so
    /// far, by capacity (they grow by doubling: counting their lengths left up to half of
    /// what they hold outside the budget).
    fn held(&self) -> usize {
        self.leftover.capacity()
            + self.message.as_ref().map_or(0, Vec::capacity)
            + self.sealed.capacity()
    }
}

/// A leftover buffer whose spare capacity is past this (and past its length) is shrunk
/// when kept, so a burst that grew it is not held for as long as the frame is incomplete.
const LEFTOVER_SLACK: usize = 16 * 1024;

/// Gives back the spare capacity of a kept leftover that grew far past its contents.
pub(super) fn trim_leftover(buf: &mut Vec<u8>) {
    if buf.capacity() - buf.len() > LEFTOVER_SLACK.max(buf.len()) {
        buf.shrink_to_fit();
    }
}

/// Frames waiting for the socket to accept them.
#[derive(Default)]
pub struct OutQueue {
    frames: VecDeque<Wire>,
    /// Bytes of the front frame already written.
    offset: usize,
    /// Bytes queued and not yet written.
    bytes: usize,
    /// TLS: frames at the front that are sealed records already (written as they are).
    sealed: usize,
    /// How many frames are queued behind the last Pong while it has not started out
    /// (`replace_pong`).
    pong_behind: Option<usize>,
}

/// A Pong frame's first byte (FIN, opcode 0xA): no other frame Throng queues starts so.
const PONG_FIRST_BYTE: u8 = 0x8A;

impl OutQueue {
    /// Appends a frame (shared, not copied).
    pub fn push(&mut self, frame: Wire) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
        if let Some(behind) = &mut self.pong_behind {
            *behind += 1;
        }
    }

    /// Notes that the frame just pushed is a Pong.
    fn pushed_pong(&mut self) {
        if self.frames.back().and_then(|f| f.first()) == Some(&PONG_FIRST_BYTE) {
            self.pong_behind = Some(0);
        }
    }

    /// Puts `pong` in place of the queued Pong that has not started out, if there is one
    /// (RFC 6455 5.5.3: only the most recent Ping needs its Pong): the bytes that one
    /// took, or `pong` back when there is none to replace.
    fn replace_pong(&mut self, pong: Wire) -> Result<usize, Wire> {
        let Some(behind) = self.pong_behind else {
            return Err(pong);
        };
        let Some(at) = self.frames.len().checked_sub(behind + 1) else {
            self.pong_behind = None;
            return Err(pong);
        };
        let started = at < self.sealed || (at == 0 && self.offset > 0);
        let Some(slot) = self.frames.get_mut(at).filter(|_| !started) else {
            return Err(pong);
        };
        // Never in place of anything but a Pong, whatever the count says.
        if slot.first() != Some(&PONG_FIRST_BYTE) {
            self.pong_behind = None;
            return Err(pong);
        }
        let old = slot.len();
        self.bytes = self.bytes - old + pong.len();
        *slot = pong;
        Ok(old)
    }

    /// After frames left the front: the Pong noted is gone when it was among them.
    fn front_left(&mut self) {
        if self
            .pong_behind
            .is_some_and(|behind| self.frames.len() <= behind)
        {
            self.pong_behind = None;
        }
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        self.bytes
    }

    /// Drops every frame not yet started, so a close frame can follow a partial one.
    fn discard_unstarted(&mut self) {
        // Sealed records carry sequence numbers the client expects: they all go out.
        let keep = usize::from(self.offset > 0).max(self.sealed);
        while self.frames.len() > keep {
            if let Some(f) = self.frames.pop_back() {
                self.bytes -= f.len();
                self.pong_behind = match self.pong_behind {
                    Some(0) | None => None,
                    Some(behind) => Some(behind - 1),
                };
            }
        }
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.offset = 0;
        self.bytes = 0;
        self.sealed = 0;
        self.pong_behind = None;
    }

    /// Puts records sealed elsewhere (the handshake's last flight) behind the sealed ones.
    fn push_sealed(&mut self, records: Wire) {
        self.bytes += records.len();
        self.frames.insert(self.sealed, records);
        self.sealed += 1;
    }

    /// TLS: seals frames into records in `buf` and writes them, as much as the socket
    /// takes; what it does not take stays queued as sealed. With `close`, close_notify
    /// follows the last frame. Ok(true) when the queue is empty.
    fn write_sealed(
        &mut self,
        stream: &mut TcpStream,
        session: &mut crate::tls::Session,
        buf: &mut Vec<u8>,
        close: bool,
    ) -> io::Result<bool> {
        loop {
            while self.sealed > 0 {
                let front = &self.frames[0][self.offset..];
                let written = match stream.write(front) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(w) => w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                self.bytes -= written;
                if written < front.len() {
                    self.offset += written;
                    return Ok(false);
                }
                self.frames.pop_front();
                self.offset = 0;
                self.sealed -= 1;
                self.front_left();
            }
            let close_now = close && !session.closed();
            if self.frames.is_empty() && !close_now {
                return Ok(true);
            }
            buf.clear();
            let mut sealer = session.sealer(buf).map_err(io::Error::other)?;
            let (mut taken, mut plain) = (0, 0);
            for f in &self.frames {
                if plain >= SEAL_BATCH {
                    break;
                }
                sealer.push(f);
                taken += 1;
                plain += f.len();
            }
            if close_now && taken == self.frames.len() {
                sealer.close_notify().map_err(io::Error::other)?;
            }
            sealer.finish().map_err(io::Error::other)?;
            self.frames.drain(..taken);
            self.front_left();
            self.bytes -= plain;
            let mut written = 0;
            while written < buf.len() {
                match stream.write(&buf[written..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(w) => written += w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if written < buf.len() {
                self.push_sealed(Wire::from(buf[written..].to_vec()));
                return Ok(false);
            }
        }
    }

    /// Whether an emptied queue is small enough to keep for reuse: a deque that grew for a
    /// long backlog of small frames would pin its slots in the pool forever.
    fn poolable(&self) -> bool {
        self.frames.capacity() <= POOL_QUEUE_SLOTS
    }

    /// Heap bytes this queue holds: its box and its deque's slots.
    fn footprint(&self) -> usize {
        std::mem::size_of::<OutQueue>() + self.frames.capacity() * std::mem::size_of::<Wire>()
    }

    /// Writes as much as the socket takes; Ok(true) when the queue is empty.
    fn write_to(&mut self, stream: &mut TcpStream) -> io::Result<bool> {
        while !self.frames.is_empty() {
            let mut slices = [IoSlice::new(&[]); 64];
            let mut n = 0;
            let mut asked = 0;
            for (i, f) in self.frames.iter().take(slices.len()).enumerate() {
                slices[i] = IoSlice::new(if i == 0 { &f[self.offset..] } else { &f[..] });
                asked += slices[i].len();
                n += 1;
            }
            // One frame (a ping, a unicast push): send(2), which skips the import of a
            // vector. Several: sendmsg(2), not writev(2), which would pass through the VFS
            // layer (position lock, fsnotify) on every flush.
            let result = if n == 1 {
                stream.write(&slices[0])
            } else {
                socket2::SockRef::from(&*stream).send_vectored(&slices[..n])
            };
            let written = match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.bytes -= written;
            let mut left = written;
            while left > 0 {
                let front_rest = self.frames[0].len() - self.offset;
                if left >= front_rest {
                    left -= front_rest;
                    self.frames.pop_front();
                    self.offset = 0;
                } else {
                    self.offset += left;
                    left = 0;
                }
            }
            self.front_left();
            if written < asked {
                // The send buffer is full: another write would only say WouldBlock, and
                // the (edge-triggered) writable event comes once it has room.
                return Ok(self.frames.is_empty());
            }
        }
        Ok(true)
    }
}

/// One client connection.
pub(super) struct Conn {
    /// The socket.
    pub stream: TcpStream,
    /// Key of the user entry in the shard's user index.
    pub user: u32,
    /// Tick of the last inbound bytes.
    pub last_rx: u32,
    /// Tick at which the token expires (`u32::MAX`: never).
    pub expires: u32,
    /// Tick the connection's one timer is armed for (valid while `place` is linked).
    /// Only the wheel sets it (`Timed::set_deadline`): it finds the timer's slot from it.
    pub deadline: u32,
    /// The timer's place in the shard's wheel (`Core`): kept here, not in an entry of its
    /// own, so an idle connection's heartbeat costs 13 bytes of its slot (with `deadline`)
    /// and nothing else.
    pub place: Place,
    /// `PING_SENT`, `DRAIN_DUE`, `DIRTY`, `EXPIRING_SENT`.
    pub flags: u8,
    /// The close lifecycle.
    pub phase: Phase,
    /// Client IPv4 address, released from admission control at the end; with `IPV6` in
    /// `flags` the address is in `Conns::v6_peers` instead (17 bytes for an `IpAddr` here).
    pub ip4: u32,
    /// Only while the socket would block.
    pub out: Option<Box<OutQueue>>,
    /// The shard's session counter at adoption (the session id's last part) and the tick
    /// it connected: what presence shows of every session.
    pub stamp: SessionStamp,
    /// Its token's topic grants (`Grants`; 0: none), in what was padding.
    pub grant: super::grants::GrantId,
    /// Two 4-bit counts in one byte, so the slot stays at 56 bytes: the low nibble is the
    /// permessage-deflate window (in bits, 8-15) the client allows the server's messages,
    /// 0 when it did not negotiate compression; the high nibble the client messages
    /// refused in a row (saturating at 15). See `deflate_bits` and `refused`.
    nibbles: u8,
}

impl Conn {
    /// A connection just adopted at `tick`: open, silent since then, no timer, nothing
    /// queued (its address is set by `Conns::insert`).
    pub(super) fn open(
        stream: TcpStream,
        user: u32,
        tick: u32,
        expires: u32,
        stamp: SessionStamp,
        grant: super::grants::GrantId,
    ) -> Conn {
        Conn {
            stream,
            user,
            last_rx: tick,
            expires,
            deadline: 0,
            place: Place::UNLINKED,
            flags: 0,
            phase: Phase::Open,
            ip4: 0,
            out: None,
            stamp,
            grant,
            nibbles: 0,
        }
    }

    /// Whether the close handshake has begun.
    pub(super) fn closing(&self) -> bool {
        self.phase != Phase::Open
    }

    /// The permessage-deflate window (in bits) the client allows; 0 without compression.
    pub(super) fn deflate_bits(&self) -> u8 {
        self.nibbles & 0x0f
    }

    /// Records the negotiated window (8-15 bits).
    pub(super) fn set_deflate_bits(&mut self, bits: u8) {
        self.nibbles = (self.nibbles & 0xf0) | bits.min(15);
    }

    /// Client messages refused in a row (saturates at 15).
    pub(super) fn refused(&self) -> u8 {
        self.nibbles >> 4
    }

    /// Counts one more refused message; returns how many in a row now.
    pub(super) fn note_refused(&mut self) -> u8 {
        let n = (self.refused() + 1).min(15);
        self.nibbles = (self.nibbles & 0x0f) | (n << 4);
        n
    }

    /// A client message was accepted: the refusals in a row start over.
    pub(super) fn clear_refused(&mut self) {
        self.nibbles &= 0x0f;
    }
}

/// What presence needs of every session.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SessionStamp {
    /// The shard's session counter at adoption: the session id's last part.
    pub session: u32,
    /// Tick at which the session connected.
    pub connected: u32,
}

/// What happened when a frame was offered to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    /// Queued (or dropped because the connection is closing anyway).
    Ok,
    /// The queue would exceed `max_outbound_bytes` even after a flush: close with 4008.
    Overflow,
    /// The socket failed: drop the connection.
    Broken,
}

/// The shard's connections and everything about getting bytes to them.
pub(super) struct Conns {
    /// Connections by key; the key is also the mio token.
    slab: Slots<Conn>,
    dirty: Vec<u32>,
    /// Emptied queues kept for reuse, and the churn count.
    spares: Spares,
    max_outbound: usize,
    /// Connections in `Phase::Open`.
    open: usize,
    /// Exact sum of every queue's unwritten bytes (plain arithmetic on each change).
    queued: usize,
    /// The part of `queued` on connections that are closing: the memory budget cannot
    /// free it by closing them again, so it does not count there.
    closing_queued: usize,
    /// Exact sum of every connection's partial inbound bytes (settled after each read).
    partial: usize,
    /// Incomplete inbound frames and messages by key: rare, so kept beside the slots
    /// rather than as a word in every one.
    partials: HashMap<u32, Partial, FxBuildHasher>,
    /// Topic keys each subscribed connection holds, by connection key: most connections
    /// subscribe to nothing, and those that do paid as much for a boxed list of their own.
    subscriptions: HashMap<u32, Vec<u32>, FxBuildHasher>,
    /// Addresses of IPv6 clients by key (IPv4 ones live in their slots).
    v6_peers: HashMap<u32, Ipv6Addr>,
    /// `token_expiring` leads, in ticks before the expiry, of connections whose refreshed
    /// token had less than twice `refresh_ahead` left: half of what it had. Rare, so
    /// beside the slots; a span, so a tick rebase leaves it alone.
    short_token_leads: HashMap<u32, u32, FxBuildHasher>,
    /// What `Timed::place` lends for a key without a connection (never linked).
    stray: Place,
    /// TLS sessions by key (connections flagged `TLS`): keys and sequence numbers.
    tls: HashMap<u32, Box<crate::tls::Session>, FxBuildHasher>,
    /// Where TLS records are sealed before a write.
    seal_buf: Vec<u8>,
    /// The absolute tick of the shard's clock that its u32 ticks count from (`ticks.rs`):
    /// the wheel sees `tick_base + deadline`.
    tick_base: u64,
}

/// Heap bytes of spare queues kept for reuse per shard, so the first frames of a burst do
/// not allocate per connection; bounded by bytes (a queue's slots vary), and emptied by
/// `shed` once a burst has drained.
const POOL_BYTES: usize = 64 * 1024;

/// Emptied outbound queues kept for reuse, bounded by bytes, and the heap bytes of queues
/// allocated or grown since the last `shed` (what a burst left to the allocator).
#[derive(Default)]
struct Spares {
    // Boxed on purpose: queues move between connections and the pool without reallocating.
    #[allow(clippy::vec_box)]
    pool: Vec<Box<OutQueue>>,
    /// Heap bytes of the queues in `pool` (bounded by `POOL_BYTES`).
    pool_bytes: usize,
    churn: usize,
}

impl Spares {
    /// A queue for a connection that has none: from the pool, or new (counted as churn).
    // Boxed on purpose, as in `pool`.
    fn take(&mut self) -> Box<OutQueue> {
        match self.pool.pop() {
            Some(q) => {
                self.pool_bytes -= q.footprint();
                q
            }
            None => {
                let q = Box::<OutQueue>::default();
                self.churn += q.footprint();
                q
            }
        }
    }

    /// Keeps an emptied queue for reuse, or frees it when the pool is full or the queue
    /// grew large.
    fn give(&mut self, mut q: Box<OutQueue>) {
        q.pong_behind = None;
        let cost = q.footprint();
        if q.poolable() && self.pool_bytes + cost <= POOL_BYTES {
            self.pool_bytes += cost;
            self.pool.push(q);
        }
    }
}

/// `conn`'s outbound queue, taken from `spares` if it has none.
fn queue_of<'a>(conn: &'a mut Conn, spares: &mut Spares) -> &'a mut OutQueue {
    conn.out.get_or_insert_with(|| spares.take())
}

/// Puts `key` on the list of connections to flush at the end of the turn, once.
fn mark_dirty(conn: &mut Conn, key: u32, dirty: &mut Vec<u32>) {
    if conn.flags & DIRTY == 0 {
        conn.flags |= DIRTY;
        dirty.push(key);
    }
}
/// Deque slots a pooled queue may keep (a slot is one `Wire`, 8 bytes).
const POOL_QUEUE_SLOTS: usize = 64;

impl Conns {
    /// No connections, with slots reserved for `expected`; each may queue at most
    /// `max_outbound` bytes.
    pub(super) fn new(max_outbound: usize, expected: usize) -> Conns {
        Conns {
            slab: Slots::with_capacity(expected),
            dirty: Vec::new(),
            spares: Spares::default(),
            max_outbound,
            open: 0,
            queued: 0,
            closing_queued: 0,
            partial: 0,
            partials: HashMap::default(),
            subscriptions: HashMap::default(),
            v6_peers: HashMap::new(),
            short_token_leads: HashMap::default(),
            stray: Place::UNLINKED,
            tls: HashMap::default(),
            seal_buf: Vec::new(),
            tick_base: 0,
        }
    }

    /// The absolute tick the shard's u32 ticks count from.
    pub(super) fn tick_base(&self) -> u64 {
        self.tick_base
    }

    /// The base moved forward by `by` ticks (`Shard::rebase_ticks`): every connection's
    /// ticks move back by as much, so each armed deadline stays where the wheel put it.
    pub(super) fn rebase(&mut self, by: u32) {
        self.tick_base += u64::from(by);
        for (_, c) in self.slab.iter_mut() {
            debug_assert!(
                !c.place.is_linked() || c.deadline > by,
                "an armed deadline behind the rebase"
            );
            c.last_rx = moved(c.last_rx, by);
            c.expires = moved_deadline(c.expires, by);
            c.deadline = moved(c.deadline, by);
            c.stamp.connected = moved(c.stamp.connected, by);
        }
    }

    /// How long before `key`'s expiry its `token_expiring` goes out: `normal`
    /// (`refresh_ahead`), unless its refreshed token was short (`set_hint_lead`).
    pub(super) fn hint_lead(&self, key: u32, normal: u32) -> u32 {
        if self.short_token_leads.is_empty() {
            // The usual case, on every timer re-arm: no hashing.
            return normal;
        }
        self.short_token_leads.get(&key).copied().unwrap_or(normal)
    }

    /// Sets `key`'s own `token_expiring` lead, or (`None`) goes back to the normal one.
    pub(super) fn set_hint_lead(&mut self, key: u32, lead: Option<u32>) {
        match lead {
            Some(lead) if self.slab.get(key).is_some() => {
                self.short_token_leads.insert(key, lead);
            }
            _ => {
                self.short_token_leads.remove(&key);
            }
        }
    }

    /// The connection with this key.
    pub(super) fn get(&self, key: u32) -> Option<&Conn> {
        self.slab.get(key)
    }

    /// The connection with this key, to change.
    pub(super) fn get_mut(&mut self, key: u32) -> Option<&mut Conn> {
        self.slab.get_mut(key)
    }

    /// Keys of the connections that are open (not closing).
    pub(super) fn open_keys(&self) -> impl Iterator<Item = u32> + '_ {
        self.slab
            .iter()
            .filter(|(_, c)| !c.closing())
            .map(|(k, _)| k)
    }

    /// Keys of every connection, closing ones included.
    pub(super) fn all_keys(&self) -> Vec<u32> {
        self.slab.iter().map(|(k, _)| k).collect()
    }

    /// Whether the shard holds no connection at all.
    pub(super) fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// The key the next `insert` will use (to register the socket under it first).
    pub(super) fn vacant_key(&self) -> u32 {
        self.slab.vacant_key()
    }

    /// Adds a connection from `ip` under `vacant_key()`.
    pub(super) fn insert(&mut self, mut conn: Conn, ip: IpAddr) -> u32 {
        if conn.phase == Phase::Open {
            self.open += 1;
        }
        match ip {
            IpAddr::V4(v4) => {
                conn.ip4 = u32::from(v4);
                conn.flags &= !IPV6;
            }
            IpAddr::V6(v6) => {
                conn.ip4 = 0;
                conn.flags |= IPV6;
                self.v6_peers.insert(self.slab.vacant_key(), v6);
            }
        }
        self.slab.insert(conn)
    }

    /// Makes `key` a TLS connection: its records are sealed and opened with `session`,
    /// `records` (sealed by the acceptor) go out first and `sealed_in` starts the next
    /// record received.
    pub(super) fn adopt_tls(&mut self, key: u32, f: crate::tls::Finished) {
        let crate::tls::Finished {
            session,
            out,
            sealed_in,
        } = f;
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        conn.flags |= TLS;
        self.tls.insert(key, Box::new(session));
        if !out.is_empty() {
            self.queued += out.len();
            queue_of(conn, &mut self.spares).push_sealed(Wire::from(out));
            mark_dirty(conn, key, &mut self.dirty);
        }
        if !sealed_in.is_empty() {
            if let Some(p) = self.partial_entry(key) {
                p.sealed = sealed_in;
            }
            self.settle_partial(key);
        }
    }

    /// `key`'s TLS session, when it speaks TLS.
    pub(super) fn tls_session(&mut self, key: u32) -> Option<&mut crate::tls::Session> {
        if self.tls.is_empty() {
            return None;
        }
        self.tls.get_mut(&key).map(|b| &mut **b)
    }

    /// Takes the start of an incomplete TLS record `key` holds, if any.
    pub(super) fn take_sealed(&mut self, key: u32) -> Option<Vec<u8>> {
        self.partial_mut(key)
            .filter(|p| !p.sealed.is_empty())
            .map(|p| std::mem::take(&mut p.sealed))
    }

    /// Keeps the start of an incomplete TLS record for the next read.
    pub(super) fn keep_sealed(&mut self, key: u32, rest: Vec<u8>) {
        if let Some(p) = self.partial_entry(key) {
            p.sealed = rest;
        }
        self.settle_partial(key);
    }

    /// Connections in `Phase::Open` (what the shard's `connections` gauge must say).
    pub(super) fn open_count(&self) -> usize {
        self.open
    }

    /// Connections in any phase (each holds at most one timer).
    pub(super) fn count(&self) -> usize {
        self.slab.len()
    }

    /// Moves `key` from `Open` to `Closing`; false if it was not open (or is gone).
    pub(super) fn begin_closing(&mut self, key: u32) -> bool {
        match self.slab.get_mut(key) {
            Some(c) if c.phase == Phase::Open => {
                c.phase = Phase::Closing;
                self.open -= 1;
                self.closing_queued += c.out.as_ref().map_or(0, |q| q.bytes);
                true
            }
            _ => false,
        }
    }

    /// Open connections holding bytes, as `(bytes held, key)`: the candidates when the
    /// memory budget is exceeded.
    pub(super) fn holders(&self) -> Vec<(usize, u32)> {
        self.slab
            .iter()
            .filter(|(k, c)| !c.closing() && (c.out.is_some() || self.partials.contains_key(k)))
            .map(|(k, _)| (self.footprint(k), k))
            .filter(|&(bytes, _)| bytes > 0)
            .collect()
    }

    /// Bytes queued on every connection and not yet written.
    pub(super) fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// The part of `queued_bytes` on connections that are closing.
    pub(super) fn closing_bytes(&self) -> usize {
        self.closing_queued
    }

    /// Debug builds, small shards: the running totals equal the sums they stand for.
    #[cfg(debug_assertions)]
    pub(super) fn check_totals(&self) {
        if self.slab.len() > 1024 {
            return;
        }
        let bytes = |c: &Conn| c.out.as_ref().map_or(0, |q| q.bytes);
        let queued: usize = self.slab.iter().map(|(_, c)| bytes(c)).sum();
        let closing: usize = self
            .slab
            .iter()
            .filter(|(_, c)| c.phase != Phase::Open)
            .map(|(_, c)| bytes(c))
            .sum();
        assert_eq!((self.queued, self.closing_queued), (queued, closing));
    }

    /// Bytes of incomplete inbound frames and messages held on every connection.
    pub(super) fn partial_bytes(&self) -> usize {
        self.partial
    }

    /// Room in the subscriptions map, for tests of `compact`.
    #[cfg(test)]
    pub(super) fn subscription_capacity(&self) -> usize {
        self.subscriptions.capacity()
    }

    /// Shrinks the maps beside the slots once departed connections left them mostly
    /// empty, and gives back the pages of a vacant end of the slots; returns the heap
    /// bytes freed to the allocator, roughly (the pages are the OS's already).
    pub(super) fn compact(&mut self) -> usize {
        self.slab.release_tail();
        compact(&mut self.partials)
            + compact(&mut self.subscriptions)
            + compact(&mut self.v6_peers)
            + compact(&mut self.short_token_leads)
            + compact(&mut self.tls)
    }

    /// What `key` holds: queued outbound plus partial inbound bytes.
    pub(super) fn footprint(&self, key: u32) -> usize {
        self.slab
            .get(key)
            .map_or(0, |c| c.out.as_ref().map_or(0, |q| q.bytes))
            + self.partial(key).map_or(0, |p| p.counted)
    }

    /// Brings the shard's partial total up to date with `key`'s partial state after a
    /// read changed it; drops a partial that holds nothing.
    pub(super) fn settle_partial(&mut self, key: u32) {
        let Some(p) = self.partials.get_mut(&key) else {
            return;
        };
        let held = p.held();
        self.partial = self.partial - p.counted + held;
        p.counted = held;
        if held == 0 && p.message.is_none() {
            self.partials.remove(&key);
        }
    }

    /// Drops `key`'s partial state, uncounting it.
    fn drop_partial(&mut self, key: u32) {
        if let Some(p) = self.partials.remove(&key) {
            self.partial -= p.counted;
        }
    }

    /// `key`'s incomplete inbound frame or message, if any.
    pub(super) fn partial(&self, key: u32) -> Option<&Partial> {
        if self.partials.is_empty() {
            // The common case, without hashing.
            return None;
        }
        self.partials.get(&key)
    }

    /// `key`'s incomplete inbound frame or message, if any, for change.
    pub(super) fn partial_mut(&mut self, key: u32) -> Option<&mut Partial> {
        if self.partials.is_empty() {
            return None;
        }
        self.partials.get_mut(&key)
    }

    /// `key`'s partial state, created empty if it has none (`settle_partial` drops it
    /// again once it holds nothing); `None` for a connection that is gone or closing.
    pub(super) fn partial_entry(&mut self, key: u32) -> Option<&mut Partial> {
        if self.slab.get(key).is_none_or(|c| c.closing()) {
            return None;
        }
        Some(self.partials.entry(key).or_default())
    }

    /// Topic keys `key` is subscribed to.
    pub(super) fn topics_of(&self, key: u32) -> &[u32] {
        if self.subscriptions.is_empty() {
            return &[];
        }
        self.subscriptions.get(&key).map_or(&[], Vec::as_slice)
    }

    /// Records that `key` subscribed to topic `t` (a connection that is gone is ignored).
    pub(super) fn add_topic(&mut self, key: u32, t: u32) {
        if self.slab.get(key).is_some() {
            self.subscriptions.entry(key).or_default().push(t);
        }
    }

    /// Forgets `key`'s subscription to `t`; whether it had one.
    pub(super) fn remove_topic(&mut self, key: u32, t: u32) -> bool {
        let Some(list) = self.subscriptions.get_mut(&key) else {
            return false;
        };
        let Some(pos) = list.iter().position(|&x| x == t) else {
            return false;
        };
        list.swap_remove(pos);
        if list.is_empty() {
            self.subscriptions.remove(&key);
        }
        true
    }

    /// Takes all of `key`'s topic keys out, leaving none.
    pub(super) fn take_topics(&mut self, key: u32) -> Vec<u32> {
        self.subscriptions.remove(&key).unwrap_or_default()
    }

    /// Replaces `key`'s topic keys with `list` (a connection that is gone is ignored).
    pub(super) fn set_topics(&mut self, key: u32, list: Vec<u32>) {
        if list.is_empty() || self.slab.get(key).is_none() {
            self.subscriptions.remove(&key);
        } else {
            self.subscriptions.insert(key, list);
        }
    }

    /// Takes the start of an incomplete frame `key` holds, if any.
    pub(super) fn take_leftover(&mut self, key: u32) -> Option<Vec<u8>> {
        self.partial_mut(key)
            .filter(|p| !p.leftover.is_empty())
            .map(|p| std::mem::take(&mut p.leftover))
    }

    /// Returns an emptied queue to the spares (which may free it).
    fn recycle(&mut self, mut q: Box<OutQueue>) {
        self.queued -= q.bytes;
        q.clear();
        self.spares.give(q);
    }

    /// Heap bytes of queues allocated or grown since the last `shed`.
    pub(super) fn churn(&self) -> usize {
        self.spares.churn
    }

    /// After a burst has drained: frees the spare queues (the allocator can then hand
    /// their pages back) and restarts the churn count.
    pub(super) fn shed(&mut self) {
        self.spares = Spares::default();
        self.seal_buf = Vec::new();
        if self.dirty.is_empty() {
            // Sized for the burst's largest turn.
            self.dirty = Vec::new();
        }
    }

    /// Queues `frame` for `key`; the write happens at the next `flush_dirty`.
    pub(super) fn send(&mut self, key: u32, frame: Wire) -> Sent {
        let Some(conn) = self.slab.get_mut(key) else {
            return Sent::Ok;
        };
        if conn.closing() {
            return Sent::Ok;
        }
        let queued = conn.out.as_ref().map_or(0, |q| q.bytes);
        if queued + frame.len() > self.max_outbound && queued > 0 {
            // Maybe the socket can take what is waiting; only then is the client slow.
            match self.flush(key) {
                Ok(_) => {}
                Err(_) => return Sent::Broken,
            }
        }
        let max = self.max_outbound;
        let Some(conn) = self.slab.get_mut(key) else {
            return Sent::Ok;
        };
        let q = queue_of(conn, &mut self.spares);
        // A single frame larger than the cap is still allowed on an empty queue.
        if q.bytes > 0 && q.bytes + frame.len() > max {
            return Sent::Overflow;
        }
        self.queued += frame.len();
        let slots = q.frames.capacity();
        q.push(frame);
        // The deque grew: its old slots go back to the allocator.
        self.spares.churn += (q.frames.capacity() - slots) * std::mem::size_of::<Wire>();
        mark_dirty(conn, key, &mut self.dirty);
        Sent::Ok
    }

    /// Queues a Pong for `key`, in place of the one still waiting unsent when there is one:
    /// Pings that come faster than the client reads hold one Pong, not one each (an
    /// empty Pong counted 2 bytes against the outbound bounds and held about 40).
    pub(super) fn send_pong(&mut self, key: u32, pong: Wire) -> Sent {
        let Some(conn) = self.slab.get_mut(key) else {
            return Sent::Ok;
        };
        if conn.closing() {
            return Sent::Ok;
        }
        let len = pong.len();
        let pong = match conn.out.as_mut() {
            Some(q) => match q.replace_pong(pong) {
                Ok(old) => {
                    self.queued = self.queued - old + len;
                    return Sent::Ok;
                }
                Err(pong) => pong,
            },
            None => pong,
        };
        let sent = self.send(key, pong);
        if let Some(q) = self.slab.get_mut(key).and_then(|c| c.out.as_mut()) {
            q.pushed_pong();
        }
        sent
    }

    /// Queues the close frame, discarding what has not started (it would never be read).
    pub(super) fn queue_close(&mut self, key: u32, frame: Wire, discard: bool) {
        self.drop_partial(key);
        self.begin_closing(key);
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        let closing = conn.phase != Phase::Open;
        let q = queue_of(conn, &mut self.spares);
        let before = q.bytes;
        if discard {
            q.discard_unstarted();
        }
        q.push(frame);
        self.queued = self.queued - before + q.bytes;
        if closing {
            self.closing_queued = self.closing_queued - before + q.bytes;
        }
        mark_dirty(conn, key, &mut self.dirty);
    }

    /// TLS: answers the client's close_notify with ours, alone: frames not started are
    /// dropped (the client will not read them), records already sealed go first.
    pub(super) fn queue_close_notify(&mut self, key: u32) {
        self.drop_partial(key);
        self.begin_closing(key);
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        // An empty queue still flushes: the close_notify is sealed then.
        let q = queue_of(conn, &mut self.spares);
        let before = q.bytes;
        q.discard_unstarted();
        // Closing since `begin_closing`: its bytes count in both totals.
        self.queued -= before - q.bytes;
        self.closing_queued -= before - q.bytes;
        mark_dirty(conn, key, &mut self.dirty);
    }

    /// TLS: a record from the client was refused: tells it with a fatal alert, written
    /// now, best effort, before the connection is dropped. Not when sealed records wait
    /// for the socket, which the alert must not pass.
    pub(super) fn send_fatal_alert(&mut self, key: u32, desc: u8) {
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        if conn.out.as_ref().is_some_and(|q| q.sealed > 0) {
            return;
        }
        let Some(session) = self.tls.get_mut(&key) else {
            return;
        };
        let buf = &mut self.seal_buf;
        buf.clear();
        let Ok(mut sealer) = session.sealer(buf) else {
            return;
        };
        let sealed = sealer.fatal_alert(desc);
        drop(sealer);
        if sealed.is_ok() {
            let _ = conn.stream.write(buf);
        }
    }

    /// Writes what `key` has queued. Ok(true) when nothing is left.
    pub(super) fn flush(&mut self, key: u32) -> io::Result<bool> {
        let Some(conn) = self.slab.get_mut(key) else {
            return Ok(true);
        };
        let Some(q) = conn.out.as_mut() else {
            return Ok(true);
        };
        let before = q.bytes;
        let result = if conn.flags & TLS == 0 {
            q.write_to(&mut conn.stream)
        } else {
            match self.tls.get_mut(&key) {
                Some(session) => q.write_sealed(
                    &mut conn.stream,
                    session,
                    &mut self.seal_buf,
                    conn.phase == Phase::Closing,
                ),
                None => Err(io::Error::other("TLS connection without a session")),
            }
        };
        // Count what went out even when the socket failed after a partial write (sealing
        // may also have grown what waits).
        self.queued = self.queued - before + q.bytes;
        if conn.phase != Phase::Open {
            self.closing_queued = self.closing_queued - before + q.bytes;
        }
        let done = result?;
        if done {
            if conn.phase == Phase::Closing {
                conn.phase = Phase::WriteShut;
                // The close frame is out: FIN after it, then wait for the client's FIN.
                let _ = conn.stream.shutdown(Shutdown::Write);
            }
            if let Some(q) = conn.out.take() {
                self.recycle(q);
            }
        }
        Ok(done)
    }

    /// Flushes every connection that had frames queued since the last call; returns the
    /// keys whose sockets failed.
    pub(super) fn flush_dirty(&mut self, broken: &mut Vec<u32>) {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if let Some(conn) = self.slab.get_mut(key) {
                conn.flags &= !DIRTY;
            } else {
                continue;
            }
            if self.flush(key).is_err() {
                broken.push(key);
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Whether any connection waits for a flush.
    pub(super) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Removes a connection, returning its queue to the pool; gives it back with its
    /// client's address.
    pub(super) fn remove(&mut self, key: u32) -> Option<(Conn, IpAddr)> {
        self.drop_partial(key);
        let mut conn = self.slab.remove(key)?;
        // Callers take the topics first to leave them; none may outlive the slot.
        self.subscriptions.remove(&key);
        self.short_token_leads.remove(&key);
        if conn.flags & TLS != 0 {
            self.tls.remove(&key);
        }
        let ip = if conn.flags & IPV6 != 0 {
            self.v6_peers
                .remove(&key)
                .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), IpAddr::V6)
        } else {
            IpAddr::V4(conn.ip4.into())
        };
        if conn.phase == Phase::Open {
            self.open -= 1;
        }
        if let Some(q) = conn.out.take() {
            if conn.phase != Phase::Open {
                self.closing_queued -= q.bytes;
            }
            self.recycle(q);
        }
        Some((conn, ip))
    }
}

/// The shard's wheel keeps each connection's timer in the connection's slot.
impl Timed for Conns {
    fn deadline(&self, key: u32) -> u64 {
        self.slab
            .get(key)
            .map_or(0, |c| self.tick_base + u64::from(c.deadline))
    }

    fn set_deadline(&mut self, key: u32, deadline: u64) {
        if let Some(c) = self.slab.get_mut(key) {
            // The shard arms u32 ticks from the base and the wheel only ever raises a
            // deadline to its `now`, itself such a tick: this never truncates.
            c.deadline = deadline
                .saturating_sub(self.tick_base)
                .min(u64::from(u32::MAX)) as u32;
        }
    }

    fn place(&mut self, key: u32) -> &mut Place {
        match self.slab.get_mut(key) {
            Some(c) => &mut c.place,
            None => {
                // Only reachable if a key were armed and then removed unarmed, which
                // `Shard::finalize` rules out; the stray place is never linked.
                debug_assert!(false, "timer place of connection {key}, which is gone");
                self.stray = Place::UNLINKED;
                &mut self.stray
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection on a fresh loopback socket (the address given to `insert` is what
    /// the test is about, not the socket's).
    fn loopback_conn() -> (Conn, std::net::TcpListener) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let stream =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let conn = Conn::open(
            TcpStream::from_std(stream),
            0,
            0,
            u32::MAX,
            SessionStamp::default(),
            0,
        );
        (conn, listener)
    }

    fn text(n: u8) -> Wire {
        crate::frame::text(&[n])
    }

    fn payloads(q: &OutQueue) -> Vec<(u8, u8)> {
        q.frames.iter().map(|f| (f[0], f[f.len() - 1])).collect()
    }

    #[test]
    fn a_pong_not_yet_started_is_replaced_by_the_next_one() {
        let mut q = OutQueue::default();
        q.push(text(1));
        q.push(crate::frame::pong(b"a"));
        q.pushed_pong();
        q.push(text(2));
        // The newest Ping's Pong takes the waiting one's place; the bytes follow.
        assert_eq!(q.replace_pong(crate::frame::pong(b"bc")).ok(), Some(3));
        assert_eq!(payloads(&q), [(0x81, 1), (0x8A, b'c'), (0x81, 2)]);
        assert_eq!(q.bytes, 3 + 4 + 3);
        // Out the front: once the Pong is written, the next one queues anew.
        q.frames.pop_front();
        q.front_left();
        assert!(q.pong_behind.is_some(), "still waiting");
        q.frames.drain(..2);
        q.front_left();
        assert!(q.replace_pong(crate::frame::pong(b"d")).is_err());
    }

    #[test]
    fn a_pong_started_or_dropped_is_not_replaced_nor_anything_else() {
        let mut q = OutQueue::default();
        q.push(crate::frame::pong(b"a"));
        q.pushed_pong();
        q.offset = 1;
        assert!(
            q.replace_pong(crate::frame::pong(b"b")).is_err(),
            "partly written"
        );
        q.offset = 0;
        q.push(text(1));
        q.discard_unstarted();
        assert!(q.frames.is_empty());
        assert!(q.replace_pong(crate::frame::pong(b"b")).is_err(), "dropped");
        // A count that pointed anywhere else never replaces a frame that is not a Pong.
        q.push(text(2));
        q.pong_behind = Some(0);
        assert!(q.replace_pong(crate::frame::pong(b"b")).is_err());
        assert_eq!(payloads(&q), [(0x81, 2)]);
        // A frame not a Pong is not noted as one.
        q.pushed_pong();
        assert_eq!(q.pong_behind, None);
    }

    #[test]
    fn the_deflate_window_and_the_refusals_share_a_byte_without_touching_each_other() {
        let (mut c, _l) = loopback_conn();
        assert_eq!((c.deflate_bits(), c.refused()), (0, 0));
        c.set_deflate_bits(9);
        for n in 1..=20u8 {
            assert_eq!(c.note_refused(), n.min(15));
            assert_eq!(c.deflate_bits(), 9);
        }
        c.set_deflate_bits(15);
        assert_eq!((c.deflate_bits(), c.refused()), (15, 15));
        c.clear_refused();
        assert_eq!((c.deflate_bits(), c.refused()), (15, 0));
    }

    #[test]
    fn a_burst_s_queues_are_counted_and_shed_once_drained() {
        let mut conns = Conns::new(1 << 20, 4);
        let ip: IpAddr = "203.0.113.7".parse().expect("v4");
        let mut keys = Vec::new();
        let mut listeners = Vec::new();
        for _ in 0..3 {
            let (c, l) = loopback_conn();
            listeners.push(l);
            keys.push(conns.insert(c, ip));
        }
        assert_eq!(conns.churn(), 0);
        for &k in &keys {
            for _ in 0..10 {
                assert!(matches!(
                    conns.send(k, Wire::from_static(b"frame")),
                    Sent::Ok
                ));
            }
        }
        // Three new queues, each grown to hold ten frames.
        let grown = conns.churn();
        assert!(
            grown >= 3 * (std::mem::size_of::<OutQueue>() + 10 * 8),
            "{grown}"
        );
        let mut broken = Vec::new();
        conns.flush_dirty(&mut broken);
        assert!(broken.is_empty());
        assert_eq!(conns.queued_bytes(), 0, "loopback takes 150 bytes at once");
        // The written queues went to the pool, within its byte bound.
        assert_eq!(conns.spares.pool.len(), 3);
        assert!(conns.spares.pool_bytes <= POOL_BYTES);
        // The next frame reuses a pooled queue: no new churn.
        assert!(matches!(
            conns.send(keys[0], Wire::from_static(b"x")),
            Sent::Ok
        ));
        assert_eq!(conns.churn(), grown);
        assert_eq!(conns.spares.pool.len(), 2);
        conns.shed();
        assert_eq!(
            (
                conns.churn(),
                conns.spares.pool.len(),
                conns.spares.pool_bytes
            ),
            (0, 0, 0)
        );
    }

    #[test]
    fn the_pool_is_bounded_by_bytes() {
        let mut conns = Conns::new(1 << 20, 4);
        let one = Box::<OutQueue>::default().footprint();
        for _ in 0..(POOL_BYTES / one + 10) {
            conns.recycle(Box::default());
        }
        assert!(conns.spares.pool_bytes <= POOL_BYTES);
        assert_eq!(conns.spares.pool.len(), POOL_BYTES / one);
    }

    #[test]
    fn a_connection_gives_back_the_address_it_came_from() {
        let mut conns = Conns::new(1 << 20, 4);
        let v4: IpAddr = "203.0.113.7".parse().expect("v4");
        let v6: IpAddr = "2001:db8::1".parse().expect("v6");
        let (a, _la) = loopback_conn();
        let (b, _lb) = loopback_conn();
        let (c, _lc) = loopback_conn();
        let ka = conns.insert(a, v4);
        let kb = conns.insert(b, v6);
        let kc = conns.insert(c, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(conns.v6_peers.len(), 2);
        assert_eq!(conns.remove(kb).map(|(_, ip)| ip), Some(v6));
        // The key is reused by an IPv4 client: nothing of the IPv6 one sticks to it.
        let (d, _ld) = loopback_conn();
        assert_eq!(conns.insert(d, v4), kb);
        assert_eq!(conns.remove(kb).map(|(_, ip)| ip), Some(v4));
        assert_eq!(conns.remove(ka).map(|(_, ip)| ip), Some(v4));
        assert_eq!(
            conns.remove(kc).map(|(_, ip)| ip),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        assert!(conns.v6_peers.is_empty());
        assert!(conns.remove(ka).is_none());
    }

    #[test]
    fn discard_keeps_started_frame() {
        let mut q = OutQueue::default();
        q.push(Wire::from_static(b"abcd"));
        q.push(Wire::from_static(b"efgh"));
        q.offset = 2;
        q.bytes -= 2;
        q.discard_unstarted();
        assert_eq!(q.frames.len(), 1);
        assert_eq!(q.bytes, 2);
        let mut fresh = OutQueue::default();
        fresh.push(Wire::from_static(b"abcd"));
        fresh.discard_unstarted();
        assert!(fresh.is_empty());
        assert_eq!(fresh.bytes, 0);
    }

    #[test]
    fn pool_keeps_only_small_queues() {
        let mut q = OutQueue::default();
        for _ in 0..POOL_QUEUE_SLOTS {
            q.push(Wire::from_static(b"x"));
        }
        q.clear();
        assert!(q.poolable(), "a queue of {POOL_QUEUE_SLOTS} slots is kept");
        for _ in 0..=POOL_QUEUE_SLOTS * 2 {
            q.push(Wire::from_static(b"x"));
        }
        q.clear();
        assert!(!q.poolable(), "a queue grown past the slot bound is freed");
    }

    #[test]
    fn trimmed_leftover_gives_back_spare_capacity() {
        let mut small = Vec::with_capacity(LEFTOVER_SLACK);
        small.extend_from_slice(&[0; 100]);
        trim_leftover(&mut small);
        assert_eq!(small.capacity(), LEFTOVER_SLACK, "small slack is kept");
        let mut grown = Vec::with_capacity(1 << 20);
        grown.extend_from_slice(&[0; 100]);
        trim_leftover(&mut grown);
        assert!(grown.capacity() < LEFTOVER_SLACK, "{}", grown.capacity());
    }

    #[test]
    fn phase_only_moves_forward() {
        assert!(Phase::Open < Phase::Closing && Phase::Closing < Phase::WriteShut);
        assert_eq!(Phase::WriteShut.max(Phase::Closing), Phase::WriteShut);
        assert_eq!(std::mem::size_of::<Phase>(), 1);
    }

    #[test]
    fn conn_stays_small() {
        // Invariant 3: an idle connection costs only its slot.
        // 56 bytes in a release build (the timer's deadline and place included; partial
        // inbound state and subscriptions live beside the slots); debug builds of mio add
        // a selector id (8 bytes, aligning the socket to 8: 12 more with the padding) to
        // every socket. The table keeps `Option<Conn>` at the same size (no slot tag).
        let limit = if cfg!(debug_assertions) { 72 } else { 56 };
        assert!(
            std::mem::size_of::<Conn>() <= limit,
            "{}",
            std::mem::size_of::<Conn>()
        );
        assert_eq!(
            std::mem::size_of::<Option<Conn>>(),
            std::mem::size_of::<Conn>()
        );
    }
}
