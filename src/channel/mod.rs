//! Bounded channels with an explicit backpressure policy per queue.
//!
//! A thin layer over `crossbeam_channel::bounded`: each sender carries its
//! [`Backpressure`] policy, so a full queue is handled the same way everywhere
//! it is used: either the sender waits until a deadline, or the message is
//! refused with a status at once. Nothing grows without bound. A consumer can
//! take several messages in one call ([`Receiver::recv_batch`]).
//!
//! Never use [`Backpressure::Block`] on the thread that drains the queue (a
//! plugin calling back from inside `event_stream` on the host's own thread):
//! it would wait for itself. Use [`Backpressure::Reject`] there.
#![forbid(unsafe_code)]

use std::fmt;
use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, TrySendError};

/// What a full queue does to a sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backpressure {
    /// Wait for room, at most this long, then fail with `Timeout`.
    Block(Duration),
    /// Fail with `Full` at once.
    Reject,
}

/// A failed send; the message is given back.
#[derive(PartialEq, Eq)]
pub enum SendError<T> {
    /// The queue was full (policy `Reject`).
    Full(T),
    /// The queue stayed full until the deadline (policy `Block`).
    Timeout(T),
    /// The receiver is gone.
    Disconnected(T),
}

impl<T> SendError<T> {
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(t) | Self::Timeout(t) | Self::Disconnected(t) => t,
        }
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full(_) => "Full(_)",
            Self::Timeout(_) => "Timeout(_)",
            Self::Disconnected(_) => "Disconnected(_)",
        })
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full(_) => "full queue",
            Self::Timeout(_) => "queue stayed full until the deadline",
            Self::Disconnected(_) => "receiver is gone",
        })
    }
}

impl<T> std::error::Error for SendError<T> {}

/// Creates a bounded channel of `capacity` with `policy` for its senders.
///
/// # Examples
///
/// ```
/// use nylon_transport::channel::{bounded, Backpressure, SendError};
/// let (tx, rx) = bounded::<u32>(1, Backpressure::Reject);
/// tx.send(1)?;
/// assert!(matches!(tx.send(2), Err(SendError::Full(2))));
/// assert_eq!(rx.try_recv(), Some(1));
/// # Ok::<(), SendError<u32>>(())
/// ```
#[must_use]
pub fn bounded<T>(capacity: usize, policy: Backpressure) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    (Sender { tx, policy }, Receiver { rx })
}

/// The sending half, with its policy.
pub struct Sender<T> {
    tx: crossbeam_channel::Sender<T>,
    policy: Backpressure,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            policy: self.policy,
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("policy", &self.policy)
            .field("len", &self.tx.len())
            .finish()
    }
}

impl<T> Sender<T> {
    /// Sends under the channel's policy.
    ///
    /// # Errors
    ///
    /// [`SendError`] per the policy, with the message.
    pub fn send(&self, msg: T) -> Result<(), SendError<T>> {
        match self.policy {
            Backpressure::Reject => self.tx.try_send(msg).map_err(|e| match e {
                TrySendError::Full(m) => SendError::Full(m),
                TrySendError::Disconnected(m) => SendError::Disconnected(m),
            }),
            Backpressure::Block(wait) => self.tx.send_timeout(msg, wait).map_err(|e| match e {
                SendTimeoutError::Timeout(m) => SendError::Timeout(m),
                SendTimeoutError::Disconnected(m) => SendError::Disconnected(m),
            }),
        }
    }

    /// Sends without waiting, whatever the policy (for the draining thread).
    ///
    /// # Errors
    ///
    /// [`SendError::Full`] or [`SendError::Disconnected`].
    pub fn try_send(&self, msg: T) -> Result<(), SendError<T>> {
        self.tx.try_send(msg).map_err(|e| match e {
            TrySendError::Full(m) => SendError::Full(m),
            TrySendError::Disconnected(m) => SendError::Disconnected(m),
        })
    }

    /// The policy.
    pub fn policy(&self) -> Backpressure {
        self.policy
    }
}

/// The receiving half.
pub struct Receiver<T> {
    rx: crossbeam_channel::Receiver<T>,
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("len", &self.rx.len())
            .finish()
    }
}

impl<T> Receiver<T> {
    /// Takes one message if there is one.
    pub fn try_recv(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }

    /// Waits for one message; `None` once every sender is gone and the
    /// queue is empty.
    pub fn recv(&self) -> Option<T> {
        self.rx.recv().ok()
    }

    /// Waits for one message until `deadline`; `None` on timeout or disconnect.
    pub fn recv_deadline(&self, deadline: Instant) -> Option<T> {
        self.rx.recv_deadline(deadline).ok()
    }

    /// Moves up to `max` queued messages into `out` without waiting; returns
    /// how many.
    pub fn recv_batch(&self, max: usize, out: &mut Vec<T>) -> usize {
        let mut n = 0;
        while n < max {
            match self.rx.try_recv() {
                Ok(m) => {
                    out.push(m);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        n
    }

    /// Messages queued now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_refuses_at_once_and_gives_the_message_back() {
        let (tx, rx) = bounded(2, Backpressure::Reject);
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert_eq!(tx.send(3).unwrap_err().into_inner(), 3);
        assert_eq!(rx.len(), 2);
    }

    #[test]
    fn block_waits_until_the_deadline() {
        let (tx, rx) = bounded(1, Backpressure::Block(Duration::from_millis(20)));
        tx.send(1).unwrap();
        let t = Instant::now();
        assert!(matches!(tx.send(2), Err(SendError::Timeout(2))));
        assert!(t.elapsed() >= Duration::from_millis(20));
        // Room made by another thread ends the wait.
        let (tx, rx2) = bounded(1, Backpressure::Block(Duration::from_secs(10)));
        tx.send(1).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(10));
                rx2.try_recv()
            });
            tx.send(2).unwrap();
        });
        drop(rx);
    }

    #[test]
    fn batches_drain_in_order_and_memory_stays_bounded() {
        let (tx, rx) = bounded(8, Backpressure::Reject);
        let mut refused = 0;
        for i in 0..100 {
            if tx.send(i).is_err() {
                refused += 1;
            }
        }
        assert_eq!(
            (rx.len(), refused),
            (8, 92),
            "a flood cannot grow the queue"
        );
        let mut out = Vec::new();
        assert_eq!(rx.recv_batch(5, &mut out), 5);
        assert_eq!(rx.recv_batch(5, &mut out), 3);
        assert_eq!(out, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn disconnected_and_zero_capacity() {
        let (tx, rx) = bounded::<u8>(0, Backpressure::Reject);
        assert!(
            matches!(tx.send(1), Err(SendError::Full(1))),
            "rendezvous without a receiver waiting"
        );
        drop(rx);
        assert!(matches!(tx.send(1), Err(SendError::Disconnected(1))));
        assert_eq!(format!("{:?}", SendError::Full(String::new())), "Full(_)");
    }
}
