//! The WebSocket tunnel after a 101: bytes both ways, unbuffered and unchanged, owned by
//! portico rather than Pingora's proxy loop.
//!
//! Why our own: an idle connection must cost a few KiB, not Pingora's ~69 KiB of body buffers;
//! the idle timeout must mean "no byte either way", not a read timeout per direction; and a
//! drain must end each side with a close frame at a frame boundary.
//!
//! How: one future polls both directions. A direction reads into a buffer borrowed from its
//! worker thread only for the duration of the read, then writes what it read at once; only
//! bytes the destination cannot take yet are copied into a per-direction `Vec`, freed as soon
//! as they are written. An idle tunnel therefore holds no buffer at all.

use crate::drain::DrainWatch;
use bytes::Bytes;
use pingora::protocols::Stream;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The per-thread read buffer: one per worker thread, shared by every tunnel on it.
const READ_BUF: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_BUF].into_boxed_slice());
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed (the normal end, after a close handshake or not).
    Closed,
    /// No byte either way for the idle timeout.
    Idle,
    /// The process drained: both sides got a 1001 close frame.
    Drained,
    /// A read or write failed.
    Error,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle_timeout",
            End::Drained => "drained",
            End::Error => "io_error",
        }
    }
}

pub struct Outcome {
    pub end: End,
    /// Bytes from the client to the peer, and from the peer to the client.
    pub client_to_peer: u64,
    pub peer_to_client: u64,
}

/// Where a direction is in the WebSocket frame stream, so a close frame can be slipped in
/// between two frames and never inside one.
#[derive(Debug, Default)]
struct Frames {
    header: [u8; 14],
    have: u8,
    /// Payload bytes left in the current frame (valid once the header is complete).
    remaining: u64,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Header length once its first two bytes are known.
    fn header_len(&self) -> u8 {
        let len7 = self.header[1] & 0x7f;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + if self.header[1] & 0x80 != 0 { 4 } else { 0 }
    }

    /// Follows `data` through the frame stream. With `stop_at_boundary`, stops at the first
    /// boundary reached (if any) and returns how many bytes that took.
    fn feed(&mut self, data: &[u8], stop_at_boundary: bool) -> usize {
        let mut i = 0;
        while i < data.len() {
            if stop_at_boundary && self.at_boundary() && i > 0 {
                return i;
            }
            if self.remaining > 0 {
                let take = (data.len() - i).min(self.remaining.min(usize::MAX as u64) as usize);
                self.remaining -= take as u64;
                i += take;
                continue;
            }
            self.header[self.have as usize] = data[i];
            self.have += 1;
            i += 1;
            if self.have >= 2 && self.have == self.header_len() {
                let len7 = self.header[1] & 0x7f;
                self.remaining = match len7 {
                    126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                    127 => u64::from_be_bytes(self.header[2..10].try_into().expect("8 bytes")),
                    n => u64::from(n),
                };
                self.have = 0;
            }
        }
        i
    }
}

/// A close frame with code 1001 (going away); masked when it goes to the peer, as a client's.
fn close_frame(masked: bool) -> Vec<u8> {
    let reason = b"going away";
    let mut payload = 1001u16.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    let mut frame = vec![0x88, payload.len() as u8 | if masked { 0x80 } else { 0 }];
    if masked {
        let key: [u8; 4] = rand_key();
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        frame.extend_from_slice(&payload);
    }
    frame
}

/// A masking key need not be secret for a close frame sent once; it must only vary.
fn rand_key() -> [u8; 4] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    (nanos ^ 0x5bd1_e995).to_le_bytes()
}

#[derive(Default)]
struct Direction {
    /// Bytes read but not yet written; empty (no allocation) when caught up.
    pending: Vec<u8>,
    /// How much of `pending` is written (it holds at most one read, 16 KiB).
    sent: u32,
    needs_flush: bool,
    eof: bool,
    done: bool,
    frames: Frames,
    bytes: u64,
    /// Draining: after this direction's close frame, nothing more is forwarded.
    closed_by_us: bool,
}

impl Direction {
    /// A direction with `first` already read and waiting to be written (tracked as frames and
    /// counted like any read).
    fn starting_with(first: &[u8]) -> Self {
        let mut d = Direction::default();
        if !first.is_empty() {
            d.frames.feed(first, false);
            d.bytes = first.len() as u64;
            // A copy: the caller's bytes are a slice of a handshake's read buffer, which they
            // would keep alive for as long as the tunnel lives.
            d.pending = first.to_vec();
            d.needs_flush = true;
        }
        d
    }

    /// Moves bytes from `src` to `dst` until one of them would block. `Ready` when this
    /// direction is finished (source ended and destination shut down).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Stream,
        dst: &mut Stream,
        // Draining: `Some(masked)`, the close frame this direction ends with.
        drain: Option<bool>,
        active: &mut bool,
    ) -> Poll<io::Result<()>> {
        loop {
            while (self.sent as usize) < self.pending.len() {
                let from = self.sent as usize;
                let n = ready!(Pin::new(&mut *dst).poll_write(cx, &self.pending[from..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.sent += n as u32;
            }
            if !self.pending.is_empty() {
                self.pending = Vec::new();
                self.sent = 0;
            }
            if self.needs_flush {
                ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                self.needs_flush = false;
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if let Some(masked) = drain {
                if !self.closed_by_us && self.frames.at_boundary() {
                    self.pending = close_frame(masked);
                    self.closed_by_us = true;
                    self.eof = true;
                    self.needs_flush = true;
                    continue;
                }
            }
            if self.eof {
                ready!(Pin::new(&mut *dst).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let draining = drain.is_some();
            let step = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut buf = ReadBuf::new(&mut scratch[..]);
                ready!(Pin::new(&mut *src).poll_read(cx, &mut buf))?;
                let data = buf.filled();
                if data.is_empty() {
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
                *active = true;
                // Draining: forward only up to the end of the current frame, then close.
                let upto = self.frames.feed(data, draining);
                let data = &data[..upto];
                self.bytes += data.len() as u64;
                let mut off = 0;
                while off < data.len() {
                    match Pin::new(&mut *dst).poll_write(cx, &data[off..]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                        }
                        Poll::Ready(Ok(n)) => off += n,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => break,
                    }
                }
                if off < data.len() {
                    self.pending = data[off..].to_vec();
                }
                self.needs_flush = true;
                Poll::Ready(Ok(()))
            });
            ready!(step)?;
        }
    }
}

/// Where a tunnel is in its life.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Open,
    /// Draining started; at this instant (the end of the grace period) the close frames go.
    DrainAt(Instant),
    /// Close frames are going out; whatever is still open at this instant is cut.
    Closing(Instant),
}

pin_project_lite::pin_project! {
    /// The tunnel: a future that ends when both sides close, when the idle timeout passes with
    /// no byte either way, or after the drain (both sides get a 1001 close at a frame boundary,
    /// waited for at most `drain_limit`).
    ///
    /// Written by hand rather than as an `async fn` with `select!`: an idle WebSocket is this
    /// struct and its task, so every byte counts. One timer serves the idle timeout and both
    /// drain instants, and the drain is a waker slot ([`DrainWatch`]) rather than a watch
    /// future.
    pub struct Tunnel {
        client: Stream,
        peer: Stream,
        c2p: Direction,
        p2c: Direction,
        #[pin]
        timer: Sleep,
        last_active: Instant,
        idle: Duration,
        // Milliseconds (a few hundred at most): every byte of an idle tunnel counts.
        drain_limit_ms: u32,
        phase: Phase,
        drain: DrainWatch,
    }
}

impl Tunnel {
    /// `to_client_first` holds bytes the peer sent right after its 101 head.
    /// `to_client_first`: what the peer sent after its 101; `to_peer_first`: what the client
    /// sent after its handshake (frames pipelined behind it), held until the peer said 101.
    pub fn new(
        client: Stream,
        peer: Stream,
        (to_client_first, to_peer_first): (Bytes, Bytes),
        idle: Duration,
        drain_limit: Duration,
    ) -> Tunnel {
        let p2c = Direction::starting_with(&to_client_first);
        let c2p = Direction::starting_with(&to_peer_first);
        let now = Instant::now();
        Tunnel {
            client,
            peer,
            c2p,
            p2c,
            timer: tokio::time::sleep_until((now + idle).into()),
            last_active: now,
            idle,
            drain_limit_ms: u32::try_from(drain_limit.as_millis()).unwrap_or(u32::MAX),
            phase: Phase::Open,
            drain: DrainWatch::default(),
        }
    }
}

impl Future for Tunnel {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut this = self.project();
        let end = loop {
            if let Phase::Open = this.phase {
                if let Some(at) = this.drain.poll(cx) {
                    *this.phase = Phase::DrainAt(at);
                }
            }
            if let Phase::DrainAt(at) = *this.phase {
                let now = Instant::now();
                if now >= at {
                    let limit = Duration::from_millis(u64::from(*this.drain_limit_ms));
                    *this.phase = Phase::Closing(now + limit);
                }
            }
            let closing = matches!(this.phase, Phase::Closing(_));
            let mut active = false;
            // The close frame toward the peer is masked, as a client's.
            let a = this.c2p.poll(
                cx,
                this.client,
                this.peer,
                closing.then_some(true),
                &mut active,
            );
            let b = this.p2c.poll(
                cx,
                this.peer,
                this.client,
                closing.then_some(false),
                &mut active,
            );
            if active {
                *this.last_active = Instant::now();
            }
            // One side closing ends a WebSocket (a half-open one is of no use, as nginx and
            // HAProxy also decide); a drain ends once both close frames are out.
            match (a, b) {
                (Poll::Ready(Err(_)), _) | (_, Poll::Ready(Err(_))) => break End::Error,
                (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) if closing => break End::Drained,
                (Poll::Ready(Ok(())), _) | (_, Poll::Ready(Ok(()))) if !closing => {
                    break End::Closed
                }
                _ => {}
            }
            // The timer is re-armed only when it fires (activity only moves `last_active`),
            // or when a drain instant comes before it.
            let idle_at = *this.last_active + *this.idle;
            let next = match *this.phase {
                Phase::Open => idle_at,
                Phase::DrainAt(at) => idle_at.min(at),
                Phase::Closing(hard) => hard,
            };
            if next < this.timer.deadline().into_std() {
                this.timer.as_mut().reset(next.into());
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            match *this.phase {
                Phase::Closing(hard) if now >= hard => break End::Drained,
                Phase::Open | Phase::DrainAt(_) if now >= idle_at => break End::Idle,
                // Fired early for this purpose (activity since, or the drain instant, which
                // the top of the loop turns into closing): aim at the next instant.
                _ => this.timer.as_mut().reset(next.max(now).into()),
            }
        };
        Poll::Ready(Outcome {
            end,
            client_to_peer: this.c2p.bytes,
            peer_to_client: this.p2c.bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload_len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82];
        let m = if masked { 0x80 } else { 0 };
        match payload_len {
            n if n < 126 => f.push(m | n as u8),
            n if n <= 0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(7u8, payload_len));
        f
    }

    #[test]
    fn boundaries_are_found_across_any_split() {
        let mut stream = Vec::new();
        for (len, masked) in [
            (0, false),
            (5, true),
            (125, false),
            (126, true),
            (70_000, false),
            (3, true),
        ] {
            stream.extend(frame(len, masked));
        }
        for split in [1, 2, 3, 7, 100, 4096, stream.len()] {
            let mut f = Frames::default();
            for chunk in stream.chunks(split) {
                f.feed(chunk, false);
            }
            assert!(f.at_boundary(), "split {split}");
        }
        let mut f = Frames::default();
        f.feed(&stream[..stream.len() - 1], false);
        assert!(!f.at_boundary());
    }

    #[test]
    fn stop_at_boundary_stops_after_the_current_frame() {
        let mut stream = frame(10, true);
        let first = stream.len();
        stream.extend(frame(20, true));
        let mut f = Frames::default();
        assert_eq!(f.feed(&stream[..5], true), 5);
        assert_eq!(f.feed(&stream[5..], true), first - 5);
        assert!(f.at_boundary());
    }

    #[test]
    fn close_frames_say_1001() {
        let c = close_frame(false);
        assert_eq!(&c[..4], &[0x88, 12, 0x03, 0xe9]);
        let m = close_frame(true);
        assert_eq!(m[1], 0x80 | 12);
        let key = &m[2..6];
        let code = [m[6] ^ key[0], m[7] ^ key[1]];
        assert_eq!(u16::from_be_bytes(code), 1001);
    }
}

/// For the fuzz target `streams`: frame tracking over bytes cut at arbitrary points must end
/// in the state one pass over them ends in, and a stop at a boundary must be one.
#[cfg(fuzzing)]
pub fn fuzz_frames(data: &[u8], cuts: &[usize]) {
    let mut whole = Frames::default();
    assert_eq!(whole.feed(data, false), data.len());
    let mut pieces = Frames::default();
    let mut at = 0;
    for &cut in cuts {
        let end = (at + cut).min(data.len());
        let mut rest = &data[at..end];
        while !rest.is_empty() {
            let n = pieces.feed(rest, true);
            assert!(n > 0 && n <= rest.len());
            if n < rest.len() {
                assert!(pieces.at_boundary(), "stopped inside a frame");
            }
            rest = &rest[n..];
        }
        at = end;
    }
    pieces.feed(&data[at..], false);
    assert_eq!(
        (whole.have, whole.remaining, whole.header),
        (pieces.have, pieces.remaining, pieces.header)
    );
}
