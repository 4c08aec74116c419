//! The seam between this node's rooms and the rest of a cluster.
//!
//! Local delivery never goes through a [`Cluster`]: a broadcast made on this
//! node reaches this node's members directly, and the cluster only carries it
//! to the other nodes. A broadcast from another node arrives through
//! [`LocalRooms::deliver`]. Every method here is called on a proxy task or a
//! plugin thread in the middle of a phase, so none of them may wait: an
//! adapter queues the work for its own task and returns.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// A connection's id: a uuid v4 string, unique across the cluster (upstream
/// Nylon's connection ids have the same form).
pub type ConnId = Arc<str>;

/// A data message broadcast to a room. Cloning shares the bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum RoomMessage {
    /// A text message (valid UTF-8).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl fmt::Debug for RoomMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(b) => write!(f, "Text({} bytes)", b.len()),
            Self::Binary(b) => write!(f, "Binary({} bytes)", b.len()),
        }
    }
}

/// What a cluster adapter is told about this node's connections and rooms.
///
/// No method waits: each one queues its work (bounded; what cannot be queued
/// is dropped and counted) and returns.
pub trait Cluster: Send + Sync + 'static {
    /// This node's id (a uuid v4 string).
    fn node_id(&self) -> &str;
    /// A WebSocket connection was accepted on this node.
    fn connection_opened(&self, conn: &ConnId);
    /// A connection of this node ended; it has left every room.
    fn connection_closed(&self, conn: &ConnId);
    /// A connection of this node joined `room`.
    fn joined(&self, conn: &ConnId, room: &str);
    /// A connection of this node left `room`.
    fn left(&self, conn: &ConnId, room: &str);
    /// A plugin on this node broadcast `msg` to `room`: carry it to the
    /// other nodes (this node's members already have it).
    fn broadcast(&self, room: &str, msg: &RoomMessage);
}

/// This node's rooms, as a cluster adapter sees them.
pub trait LocalRooms: Send + Sync + 'static {
    /// Delivers a broadcast that another node made to this node's members of
    /// `room`. Never waits: a member whose outgoing queue is full is handled
    /// by the slow-client policy, not waited for.
    fn deliver(&self, room: &str, msg: &RoomMessage);
}
