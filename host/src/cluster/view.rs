//! This node's picture of the other nodes' connections: who is where, in
//! which scope and groups, with which attachment. Host calls read it and
//! never wait on the network; the broker keeps it current.
//!
//! Each node numbers its presence changes (`seq`). A change is applied in
//! order; one already seen is ignored; one that skips a number is applied
//! and marks the node for a full read ([`View::replace`]), as does a node
//! seen for the first time or restarted (a new incarnation). So a lost
//! update is repaired at the next read, and a late full read never undoes
//! a newer change.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::cluster::envelope::{Member, Scope};

/// The other nodes' connections.
#[derive(Default)]
pub struct View {
    nodes: HashMap<Arc<str>, Node>,
    conns: HashMap<u64, Remote>,
    routes: HashMap<Arc<str>, RouteIndex>,
}

/// What is known of one other node.
struct Node {
    incarnation: u64,
    /// The last presence change applied.
    seq: u64,
    conns: HashSet<u64>,
}

/// A connection on another node.
pub struct Remote {
    /// The node serving it.
    pub node: Arc<str>,
    /// What it is.
    pub member: Member,
}

/// One route's connections by scope and by group.
#[derive(Default)]
struct RouteIndex {
    scopes: HashMap<Scope, Index>,
    groups: HashMap<String, Index>,
}

/// A set of connections and the nodes they are on.
#[derive(Default)]
struct Index {
    members: BTreeSet<u64>,
    /// How many of `members` each node serves.
    nodes: BTreeMap<Arc<str>, usize>,
}

impl Index {
    fn add(&mut self, id: u64, node: &Arc<str>) {
        if self.members.insert(id) {
            *self.nodes.entry(node.clone()).or_default() += 1;
        }
    }

    /// Removes `id`; returns whether the index is empty now.
    fn remove(&mut self, id: u64, node: &str) -> bool {
        if self.members.remove(&id)
            && let Some(count) = self.nodes.get_mut(node)
        {
            *count -= 1;
            if *count == 0 {
                self.nodes.remove(node);
            }
        }
        self.members.is_empty()
    }
}

/// Who a broadcast or publish reaches on other nodes.
#[derive(Default)]
pub struct Reach {
    /// How many connections.
    pub count: u32,
    /// The nodes serving them.
    pub nodes: Vec<Arc<str>>,
}

impl Reach {
    fn add(&mut self, set: &Index, except: Option<u64>) {
        let excepted = except.is_some_and(|id| set.members.contains(&id));
        self.count += (set.members.len() - usize::from(excepted)) as u32;
    }
}

/// What applying a change found.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// In order: nothing more to do.
    Current,
    /// The node's presence should be read again in full.
    Resync,
}

/// A presence change, as a node announced it.
pub enum Change {
    /// The node rewrote its presence: read it again.
    Hello,
    /// A connection opened or changed.
    Upsert(Member),
    /// A connection closed.
    Gone(u64),
}

impl View {
    /// Applies change number `seq` of `node`.
    pub fn apply(&mut self, node: &str, incarnation: u64, seq: u64, change: Change) -> Applied {
        let mut applied = Applied::Current;
        let known = self.nodes.get(node).map(|n| (n.incarnation, n.seq));
        let last = match known {
            Some((inc, seq)) if inc == incarnation => seq,
            Some(_) => {
                // Restarted under the same id: what it had is gone.
                self.forget_node(node);
                applied = Applied::Resync;
                0
            }
            None => {
                applied = Applied::Resync;
                0
            }
        };
        let node: Arc<str> = self.node_entry(node, incarnation);
        if let Change::Hello = change {
            return Applied::Resync;
        }
        if seq <= last {
            return applied;
        }
        if seq != last + 1 {
            applied = Applied::Resync;
        }
        self.nodes.get_mut(&node).expect("entry made above").seq = seq;
        match change {
            Change::Upsert(member) => self.insert(&node, member),
            Change::Gone(id) => self.remove(id),
            Change::Hello => unreachable!("returned above"),
        }
        applied
    }

    /// Replaces what is known of `node` with its presence as read in full
    /// at change `seq`, unless a newer change has been applied since.
    /// Returns whether it was applied.
    pub fn replace(
        &mut self,
        node: &str,
        incarnation: u64,
        seq: u64,
        members: Vec<Member>,
    ) -> bool {
        if let Some(known) = self.nodes.get(node)
            && known.incarnation == incarnation
            && known.seq > seq
        {
            return false;
        }
        self.forget_node(node);
        let node = self.node_entry(node, incarnation);
        self.nodes.get_mut(&node).expect("entry made above").seq = seq;
        for member in members {
            self.insert(&node, member);
        }
        true
    }

    /// The node is dead or gone: its connections leave the view.
    pub fn forget_node(&mut self, node: &str) {
        if let Some(entry) = self.nodes.remove(node) {
            for id in entry.conns {
                self.remove(id);
            }
        }
    }

    /// The nodes with connections or presence known here.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<str>> {
        self.nodes.keys()
    }

    /// How many connections other nodes serve.
    pub fn count(&self) -> usize {
        self.conns.len()
    }

    /// The connection `id`, if another node serves it.
    pub fn get(&self, id: u64) -> Option<&Remote> {
        self.conns.get(&id)
    }

    /// The connections of `route` within reach of an instance with
    /// `scope`, sorted.
    pub fn in_scope(&self, route: &str, scope: &Scope) -> Vec<u64> {
        let Some(index) = self.routes.get(route) else {
            return Vec::new();
        };
        let mut members: Vec<u64> = index
            .scopes
            .iter()
            .filter(|(their, _)| scope.reaches(their))
            .flat_map(|(_, set)| set.members.iter().copied())
            .collect();
        members.sort_unstable();
        members
    }

    /// How many connections of `route` an instance with `scope` reaches,
    /// `except` aside, and the nodes serving them: what a broadcast needs,
    /// without listing the members.
    pub fn scope_reach(&self, route: &str, scope: &Scope, except: Option<u64>) -> Reach {
        let mut reach = Reach::default();
        let Some(index) = self.routes.get(route) else {
            return reach;
        };
        let mut nodes = BTreeSet::new();
        for (their, set) in &index.scopes {
            if scope.reaches(their) {
                reach.add(set, except);
                nodes.extend(set.nodes.keys().cloned());
            }
        }
        reach.nodes = nodes.into_iter().collect();
        reach
    }

    /// [`View::scope_reach`] for the members of `group` of `route`.
    pub fn group_reach(&self, route: &str, group: &str, except: Option<u64>) -> Reach {
        let mut reach = Reach::default();
        if let Some(set) = self.routes.get(route).and_then(|i| i.groups.get(group)) {
            reach.add(set, except);
            reach.nodes = set.nodes.keys().cloned().collect();
        }
        reach
    }

    /// The members of `group` of `route`, sorted.
    pub fn in_group(&self, route: &str, group: &str) -> Vec<u64> {
        self.routes
            .get(route)
            .and_then(|index| index.groups.get(group))
            .map(|set| set.members.iter().copied().collect())
            .unwrap_or_default()
    }

    fn node_entry(&mut self, node: &str, incarnation: u64) -> Arc<str> {
        if let Some((name, _)) = self.nodes.get_key_value(node) {
            return name.clone();
        }
        let name: Arc<str> = node.into();
        self.nodes.insert(
            name.clone(),
            Node {
                incarnation,
                seq: 0,
                conns: HashSet::new(),
            },
        );
        name
    }

    fn insert(&mut self, node: &Arc<str>, member: Member) {
        // A connection changes as a whole: take the old one out first.
        self.remove(member.id);
        let route = match self.routes.get_key_value(member.route.as_str()) {
            Some((name, _)) => name.clone(),
            None => Arc::from(member.route.as_str()),
        };
        let index = self.routes.entry(route).or_default();
        if member.scope != Scope::Own {
            index
                .scopes
                .entry(member.scope.clone())
                .or_default()
                .add(member.id, node);
        }
        for group in &member.groups {
            index
                .groups
                .entry(group.clone())
                .or_default()
                .add(member.id, node);
        }
        if let Some(entry) = self.nodes.get_mut(node) {
            entry.conns.insert(member.id);
        }
        self.conns.insert(
            member.id,
            Remote {
                node: node.clone(),
                member,
            },
        );
    }

    fn remove(&mut self, id: u64) {
        let Some(Remote { node, member }) = self.conns.remove(&id) else {
            return;
        };
        if let Some(entry) = self.nodes.get_mut(&node) {
            entry.conns.remove(&id);
        }
        let Some(index) = self.routes.get_mut(member.route.as_str()) else {
            return;
        };
        if let Some(set) = index.scopes.get_mut(&member.scope)
            && set.remove(id, &node)
        {
            index.scopes.remove(&member.scope);
        }
        for group in &member.groups {
            if let Some(set) = index.groups.get_mut(group)
                && set.remove(id, &node)
            {
                index.groups.remove(group);
            }
        }
        if index.scopes.is_empty() && index.groups.is_empty() {
            self.routes.remove(member.route.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, route: &str, scope: Scope, groups: &[&str]) -> Member {
        let mut member = Member::new(id, route, scope);
        member.groups = groups.iter().map(|g| g.to_string()).collect();
        member
    }

    fn upsert(view: &mut View, node: &str, seq: u64, m: Member) -> Applied {
        view.apply(node, 1, seq, Change::Upsert(m))
    }

    #[test]
    fn scopes_groups_and_nodes_follow_upserts_and_goes() {
        let mut view = View::default();
        let lounge = Scope::Key("lounge".into());
        assert_eq!(
            upsert(
                &mut view,
                "a",
                1,
                member(1, "rooms", lounge.clone(), &["g"])
            ),
            Applied::Resync,
            "a node seen for the first time is read in full"
        );
        upsert(
            &mut view,
            "a",
            2,
            member(2, "rooms", Scope::Key("attic".into()), &[]),
        );
        upsert(
            &mut view,
            "b",
            1,
            member(3, "rooms", lounge.clone(), &["g"]),
        );
        upsert(&mut view, "b", 2, member(4, "chat", Scope::Route, &[]));

        assert_eq!(view.in_scope("rooms", &lounge), [1, 3]);
        assert_eq!(view.in_scope("rooms", &Scope::Route), [1, 2, 3]);
        assert_eq!(view.in_scope("rooms", &Scope::Own), Vec::<u64>::new());
        assert_eq!(view.in_group("rooms", "g"), [1, 3]);
        assert_eq!(view.in_group("chat", "g"), Vec::<u64>::new());

        // Leaving the group is a new record without it.
        upsert(&mut view, "b", 3, member(3, "rooms", lounge.clone(), &[]));
        assert_eq!(view.in_group("rooms", "g"), [1]);
        assert_eq!(view.group_reach("rooms", "g", None).nodes.len(), 1);
        assert_eq!(view.apply("a", 1, 3, Change::Gone(1)), Applied::Current);
        assert!(view.in_group("rooms", "g").is_empty());
        assert_eq!(view.in_scope("rooms", &lounge), [3]);
        assert_eq!(view.count(), 3);

        view.forget_node("b");
        assert_eq!(view.count(), 1);
        assert!(view.in_scope("chat", &Scope::Route).is_empty());
        assert_eq!(view.get(2).unwrap().node.as_ref(), "a");
    }

    #[test]
    fn reach_counts_members_in_scope_or_group_but_the_excepted_one() {
        let mut view = View::default();
        let lounge = Scope::Key("lounge".into());
        upsert(
            &mut view,
            "a",
            1,
            member(1, "rooms", lounge.clone(), &["g"]),
        );
        upsert(
            &mut view,
            "b",
            1,
            member(2, "rooms", lounge.clone(), &["g"]),
        );
        upsert(
            &mut view,
            "b",
            2,
            member(3, "rooms", Scope::Key("attic".into()), &[]),
        );
        let names = |reach: &Reach| {
            reach
                .nodes
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
        };
        let reach = view.scope_reach("rooms", &lounge, None);
        assert_eq!(
            (reach.count, names(&reach)),
            (2, vec!["a".into(), "b".into()])
        );
        assert_eq!(view.scope_reach("rooms", &lounge, Some(2)).count, 1);
        assert_eq!(view.scope_reach("rooms", &lounge, Some(3)).count, 2);
        assert_eq!(view.scope_reach("rooms", &Scope::Route, None).count, 3);
        assert_eq!(view.scope_reach("rooms", &Scope::Own, None).count, 0);
        assert_eq!(view.scope_reach("chat", &Scope::Route, None).count, 0);
        assert_eq!(view.group_reach("rooms", "g", Some(1)).count, 1);
        assert_eq!(names(&view.group_reach("rooms", "g", None)), ["a", "b"]);
        assert_eq!(view.group_reach("rooms", "h", None).count, 0);
    }

    #[test]
    fn old_changes_are_ignored_and_gaps_ask_for_a_full_read() {
        let mut view = View::default();
        upsert(&mut view, "a", 1, member(1, "chat", Scope::Route, &[]));
        assert_eq!(view.apply("a", 1, 1, Change::Gone(1)), Applied::Current);
        assert!(view.get(1).is_some(), "a replayed change is ignored");
        assert_eq!(
            upsert(&mut view, "a", 5, member(2, "chat", Scope::Route, &[])),
            Applied::Resync
        );
        assert!(view.get(2).is_some(), "applied all the same");
        assert_eq!(view.apply("a", 1, 5, Change::Hello), Applied::Resync);
    }

    #[test]
    fn a_full_read_replaces_unless_older_than_what_was_applied() {
        let mut view = View::default();
        upsert(&mut view, "a", 1, member(1, "chat", Scope::Route, &[]));
        upsert(&mut view, "a", 2, member(2, "chat", Scope::Route, &[]));
        assert!(!view.replace("a", 1, 1, vec![member(1, "chat", Scope::Route, &[])]));
        assert!(view.get(2).is_some());
        assert!(view.replace("a", 1, 4, vec![member(9, "chat", Scope::Route, &[])]));
        assert!(view.get(1).is_none() && view.get(2).is_none());
        assert_eq!(view.in_scope("chat", &Scope::Route), [9]);
    }

    #[test]
    fn a_restarted_node_loses_what_it_had() {
        let mut view = View::default();
        for seq in 1..=3 {
            upsert(&mut view, "a", seq, member(seq, "chat", Scope::Route, &[]));
        }
        // Same id, new process: its sequence starts again.
        assert_eq!(
            view.apply(
                "a",
                2,
                1,
                Change::Upsert(member(10, "chat", Scope::Route, &[]))
            ),
            Applied::Resync
        );
        assert_eq!(view.in_scope("chat", &Scope::Route), [10]);
    }
}
