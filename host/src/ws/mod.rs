//! WebSocket in the host: the upgrade, the connection loop, rooms, and rooms
//! across nodes.
//!
//! [`cluster`] is the seam between this node's rooms and the other nodes: the
//! rooms call a [`cluster::Cluster`] when membership changes or a broadcast is
//! made, and a cluster adapter delivers broadcasts from other nodes through
//! [`cluster::LocalRooms`].

pub mod cluster;
pub mod redis;
