//! Partitions: slices of one agent's capacity (slots and memory), optionally reserved for a
//! tenant or for tasks carrying some labels, and how an agent's capacity is carved into them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An amount of capacity: concurrent task slots and memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// Concurrent tasks.
    pub slots: u32,
    /// Bytes of memory.
    pub memory_bytes: u64,
}

impl Resources {
    /// No limit.
    pub const UNLIMITED: Resources = Resources {
        slots: u32::MAX,
        memory_bytes: u64::MAX,
    };

    /// True when `other` fits within `self`.
    pub fn covers(&self, other: &Resources) -> bool {
        self.slots >= other.slots && self.memory_bytes >= other.memory_bytes
    }

    /// `self - other`, floored at zero.
    pub fn minus(&self, other: &Resources) -> Resources {
        Resources {
            slots: self.slots.saturating_sub(other.slots),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
        }
    }

    /// `self + other`.
    pub fn plus(&self, other: &Resources) -> Resources {
        Resources {
            slots: self.slots.saturating_add(other.slots),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }
}

/// A partition's state, derived from its allocation and its agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionState {
    /// Has free capacity.
    Available,
    /// Fully allocated: no free slot or no free memory.
    Allocated,
    /// Takes no new tasks (its agent is away); what runs there may finish.
    Draining,
}

impl PartitionState {
    /// The state's name as the CLI shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionState::Available => "available",
            PartitionState::Allocated => "allocated",
            PartitionState::Draining => "draining",
        }
    }
}

/// Who may use a partition. An empty reservation admits every task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Only tasks of this tenant.
    pub tenant: Option<String>,
    /// Only tasks carrying every one of these labels.
    pub labels: BTreeMap<String, String>,
}

impl Reservation {
    /// Whether the partition is set aside for some tenant or labels (else it is shared).
    pub fn is_reserved(&self) -> bool {
        self.tenant.is_some() || !self.labels.is_empty()
    }

    /// Whether a task of `tenant` with `labels` may use the partition.
    pub fn admits(&self, tenant: &str, labels: &BTreeMap<String, String>) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant) && contains_all(labels, &self.labels)
    }

    /// True when the reservation admits every task.
    pub fn is_open(&self) -> bool {
        self.tenant.is_none() && self.labels.is_empty()
    }
}

/// A slice of one agent's capacity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// `<agent id>/<name>`.
    pub id: String,
    /// The agent whose capacity this is.
    pub agent_id: String,
    /// Its name on the agent (`default` for the shared remainder).
    pub name: String,
    /// What it holds.
    pub capacity: Resources,
    /// What placed tasks take from it now.
    pub allocated: Resources,
    /// Who may use it.
    pub reservation: Reservation,
    /// Its agent's labels (matched by task constraints), kept here so that a snapshot of every
    /// partition needs no lookup in the registry. Not stored: restored from the agent's record.
    pub agent_labels: BTreeMap<String, String>,
    /// Takes no new tasks.
    pub draining: bool,
}

impl Partition {
    /// Capacity not yet allocated.
    pub fn free(&self) -> Resources {
        self.capacity.minus(&self.allocated)
    }

    /// Its state now.
    pub fn state(&self) -> PartitionState {
        let free = self.free();
        if self.draining {
            PartitionState::Draining
        } else if free.slots == 0 || free.memory_bytes == 0 {
            PartitionState::Allocated
        } else {
            PartitionState::Available
        }
    }
}

/// A named partition that the host's config carves out of every agent it selects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionTemplate {
    /// Its name on each agent.
    pub name: String,
    /// Carve it only from agents carrying all these labels (empty: every agent).
    #[serde(default)]
    pub agents: BTreeMap<String, String>,
    /// Slots it takes from the agent.
    pub slots: u32,
    /// Memory it takes from the agent (`1GiB`).
    pub memory: bytesize::ByteSize,
    /// Reserve it for this tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Reserve it for tasks carrying all these labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The name of the shared partition that holds what the templates leave of an agent.
pub const DEFAULT_PARTITION: &str = "default";

/// Carves an agent's capacity: each template that selects the agent takes its share, in order,
/// while the agent has that much left; the rest forms the shared `default` partition.
pub fn carve(
    agent_id: &str,
    capacity: Resources,
    agent_labels: &BTreeMap<String, String>,
    templates: &[PartitionTemplate],
) -> Vec<Partition> {
    let mut left = capacity;
    let mut partitions = Vec::new();
    let make = |name: &str, capacity: Resources, reservation: Reservation| Partition {
        id: format!("{agent_id}/{name}"),
        agent_id: agent_id.to_string(),
        name: name.to_string(),
        capacity,
        allocated: Resources::default(),
        reservation,
        agent_labels: agent_labels.clone(),
        draining: false,
    };
    for template in templates {
        let share = Resources {
            slots: template.slots,
            memory_bytes: template.memory.as_u64(),
        };
        if !contains_all(agent_labels, &template.agents) || !left.covers(&share) {
            continue;
        }
        left = left.minus(&share);
        let reservation = Reservation {
            tenant: template.tenant.clone(),
            labels: template.labels.clone(),
        };
        partitions.push(make(&template.name, share, reservation));
    }
    if left.slots > 0 && left.memory_bytes > 0 {
        partitions.push(make(DEFAULT_PARTITION, left, Reservation::default()));
    }
    partitions
}

/// True when every `(key, value)` of `wanted` is in `labels`.
pub fn contains_all(labels: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>) -> bool {
    wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn template(name: &str, slots: u32, gib: u64) -> PartitionTemplate {
        PartitionTemplate {
            name: name.into(),
            agents: BTreeMap::new(),
            slots,
            memory: bytesize::ByteSize::gib(gib),
            tenant: None,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn an_agent_without_templates_is_one_shared_partition() {
        let capacity = Resources {
            slots: 4,
            memory_bytes: 8 << 30,
        };
        let parts = carve("a1", capacity, &BTreeMap::new(), &[]);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].id, "a1/default");
        assert_eq!(parts[0].capacity, capacity);
        assert!(parts[0].reservation.is_open());
        assert_eq!(parts[0].state(), PartitionState::Available);
    }

    #[test]
    fn templates_take_their_share_and_the_rest_is_shared() {
        let mut reserved = template("acme", 1, 2);
        reserved.tenant = Some("acme".into());
        let mut gpu_only = template("gpu", 1, 1);
        gpu_only.agents = labels(&[("gpu", "yes")]);
        let too_big = template("huge", 100, 1);
        let capacity = Resources {
            slots: 4,
            memory_bytes: 8 << 30,
        };
        let parts = carve(
            "a1",
            capacity,
            &labels(&[("zone", "x")]),
            &[reserved, gpu_only, too_big],
        );
        let names: Vec<_> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["acme", "default"]);
        assert_eq!(
            parts[1].capacity,
            Resources {
                slots: 3,
                memory_bytes: 6 << 30
            }
        );
        assert!(parts[0].reservation.admits("acme", &BTreeMap::new()));
        assert!(!parts[0].reservation.admits("other", &BTreeMap::new()));
    }

    #[test]
    fn a_fully_used_agent_has_no_default_partition() {
        let capacity = Resources {
            slots: 1,
            memory_bytes: 1 << 30,
        };
        let parts = carve("a1", capacity, &BTreeMap::new(), &[template("all", 1, 1)]);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].name, "all");
    }

    #[test]
    fn state_follows_allocation_and_draining() {
        let mut p = carve(
            "a",
            Resources {
                slots: 2,
                memory_bytes: 100,
            },
            &BTreeMap::new(),
            &[],
        )
        .remove(0);
        p.allocated = Resources {
            slots: 2,
            memory_bytes: 10,
        };
        assert_eq!(p.state(), PartitionState::Allocated);
        p.allocated.slots = 1;
        assert_eq!(p.state(), PartitionState::Available);
        p.draining = true;
        assert_eq!(p.state(), PartitionState::Draining);
    }

    #[test]
    fn label_reservations_need_every_label() {
        let r = Reservation {
            tenant: None,
            labels: labels(&[("team", "ml"), ("tier", "batch")]),
        };
        assert!(r.admits(
            "t",
            &labels(&[("team", "ml"), ("tier", "batch"), ("x", "y")])
        ));
        assert!(!r.admits("t", &labels(&[("team", "ml")])));
    }
}
