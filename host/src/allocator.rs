//! The allocator: which partitions may hold a task, and which of them to pick.
//!
//! Pure functions over plain data. A partition may hold a task when
//! - it is not draining,
//! - its reservation admits the task's tenant and labels,
//! - its agent carries every label the task's constraints name, and
//! - its free capacity covers the task's request (one slot and its memory cap).
//!
//! Among those, a partition reserved for the task (its reservation names the task's tenant or
//! labels) comes before shared ones, as a Mesos role's reserved resources are offered to it
//! first: tasks use what was set aside for them and leave shared capacity to everyone else.
//! Then [`Strategy::Binpack`] picks the tightest fit (least free memory, then fewest free
//! slots), filling agents up before touching others; [`Strategy::Spread`] picks the partition
//! with the most free slots (then memory), spreading load. Ties go to the earliest partition, so
//! a plan is a function of its input alone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::partition::{contains_all, Reservation, Resources};

/// How to choose among partitions that can hold a task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Tightest fit first: keeps whole agents free for big tasks.
    #[default]
    Binpack,
    /// Most free slots first: spreads tasks over agents.
    Spread,
}

/// A partition as the allocator sees it, borrowed from the caller's state: building the
/// snapshot of thousands of partitions copies no strings or maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The partition's id.
    pub partition_id: &'a str,
    /// Its agent's id.
    pub agent_id: &'a str,
    /// Its agent's labels.
    pub agent_labels: &'a BTreeMap<String, String>,
    /// Who may use it.
    pub reservation: &'a Reservation,
    /// What it holds in all.
    pub capacity: Resources,
    /// What is free now.
    pub free: Resources,
    /// Takes no new tasks.
    pub draining: bool,
}

/// What a task asks of a partition, borrowed from its spec: a queue of thousands of pending
/// tasks is looked at without copying a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// Capacity it takes while placed.
    pub resources: Resources,
    /// Its tenant.
    pub tenant: &'a str,
    /// Its labels (matched against reservations).
    pub labels: &'a BTreeMap<String, String>,
    /// Labels its agent must carry.
    pub constraints: &'a BTreeMap<String, String>,
}

impl Candidate<'_> {
    /// Whether the task may ever go here, capacity aside: not draining, admitted by the
    /// reservation, constraints met.
    pub fn eligible(&self, request: &Request<'_>) -> bool {
        !self.draining
            && self.reservation.admits(request.tenant, request.labels)
            && contains_all(self.agent_labels, request.constraints)
    }

    /// Whether the task could go here once the partition is empty and not draining.
    pub fn could_ever_hold(&self, request: &Request<'_>) -> bool {
        self.reservation.admits(request.tenant, request.labels)
            && contains_all(self.agent_labels, request.constraints)
            && self.capacity.covers(&request.resources)
    }

    /// Whether the task fits now.
    pub fn fits(&self, request: &Request<'_>) -> bool {
        self.eligible(request) && self.free.covers(&request.resources)
    }
}

/// Orders two fitting candidates, each given as (reserved, free capacity): `true` when `a` is
/// the better choice. Reserved partitions (which admitted the task, so are reserved for it)
/// come first; then the strategy decides on free capacity.
pub fn better(strategy: Strategy, a: (bool, &Resources), b: (bool, &Resources)) -> bool {
    if a.0 != b.0 {
        return a.0;
    }
    let (a, b) = (a.1, b.1);
    match strategy {
        Strategy::Binpack => (a.memory_bytes, a.slots) < (b.memory_bytes, b.slots),
        Strategy::Spread => (a.slots, a.memory_bytes) > (b.slots, b.memory_bytes),
    }
}

/// The index of the candidate to place `request` in, or `None` when none fits now.
pub fn choose(
    candidates: &[Candidate<'_>],
    request: &Request<'_>,
    strategy: Strategy,
) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, candidate) in candidates.iter().enumerate() {
        if !candidate.fits(request) {
            continue;
        }
        let rank = |c: &Candidate<'_>| (c.reservation.is_reserved(), c.free);
        if best.is_none_or(|b| {
            let (a, b) = (rank(candidate), rank(&candidates[b]));
            better(strategy, (a.0, &a.1), (b.0, &b.1))
        }) {
            best = Some(i);
        }
    }
    best
}

/// Why no partition could ever hold `request`, even with all of its capacity free; `None` when
/// some partition could.
pub fn never_fits(candidates: &[Candidate<'_>], request: &Request<'_>) -> Option<String> {
    if candidates.iter().any(|c| c.could_ever_hold(request)) {
        return None;
    }
    let want = request.resources;
    if candidates.is_empty() {
        return Some("no agent is registered".into());
    }
    let admitted: Vec<&Candidate<'_>> = candidates
        .iter()
        .filter(|c| c.reservation.admits(request.tenant, request.labels))
        .collect();
    if admitted.is_empty() {
        return Some(format!(
            "every partition is reserved for another tenant or other labels (tenant {:?})",
            request.tenant
        ));
    }
    let constrained: Vec<&&Candidate<'_>> = admitted
        .iter()
        .filter(|c| contains_all(c.agent_labels, request.constraints))
        .collect();
    if constrained.is_empty() {
        let wanted: Vec<String> = request
            .constraints
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        return Some(format!("no agent has the labels {}", wanted.join(",")));
    }
    let largest = constrained
        .iter()
        .map(|c| c.capacity)
        .max_by_key(|r| (r.memory_bytes, r.slots))
        .unwrap_or_default();
    Some(format!(
        "the task asks for {} slot(s) and {} of memory; the largest partition it may use holds {} slot(s) and {}",
        want.slots,
        bytesize::ByteSize::b(want.memory_bytes).display().iec(),
        largest.slots,
        bytesize::ByteSize::b(largest.memory_bytes).display().iec()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
    static SHARED: Reservation = Reservation {
        tenant: None,
        labels: BTreeMap::new(),
    };

    fn candidate(id: &'static str, slots: u32, memory: u64) -> Candidate<'static> {
        let capacity = Resources {
            slots,
            memory_bytes: memory,
        };
        Candidate {
            partition_id: id,
            agent_id: id,
            agent_labels: &NO_LABELS,
            reservation: &SHARED,
            capacity,
            free: capacity,
            draining: false,
        }
    }

    fn request(memory: u64) -> Request<'static> {
        Request {
            resources: Resources {
                slots: 1,
                memory_bytes: memory,
            },
            tenant: "default",
            labels: &NO_LABELS,
            constraints: &NO_LABELS,
        }
    }

    fn labels(k: &str, v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(k.to_string(), v.to_string())])
    }

    fn reserved_for(tenant: &str) -> Reservation {
        Reservation {
            tenant: Some(tenant.into()),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn binpack_takes_the_tightest_fit_and_spread_the_emptiest() {
        let mut cs = vec![
            candidate("a", 4, 100),
            candidate("b", 4, 100),
            candidate("c", 4, 100),
        ];
        cs[1].free = Resources {
            slots: 2,
            memory_bytes: 30,
        };
        cs[2].free = Resources {
            slots: 1,
            memory_bytes: 10,
        };
        assert_eq!(choose(&cs, &request(20), Strategy::Binpack), Some(1));
        assert_eq!(choose(&cs, &request(5), Strategy::Binpack), Some(2));
        assert_eq!(choose(&cs, &request(5), Strategy::Spread), Some(0));
        assert_eq!(choose(&cs, &request(101), Strategy::Binpack), None);
    }

    #[test]
    fn ties_go_to_the_earliest_partition() {
        let cs = vec![candidate("a", 4, 100), candidate("b", 4, 100)];
        assert_eq!(choose(&cs, &request(1), Strategy::Binpack), Some(0));
        assert_eq!(choose(&cs, &request(1), Strategy::Spread), Some(0));
    }

    #[test]
    fn draining_reserved_and_constrained_partitions_are_skipped() {
        let acme = reserved_for("acme");
        let zone_x = labels("zone", "x");
        let mut cs = vec![
            candidate("a", 4, 100),
            candidate("b", 4, 100),
            candidate("c", 4, 100),
        ];
        cs[0].draining = true;
        cs[1].reservation = &acme;
        cs[2].agent_labels = &zone_x;
        let zone_y = labels("zone", "y");
        let mut r = request(1);
        r.constraints = &zone_y;
        assert_eq!(choose(&cs, &r, Strategy::Binpack), None);
        r.constraints = &zone_x;
        assert_eq!(choose(&cs, &r, Strategy::Binpack), Some(2));
        r.tenant = "acme";
        r.constraints = &NO_LABELS;
        assert_eq!(choose(&cs, &r, Strategy::Binpack), Some(1));
    }

    #[test]
    fn a_partition_reserved_for_the_task_comes_before_shared_ones() {
        let acme = reserved_for("acme");
        let mut cs = vec![
            candidate("shared-tight", 4, 100),
            candidate("acme", 4, 100),
            candidate("shared-empty", 8, 1000),
        ];
        cs[0].free = Resources {
            slots: 1,
            memory_bytes: 10,
        };
        cs[1].reservation = &acme;
        let mut r = request(5);
        r.tenant = "acme";
        assert_eq!(choose(&cs, &r, Strategy::Binpack), Some(1));
        assert_eq!(choose(&cs, &r, Strategy::Spread), Some(1));
        // Once the reservation is full, shared capacity serves.
        cs[1].free = Resources::default();
        assert_eq!(choose(&cs, &r, Strategy::Binpack), Some(0));
        // Other tenants never see it, and keep their strategy's choice.
        cs[1].free = cs[1].capacity;
        assert_eq!(choose(&cs, &request(5), Strategy::Spread), Some(2));
    }

    #[test]
    fn never_fits_names_the_reason() {
        let cs = vec![candidate("a", 4, 1 << 30)];
        assert_eq!(never_fits(&cs, &request(1 << 20)), None);
        let reason = never_fits(&cs, &request(2 << 30)).unwrap();
        assert!(
            reason.contains("2.0 GiB") && reason.contains("1.0 GiB"),
            "{reason}"
        );
        let gpu = labels("gpu", "yes");
        let mut r = request(1);
        r.constraints = &gpu;
        assert!(never_fits(&cs, &r).unwrap().contains("gpu=yes"));
        assert!(never_fits(&[], &request(1)).unwrap().contains("no agent"));
        // A full or draining partition could still hold it later.
        let mut busy = cs.clone();
        busy[0].free = Resources::default();
        busy[0].draining = true;
        assert_eq!(never_fits(&busy, &request(1)), None);
    }
}
