//! This node's rooms: membership in two concurrent maps (room → members,
//! connection → rooms), join and leave, broadcasts to every member **sender
//! included** (as upstream Nylon), and cleanup when a connection ends.
//!
//! A broadcast encodes its frame once and `try_send`s the shared bytes into
//! each member's bounded [`Outbox`]: it never waits on a member. A member
//! whose queue is full is condemned by the slow-client policy (close 1013,
//! see [`conn`](super::conn)), the other members get the message.
//!
//! When a [`Cluster`] is set, every change and broadcast is also told to it
//! (it carries broadcasts to the other nodes); broadcasts from other nodes
//! come back through [`LocalRooms::deliver`].
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use dashmap::DashMap;
use nylon_transport::ws::{opcode, write_frame};

use super::cluster::{Cluster, ConnId, LocalRooms, RoomMessage};
use super::conn::{Outbox, PushError};

/// A connection known to the rooms.
#[derive(Debug)]
struct Member {
    outbox: Arc<Outbox>,
    rooms: Vec<Arc<str>>,
}

/// This node's rooms (see the [module docs](self)).
#[derive(Default)]
pub struct Rooms {
    /// room → its members. Lock order: a `conns` shard, then a `rooms`
    /// shard; never the other way.
    rooms: DashMap<Arc<str>, HashMap<ConnId, Arc<Outbox>>>,
    conns: DashMap<ConnId, Member>,
    cluster: OnceLock<Arc<dyn Cluster>>,
    /// Members a broadcast could not reach because their queue was full.
    dropped: AtomicU64,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms")
            .field("rooms", &self.rooms.len())
            .field("connections", &self.conns.len())
            .field("cluster", &self.cluster.get().map(|c| c.node_id()))
            .finish_non_exhaustive()
    }
}

/// The server frame of a room message.
fn frame(msg: &RoomMessage) -> Bytes {
    let (op, data) = match msg {
        RoomMessage::Text(b) => (opcode::TEXT, b),
        RoomMessage::Binary(b) => (opcode::BINARY, b),
    };
    let mut out = Vec::with_capacity(data.len() + 10);
    write_frame(&mut out, op, data);
    Bytes::from(out)
}

impl Rooms {
    /// Rooms of a node on its own (no cluster).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects the rooms to a cluster adapter (once; `Err` gives it back if
    /// one is set already).
    ///
    /// # Errors
    ///
    /// A cluster was set before.
    pub fn set_cluster(&self, cluster: Arc<dyn Cluster>) -> Result<(), Arc<dyn Cluster>> {
        self.cluster.set(cluster)
    }

    /// The cluster adapter, if any.
    pub fn cluster(&self) -> Option<&Arc<dyn Cluster>> {
        self.cluster.get()
    }

    /// A connection was accepted.
    pub fn open(&self, id: &ConnId, outbox: Arc<Outbox>) {
        self.conns.insert(
            Arc::clone(id),
            Member {
                outbox,
                rooms: Vec::new(),
            },
        );
        if let Some(c) = self.cluster.get() {
            c.connection_opened(id);
        }
    }

    /// A connection ended: it leaves every room.
    pub fn close(&self, id: &ConnId) {
        let Some((_, member)) = self.conns.remove(id) else {
            return;
        };
        for room in &member.rooms {
            self.remove_member(room, id);
        }
        if let Some(c) = self.cluster.get() {
            c.connection_closed(id);
        }
    }

    fn remove_member(&self, room: &str, id: &ConnId) {
        if let Some(mut m) = self.rooms.get_mut(room) {
            m.remove(id);
        }
        self.rooms.remove_if(room, |_, m| m.is_empty());
    }

    /// `id` joins `room` (no effect if it is a member or unknown).
    pub fn join(&self, id: &ConnId, room: &str) {
        let Some(mut member) = self.conns.get_mut(id) else {
            return;
        };
        if member.rooms.iter().any(|r| &**r == room) {
            return;
        }
        let room: Arc<str> = room.into();
        member.rooms.push(Arc::clone(&room));
        self.rooms
            .entry(Arc::clone(&room))
            .or_default()
            .insert(Arc::clone(id), Arc::clone(&member.outbox));
        drop(member);
        if let Some(c) = self.cluster.get() {
            c.joined(id, &room);
        }
    }

    /// `id` leaves `room` (no effect if it is not a member).
    pub fn leave(&self, id: &ConnId, room: &str) {
        let Some(mut member) = self.conns.get_mut(id) else {
            return;
        };
        let Some(i) = member.rooms.iter().position(|r| &**r == room) else {
            return;
        };
        member.rooms.swap_remove(i);
        self.remove_member(room, id);
        drop(member);
        if let Some(c) = self.cluster.get() {
            c.left(id, room);
        }
    }

    /// Sends `msg` to every member of `room` on this node (the sender
    /// included), then to the cluster. Returns how many members got it.
    pub fn broadcast(&self, room: &str, msg: &RoomMessage) -> usize {
        let n = self.deliver_local(room, msg);
        if let Some(c) = self.cluster.get() {
            c.broadcast(room, msg);
        }
        n
    }

    fn deliver_local(&self, room: &str, msg: &RoomMessage) -> usize {
        let Some(members) = self.rooms.get(room) else {
            return 0;
        };
        let frame = frame(msg);
        let mut sent = 0;
        for outbox in members.values() {
            match outbox.push(frame.clone()) {
                Ok(()) => sent += 1,
                Err(PushError::Full) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(PushError::Closed) => {}
            }
        }
        sent
    }

    /// Members of `room` on this node.
    #[must_use]
    pub fn members(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |m| m.len())
    }

    /// Connections known to the rooms.
    #[must_use]
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Broadcast deliveries refused by a full member queue.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl LocalRooms for Rooms {
    fn deliver(&self, room: &str, msg: &RoomMessage) {
        self.deliver_local(room, msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::conn::{WsConfig, CLOSE_SLOW};

    fn conn(
        rooms: &Rooms,
        cfg: &WsConfig,
    ) -> (ConnId, Arc<Outbox>, tokio::sync::mpsc::Receiver<Bytes>) {
        let (o, rx) = Outbox::new(cfg);
        let id: ConnId = uuid::Uuid::new_v4().to_string().into();
        rooms.open(&id, Arc::clone(&o));
        (id, o, rx)
    }

    #[test]
    fn broadcast_reaches_every_member_sender_included_and_cleanup_on_close() {
        let rooms = Rooms::new();
        let cfg = WsConfig::default();
        let (a, _oa, mut ra) = conn(&rooms, &cfg);
        let (b, _ob, mut rb) = conn(&rooms, &cfg);
        let (_c, _oc, mut rc) = conn(&rooms, &cfg);
        rooms.join(&a, "r");
        rooms.join(&b, "r");
        rooms.join(&b, "r");
        assert_eq!(rooms.members("r"), 2);
        let n = rooms.broadcast("r", &RoomMessage::Text(Bytes::from_static(b"hi")));
        assert_eq!(n, 2);
        assert_eq!(&ra.try_recv().expect("a")[..], b"\x81\x02hi");
        assert_eq!(&rb.try_recv().expect("b")[..], b"\x81\x02hi");
        assert!(rc.try_recv().is_err());
        rooms.leave(&a, "r");
        assert_eq!(rooms.members("r"), 1);
        rooms.close(&b);
        assert_eq!(rooms.members("r"), 0);
        assert_eq!(rooms.connections(), 2);
        assert_eq!(rooms.broadcast("r", &RoomMessage::Binary(Bytes::new())), 0);
    }

    #[test]
    fn a_full_member_does_not_stop_the_others() {
        let rooms = Rooms::new();
        let slow = WsConfig {
            queue: 1,
            ..WsConfig::default()
        };
        let (a, oa, _ra) = conn(&rooms, &slow);
        let (b, _ob, mut rb) = conn(&rooms, &WsConfig::default());
        rooms.join(&a, "r");
        rooms.join(&b, "r");
        for i in 0..10u8 {
            rooms.broadcast("r", &RoomMessage::Binary(Bytes::from(vec![i])));
        }
        assert_eq!(oa.close_code(), Some(CLOSE_SLOW));
        assert_eq!(rooms.dropped(), 9);
        for i in 0..10u8 {
            assert_eq!(
                &rb.try_recv().expect("b keeps receiving")[..],
                &[0x82, 1, i]
            );
        }
    }
}
