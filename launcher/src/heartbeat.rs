//! The launcher's end of the heartbeat channel (see [`gang_protocol::heartbeat`]): a
//! [`Listener`] on a Unix socket in the run directory (or a UDP port of 127.0.0.1) when
//! every rank runs on this host, or on a TCP port the other nodes can reach when ranks run
//! on several, and a [`Tracker`] that keeps the last heartbeat and progress of every rank
//! and finds stalls.
//!
//! A rank is stalled when, for the stall timeout,
//! * it has sent heartbeats and then none (the process is frozen, or its heartbeat thread
//!   died), or
//! * it has reported progress, not finished (`step < total`), and reported none since
//!   (its main thread is stuck: a deadlock, a collective that never completes, a hang),
//!   unless it said it waits for the other ranks (the vote that ends a checkpoint) while
//!   another rank still makes progress (a straggler writing its shard).
//!
//! Ranks that never send heartbeats (programs that do not use the gang library) and ranks
//! whose exit is recorded are not checked.

use gang_protocol::heartbeat::{Address, Heartbeat, Progress, INTERVAL, MAX_MESSAGE};
use gang_protocol::{HeartbeatSummary, RankHeartbeats, RunDir};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest socket path Linux accepts (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// TCP connections kept open beyond one per rank (reconnects, strays): a flood of
/// connections from elsewhere cannot grow the launcher without bound.
const SPARE_CONNECTIONS: usize = 64;
/// Heartbeats a rank may miss before, once the gang is stalled, it is named as the cause.
const SUSPECT_MISSED: u32 = 3;

/// How a rank stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallKind {
    /// No heartbeat at all.
    Silent,
    /// Heartbeats, but no new progress.
    NoProgress,
}

/// A stalled rank, as found by [`Tracker::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// The rank that stalled first.
    pub rank: usize,
    /// Its host, as its heartbeats said.
    pub host: Option<String>,
    /// Attempt number.
    pub attempt: u32,
    /// Silent or without progress.
    pub kind: StallKind,
    /// For how long, in whole seconds.
    pub secs: u64,
    /// Its last progress.
    pub progress: Option<Progress>,
    /// Other ranks stalled at the same time (peers waiting for it, usually).
    pub others: Vec<usize>,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            StallKind::Silent => "no heartbeat",
            StallKind::NoProgress => "no progress",
        };
        write!(f, "rank {}", self.rank)?;
        if let Some(h) = &self.host {
            write!(f, " on {h}")?;
        }
        write!(f, " stalled ({what} for {} s, last progress: ", self.secs)?;
        match &self.progress {
            Some(p) => write!(f, "{p})")?,
            None => write!(f, "none)")?,
        }
        if !self.others.is_empty() {
            let others: Vec<String> = self.others.iter().map(|r| r.to_string()).collect();
            let s = if self.others.len() == 1 { "" } else { "s" };
            write!(f, "; rank{s} {} stalled too", others.join(", "))?;
        }
        Ok(())
    }
}

/// What [`Tracker::receive`] did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A heartbeat of this attempt, recorded.
    Accepted,
    /// Dropped: not the run's token.
    WrongToken,
    /// Dropped: not a heartbeat.
    Malformed,
    /// Dropped: right token, but another attempt or a rank outside the world.
    Stale,
}

#[derive(Debug, Clone)]
struct RankState {
    pid: u32,
    host: Option<String>,
    beats: u64,
    last_beat: Instant,
    progress: Option<Progress>,
    progress_since: Instant,
}

/// The heartbeat state of one attempt. Pure: time is passed in.
#[derive(Debug)]
pub struct Tracker {
    token: String,
    attempt: u32,
    world: usize,
    ranks: BTreeMap<usize, RankState>,
    finished: BTreeSet<usize>,
    wrong_token: u64,
    malformed: u64,
    stale: u64,
}

impl Tracker {
    /// A tracker for attempt `attempt` of a gang of `world` ranks with run token `token`.
    pub fn new(token: &str, attempt: u32, world: usize) -> Tracker {
        Tracker {
            token: token.to_string(),
            attempt,
            world,
            ranks: BTreeMap::new(),
            finished: BTreeSet::new(),
            wrong_token: 0,
            malformed: 0,
            stale: 0,
        }
    }

    /// Takes one datagram received at `now`.
    pub fn receive(&mut self, bytes: &[u8], now: Instant) -> Received {
        let msg = match Heartbeat::decode(bytes) {
            Ok(m) => m,
            Err(_) => {
                self.malformed += 1;
                return Received::Malformed;
            }
        };
        if !msg.token_is(&self.token) {
            self.wrong_token += 1;
            return Received::WrongToken;
        }
        if msg.attempt != self.attempt || msg.rank >= self.world {
            self.stale += 1;
            return Received::Stale;
        }
        let state = self.ranks.entry(msg.rank).or_insert_with(|| RankState {
            pid: msg.pid,
            host: None,
            beats: 0,
            last_beat: now,
            progress: None,
            progress_since: now,
        });
        state.pid = msg.pid;
        if msg.host.is_some() {
            state.host = msg.host;
        }
        state.beats += 1;
        state.last_beat = now;
        let changed = match (&state.progress, &msg.progress) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(old), Some(new)) => old.updates != new.updates,
        };
        if changed {
            state.progress = msg.progress;
            state.progress_since = now;
        }
        Received::Accepted
    }

    /// Ranks of the gang.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Marks `rank` as ended (its exit is recorded): it is no longer checked.
    pub fn rank_finished(&mut self, rank: usize) {
        self.finished.insert(rank);
    }

    /// The last progress `rank` reported.
    pub fn progress_of(&self, rank: usize) -> Option<&Progress> {
        self.ranks.get(&rank)?.progress.as_ref()
    }

    /// The stall at `now` with timeout `timeout`, if any rank is stalled. The rank named
    /// is a silent one if any (a frozen process), else the one with the lowest step (the
    /// one its peers wait for), then the one that stalled first.
    ///
    /// Once some rank is stalled, a rank that has missed [`SUSPECT_MISSED`] heartbeats is
    /// counted as silent even before the timeout: a rank frozen in the middle of a step
    /// stops beating after its peers last made progress (they wait for it in the step's
    /// collective), so their timeout ends first, and naming one of them would blame a
    /// waiting rank for the frozen one.
    pub fn check(&self, now: Instant, timeout: Duration) -> Option<Stall> {
        if timeout.is_zero() {
            return None;
        }
        let suspect = (INTERVAL * SUSPECT_MISSED).min(timeout);
        // A rank at work (not waiting for the others) that made progress within the timeout:
        // the ranks that wait in a collective wait for it.
        let working = self.ranks.iter().any(|(rank, s)| {
            !self.finished.contains(rank)
                && s.progress.as_ref().is_some_and(|p| !p.is_finished() && !p.waiting)
                && now.saturating_duration_since(s.progress_since) < timeout
        });
        let mut stalled: Vec<(StallKind, Duration, usize, &RankState)> = Vec::new();
        let mut any = false;
        for (&rank, s) in &self.ranks {
            if self.finished.contains(&rank) {
                continue;
            }
            let silent = now.saturating_duration_since(s.last_beat);
            if silent >= suspect {
                any |= silent >= timeout;
                stalled.push((StallKind::Silent, silent, rank, s));
                continue;
            }
            if let Some(p) = &s.progress {
                let still = now.saturating_duration_since(s.progress_since);
                if !p.is_finished() && still >= timeout && !(p.waiting && working) {
                    any = true;
                    stalled.push((StallKind::NoProgress, still, rank, s));
                }
            }
        }
        if !any {
            return None;
        }
        // Silent ranks first, the longest silent first; then ranks at work before those
        // waiting for the others, the lowest step, the one that stalled first.
        stalled.sort_by_key(|(kind, dur, rank, s)| {
            let (waiting, step) = match kind {
                StallKind::Silent => (false, 0),
                StallKind::NoProgress => s.progress.as_ref().map_or((false, 0), |p| (p.waiting, p.step)),
            };
            (*kind != StallKind::Silent, waiting, step, std::cmp::Reverse(*dur), *rank)
        });
        let (kind, dur, rank, s) = stalled.first()?;
        Some(Stall {
            rank: *rank,
            host: s.host.clone(),
            attempt: self.attempt,
            kind: *kind,
            secs: dur.as_secs(),
            progress: s.progress.clone(),
            others: stalled.iter().skip(1).map(|x| x.2).collect::<BTreeSet<_>>().into_iter().collect(),
        })
    }

    /// How far the gang has got, from every rank's latest progress, for the launcher's
    /// periodic line: `train step 1180-1200 of 9600` (the slowest and fastest rank) when
    /// the ranks count the same steps, `map stage x: 412 of 800 steps over 4 ranks` when
    /// each counts its own share; one part per kind of work when ranks do different things.
    /// `None` before any rank reported progress.
    pub fn progress_line(&self) -> Option<String> {
        let mut by_what: BTreeMap<&str, Vec<&Progress>> = BTreeMap::new();
        for s in self.ranks.values() {
            if let Some(p) = &s.progress {
                by_what.entry(p.what.as_str()).or_default().push(p);
            }
        }
        let parts: Vec<String> = by_what
            .into_iter()
            .map(|(what, ps)| {
                let lead = if what.is_empty() { String::new() } else { format!("{what} ") };
                let (lo, hi) =
                    (ps.iter().map(|p| p.step).min().unwrap_or(0), ps.iter().map(|p| p.step).max().unwrap_or(0));
                let steps = if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") };
                let total = ps[0].total;
                if ps.iter().all(|p| p.total == total) {
                    match total {
                        0 => format!("{lead}step {steps}"),
                        t => format!("{lead}step {steps} of {t}"),
                    }
                } else {
                    let done: u64 = ps.iter().map(|p| p.step.min(p.total)).sum();
                    let all: u64 = ps.iter().map(|p| p.total).sum();
                    let n = ps.len();
                    format!("{}: {done} of {all} steps over {n} rank{}", what, if n == 1 { "" } else { "s" })
                }
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// What was heard, for `attempt-<k>/heartbeats.json`.
    pub fn summary(&self) -> HeartbeatSummary {
        HeartbeatSummary {
            attempt: self.attempt,
            ranks: self
                .ranks
                .iter()
                .map(|(&rank, s)| RankHeartbeats { rank, pid: s.pid, beats: s.beats, progress: s.progress.clone() })
                .collect(),
            wrong_token: self.wrong_token,
            malformed: self.malformed,
            stale: self.stale,
        }
    }
}

/// `45 s`, `2m05s`, `1h02m`: time since the gang started, for the progress line.
pub fn elapsed(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The launcher's socket.
#[derive(Debug)]
pub struct Listener {
    socket: Socket,
    address: Address,
    token: String,
    path: Option<PathBuf>,
}

#[derive(Debug)]
enum Socket {
    Unix(UnixDatagram),
    Udp(UdpSocket),
    Tcp { listener: TcpListener, conns: Mutex<Vec<Conn>>, cap: usize },
}

/// One rank's TCP connection and the part of a line received so far.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    partial: Vec<u8>,
}

impl Listener {
    /// Listens on `<run dir>/heartbeat.sock`, or on a UDP port of 127.0.0.1 when that
    /// path is too long for a socket; makes a new random token. For gangs on this host.
    ///
    /// # Errors
    /// Neither socket can be made, or no randomness for the token.
    pub fn bind(run: &RunDir) -> io::Result<Listener> {
        let token = random_token()?;
        let path = run.heartbeat_socket();
        if path.as_os_str().len() <= MAX_SOCKET_PATH {
            let _ = std::fs::remove_file(&path);
            let socket = UnixDatagram::bind(&path)?;
            socket.set_nonblocking(true)?;
            set_owner_only(&path)?;
            return Ok(Listener {
                socket: Socket::Unix(socket),
                address: Address::Unix(path.clone()),
                token,
                path: Some(path),
            });
        }
        let socket = UdpSocket::bind(("127.0.0.1", 0))?;
        socket.set_nonblocking(true)?;
        let address = Address::Udp(socket.local_addr()?);
        Ok(Listener { socket: Socket::Udp(socket), address, token, path: None })
    }

    /// Listens on a TCP port, for gangs with ranks on other nodes: on `ip` when given
    /// (and tells the ranks that address), else on every interface, telling the ranks
    /// this host's addresses other than loopback (`advertised`, in that order; loopback
    /// when it has none). At most `world` + 64 connections are kept open at a time.
    ///
    /// # Errors
    /// The port cannot be bound, or no randomness for the token.
    pub fn bind_tcp(ip: Option<IpAddr>, advertised: &[IpAddr], world: usize) -> io::Result<Listener> {
        let token = random_token()?;
        let listener = TcpListener::bind((ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let ips: Vec<IpAddr> = match ip {
            Some(ip) => vec![ip],
            None if advertised.is_empty() => vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            None => advertised.to_vec(),
        };
        let address = Address::Tcp(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect());
        let socket = Socket::Tcp { listener, conns: Mutex::new(Vec::new()), cap: world + SPARE_CONNECTIONS };
        Ok(Listener { socket, address, token, path: None })
    }

    /// Where the ranks send to.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The run's token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Hands every waiting message to `tracker`, without blocking. On TCP, takes the
    /// waiting connections first, and closes a connection that sent something other than
    /// a heartbeat with the run's token, or a line longer than a heartbeat can be.
    pub fn drain(&self, tracker: &mut Tracker, now: Instant) {
        let mut buf = [0u8; MAX_MESSAGE + 1];
        let (listener, conns, cap) = match &self.socket {
            Socket::Tcp { listener, conns, cap } => (listener, conns, *cap),
            datagrams => {
                loop {
                    let got = match datagrams {
                        Socket::Unix(s) => s.recv(&mut buf),
                        Socket::Udp(s) => s.recv(&mut buf),
                        Socket::Tcp { .. } => unreachable!("matched above"),
                    };
                    match got {
                        Ok(n) => {
                            tracker.receive(&buf[..n], now);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // WouldBlock: nothing more; anything else: try again next poll.
                        Err(_) => return,
                    }
                }
            }
        };
        // Only the launcher's wait loop drains; a poisoned lock still holds the connections.
        let mut conns = conns.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match listener.accept() {
                Ok((stream, _)) if conns.len() < cap && stream.set_nonblocking(true).is_ok() => {
                    conns.push(Conn { stream, partial: Vec::new() });
                }
                // Over the cap (or unusable): closed at once by dropping it.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        conns.retain_mut(|c| read_lines(c, tracker, now, &mut buf));
    }
}

/// Reads what `c` has sent and hands each complete line to `tracker`. Returns whether to
/// keep the connection open.
fn read_lines(c: &mut Conn, tracker: &mut Tracker, now: Instant, buf: &mut [u8]) -> bool {
    loop {
        match c.stream.read(buf) {
            // The rank closed it (it ended, or will reconnect).
            Ok(0) => return false,
            Ok(n) => {
                c.partial.extend_from_slice(&buf[..n]);
                while let Some(end) = c.partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = c.partial.drain(..=end).collect();
                    if tracker.receive(&line[..end], now) != Received::Accepted {
                        return false;
                    }
                }
                if c.partial.len() > MAX_MESSAGE {
                    tracker.malformed += 1;
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn set_owner_only(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// 128 random bits from the kernel, as 32 hex digits.
fn random_token() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(token: &str, rank: usize, attempt: u32, progress: Option<(u64, u64, u64)>) -> Vec<u8> {
        let mut b = Heartbeat::new(token, rank, attempt, 100 + rank as u32);
        b.progress = progress.map(|(step, total, updates)| Progress {
            step,
            total,
            what: "train".into(),
            updates,
            waiting: false,
        });
        b.encode()
    }

    /// A heartbeat of a rank waiting for the others at `step` of `total`.
    fn waiting(token: &str, rank: usize, step: u64, total: u64, updates: u64) -> Vec<u8> {
        let mut b = Heartbeat::new(token, rank, 0, 100 + rank as u32);
        b.progress = Some(Progress { step, total, what: "train".into(), updates, waiting: true });
        b.encode()
    }

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn only_the_runs_token_and_attempt_are_accepted() {
        let now = Instant::now();
        let mut t = Tracker::new("good", 1, 2);
        assert_eq!(t.receive(&msg("good", 0, 1, None), now), Received::Accepted);
        assert_eq!(t.receive(&msg("bad", 0, 1, None), now), Received::WrongToken);
        assert_eq!(t.receive(&msg("goo", 0, 1, None), now), Received::WrongToken);
        assert_eq!(t.receive(b"{not json", now), Received::Malformed);
        assert_eq!(t.receive(&msg("good", 0, 0, None), now), Received::Stale);
        assert_eq!(t.receive(&msg("good", 5, 1, None), now), Received::Stale);
        let s = t.summary();
        assert_eq!((s.wrong_token, s.malformed, s.stale), (2, 1, 2));
        assert_eq!(s.ranks.len(), 1);
        assert_eq!(s.ranks[0].beats, 1);
    }

    #[test]
    fn silence_after_heartbeats_is_a_stall_but_never_beating_is_not() {
        let t0 = Instant::now();
        let mut t = Tracker::new("k", 0, 3);
        t.receive(&msg("k", 1, 0, Some((40, 100, 41))), t0);
        t.receive(&msg("k", 2, 0, None), t0);
        // Rank 2 keeps beating; rank 1 goes silent; rank 0 never says anything.
        t.receive(&msg("k", 2, 0, None), t0 + Duration::from_secs(9));
        assert_eq!(t.check(t0 + Duration::from_secs(9), T), None);
        t.receive(&msg("k", 2, 0, None), t0 + Duration::from_secs(12));
        let s = t.check(t0 + Duration::from_secs(12), T).unwrap();
        assert_eq!((s.rank, s.kind, s.secs), (1, StallKind::Silent, 12));
        assert_eq!(s.to_string(), "rank 1 stalled (no heartbeat for 12 s, last progress: train step 40 of 100)");
        assert_eq!(t.check(t0 + Duration::from_secs(60), Duration::ZERO), None, "0 = off");
        // A rank whose exit is recorded is not checked.
        t.rank_finished(1);
        assert_eq!(t.check(t0 + Duration::from_secs(12), T), None);
    }

    #[test]
    fn heartbeats_without_new_progress_are_a_stall_unless_finished() {
        let t0 = Instant::now();
        let mut t = Tracker::new("k", 0, 4);
        for r in 0..3 {
            t.receive(&msg("k", r, 0, Some((39, 100, 1))), t0);
        }
        // Ranks 0 and 2 reach step 40 and wait; rank 1 hangs at 39; all keep beating.
        let t1 = t0 + Duration::from_secs(1);
        t.receive(&msg("k", 0, 0, Some((40, 100, 2))), t1);
        t.receive(&msg("k", 2, 0, Some((40, 100, 2))), t1);
        for s in 2..=12 {
            for r in 0..3 {
                let (step, u) = if r == 1 { (39, 1) } else { (40, 2) };
                t.receive(&msg("k", r, 0, Some((step, 100, u))), t0 + Duration::from_secs(s));
            }
        }
        assert_eq!(t.check(t0 + Duration::from_secs(9), T), None);
        let s = t.check(t0 + Duration::from_secs(12), T).unwrap();
        assert_eq!((s.rank, s.kind), (1, StallKind::NoProgress));
        assert_eq!(s.others, vec![0, 2]);
        assert_eq!(
            s.to_string(),
            "rank 1 stalled (no progress for 12 s, last progress: train step 39 of 100); \
             ranks 0, 2 stalled too"
        );
        // A rank that said it is done may stay quiet in progress.
        let mut t = Tracker::new("k", 0, 1);
        t.receive(&msg("k", 0, 0, Some((100, 100, 100))), t0);
        t.receive(&msg("k", 0, 0, Some((100, 100, 100))), t0 + Duration::from_secs(30));
        assert_eq!(t.check(t0 + Duration::from_secs(30), T), None);
    }

    #[test]
    fn a_rank_frozen_mid_step_is_named_before_the_peers_that_wait_for_it() {
        let t0 = Instant::now();
        let mut t = Tracker::new("k", 0, 3);
        // All three finish step 3 at t0; rank 2 is frozen 1.5 s into step 4, and ranks 0
        // and 1 wait for it in the step's allreduce, beating without progress.
        for r in 0..3 {
            t.receive(&msg("k", r, 0, Some((3, 96, 3))), t0);
            t.receive(&msg("k", r, 0, Some((3, 96, 3))), t0 + Duration::from_millis(1500));
        }
        for s in 2..=6 {
            for r in 0..2 {
                t.receive(&msg("k", r, 0, Some((3, 96, 3))), t0 + Duration::from_secs(s));
            }
        }
        let timeout = Duration::from_secs(6);
        // Rank 2's silence alone (4.5 s) is no stall, and nobody is stalled before 6 s.
        assert_eq!(t.check(t0 + Duration::from_millis(5900), timeout), None);
        let s = t.check(t0 + Duration::from_secs(6), timeout).unwrap();
        assert_eq!((s.rank, s.kind, s.secs, s.others.clone()), (2, StallKind::Silent, 4, vec![0, 1]));
        assert_eq!(
            s.to_string(),
            "rank 2 stalled (no heartbeat for 4 s, last progress: train step 3 of 96); ranks 0, 1 stalled too"
        );
        // A rank that merely misses a few heartbeats while the others progress is no stall.
        let mut t = Tracker::new("k", 0, 2);
        t.receive(&msg("k", 0, 0, Some((3, 96, 3))), t0);
        t.receive(&msg("k", 1, 0, Some((3, 96, 3))), t0);
        t.receive(&msg("k", 1, 0, Some((4, 96, 4))), t0 + Duration::from_secs(5));
        assert_eq!(t.check(t0 + Duration::from_secs(5), timeout), None);
    }

    #[test]
    fn ranks_waiting_for_a_straggler_that_still_writes_are_not_stalled() {
        let t0 = Instant::now();
        let mut t = Tracker::new("k", 0, 3);
        for r in 0..3 {
            t.receive(&msg("k", r, 0, Some((12, 96, 12))), t0);
        }
        // Rank 2 writes a large checkpoint shard, pulsing its progress as it writes, until
        // 14 s; ranks 0 and 1 wait for it in the checkpoint's vote (saying so is an update).
        for s in 1..=20 {
            let at = t0 + Duration::from_secs(s);
            t.receive(&waiting("k", 0, 12, 96, 13), at);
            t.receive(&waiting("k", 1, 12, 96, 13), at);
            t.receive(&msg("k", 2, 0, Some((12, 96, 12 + s.min(14)))), at);
        }
        let timeout = Duration::from_secs(6);
        assert_eq!(t.check(t0 + Duration::from_secs(14), timeout), None, "rank 2 still writes");
        assert_eq!(t.check(t0 + Duration::from_secs(19), timeout), None, "5 s since rank 2 progressed");
        // Rank 2 stopped at 14 s: at 20 s it is stalled, and named before the waiting ranks.
        let s = t.check(t0 + Duration::from_secs(20), timeout).unwrap();
        assert_eq!((s.rank, s.kind, s.others.clone()), (2, StallKind::NoProgress, vec![0, 1]));

        // A rank stuck at work is a stall even while another rank progresses: only ranks
        // that said they wait are excused.
        let mut t = Tracker::new("k", 0, 2);
        t.receive(&msg("k", 0, 0, Some((3, 10, 3))), t0);
        t.receive(&msg("k", 1, 0, Some((3, 10, 3))), t0);
        for s in 1..=6 {
            let at = t0 + Duration::from_secs(s);
            t.receive(&msg("k", 0, 0, Some((3 + s, 10, 3 + s))), at);
            t.receive(&msg("k", 1, 0, Some((3, 10, 3))), at);
        }
        let s = t.check(t0 + Duration::from_secs(6), timeout).unwrap();
        assert_eq!((s.rank, s.kind), (1, StallKind::NoProgress));
        // And ranks that all wait (a collective that never completes) are stalled.
        let mut t = Tracker::new("k", 0, 2);
        for s in 0..=6 {
            for r in 0..2 {
                t.receive(&waiting("k", r, 3, 10, 3), t0 + Duration::from_secs(s));
            }
        }
        let s = t.check(t0 + Duration::from_secs(6), timeout).unwrap();
        assert_eq!(
            s.to_string(),
            "rank 0 stalled (no progress for 6 s, last progress: train step 3 of 10, waiting for the other ranks); \
             rank 1 stalled too"
        );
    }

    #[test]
    fn the_progress_line_says_how_far_the_ranks_have_got() {
        let t0 = Instant::now();
        let mut t = Tracker::new("k", 0, 3);
        assert_eq!(t.progress_line(), None);
        t.receive(&msg("k", 0, 0, Some((1200, 9600, 1200))), t0);
        t.receive(&msg("k", 1, 0, Some((1180, 9600, 1180))), t0);
        t.receive(&msg("k", 2, 0, None), t0);
        assert_eq!(t.progress_line().unwrap(), "train step 1180-1200 of 9600");
        t.receive(&msg("k", 1, 0, Some((1200, 9600, 1201))), t0);
        assert_eq!(t.progress_line().unwrap(), "train step 1200 of 9600");
        // Shares of their own (a map stage's partitions): summed over the ranks.
        let part = |rank: usize, step: u64, total: u64| {
            let mut b = Heartbeat::new("k", rank, 0, 7);
            b.progress =
                Some(Progress { step, total, what: "map stage std".into(), updates: step + 1, waiting: false });
            b.encode()
        };
        let mut t = Tracker::new("k", 0, 2);
        t.receive(&part(0, 3, 5), t0);
        t.receive(&part(1, 4, 4), t0);
        assert_eq!(t.progress_line().unwrap(), "map stage std: 7 of 9 steps over 2 ranks");
        assert_eq!(elapsed(Duration::from_secs(45)), "45 s");
        assert_eq!(elapsed(Duration::from_secs(125)), "2m05s");
        assert_eq!(elapsed(Duration::from_secs(3720)), "1h02m");
    }

    #[test]
    fn the_listener_receives_from_the_protocol_sender() {
        let root = std::env::temp_dir().join(format!("gang-hb-listener-{}", std::process::id()));
        let run = RunDir::create(&root, "r").unwrap();
        let l = Listener::bind(&run).unwrap();
        assert_eq!(l.token().len(), 32);
        assert!(matches!(l.address(), Address::Unix(_)));
        let sender = gang_protocol::heartbeat::HeartbeatSender::connect(l.address()).unwrap();
        sender.send(&Heartbeat::new(l.token(), 0, 0, 1)).unwrap();
        sender.send(&Heartbeat::new("wrong", 0, 0, 1)).unwrap();
        let mut t = Tracker::new(l.token(), 0, 1);
        l.drain(&mut t, Instant::now());
        let s = t.summary();
        assert_eq!((s.ranks.len(), s.wrong_token), (1, 1));
        drop(l);
        assert!(!run.heartbeat_socket().exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_tcp_listener_takes_lines_from_many_connections_and_closes_bad_ones() {
        use std::io::Write;
        let l = Listener::bind_tcp(Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), &[], 2).unwrap();
        let Address::Tcp(addrs) = l.address().clone() else { panic!("{}", l.address()) };
        assert_eq!(addrs.len(), 1);
        let mut t = Tracker::new(l.token(), 0, 2);
        // Two ranks through the protocol's sender, one line each, host names included.
        for rank in 0..2 {
            let sender = gang_protocol::heartbeat::HeartbeatSender::connect(l.address()).unwrap();
            let mut beat = Heartbeat::new(l.token(), rank, 0, 10 + rank as u32);
            beat.host = Some(format!("n{}", rank + 1));
            sender.send(&beat).unwrap();
            std::mem::forget(sender); // keep the connection open
        }
        // A line split over two writes is put together.
        let mut split = TcpStream::connect(addrs[0]).unwrap();
        let line = Heartbeat::new(l.token(), 1, 0, 11).encode();
        split.write_all(&line[..10]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while t.summary().ranks.iter().map(|r| r.beats).sum::<u64>() < 2 && Instant::now() < deadline {
            l.drain(&mut t, Instant::now());
            std::thread::sleep(Duration::from_millis(10));
        }
        split.write_all(&line[10..]).unwrap();
        split.write_all(b"\n").unwrap();
        // A stranger's connection is closed on its first line, and so is an endless line.
        let mut stranger = TcpStream::connect(addrs[0]).unwrap();
        stranger.write_all(&Heartbeat::new("guess", 0, 0, 1).encode()).unwrap();
        stranger.write_all(b"\n").unwrap();
        let mut endless = TcpStream::connect(addrs[0]).unwrap();
        endless.write_all(&vec![b'x'; MAX_MESSAGE + 10]).unwrap();
        while (t.summary().wrong_token, t.summary().malformed) != (1, 1) && Instant::now() < deadline {
            l.drain(&mut t, Instant::now());
            std::thread::sleep(Duration::from_millis(10));
        }
        let s = t.summary();
        assert_eq!((s.wrong_token, s.malformed), (1, 1));
        assert_eq!(s.ranks.iter().map(|r| (r.rank, r.beats)).collect::<Vec<_>>(), [(0, 1), (1, 2)]);
        for mut closed in [stranger, endless] {
            closed.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut byte = [0u8; 1];
            assert!(matches!(closed.read(&mut byte), Ok(0) | Err(_)), "the launcher closes it");
        }
        // The stall names the host the heartbeats came from.
        let later = Instant::now() + Duration::from_secs(100);
        let stall = t.check(later, Duration::from_secs(5)).unwrap();
        assert!(
            stall.to_string().starts_with(&format!("rank {} on n{} stalled", stall.rank, stall.rank + 1)),
            "{stall}"
        );
    }

    #[test]
    fn the_tcp_listener_keeps_at_most_world_plus_spare_connections() {
        let l = Listener::bind_tcp(Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), &[], 1).unwrap();
        let Address::Tcp(addrs) = l.address().clone() else { panic!() };
        let mut t = Tracker::new(l.token(), 0, 1);
        let conns: Vec<TcpStream> = (0..SPARE_CONNECTIONS + 5).map(|_| TcpStream::connect(addrs[0]).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(100));
        l.drain(&mut t, Instant::now());
        let Socket::Tcp { conns: kept, .. } = &l.socket else { panic!() };
        assert_eq!(kept.lock().unwrap().len(), SPARE_CONNECTIONS + 1);
        drop(conns);
    }

    #[test]
    fn without_an_address_every_address_of_the_host_is_offered() {
        let ips = [IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)), IpAddr::V4(Ipv4Addr::new(192, 168, 0, 2))];
        let l = Listener::bind_tcp(None, &ips, 4).unwrap();
        let Address::Tcp(addrs) = l.address() else { panic!() };
        assert_eq!(addrs.iter().map(SocketAddr::ip).collect::<Vec<_>>(), ips);
        assert!(addrs.iter().all(|a| a.port() == addrs[0].port() && a.port() != 0));
        let alone = Listener::bind_tcp(None, &[], 4).unwrap();
        let Address::Tcp(addrs) = alone.address() else { panic!() };
        assert_eq!(addrs[0].ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        // The interfaces of this machine: never loopback.
        assert!(crate::sys::host_addresses().iter().all(|ip| !ip.is_loopback()));
    }
}
