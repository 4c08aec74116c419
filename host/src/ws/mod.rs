//! WebSocket in the host: the upgrade, the connection loop, rooms, and rooms
//! across nodes.
//!
//! - [`handshake`]: the checks on the client's opening handshake and
//!   `Sec-WebSocket-Accept`.
//! - [`conn`]: one connection's bounded queues between the plugin side and
//!   the proxy task that owns the socket, and the slow-client policy.
//! - [`pump`]: that task's loop on Pingora's upgraded session.
//! - [`rooms`]: this node's rooms.
//! - [`cluster`] is the seam between this node's rooms and the other nodes:
//!   the rooms call a [`cluster::Cluster`] when membership changes or a
//!   broadcast is made, and a cluster adapter delivers broadcasts from other
//!   nodes through [`cluster::LocalRooms`].
//! - [`redis`]: the cluster adapter on one Redis, with upstream Nylon's keys
//!   and event JSON.

pub mod cluster;
pub mod conn;
pub mod handshake;
pub mod pump;
pub mod redis;
pub mod rooms;
