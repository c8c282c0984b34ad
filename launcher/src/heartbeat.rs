//! The launcher's end of the heartbeat channel (see [`gang_protocol::heartbeat`]): a
//! [`Listener`] on a Unix socket in the run directory (or a UDP port of 127.0.0.1), and a
//! [`Tracker`] that keeps the last heartbeat and progress of every rank and finds stalls.
//!
//! A rank is stalled when, for the stall timeout,
//! * it has sent heartbeats and then none (the process is frozen, or its heartbeat thread
//!   died), or
//! * it has reported progress, not finished (`step < total`), and reported none since
//!   (its main thread is stuck: a deadlock, a collective that never completes, a hang).
//!
//! Ranks that never send heartbeats (programs that do not use the gang library, ranks on
//! other hosts) and ranks whose exit is recorded are not checked.

use gang_protocol::heartbeat::{Address, Heartbeat, Progress, MAX_MESSAGE};
use gang_protocol::{HeartbeatSummary, RankHeartbeats, RunDir};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Longest socket path Linux accepts (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

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
        write!(f, "rank {} stalled ({what} for {} s, last progress: ", self.rank, self.secs)?;
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
            beats: 0,
            last_beat: now,
            progress: None,
            progress_since: now,
        });
        state.pid = msg.pid;
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
    pub fn check(&self, now: Instant, timeout: Duration) -> Option<Stall> {
        if timeout.is_zero() {
            return None;
        }
        let mut stalled: Vec<(StallKind, Duration, usize, &RankState)> = Vec::new();
        for (&rank, s) in &self.ranks {
            if self.finished.contains(&rank) {
                continue;
            }
            let silent = now.saturating_duration_since(s.last_beat);
            if silent >= timeout {
                stalled.push((StallKind::Silent, silent, rank, s));
                continue;
            }
            if let Some(p) = &s.progress {
                let still = now.saturating_duration_since(s.progress_since);
                if !p.is_finished() && still >= timeout {
                    stalled.push((StallKind::NoProgress, still, rank, s));
                }
            }
        }
        stalled.sort_by_key(|(kind, dur, rank, s)| {
            let step = s.progress.as_ref().map_or(0, |p| p.step);
            (*kind != StallKind::Silent, step, std::cmp::Reverse(*dur), *rank)
        });
        let (kind, dur, rank, s) = stalled.first()?;
        Some(Stall {
            rank: *rank,
            attempt: self.attempt,
            kind: *kind,
            secs: dur.as_secs(),
            progress: s.progress.clone(),
            others: stalled.iter().skip(1).map(|x| x.2).collect::<BTreeSet<_>>().into_iter().collect(),
        })
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
}

impl Listener {
    /// Listens on `<run dir>/heartbeat.sock`, or on a UDP port of 127.0.0.1 when that
    /// path is too long for a socket; makes a new random token.
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

    /// Where the ranks send to.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The run's token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Hands every waiting datagram to `tracker`, without blocking.
    pub fn drain(&self, tracker: &mut Tracker, now: Instant) {
        let mut buf = [0u8; MAX_MESSAGE + 1];
        loop {
            let got = match &self.socket {
                Socket::Unix(s) => s.recv(&mut buf),
                Socket::Udp(s) => s.recv(&mut buf),
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
        b.progress = progress.map(|(step, total, updates)| Progress { step, total, what: "train".into(), updates });
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
}
