//! The registry of agents: who registered, with what capacity and labels, and whether they are
//! still heard from. Pure bookkeeping; the caller passes the time in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::partition::Resources;

/// What an agent says of itself when it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Its id, stable across restarts of the agent.
    pub id: String,
    /// Where it can be reached, for people and tools.
    pub address: String,
    /// What it offers.
    pub capacity: Resources,
    /// Its labels (`arch`, `zone`, ...), matched by task constraints.
    pub labels: BTreeMap<String, String>,
    /// Its Corral version.
    pub version: String,
}

/// Whether an agent is heard from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Attached and heartbeating.
    Active,
    /// Its stream is down; it becomes lost unless it comes back within the timeout.
    Disconnected,
    /// Silent past the timeout: its tasks were declared LOST.
    Lost,
}

impl AgentState {
    /// The state's name as the CLI shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Active => "active",
            AgentState::Disconnected => "disconnected",
            AgentState::Lost => "lost",
        }
    }
}

/// One agent as the host tracks it.
#[derive(Clone, Debug)]
pub struct AgentEntry {
    /// What it said of itself.
    pub info: AgentInfo,
    /// Whether it is heard from.
    pub state: AgentState,
    /// The session of its latest registration; a stream naming another is refused.
    pub session: u64,
    /// When it was last heard from.
    pub last_seen: Instant,
    /// The same, as wall-clock milliseconds, for display.
    pub last_seen_ms: i64,
}

/// The agents, by id.
#[derive(Debug, Default)]
pub struct Registry {
    agents: BTreeMap<String, AgentEntry>,
    next_session: u64,
}

impl Registry {
    /// Records a registration: a new agent, or one coming back (with a new session).
    /// Answers the session.
    pub fn register(&mut self, info: AgentInfo, now: Instant, now_ms: i64) -> u64 {
        self.next_session += 1;
        let session = self.next_session;
        let entry = AgentEntry {
            info,
            state: AgentState::Disconnected,
            session,
            last_seen: now,
            last_seen_ms: now_ms,
        };
        self.agents.insert(entry.info.id.clone(), entry);
        session
    }

    /// The last session handed out.
    pub fn last_session(&self) -> u64 {
        self.next_session
    }

    /// Hands out sessions after `last` from now on (a state restored in the same process as
    /// one that handed them out).
    pub fn continue_sessions_after(&mut self, last: u64) {
        self.next_session = self.next_session.max(last);
    }

    /// Restores an agent known from the store, as disconnected since `now`: it has one timeout
    /// to come back.
    pub fn restore(&mut self, info: AgentInfo, now: Instant, last_seen_ms: i64) {
        let entry = AgentEntry {
            info,
            state: AgentState::Disconnected,
            // No session: sessions are handed out from 1, and 0 is never current.
            session: 0,
            last_seen: now,
            last_seen_ms,
        };
        self.agents.insert(entry.info.id.clone(), entry);
    }

    /// Marks the agent heard from. False when the session is not its current one, or ended
    /// when the agent was declared lost: a lost agent's tasks went elsewhere, and it must
    /// register again (and be reconciled) before it is trusted with more.
    pub fn heard(&mut self, id: &str, session: u64, now: Instant, now_ms: i64) -> bool {
        match self.agents.get_mut(id) {
            Some(entry)
                if session != 0 && entry.session == session && entry.state != AgentState::Lost =>
            {
                entry.state = AgentState::Active;
                // Reports can reach the host out of the order they were stamped in.
                entry.last_seen = entry.last_seen.max(now);
                entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
                true
            }
            _ => false,
        }
    }

    /// Marks the agent's stream down, if `session` is still its current one.
    pub fn disconnected(&mut self, id: &str, session: u64) -> bool {
        match self.agents.get_mut(id) {
            Some(entry) if entry.session == session && entry.state == AgentState::Active => {
                entry.state = AgentState::Disconnected;
                true
            }
            _ => false,
        }
    }

    /// Agents not heard from within `timeout` of `now`, and not yet lost; marks them lost.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<String> {
        let mut lost = Vec::new();
        for (id, entry) in &mut self.agents {
            if entry.state != AgentState::Lost && now.duration_since(entry.last_seen) > timeout {
                entry.state = AgentState::Lost;
                lost.push(id.clone());
            }
        }
        lost
    }

    /// One agent.
    pub fn get(&self, id: &str) -> Option<&AgentEntry> {
        self.agents.get(id)
    }

    /// Every agent, by id.
    pub fn iter(&self) -> impl Iterator<Item = &AgentEntry> {
        self.agents.values()
    }

    /// True when no agent was ever registered (or restored).
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> AgentInfo {
        AgentInfo {
            id: id.into(),
            address: String::new(),
            capacity: Resources {
                slots: 1,
                memory_bytes: 1,
            },
            labels: BTreeMap::new(),
            version: "0".into(),
        }
    }

    #[test]
    fn silent_agents_expire_once_and_heartbeats_keep_others_alive() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut registry = Registry::default();
        let s1 = registry.register(info("a"), t0, 0);
        let s2 = registry.register(info("b"), t0, 0);
        assert!(registry.heard("a", s1, t0, 0));
        assert!(registry.heard("b", s2, t0 + Duration::from_secs(8), 0));
        assert_eq!(
            registry.expire(t0 + Duration::from_secs(11), timeout),
            ["a"]
        );
        assert_eq!(registry.get("a").unwrap().state, AgentState::Lost);
        assert!(
            !registry.heard("a", s1, t0 + Duration::from_secs(12), 0),
            "a lost agent's session is over"
        );
        assert!(registry
            .expire(t0 + Duration::from_secs(12), timeout)
            .is_empty());
        assert_eq!(
            registry.expire(t0 + Duration::from_secs(19), timeout),
            ["b"]
        );
    }

    #[test]
    fn a_restored_agent_is_heard_only_once_it_registers() {
        let t0 = Instant::now();
        let mut registry = Registry::default();
        registry.restore(info("a"), t0, 0);
        assert!(!registry.heard("a", 0, t0, 0));
        assert_eq!(registry.get("a").unwrap().state, AgentState::Disconnected);
        let s = registry.register(info("a"), t0, 0);
        assert!(registry.heard("a", s, t0, 0));
    }

    #[test]
    fn a_late_stamp_does_not_move_last_seen_back() {
        let t0 = Instant::now();
        let mut registry = Registry::default();
        let s = registry.register(info("a"), t0, 0);
        assert!(registry.heard("a", s, t0 + Duration::from_secs(5), 5_000));
        assert!(registry.heard("a", s, t0 + Duration::from_secs(3), 3_000));
        assert!(registry
            .expire(t0 + Duration::from_secs(14), Duration::from_secs(10))
            .is_empty());
        assert_eq!(registry.get("a").unwrap().last_seen_ms, 5_000);
    }

    #[test]
    fn a_stale_session_is_not_heard() {
        let t0 = Instant::now();
        let mut registry = Registry::default();
        let old = registry.register(info("a"), t0, 0);
        let new = registry.register(info("a"), t0, 0);
        assert_ne!(new, old);
        assert!(!registry.heard("a", old, t0, 0));
        assert!(!registry.disconnected("a", old));
        assert!(registry.heard("a", new, t0, 0));
        assert!(registry.disconnected("a", new));
        assert_eq!(registry.get("a").unwrap().state, AgentState::Disconnected);
    }
}
