//! The heartbeat channel: messages from every rank to the `gang` launcher.
//!
//! When every rank runs on the launcher's host, the launcher listens on a Unix datagram
//! socket in the run directory (owner-only, like the directory), or, when that path is too
//! long for a socket address, on a UDP port of `127.0.0.1`. When ranks run on other nodes
//! (a hostfile, or a Slurm allocation of several nodes), it listens on a TCP port of an
//! address the nodes can reach, and every rank, on whichever node, connects to it. The
//! launcher passes the address in [`vars::HEARTBEAT`](crate::vars::HEARTBEAT)
//! (`unix:/path`, `udp:127.0.0.1:PORT`, or `tcp:ADDR:PORT[,ADDR:PORT...]`, the addresses a
//! rank tries in order) and a random per-run token in [`vars::TOKEN`](crate::vars::TOKEN);
//! it drops every message that does not carry the token, and closes a TCP connection on the
//! first such message.
//!
//! What the token protects, and what it does not: a process that does not know the token
//! cannot make the launcher believe a rank is alive or making progress; it can open
//! connections (the launcher caps how many it keeps). The token travels in clear text, to
//! the ranks in their environment and back in every message, so someone who can read the
//! cluster network's traffic (or the ranks' environment) can learn it and forge heartbeats
//! of the current run, which at worst hides a stall until the run ends. Heartbeats carry no
//! data of the job, and nothing the launcher receives on the channel is ever executed or
//! written anywhere but the run's `heartbeats.json` summary.
//!
//! One datagram (on TCP: one line) is one [`Heartbeat`], JSON-encoded, at most
//! [`MAX_MESSAGE`] bytes:
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
//! beat.progress = Some(Progress { step: 40, total: 100, what: "train".into(), updates: 41, waiting: false });
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
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

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
    /// A TCP port, at one or more addresses of the launcher's host, tried in order: one
    /// line per message.
    Tcp(Vec<SocketAddr>),
}

impl Address {
    /// Parses `unix:/path`, `udp:127.0.0.1:PORT` (also `udp:[::1]:PORT`) or
    /// `tcp:ADDR:PORT[,ADDR:PORT...]`.
    ///
    /// # Errors
    /// An unknown scheme, a relative Unix path, a UDP address that is not loopback, or a
    /// TCP address list that is empty or has an entry that is not `IP:PORT`.
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
        } else if let Some(list) = s.strip_prefix("tcp:") {
            let addrs = list
                .split(',')
                .map(|a| a.trim().parse::<SocketAddr>().map_err(|e| format!("heartbeat address {s:?}: {a:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            if addrs.iter().any(|a| a.port() == 0 || a.ip().is_unspecified()) {
                return Err(format!("heartbeat address {s:?}: every address needs a real IP and a port"));
            }
            Ok(Address::Tcp(addrs))
        } else {
            Err(format!("heartbeat address {s:?}: expected unix:/path, udp:127.0.0.1:PORT or tcp:ADDR:PORT"))
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Udp(a) => write!(f, "udp:{a}"),
            Address::Tcp(list) => {
                let list: Vec<String> = list.iter().map(SocketAddr::to_string).collect();
                write!(f, "tcp:{}", list.join(","))
            }
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
    /// The rank waits in a collective for the other ranks (the vote that ends a
    /// checkpoint): without progress of its own, it is not stalled while another rank
    /// still makes progress. A rank changes it with a new update (`updates`), which is
    /// what makes the launcher take it. Absent in heartbeats of older ranks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waiting: bool,
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
        if self.waiting {
            f.write_str(", waiting for the other ranks")?;
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
    /// Short host name of the rank's node (absent from senders that do not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
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
        Heartbeat { v: VERSION, token: token.to_string(), rank, attempt, pid, seq: 0, progress: None, host: None }
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

/// How long a rank waits to connect to one TCP address of the launcher, and at most for
/// one line to be taken by the kernel.
pub const TCP_TIMEOUT: Duration = Duration::from_millis(500);

/// The sending end, used by the rank library. A send never waits for the launcher beyond
/// [`TCP_TIMEOUT`] per address (datagram sockets are non-blocking), and fails (to be
/// ignored) when the launcher is gone or busy. A TCP sender connects on its first send and
/// reconnects on the next send after the connection broke.
#[derive(Debug)]
pub struct HeartbeatSender {
    socket: SenderSocket,
    to: Address,
}

#[derive(Debug)]
enum SenderSocket {
    Unix(UnixDatagram),
    Udp(UdpSocket),
    Tcp(Mutex<Option<TcpStream>>),
}

impl HeartbeatSender {
    /// A sender to `to`. For TCP nothing is connected yet: the first send does it.
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
            Address::Tcp(_) => SenderSocket::Tcp(Mutex::new(None)),
        };
        Ok(HeartbeatSender { socket, to: to.clone() })
    }

    /// Sends one heartbeat.
    ///
    /// # Errors
    /// The launcher is gone (`NotFound`, `ConnectionRefused`), busy (`WouldBlock`), or
    /// none of its TCP addresses answered.
    pub fn send(&self, msg: &Heartbeat) -> io::Result<()> {
        self.send_raw(&msg.encode())
    }

    /// Sends arbitrary bytes (for tests of the launcher's checks). On TCP a newline ends
    /// the message.
    ///
    /// # Errors
    /// As [`HeartbeatSender::send`].
    pub fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        match (&self.socket, &self.to) {
            (SenderSocket::Unix(s), Address::Unix(p)) => s.send_to(bytes, p).map(drop),
            (SenderSocket::Udp(s), Address::Udp(a)) => s.send_to(bytes, a).map(drop),
            (SenderSocket::Tcp(slot), Address::Tcp(addrs)) => {
                // Only the heartbeat thread sends; a poisoned lock means nothing is lost
                // but the connection, which the next send makes again.
                let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
                if slot.is_none() {
                    *slot = Some(connect_tcp(addrs)?);
                }
                let mut line = Vec::with_capacity(bytes.len() + 1);
                line.extend_from_slice(bytes);
                line.push(b'\n');
                let sent = slot.as_mut().map_or(Ok(()), |stream| stream.write_all(&line));
                if sent.is_err() {
                    *slot = None;
                }
                sent
            }
            _ => unreachable!("the socket is made for the address"),
        }
    }
}

/// The first of `addrs` that accepts a connection within [`TCP_TIMEOUT`].
fn connect_tcp(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no TCP address to send heartbeats to");
    for a in addrs {
        match TcpStream::connect_timeout(a, TCP_TIMEOUT) {
            Ok(stream) => {
                stream.set_write_timeout(Some(TCP_TIMEOUT))?;
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = io::Error::new(e.kind(), format!("{a}: {e}")),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat() -> Heartbeat {
        let mut b = Heartbeat::new("tok", 3, 2, 99);
        b.seq = 5;
        b.progress = Some(Progress { step: 7, total: 10, what: "train".into(), updates: 8, waiting: false });
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
        let tcp = Address::parse("tcp:10.77.0.1:4000,192.168.1.5:4000").unwrap();
        assert_eq!(tcp, Address::Tcp(vec!["10.77.0.1:4000".parse().unwrap(), "192.168.1.5:4000".parse().unwrap()]));
        assert_eq!(tcp.to_string(), "tcp:10.77.0.1:4000,192.168.1.5:4000");
        for bad in [
            "udp:0.0.0.0:4000",
            "udp:10.1.2.3:4000",
            "unix:rel.sock",
            "tcp:",
            "tcp:0.0.0.0:1",
            "tcp:10.0.0.1:0",
            "udp:x",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn progress_reads_well() {
        let p = Progress { step: 40, total: 100, what: "train".into(), updates: 1, waiting: false };
        assert_eq!(p.to_string(), "train step 40 of 100");
        let w = Progress { waiting: true, ..p.clone() };
        assert_eq!(w.to_string(), "train step 40 of 100, waiting for the other ranks");
        assert!(!p.is_finished());
        let p = Progress { step: 3, total: 0, what: String::new(), updates: 1, waiting: false };
        assert_eq!(p.to_string(), "step 3");
        assert!(!p.is_finished());
        assert!(Progress { step: 5, total: 5, what: String::new(), updates: 1, waiting: false }.is_finished());
    }

    #[test]
    fn sending_to_a_missing_launcher_fails_quickly() {
        let addr = Address::Unix(std::env::temp_dir().join("gang-no-such-launcher.sock"));
        let s = HeartbeatSender::connect(&addr).unwrap();
        assert!(s.send(&beat()).is_err());
        // A port nobody listens on: refused at once, the sender stays usable.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let s = HeartbeatSender::connect(&Address::Tcp(vec![free])).unwrap();
        assert!(s.send(&beat()).is_err());
        assert!(s.send(&beat()).is_err());
    }

    #[test]
    fn tcp_heartbeats_are_lines_and_the_sender_tries_each_address() {
        use std::io::BufRead;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let live = listener.local_addr().unwrap();
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let s = HeartbeatSender::connect(&Address::Tcp(vec![dead, live])).unwrap();
        let mut b = beat();
        b.host = Some("n2".into());
        s.send(&b).unwrap();
        b.seq += 1;
        s.send(&b).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let mut lines = std::io::BufReader::new(conn).lines();
        let first = Heartbeat::decode(lines.next().unwrap().unwrap().as_bytes()).unwrap();
        assert_eq!((first.seq, first.host.as_deref()), (5, Some("n2")));
        assert_eq!(Heartbeat::decode(lines.next().unwrap().unwrap().as_bytes()).unwrap(), b);
    }
}
