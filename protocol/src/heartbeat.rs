//! The heartbeat channel: datagrams from every rank to the `gang` launcher.
//!
//! The launcher listens on a Unix datagram socket in the run directory (owner-only, like the
//! directory), or, when that path is too long for a socket address, on a UDP port of
//! `127.0.0.1`. Never on any other address: the channel does not leave the host, so ranks on
//! other nodes send nothing and are simply not stall-checked. The launcher passes the address
//! in [`vars::HEARTBEAT`](crate::vars::HEARTBEAT) (`unix:/path` or `udp:127.0.0.1:PORT`) and a
//! random per-run token in [`vars::TOKEN`](crate::vars::TOKEN); it drops every message that
//! does not carry the token.
//!
//! One datagram is one [`Heartbeat`], JSON-encoded, at most [`MAX_MESSAGE`] bytes:
//!
//! ```text
//! {"v":1,"token":"9f..","rank":1,"attempt":0,"pid":4242,"seq":7,
//!  "progress":{"step":40,"total":100,"what":"train","updates":41}}
//! ```
//!
//! ```
//! use gang_protocol::heartbeat::{Address, Heartbeat, HeartbeatSender, Progress};
//! use std::os::unix::net::UnixDatagram;
//!
//! let path = std::env::temp_dir().join(format!("gang-hb-doc-{}.sock", std::process::id()));
//! let _ = std::fs::remove_file(&path);
//! let listener = UnixDatagram::bind(&path).unwrap();
//! let addr = Address::parse(&format!("unix:{}", path.display())).unwrap();
//!
//! let sender = HeartbeatSender::connect(&addr).unwrap();
//! let mut beat = Heartbeat::new("secret", 1, 0, 4242);
//! beat.progress = Some(Progress { step: 40, total: 100, what: "train".into(), updates: 41 });
//! sender.send(&beat).unwrap();
//!
//! let mut buf = [0u8; 2048];
//! let n = listener.recv(&mut buf).unwrap();
//! let got = Heartbeat::decode(&buf[..n]).unwrap();
//! assert_eq!(got, beat);
//! assert!(got.token_is("secret") && !got.token_is("guess"));
//! # std::fs::remove_file(&path).unwrap();
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// Version of the message format ([`Heartbeat::v`]).
pub const VERSION: u32 = 1;
/// Largest datagram the launcher reads; longer messages are dropped as malformed.
pub const MAX_MESSAGE: usize = 2048;
/// Longest progress description a rank sends (longer ones are cut at a char boundary).
pub const MAX_WHAT: usize = 256;
/// How often a rank sends a heartbeat.
pub const INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Name of the socket file in the run directory.
pub const SOCKET_NAME: &str = "heartbeat.sock";

/// Where the launcher listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix datagram socket at this path.
    Unix(PathBuf),
    /// A UDP port on the loopback interface (never any other address).
    Udp(SocketAddr),
}

impl Address {
    /// Parses `unix:/path` or `udp:127.0.0.1:PORT` (also `udp:[::1]:PORT`).
    ///
    /// # Errors
    /// An unknown scheme, a relative Unix path, or a UDP address that is not loopback.
    pub fn parse(s: &str) -> Result<Address, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            let path = PathBuf::from(p);
            if !path.is_absolute() {
                return Err(format!("heartbeat address {s:?}: the socket path must be absolute"));
            }
            Ok(Address::Unix(path))
        } else if let Some(a) = s.strip_prefix("udp:") {
            let addr: SocketAddr = a.parse().map_err(|e| format!("heartbeat address {s:?}: {e}"))?;
            if !addr.ip().is_loopback() {
                return Err(format!("heartbeat address {s:?}: only loopback addresses are allowed"));
            }
            Ok(Address::Udp(addr))
        } else {
            Err(format!("heartbeat address {s:?}: expected unix:/path or udp:127.0.0.1:PORT"))
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Udp(a) => write!(f, "udp:{a}"),
        }
    }
}

/// How far a rank has got, as its code last told the library (`ctx.progress`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Current step (training step, partition, ...).
    pub step: u64,
    /// Number of steps, 0 when unknown.
    pub total: u64,
    /// What is being counted (`"train"`, `"map"`, ...).
    pub what: String,
    /// How many times progress was reported: it changes whenever the rank's code reported
    /// again, even with the same step, which is how the launcher tells a working rank from
    /// a stuck one.
    pub updates: u64,
}

impl Progress {
    /// Whether the rank said it has done all its steps (then silence in progress is fine).
    pub fn is_finished(&self) -> bool {
        self.total > 0 && self.step >= self.total
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.what.is_empty() {
            write!(f, "{} ", self.what)?;
        }
        write!(f, "step {}", self.step)?;
        if self.total > 0 {
            write!(f, " of {}", self.total)?;
        }
        Ok(())
    }
}

/// One heartbeat of one rank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Message format version, [`VERSION`].
    pub v: u32,
    /// The run's token, from [`vars::TOKEN`](crate::vars::TOKEN).
    pub token: String,
    /// World rank.
    pub rank: usize,
    /// Attempt number of the gang.
    pub attempt: u32,
    /// Process id of the rank.
    pub pid: u32,
    /// Sequence number of this heartbeat, from 0.
    pub seq: u64,
    /// The latest progress, once the rank has reported any.
    pub progress: Option<Progress>,
}

/// Why a datagram is not a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Longer than [`MAX_MESSAGE`].
    TooLong(usize),
    /// Not the JSON of a [`Heartbeat`].
    Malformed(String),
    /// A format version this launcher does not know.
    Version(u32),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLong(n) => write!(f, "heartbeat of {n} bytes (at most {MAX_MESSAGE})"),
            DecodeError::Malformed(e) => write!(f, "malformed heartbeat: {e}"),
            DecodeError::Version(v) => write!(f, "heartbeat format version {v} (expected {VERSION})"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl Heartbeat {
    /// A heartbeat with sequence number 0 and no progress.
    pub fn new(token: &str, rank: usize, attempt: u32, pid: u32) -> Heartbeat {
        Heartbeat { v: VERSION, token: token.to_string(), rank, attempt, pid, seq: 0, progress: None }
    }

    /// The datagram. The progress description is cut to [`MAX_WHAT`] bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut msg = self.clone();
        if let Some(p) = &mut msg.progress {
            truncate_at_char(&mut p.what, MAX_WHAT);
        }
        // Serializing plain strings and integers cannot fail.
        serde_json::to_vec(&msg).unwrap_or_default()
    }

    /// Parses a datagram.
    ///
    /// # Errors
    /// Too long, not JSON of a heartbeat, or another format version.
    pub fn decode(bytes: &[u8]) -> Result<Heartbeat, DecodeError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(DecodeError::TooLong(bytes.len()));
        }
        let msg: Heartbeat = serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if msg.v != VERSION {
            return Err(DecodeError::Version(msg.v));
        }
        Ok(msg)
    }

    /// Whether the message carries `token` (compared in constant time).
    pub fn token_is(&self, token: &str) -> bool {
        let (a, b) = (self.token.as_bytes(), token.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// The sending end, used by the rank library. Non-blocking: a send never waits for the
/// launcher, and fails (to be ignored) when the launcher is gone or its queue is full.
#[derive(Debug)]
pub struct HeartbeatSender {
    socket: SenderSocket,
    to: Address,
}

#[derive(Debug)]
enum SenderSocket {
    Unix(UnixDatagram),
    Udp(UdpSocket),
}

impl HeartbeatSender {
    /// A sender to `to`.
    ///
    /// # Errors
    /// The socket cannot be created.
    pub fn connect(to: &Address) -> io::Result<HeartbeatSender> {
        let socket = match to {
            Address::Unix(_) => {
                let s = UnixDatagram::unbound()?;
                s.set_nonblocking(true)?;
                SenderSocket::Unix(s)
            }
            Address::Udp(a) => {
                let local: SocketAddr =
                    if a.is_ipv4() { ([127, 0, 0, 1], 0).into() } else { (std::net::Ipv6Addr::LOCALHOST, 0).into() };
                let s = UdpSocket::bind(local)?;
                s.set_nonblocking(true)?;
                SenderSocket::Udp(s)
            }
        };
        Ok(HeartbeatSender { socket, to: to.clone() })
    }

    /// Sends one heartbeat.
    ///
    /// # Errors
    /// The launcher is gone (`NotFound`, `ConnectionRefused`) or busy (`WouldBlock`).
    pub fn send(&self, msg: &Heartbeat) -> io::Result<()> {
        self.send_raw(&msg.encode())
    }

    /// Sends arbitrary bytes (for tests of the launcher's checks).
    ///
    /// # Errors
    /// As [`HeartbeatSender::send`].
    pub fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        match (&self.socket, &self.to) {
            (SenderSocket::Unix(s), Address::Unix(p)) => s.send_to(bytes, p).map(drop),
            (SenderSocket::Udp(s), Address::Udp(a)) => s.send_to(bytes, a).map(drop),
            _ => unreachable!("the socket is made for the address"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat() -> Heartbeat {
        let mut b = Heartbeat::new("tok", 3, 2, 99);
        b.seq = 5;
        b.progress = Some(Progress { step: 7, total: 10, what: "train".into(), updates: 8 });
        b
    }

    #[test]
    fn round_trip_and_format() {
        let b = beat();
        let bytes = b.encode();
        assert_eq!(Heartbeat::decode(&bytes).unwrap(), b);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with(r#"{"v":1,"token":"tok","rank":3,"attempt":2,"pid":99,"seq":5,"#), "{text}");
        let none = Heartbeat::new("t", 0, 0, 1);
        assert_eq!(Heartbeat::decode(&none.encode()).unwrap().progress, None);
    }

    #[test]
    fn bad_datagrams_are_refused() {
        assert!(matches!(Heartbeat::decode(b"hello"), Err(DecodeError::Malformed(_))));
        assert!(matches!(Heartbeat::decode(br#"{"v":1}"#), Err(DecodeError::Malformed(_))));
        let mut b = beat();
        b.v = 2;
        assert_eq!(Heartbeat::decode(&serde_json::to_vec(&b).unwrap()), Err(DecodeError::Version(2)));
        assert!(matches!(Heartbeat::decode(&vec![b' '; MAX_MESSAGE + 1]), Err(DecodeError::TooLong(_))));
    }

    #[test]
    fn long_descriptions_are_cut_at_a_char_boundary() {
        let mut b = beat();
        b.progress.as_mut().unwrap().what = "é".repeat(MAX_WHAT); // 2 bytes each
        let bytes = b.encode();
        assert!(bytes.len() <= MAX_MESSAGE);
        let what = Heartbeat::decode(&bytes).unwrap().progress.unwrap().what;
        assert_eq!(what.len(), MAX_WHAT);
    }

    #[test]
    fn tokens_must_match_exactly() {
        let b = beat();
        assert!(b.token_is("tok"));
        assert!(!b.token_is("to"));
        assert!(!b.token_is("tok "));
        assert!(!b.token_is("TOK"));
    }

    #[test]
    fn addresses_parse_and_only_loopback_is_allowed() {
        assert_eq!(Address::parse("unix:/run/x.sock").unwrap(), Address::Unix("/run/x.sock".into()));
        let udp = Address::parse("udp:127.0.0.1:4000").unwrap();
        assert_eq!(udp.to_string(), "udp:127.0.0.1:4000");
        assert!(Address::parse("udp:[::1]:4000").is_ok());
        for bad in ["udp:0.0.0.0:4000", "udp:10.1.2.3:4000", "unix:rel.sock", "tcp:127.0.0.1:1", "udp:x"] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn progress_reads_well() {
        let p = Progress { step: 40, total: 100, what: "train".into(), updates: 1 };
        assert_eq!(p.to_string(), "train step 40 of 100");
        assert!(!p.is_finished());
        let p = Progress { step: 3, total: 0, what: String::new(), updates: 1 };
        assert_eq!(p.to_string(), "step 3");
        assert!(!p.is_finished());
        assert!(Progress { step: 5, total: 5, what: String::new(), updates: 1 }.is_finished());
    }

    #[test]
    fn sending_to_a_missing_launcher_fails_quickly() {
        let addr = Address::Unix(std::env::temp_dir().join("gang-no-such-launcher.sock"));
        let s = HeartbeatSender::connect(&addr).unwrap();
        assert!(s.send(&beat()).is_err());
    }
}
