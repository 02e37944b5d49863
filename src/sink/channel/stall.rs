//! Whether a client takes what the bridge writes to it.
//!
//! The WebSocket layer answers every ping itself, from the read side: each
//! ping read queues a pong, and the next read moves it into the write
//! buffer, whether or not the socket can take it. A client that floods
//! pings and never reads made that buffer grow without bound. RFC 6455
//! allows answering only the latest ping, so a connection reads on after
//! a ping only once that ping's answer is written: [`Watched`] sits
//! between the WebSocket layer and the socket and notes in a [`Stall`]
//! whether the last write to the client got stuck (the socket would
//! block); the connection's writer flushes whenever one did and says when
//! a flush completed ([`Stall::flushed`]); and its reader, after a ping,
//! waits until nothing is stuck or a flush completed since
//! ([`Stall::answered`]). So at most two pongs wait (the one being written
//! and the latest), and what the client sends meanwhile waits in its own
//! socket (TCP backpressure on that client only). A client that reads
//! slowly is read from after every flush, so its pongs still count as
//! signs of life.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// What [`Stall`] knows of one client's writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct State {
    /// The last write to the client would block.
    stuck: bool,
    /// Flushes completed so far.
    flushes: u64,
}

/// Whether the writes to one client are stuck, and how many flushes to it
/// completed.
#[derive(Debug, Default)]
pub struct Stall {
    /// The state; the reader and the writer wait on it.
    state: watch::Sender<State>,
}

impl Stall {
    /// Notes whether the last write went through (`false`) or is stuck.
    pub fn set(&self, stuck: bool) {
        self.state.send_if_modified(|s| std::mem::replace(&mut s.stuck, stuck) != stuck);
    }

    /// Notes that a flush completed: everything written before is on its
    /// way to the client.
    pub fn flushed(&self) {
        self.state.send_modify(|s| {
            s.stuck = false;
            s.flushes += 1;
        });
    }

    /// True while a write to the client is stuck.
    #[cfg(test)]
    pub fn is_stuck(&self) -> bool {
        self.state.borrow().stuck
    }

    /// Flushes completed so far.
    pub fn flushes(&self) -> u64 {
        self.state.borrow().flushes
    }

    /// Resolves once a write to the client is stuck (at once if one is).
    pub async fn stuck(&self) {
        let mut rx = self.state.subscribe();
        let _ = rx.wait_for(|s| s.stuck).await;
    }

    /// Resolves once nothing is stuck, or a flush completed after
    /// `flushes` (what was queued then is written).
    pub async fn answered(&self, flushes: u64) {
        let mut rx = self.state.subscribe();
        let _ = rx.wait_for(|s| !s.stuck || s.flushes > flushes).await;
    }
}

/// A client socket whose writes are noted in a [`Stall`].
#[derive(Debug)]
pub struct Watched<S> {
    /// The socket (plain or TLS).
    inner: S,
    /// Where its write state goes.
    stall: Arc<Stall>,
}

impl<S> Watched<S> {
    /// Wraps `inner`; its write state goes to `stall`.
    pub fn new(inner: S, stall: Arc<Stall>) -> Self {
        Watched { inner, stall }
    }

    fn note<T>(&self, p: Poll<T>) -> Poll<T> {
        self.stall.set(p.is_pending());
        p
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(p)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(p)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_the_peer_does_not_take_is_stuck_until_it_reads() {
        let (a, mut b) = tokio::io::duplex(64);
        let stall = Arc::new(Stall::default());
        let mut w = Watched::new(a, stall.clone());
        w.write_all(&[1; 64]).await.unwrap();
        assert!(!stall.is_stuck());
        // The pipe is full: the next write waits, and says so.
        let pending = tokio::spawn(async move {
            w.write_all(&[2; 10]).await.unwrap();
            w
        });
        let secs = std::time::Duration::from_secs(5);
        tokio::time::timeout(secs, stall.stuck()).await.unwrap();
        let before = stall.flushes();
        let answered = tokio::spawn({
            let stall = stall.clone();
            async move { stall.answered(before).await }
        });
        let mut got = vec![0; 64];
        tokio::io::AsyncReadExt::read_exact(&mut b, &mut got).await.unwrap();
        let _w = pending.await.unwrap();
        tokio::time::timeout(secs, answered).await.unwrap().unwrap();
        assert!(!stall.is_stuck());
        // A completed flush answers whoever waits, stuck or not.
        stall.set(true);
        let answered = tokio::spawn({
            let stall = stall.clone();
            async move { stall.answered(before).await }
        });
        stall.flushed();
        tokio::time::timeout(secs, answered).await.unwrap().unwrap();
        assert_eq!(stall.flushes(), before + 1);
    }
}
