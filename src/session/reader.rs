//! The client's messages, read by a task of their own: the session takes
//! them from a channel, and learns that the client vanished (its socket
//! closed) even while it waits for a shard.

use tokio::io::BufReader;
use tokio::sync::{mpsc, watch};

use crate::frontend::ClientRead;
use crate::protocol::{read_frame, Frame, FrameError};

/// Messages read ahead of the session: few, each bounded by the largest
/// message allowed, so a client cannot make the proxy hold much.
const AHEAD: usize = 4;

/// The client's messages in order, or the error that ended reading.
pub(super) type Frames = mpsc::Receiver<Result<Frame, FrameError>>;

/// The next client message (`Closed` once there are no more).
pub(super) async fn next(frames: &mut Option<Frames>) -> Result<Frame, FrameError> {
    match frames {
        Some(f) => f.recv().await.unwrap_or(Err(FrameError::Closed)),
        None => Err(FrameError::Closed),
    }
}

/// Starts reading `reader`: frames (or the error that ended reading) in
/// order, and a flag that turns true when the client is gone (end of file or
/// a broken socket without Terminate; not a malformed message, which the
/// session answers).
pub(super) fn spawn(
    mut reader: BufReader<ClientRead>,
    max: usize,
) -> (Frames, watch::Receiver<bool>) {
    let (tx, rx) = mpsc::channel(AHEAD);
    let (gone_tx, gone) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let r = read_frame(&mut reader, max).await;
            // After Terminate the client is leaving on purpose: what it sent
            // before still runs, as PostgreSQL would.
            let end = r.as_ref().map_or(true, |f| f.tag == b'X');
            if matches!(r, Err(FrameError::Closed | FrameError::Io(_))) {
                let _ = gone_tx.send(true);
            }
            if tx.send(r).await.is_err() || end {
                return;
            }
        }
    });
    (rx, gone)
}

/// Returns once the client is gone.
pub(super) async fn vanished(gone: &mut watch::Receiver<bool>) {
    loop {
        if *gone.borrow_and_update() {
            return;
        }
        if gone.changed().await.is_err() {
            // The reader stopped without a verdict (a malformed message):
            // the session hears of it from the channel, not from here.
            std::future::pending::<()>().await;
        }
    }
}
