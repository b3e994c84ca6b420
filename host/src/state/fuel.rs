//! The fuel ledger: what each tenant's tasks spent, by the minute, and the fuel limits of its
//! tasks placed now, held against its budget.
//!
//! A task is placed only when its fuel limit fits in what is left of its tenant's budget: the
//! budget less what was spent in the window and less the limits held by its tasks placed now. Its
//! limit is held until the attempt ends; then the fuel it spent (at most its limit; its whole limit
//! when it ended without a final report, as its agent may run it on) is charged to the minute it
//! ended in, and the limit is released. So the sum of what was spent in the window and what is held
//! never grows past the budget but by an admin lowering it: a placement checks it, an end replaces
//! a limit by a charge no larger, and time (which the host keeps from going back) only drops old
//! charges. A minute's charge counts while any part of that minute lies in the window, so a charge
//! is dropped at most a minute after it leaves it: the ledger errs toward spending less than the
//! budget, never more.

use std::collections::{BTreeMap, HashMap};

use crate::store::Write;

/// The ledger's granularity.
pub const MINUTE_MS: i64 = 60_000;

/// What the ledger holds; see the module documentation.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Per tenant: fuel charged per minute (the minute's start, ms since the epoch).
    spent: HashMap<String, BTreeMap<i64, u64>>,
    /// Per tenant: fuel charged since the cluster began.
    total: HashMap<String, u64>,
    /// Per tenant: the fuel limits of its tasks placed now (summed wide: limits are any u64).
    held: HashMap<String, u128>,
    /// Per tenant: the fuel its tasks placed now have reported spending so far.
    live: HashMap<String, u64>,
}

fn add(map: &mut HashMap<String, u64>, tenant: &str, n: u64) {
    match map.get_mut(tenant) {
        Some(v) => *v = v.saturating_add(n),
        None => {
            map.insert(tenant.to_string(), n);
        }
    }
}

fn add128(map: &mut HashMap<String, u128>, tenant: &str, n: u64) {
    *map.entry(tenant.to_string()).or_default() += u128::from(n);
}

fn sub128(map: &mut HashMap<String, u128>, tenant: &str, n: u64) {
    if let Some(v) = map.get_mut(tenant) {
        *v = v.saturating_sub(u128::from(n));
        if *v == 0 {
            map.remove(tenant);
        }
    }
}

fn sub(map: &mut HashMap<String, u64>, tenant: &str, n: u64) {
    if let Some(v) = map.get_mut(tenant) {
        *v = v.saturating_sub(n);
        if *v == 0 {
            map.remove(tenant);
        }
    }
}

impl Ledger {
    /// A ledger as stored: minutes' charges and totals.
    pub(super) fn restore(minutes: Vec<(String, i64, u64)>, totals: Vec<(String, u64)>) -> Self {
        let mut ledger = Self::default();
        for (tenant, minute, fuel) in minutes {
            ledger.spent.entry(tenant).or_default().insert(minute, fuel);
        }
        ledger.total = totals.into_iter().collect();
        ledger
    }

    /// A task of `tenant` with fuel limit `limit` was placed.
    pub(super) fn hold(&mut self, tenant: &str, limit: u64) {
        add128(&mut self.held, tenant, limit);
    }

    /// A placed task of `tenant` reported spending `from` then `to` so far.
    pub(super) fn live(&mut self, tenant: &str, from: u64, to: u64) {
        sub(&mut self.live, tenant, from);
        add(&mut self.live, tenant, to);
    }

    /// The attempt of a task of `tenant` with fuel limit `limit`, whose last report said
    /// `reported` so far, ended: releases the limit and charges `charged` (at most the limit)
    /// to the minute of `now_ms`. Writes the minute's row and the total.
    pub(super) fn end(
        &mut self,
        tenant: &str,
        limit: u64,
        reported: u64,
        charged: u64,
        now_ms: i64,
        writes: &mut Vec<Write>,
    ) {
        sub128(&mut self.held, tenant, limit);
        sub(&mut self.live, tenant, reported);
        let charge = charged.min(limit);
        if charge == 0 {
            return;
        }
        let minute = now_ms - now_ms.rem_euclid(MINUTE_MS);
        let row = self
            .spent
            .entry(tenant.to_string())
            .or_default()
            .entry(minute)
            .or_default();
        *row = row.saturating_add(charge);
        let row = *row;
        add(&mut self.total, tenant, charge);
        writes.push(Write::Fuel {
            tenant: tenant.to_string(),
            minute,
            fuel: row,
            total: self.total[tenant],
        });
    }

    /// Fuel `tenant`'s attempts that ended charged in the window of `period_ms` up to
    /// `now_ms` (every minute that overlaps it).
    pub(super) fn spent(&self, tenant: &str, period_ms: i64, now_ms: i64) -> u64 {
        let from = now_ms.saturating_sub(period_ms).saturating_sub(MINUTE_MS);
        self.spent.get(tenant).map_or(0, |minutes| {
            minutes
                .range(from.saturating_add(1)..)
                .fold(0u64, |sum, (_, fuel)| sum.saturating_add(*fuel))
        })
    }

    /// The fuel limits `tenant`'s tasks placed now hold (at most `u64::MAX`).
    pub(super) fn held(&self, tenant: &str) -> u64 {
        self.held
            .get(tenant)
            .map_or(0, |&h| u64::try_from(h).unwrap_or(u64::MAX))
    }

    /// What `tenant`'s tasks placed now reported spending so far.
    pub(super) fn running(&self, tenant: &str) -> u64 {
        self.live.get(tenant).copied().unwrap_or(0)
    }

    /// Fuel `tenant` spent since the cluster began.
    pub(super) fn total(&self, tenant: &str) -> u64 {
        self.total.get(tenant).copied().unwrap_or(0)
    }

    /// What is left of a budget of `fuel` per `period_ms` for new tasks of `tenant`.
    pub(super) fn left(&self, tenant: &str, fuel: u64, period_ms: i64, now_ms: i64) -> u64 {
        fuel.saturating_sub(self.spent(tenant, period_ms, now_ms))
            .saturating_sub(self.held(tenant))
    }

    /// When enough of the window's charges will have left it for `need` to fit in a budget of
    /// `fuel` per `period_ms`, should the tasks placed now spend their whole limits; `None`
    /// when the window's end alone never frees enough (what is held must end first).
    pub(super) fn frees_at(
        &self,
        tenant: &str,
        fuel: u64,
        period_ms: i64,
        need: u64,
        now_ms: i64,
    ) -> Option<i64> {
        let held = self.held(tenant);
        let mut spent = self.spent(tenant, period_ms, now_ms);
        let from = now_ms.saturating_sub(period_ms).saturating_sub(MINUTE_MS);
        let minutes = self.spent.get(tenant)?;
        for (&minute, &charged) in minutes.range(from.saturating_add(1)..) {
            // A minute's charge counts until the window starts a minute past its end.
            spent = spent.saturating_sub(charged);
            let limit_with_all_held = fuel.saturating_sub(held).saturating_sub(spent);
            if limit_with_all_held >= need {
                return Some(minute + MINUTE_MS + period_ms);
            }
        }
        None
    }

    /// Drops the minutes of every tenant older than `keep_ms(tenant)` before `now_ms`;
    /// answers the writes that remove them from the store.
    pub(super) fn forget(
        &mut self,
        now_ms: i64,
        keep_ms: impl Fn(&str) -> i64,
        writes: &mut Vec<Write>,
    ) -> usize {
        let mut forgotten = 0;
        self.spent.retain(|tenant, minutes| {
            let cutoff = now_ms
                .saturating_sub(keep_ms(tenant))
                .saturating_sub(MINUTE_MS);
            let kept = minutes.split_off(&cutoff.saturating_add(1));
            let old: Vec<i64> = minutes.keys().copied().collect();
            *minutes = kept;
            if !old.is_empty() {
                forgotten += old.len();
                writes.push(Write::ForgetFuel(tenant.clone(), old));
            }
            !minutes.is_empty()
        });
        forgotten
    }

    /// `tenant`'s minutes, as stored.
    #[cfg(test)]
    pub(super) fn minutes(&self, tenant: &str) -> Vec<(String, i64, u64)> {
        self.spent.get(tenant).map_or(Vec::new(), |m| {
            m.iter()
                .map(|(&at, &fuel)| (tenant.to_string(), at, fuel))
                .collect()
        })
    }

    /// Tenants with anything in the ledger.
    pub(super) fn tenants(&self) -> impl Iterator<Item = &String> {
        self.spent.keys().chain(self.held.keys())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn charges_count_while_their_minute_overlaps_the_window_and_never_beyond_the_limit() {
        let mut ledger = Ledger::default();
        let mut writes = Vec::new();
        let t0 = 1_000 * HOUR + 30_000; // half a minute into a minute
        ledger.hold("a", 100);
        assert_eq!(ledger.left("a", 250, HOUR, t0), 150);
        // It spent more than its limit (a late report): charged its limit only.
        ledger.end("a", 100, 500, 500, t0, &mut writes);
        assert_eq!(ledger.spent("a", HOUR, t0), 100);
        assert_eq!(ledger.total("a"), 100);
        assert!(matches!(
            &writes[0],
            Write::Fuel {
                fuel: 100,
                total: 100,
                ..
            }
        ));
        assert_eq!(ledger.left("a", 250, HOUR, t0), 150);
        // An hour later it still counts (its minute overlaps the window)...
        assert_eq!(ledger.spent("a", HOUR, t0 + HOUR), 100);
        // ...and a minute after its minute left the window, it does not.
        let minute_end = t0 - 30_000 + MINUTE_MS;
        assert_eq!(ledger.spent("a", HOUR, minute_end + HOUR + MINUTE_MS), 0);
        assert_eq!(
            ledger.frees_at("a", 250, HOUR, 200, t0),
            Some(minute_end + HOUR)
        );
        assert_eq!(ledger.frees_at("a", 250, HOUR, 300, t0), None);
        // Forgetting keeps what the window still needs.
        let mut writes = Vec::new();
        assert_eq!(ledger.forget(t0 + HOUR, |_| HOUR, &mut writes), 0);
        assert_eq!(ledger.forget(t0 + 2 * HOUR, |_| HOUR, &mut writes), 1);
        assert!(matches!(&writes[0], Write::ForgetFuel(t, m) if t == "a" && m.len() == 1));
        assert_eq!(ledger.total("a"), 100, "the total stays");
    }

    #[test]
    fn live_figures_follow_reports_and_end_with_the_attempt() {
        let mut ledger = Ledger::default();
        ledger.hold("a", 1000);
        ledger.live("a", 0, 300);
        ledger.live("a", 300, 700);
        assert_eq!(ledger.running("a"), 700);
        ledger.end("a", 1000, 700, 700, 0, &mut Vec::new());
        assert_eq!((ledger.running("a"), ledger.held("a")), (0, 0));
    }
}
