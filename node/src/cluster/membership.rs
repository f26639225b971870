//! Who is in the cluster: the gossip identity of a node and this node's view of the members.
//!
//! Plain data, no I/O: the gossip task refreshes the view from foca after every step.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A node's identity in gossip: its name, the generation of this incarnation, and the
/// addresses peers need. Two identities with the same gossip address are the same member;
/// the newer generation wins (see [`foca::Identity`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    pub name: String,
    /// Milliseconds since the Unix epoch when this identity was created; a restarted node, or
    /// one declared down that rejoins, has a larger one.
    pub generation: u64,
    pub gossip: SocketAddr,
    pub quic: SocketAddr,
    /// The client (HTTP + WebSocket) address.
    pub listen: SocketAddr,
}

impl NodeId {
    pub fn new(name: String, gossip: SocketAddr, quic: SocketAddr, listen: SocketAddr) -> Self {
        Self {
            name,
            generation: now_ms(),
            gossip,
            quic,
            listen,
        }
    }

    /// A stand-in for a seed whose identity is not known yet: only the gossip address
    /// matters, and any real identity at that address wins over it.
    pub fn seed(gossip: SocketAddr) -> Self {
        let nowhere = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        Self {
            name: String::new(),
            generation: 0,
            gossip,
            quic: nowhere,
            listen: nowhere,
        }
    }
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            generation: now_ms().max(self.generation + 1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
    /// Down because it said goodbye (graceful shutdown), not because it failed.
    Left,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberInfo {
    pub name: String,
    pub state: MemberState,
    pub generation: u64,
    pub listen: SocketAddr,
    pub gossip: SocketAddr,
    pub quic: SocketAddr,
}

/// This node's view of the cluster, as `GET /v1/cluster` shows it.
#[derive(Debug, Clone, Default)]
pub struct MembershipView {
    myself: Option<NodeId>,
    /// Keyed by gossip address, as foca keys members.
    members: BTreeMap<SocketAddr, (NodeId, foca::State)>,
    /// Nodes that announced their departure, with the generation they left as.
    left: HashMap<String, u64>,
    /// Whether another node has ever been seen alive: this node found its cluster.
    joined: bool,
}

impl MembershipView {
    pub fn set_self(&mut self, id: NodeId) {
        self.myself = Some(id);
    }

    pub fn myself(&self) -> Option<&NodeId> {
        self.myself.as_ref()
    }

    /// Replaces the member list with foca's current one.
    pub fn refresh<'a>(&mut self, members: impl Iterator<Item = &'a foca::Member<NodeId>>) {
        self.members.clear();
        for member in members {
            let id = member.id();
            if id.name.is_empty() {
                continue;
            }
            self.members.insert(id.gossip, (id.clone(), member.state()));
        }
        self.joined = self.joined || !self.live_peers().is_empty();
    }

    /// True once another node has been seen alive (it stays true after that node goes:
    /// losing peers is the majority rule's concern, not joining's).
    pub fn has_joined(&self) -> bool {
        self.joined
    }

    /// Records that `name` said goodbye as `generation`.
    pub fn mark_left(&mut self, name: &str, generation: u64) {
        let entry = self.left.entry(name.to_owned()).or_default();
        *entry = (*entry).max(generation);
    }

    /// True when `name` announced it was leaving (and has not come back since).
    pub fn has_left_named(&self, name: &str) -> bool {
        let generation = self
            .members
            .values()
            .filter(|(id, _)| id.name == name)
            .map(|(id, _)| id.generation)
            .max();
        match (self.left.get(name), generation) {
            (Some(&left), Some(current)) => current <= left,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// True when this identity is down because it left (a later generation is a restart).
    pub fn has_left(&self, id: &NodeId) -> bool {
        self.left.get(&id.name).is_some_and(|&g| id.generation <= g)
    }

    /// Every member including this node, sorted by name.
    pub fn members(&self) -> Vec<MemberInfo> {
        let mut out: Vec<MemberInfo> = self
            .members
            .values()
            .map(|(id, state)| {
                // A node that said goodbye over the mesh has left, whatever gossip says yet.
                let state = match state {
                    _ if self.has_left(id) => MemberState::Left,
                    foca::State::Alive => MemberState::Alive,
                    foca::State::Suspect => MemberState::Suspect,
                    foca::State::Down => MemberState::Down,
                };
                info(id, state)
            })
            .collect();
        if let Some(me) = &self.myself {
            out.push(info(me, MemberState::Alive));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.generation.cmp(&b.generation)));
        out
    }

    /// How many nodes the cluster has as this node sees it: itself and every other member
    /// (alive, suspect or down) that has not left; each name counts once.
    pub fn cluster_size(&self) -> usize {
        let others: std::collections::HashSet<&str> = self
            .members
            .values()
            .filter(|(id, _)| !self.has_left(id))
            .map(|(id, _)| id.name.as_str())
            .filter(|name| self.myself.as_ref().is_none_or(|me| me.name != *name))
            .collect();
        others.len() + 1
    }

    /// True when `addr` is the gossip address of a member (of any state).
    pub fn is_member_address(&self, addr: &SocketAddr) -> bool {
        self.members.contains_key(addr)
    }

    /// Names of the members currently alive or suspect, this node excluded.
    pub fn live_peers(&self) -> Vec<&NodeId> {
        self.live_peers_iter().collect()
    }

    /// [`live_peers`](Self::live_peers) without collecting them: placement runs for every
    /// publish and every sequenced event.
    pub fn live_peers_iter(&self) -> impl Iterator<Item = &NodeId> {
        self.members
            .values()
            .filter(|(id, s)| {
                matches!(s, foca::State::Alive | foca::State::Suspect) && !self.has_left(id)
            })
            .map(|(id, _)| id)
    }
}

fn info(id: &NodeId, state: MemberState) -> MemberInfo {
    MemberInfo {
        name: id.name.clone(),
        state,
        generation: id.generation,
        listen: id.listen,
        gossip: id.gossip,
        quic: id.quic,
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn renewal_bumps_the_generation_and_wins() {
        let id = NodeId::new("n1".into(), addr(1), addr(2), addr(3));
        let renewed = id.renew().unwrap();
        assert!(renewed.generation > id.generation);
        assert_eq!(renewed.addr(), id.addr());
        assert!(renewed.win_addr_conflict(&id));
        assert!(!id.win_addr_conflict(&renewed));
        assert!(id.win_addr_conflict(&NodeId::seed(addr(1))));
    }

    #[test]
    fn view_lists_members_with_states() {
        let me = NodeId::new("a".into(), addr(1), addr(2), addr(3));
        let b = NodeId::new("b".into(), addr(11), addr(12), addr(13));
        let c = NodeId::new("c".into(), addr(21), addr(22), addr(23));
        let d = NodeId::new("d".into(), addr(31), addr(32), addr(33));
        let mut view = MembershipView::default();
        view.set_self(me);
        let members = [
            foca::Member::alive(b.clone()),
            foca::Member::down(c.clone()),
            foca::Member::down(d.clone()),
            foca::Member::alive(NodeId::seed(addr(41))),
        ];
        view.refresh(members.iter());
        view.mark_left(&d.name, d.generation);
        let states: Vec<(String, MemberState)> = view
            .members()
            .into_iter()
            .map(|m| (m.name, m.state))
            .collect();
        assert_eq!(
            states,
            vec![
                ("a".into(), MemberState::Alive),
                ("b".into(), MemberState::Alive),
                ("c".into(), MemberState::Down),
                ("d".into(), MemberState::Left),
            ]
        );
        assert_eq!(view.live_peers(), vec![&b]);
        assert!(view.has_joined());
        view.refresh(std::iter::empty());
        assert!(view.has_joined(), "once joined, always joined");
        let mut alone = MembershipView::default();
        alone.refresh(
            [
                foca::Member::down(c),
                foca::Member::alive(NodeId::seed(addr(41))),
            ]
            .iter(),
        );
        assert!(
            !alone.has_joined(),
            "a down member or a seed placeholder is no company"
        );
    }
}
