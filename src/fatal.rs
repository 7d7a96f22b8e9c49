//! The conditions after which this process must stop, reported by background tasks
//! and heard by `app`'s `serve`, which shuts down through its normal path and ends with
//! the condition's exit status.

use tokio::sync::mpsc;

/// A condition after which this process must stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fatal {
    /// The local model could not be loaded: serving only 503s helps no one.
    #[error("the local model could not be loaded: {0}")]
    ModelFailed(String),
    /// Another process holds this node's lease (it expired while this one stalled, and
    /// a survivor took its streams over, or another process took the node id).
    #[error(
        "this node's lease is not ours any more (it expired and a survivor took its \
         streams over, or another process took this node id)"
    )]
    LeaseLost,
}

impl Fatal {
    /// The exit status `main` ends with: 75 (`EX_TEMPFAIL`) for a lost lease, so a
    /// supervisor restarts the node; 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Fatal::LeaseLost => 75,
            Fatal::ModelFailed(_) => 1,
        }
    }
}

/// Where background tasks report a [`Fatal`] condition; `serve` hears the first.
#[derive(Clone)]
pub struct FatalSender(pub(crate) mpsc::Sender<Fatal>);

impl FatalSender {
    /// A sender and the receiver `serve` listens on.
    pub(crate) fn channel() -> (FatalSender, mpsc::Receiver<Fatal>) {
        let (tx, rx) = mpsc::channel(1);
        (FatalSender(tx), rx)
    }

    pub fn report(&self, fatal: Fatal) {
        let _ = self.0.try_send(fatal);
    }
}
