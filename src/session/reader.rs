//! The client's messages, read by the session itself out of one buffer
//! (no task or channel per message), and a watch on the client's socket
//! that tells, while a statement runs, that the client vanished.
//!
//! The watch is a second handle on the same TCP socket (a duplicated
//! descriptor, made before TLS is layered on): it only peeks, so it never
//! takes bytes from the reader. End of file there with nothing left unread
//! means the client closed without Terminate; bytes there mean the client
//! is still talking (a pipeline), and the watch stands down until the
//! session reads them, so it never spins.

use std::collections::VecDeque;

use tokio::io::BufReader;
use tokio::net::TcpStream;

use crate::frontend::ClientRead;
use crate::protocol::{Frame, FrameError, FrameReader};

/// How long a statement runs before the client's socket is watched: a
/// statement still running after two ticks of this period has run at least
/// one period.
const WATCH_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// One clock for every session's watch: a task ticks every `WATCH_AFTER`,
/// so a statement waits on a notification (a list entry under a lock) in
/// place of a timer of its own (a clock read and a timer-wheel insert and
/// removal per statement, about 1,000 instructions on the simple-query
/// path). The task ends with the last handle on the ticks.
pub(crate) fn ticks() -> std::sync::Arc<tokio::sync::Notify> {
    let ticks = std::sync::Arc::new(tokio::sync::Notify::new());
    let weak = std::sync::Arc::downgrade(&ticks);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(WATCH_AFTER);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match weak.upgrade() {
                Some(t) => t.notify_waiters(),
                None => return,
            }
        }
    });
    ticks
}

/// The client's messages in order.
pub(super) struct Frames {
    inner: FrameReader<BufReader<ClientRead>>,
    max: usize,
    /// Messages already read that come again before the socket's: the rest
    /// of an extended-protocol batch when an Execute in it starts a COPY
    /// FROM STDIN (whose data the COPY reads from here).
    again: VecDeque<Frame>,
}

impl Frames {
    pub(super) fn new(reader: BufReader<ClientRead>, max: usize) -> Frames {
        Frames {
            inner: FrameReader::new(reader),
            max,
            again: VecDeque::new(),
        }
    }

    /// The next message. Cancel-safe: a message half read stays buffered.
    pub(super) async fn next(&mut self) -> Result<Frame, FrameError> {
        if let Some(f) = self.again.pop_front() {
            return Ok(f);
        }
        self.inner.next(self.max).await
    }

    /// `frames`, read already, are the next messages, in their order.
    pub(super) fn read_again(&mut self, frames: impl IntoIterator<Item = Frame>) {
        let mut earlier: VecDeque<Frame> = frames.into_iter().collect();
        earlier.append(&mut self.again);
        self.again = earlier;
    }

    /// Bytes the client sent that no message was made of yet (or a message
    /// to be read again).
    fn unread(&self) -> usize {
        self.again.len() + self.inner.buffered() + self.inner.get_ref().buffer().len()
    }
}

/// The next client message (`Closed` once there are no more).
pub(super) async fn next(frames: &mut Option<Frames>) -> Result<Frame, FrameError> {
    match frames {
        Some(f) => f.next().await,
        None => Err(FrameError::Closed),
    }
}

/// Returns once the client is gone: its socket reached end of file (or
/// failed). `quiet`: nothing the client sent is still unread (else what it
/// sent before leaving, Terminate included, still runs, and this never
/// returns); nor does it without a socket to watch.
pub(super) async fn vanished(watch: Option<&TcpStream>, quiet: bool, ticks: &tokio::sync::Notify) {
    let (Some(sock), true) = (watch, quiet) else {
        return std::future::pending().await;
    };
    // Not for statements that end sooner: a peek is a system call. The
    // second wait begins after the first tick, so it ends a period later.
    ticks.notified().await;
    ticks.notified().await;
    let mut probe = [0u8; 1];
    match sock.peek(&mut probe).await {
        Ok(0) | Err(_) => {}
        // The client is sending more: not gone; the session reads it next.
        Ok(_) => std::future::pending().await,
    }
}

impl Frames {
    /// Nothing the client sent is waiting in the proxy's buffers.
    pub(super) fn quiet(&self) -> bool {
        self.unread() == 0
    }
}
