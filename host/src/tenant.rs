//! Tenants as configuration: what each is entitled to (weight, guarantee) and allowed (limit,
//! queued tasks), from the config file's `[tenants.NAME]` tables or set by an admin with
//! `corral tenant set` (stored, and then preferred to the file for that tenant).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytesize::ByteSize;
use corral_admission::imports::{ImportPattern, ImportSet};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::partition::Resources;
use crate::scheduler::Share;

/// Largest weight accepted: shares are compared as floating point, and weights beyond this
/// say nothing a smaller one would not.
pub const MAX_WEIGHT: f64 = 1e6;
/// Smallest weight accepted (a share divided by a tinier one is infinite).
pub const MIN_WEIGHT: f64 = 1e-3;
/// Most queued tasks a tenant may be allowed: the queue cap protects the host.
pub const MAX_QUEUED: u64 = 10_000_000;
/// Queued tasks a tenant may have when nothing says otherwise.
pub const DEFAULT_MAX_QUEUED: u64 = 100_000;
/// Shortest period of a fuel budget: the ledger counts fuel by the minute.
pub const MIN_BUDGET_PERIOD: Duration = Duration::from_secs(60);
/// Most import patterns a tenant's policy may list.
pub const MAX_IMPORT_PATTERNS: usize = 256;
/// Bytes a tenant's uploaded inputs may take in the host's store when nothing says otherwise.
pub const DEFAULT_INPUT_STORAGE: ByteSize = ByteSize::gib(10);
/// Longest period of a fuel budget (the ledger keeps a minute's row per minute of it).
pub const MAX_BUDGET_PERIOD: Duration = Duration::from_secs(31 * 24 * 3600);

/// A fuel budget: at most `fuel` spent in any `period` (a rolling window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuelBudget {
    /// Fuel per period.
    pub fuel: u64,
    /// The window's length.
    pub period: Duration,
}

impl FuelBudget {
    /// The period in milliseconds.
    pub fn period_ms(&self) -> i64 {
        i64::try_from(self.period.as_millis()).unwrap_or(i64::MAX)
    }
}

impl fmt::Display for FuelBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.fuel,
            humantime::format_duration(self.period)
        )
    }
}

impl FromStr for FuelBudget {
    type Err = String;

    /// `FUEL/PERIOD`, as `10000000000000/1h`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad =
            || format!("{text:?} is not a fuel budget like \"10000000000000/1h\" (fuel/period)");
        let (fuel, period) = text.split_once('/').ok_or_else(bad)?;
        let fuel = fuel
            .trim()
            .replace('_', "")
            .parse::<u64>()
            .map_err(|_| bad())?;
        let period = humantime::parse_duration(period.trim()).map_err(|_| bad())?;
        Ok(Self { fuel, period })
    }
}

impl Serialize for FuelBudget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for FuelBudget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One tenant's settings. Every field is optional in the file; the defaults are a tenant not
/// named at all: weight 1, no guarantee, no limit, 100,000 queued tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantSettings {
    /// Its weight in fair sharing: twice the weight, twice the share when both have work.
    pub weight: f64,
    /// Slots it gets first while it has work (others use them while it is idle).
    pub guarantee_slots: u32,
    /// Memory it gets first while it has work.
    pub guarantee_memory: ByteSize,
    /// The most slots it may hold at once; none when absent.
    pub limit_slots: Option<u32>,
    /// The most memory it may hold at once; none when absent.
    pub limit_memory: Option<ByteSize>,
    /// The most tasks it may have waiting; a submit past it is refused.
    pub max_queued: u64,
    /// The most fuel its tasks may spend in any window of the budget's period; none when
    /// absent.
    pub fuel_budget: Option<FuelBudget>,
    /// The largest fuel limit a task of its token may ask for; none when absent.
    pub max_task_fuel: Option<u64>,
    /// The largest memory a task of its token may ask for; none when absent.
    pub max_task_memory: Option<ByteSize>,
    /// The longest timeout a task of its token may ask for; none when absent.
    #[serde(with = "option_duration")]
    pub max_task_timeout: Option<Duration>,
    /// The largest module (binary form) its tasks may run; only the host's cap when absent.
    pub max_module_size: Option<ByteSize>,
    /// The imports its modules may use; every function the sandbox provides when absent.
    pub allowed_imports: Option<ImportRules>,
    /// Imports its modules may not use, whatever `allowed_imports` says.
    pub denied_imports: ImportRules,
    /// Bytes its uploaded inputs may take in the host's store (each input it uploaded counted
    /// whole); an upload past it is refused.
    pub max_input_storage: ByteSize,
}

/// Import patterns (`MODULE::NAME`, `MODULE::PREFIX*`: see [`ImportPattern`]), written in the
/// config file as a list of strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportRules(pub Vec<ImportPattern>);

impl ImportRules {
    /// Parses each pattern.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        patterns
            .iter()
            .map(|p| p.as_ref().parse())
            .collect::<Result<_, _>>()
            .map(ImportRules)
    }

    /// Patterns as stored by `corral tenant set`, perhaps by an earlier Corral: each names
    /// what it names of the functions provided now (perhaps nothing; logged), so that a
    /// function removed since does not set the tenant's other settings aside. An allow
    /// pattern naming nothing allows nothing.
    pub fn stored<S: AsRef<str>>(tenant: &str, patterns: &[S]) -> Self {
        ImportRules(
            patterns
                .iter()
                .map(|p| {
                    let pattern = ImportPattern::lenient(p.as_ref());
                    if pattern.matched().is_empty() {
                        tracing::warn!(
                            tenant,
                            pattern = pattern.as_str(),
                            "a stored import pattern names no function the sandbox provides"
                        );
                    }
                    pattern
                })
                .collect(),
        )
    }

    /// The provided functions they name.
    pub fn matched(&self) -> ImportSet {
        self.0
            .iter()
            .fold(ImportSet::EMPTY, |set, p| set.union(p.matched()))
    }

    /// The first pattern naming `module::name`.
    fn naming(&self, import: &corral_admission::imports::Provided) -> Option<&ImportPattern> {
        self.0.iter().find(|p| p.matched().contains(import))
    }

    /// The patterns as written.
    pub fn texts(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl fmt::Display for ImportRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.texts().join(","))
    }
}

impl Serialize for ImportRules {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(ToString::to_string))
    }
}

impl<'de> Deserialize<'de> for ImportRules {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ImportRules::parse(&Vec::<String>::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// An optional duration as humantime text (`"10m"`).
mod option_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Some).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration (like \"10m\"): {e}"))
        })
    }
}

impl Default for TenantSettings {
    fn default() -> Self {
        Self {
            weight: 1.0,
            guarantee_slots: 0,
            guarantee_memory: ByteSize::b(0),
            limit_slots: None,
            limit_memory: None,
            max_queued: DEFAULT_MAX_QUEUED,
            fuel_budget: None,
            max_task_fuel: None,
            max_task_memory: None,
            max_task_timeout: None,
            max_module_size: None,
            allowed_imports: None,
            denied_imports: ImportRules::default(),
            max_input_storage: DEFAULT_INPUT_STORAGE,
        }
    }
}

impl TenantSettings {
    /// Checks values that parse but make no sense; `name` is the tenant's.
    pub fn validate(&self, name: &str) -> Result<(), String> {
        crate::auth::tenant_problem(name).map_or(Ok(()), Err)?;
        if !(self.weight.is_finite() && self.weight >= MIN_WEIGHT && self.weight <= MAX_WEIGHT) {
            return Err(format!(
                "tenant {name:?}: weight {} must be {MIN_WEIGHT} to {MAX_WEIGHT}",
                self.weight
            ));
        }
        let share = self.share();
        if !share.limit.covers(&share.guarantee) {
            return Err(format!(
                "tenant {name:?}: its guarantee ({} slot(s), {}) exceeds its limit",
                self.guarantee_slots,
                self.guarantee_memory.display().iec()
            ));
        }
        if self.max_queued == 0 || self.max_queued > MAX_QUEUED {
            return Err(format!(
                "tenant {name:?}: max_queued must be 1 to {MAX_QUEUED}"
            ));
        }
        if let Some(budget) = self.fuel_budget {
            if budget.fuel == 0
                || budget.period < MIN_BUDGET_PERIOD
                || budget.period > MAX_BUDGET_PERIOD
                || budget.period.as_millis() % MIN_BUDGET_PERIOD.as_millis() != 0
            {
                return Err(format!(
                    "tenant {name:?}: fuel budget {budget} must be above zero fuel, over a \
                     period of whole minutes, 1 minute to 31 days"
                ));
            }
        }
        if self.max_task_fuel == Some(0)
            || self.max_task_memory.is_some_and(|m| m.as_u64() == 0)
            || self.max_task_timeout.is_some_and(|t| t.is_zero())
            || self.max_module_size.is_some_and(|m| m.as_u64() == 0)
        {
            return Err(format!(
                "tenant {name:?}: max_task_fuel, max_task_memory, max_task_timeout and \
                 max_module_size must be above zero (leave one out for no cap)"
            ));
        }
        let listed = self.allowed_imports.as_ref().map_or(0, |a| a.0.len());
        if listed + self.denied_imports.0.len() > MAX_IMPORT_PATTERNS {
            return Err(format!(
                "tenant {name:?}: at most {MAX_IMPORT_PATTERNS} import patterns (allowed and \
                 denied together)"
            ));
        }
        Ok(())
    }

    /// Refuses a module this tenant's tasks may not run: larger than its `max_module_size`,
    /// or importing a function its `allowed_imports` and `denied_imports` forbid (named, with
    /// the pattern that forbids it).
    pub fn check_module(
        &self,
        tenant: &str,
        sha256: &str,
        size: u64,
        imports: ImportSet,
    ) -> Result<(), String> {
        let short = sha256.get(..12).unwrap_or(sha256);
        if let Some(most) = self.max_module_size.filter(|m| size > m.as_u64()) {
            return Err(format!(
                "module {short} is {size} bytes; tenant {tenant}'s policy allows modules of at \
                 most {} bytes ({})",
                most.as_u64(),
                most.display().iec()
            ));
        }
        for import in imports.iter() {
            let why = match (&self.allowed_imports, self.denied_imports.naming(import)) {
                (_, Some(pattern)) => format!("denied by \"{pattern}\""),
                (Some(allowed), None) if allowed.naming(import).is_none() => {
                    "not among its allowed imports".to_string()
                }
                _ => continue,
            };
            return Err(format!(
                "module {short} imports {}::{}, which tenant {tenant}'s policy does not allow \
                 ({why})",
                import.module, import.name
            ));
        }
        Ok(())
    }

    /// Refuses a task of this tenant, submitted with its own token, that asks for more than
    /// its policy allows, naming the field.
    pub fn check_task(&self, tenant: &str, limits: &crate::task::TaskLimits) -> Result<(), String> {
        let over = |what: &str, asked: String, most: String| {
            Err(format!(
                "tenant {tenant}'s policy allows a task at most {most} of {what}; it asks for \
                 {asked}"
            ))
        };
        if let Some(most) = self.max_task_fuel.filter(|&m| limits.fuel > m) {
            return over("fuel", limits.fuel.to_string(), most.to_string());
        }
        if let Some(most) = self
            .max_task_memory
            .filter(|m| limits.memory_bytes > m.as_u64())
        {
            let asked = ByteSize::b(limits.memory_bytes).display().iec().to_string();
            return over("memory", asked, most.display().iec().to_string());
        }
        if let Some(most) = self.max_task_timeout.filter(|&m| limits.timeout > m) {
            let shown = |d: Duration| humantime::format_duration(d).to_string();
            return over("time", shown(limits.timeout), shown(most));
        }
        Ok(())
    }

    /// What the scheduler decides by.
    pub fn share(&self) -> Share {
        Share {
            weight: self.weight,
            guarantee: Resources {
                slots: self.guarantee_slots,
                memory_bytes: self.guarantee_memory.as_u64(),
            },
            limit: Resources {
                slots: self.limit_slots.unwrap_or(u32::MAX),
                memory_bytes: self.limit_memory.map_or(u64::MAX, |m| m.as_u64()),
            },
        }
    }
}

/// Where a tenant's settings come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Not named anywhere: the defaults.
    Default,
    /// The config file's `[tenants.NAME]`.
    Config,
    /// `corral tenant set`, stored by the host.
    Set,
}

impl Source {
    /// As `corral tenant list` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::Config => "config",
            Source::Set => "set",
        }
    }
}

/// A change asked by `corral tenant set`: each field given replaces the tenant's current
/// value (a limit of `None` inside `Some` removes the limit); the rest are kept.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TenantChange {
    /// New weight.
    pub weight: Option<f64>,
    /// New guaranteed slots.
    pub guarantee_slots: Option<u32>,
    /// New guaranteed memory.
    pub guarantee_memory: Option<u64>,
    /// New slot limit, or none.
    pub limit_slots: Option<Option<u32>>,
    /// New memory limit, or none.
    pub limit_memory: Option<Option<u64>>,
    /// New cap on queued tasks.
    pub max_queued: Option<u64>,
    /// New fuel budget, or none.
    pub fuel_budget: Option<Option<FuelBudget>>,
    /// New largest fuel limit of a task, or none.
    pub max_task_fuel: Option<Option<u64>>,
    /// New largest memory of a task, or none.
    pub max_task_memory: Option<Option<u64>>,
    /// New longest timeout of a task, or none.
    pub max_task_timeout: Option<Option<Duration>>,
    /// New largest module, or none.
    pub max_module_size: Option<Option<u64>>,
    /// New allowed imports, or every one.
    pub allowed_imports: Option<Option<ImportRules>>,
    /// New denied imports.
    pub denied_imports: Option<ImportRules>,
    /// New storage limit of its inputs.
    pub max_input_storage: Option<u64>,
}

impl TenantChange {
    /// The fields it sets, as `key=value` words (for the audit log).
    pub fn describe(&self) -> String {
        let limit = |v: Option<String>| v.unwrap_or_else(|| "none".into());
        let mut words = Vec::new();
        if let Some(w) = self.weight {
            words.push(format!("weight={w}"));
        }
        if let Some(n) = self.guarantee_slots {
            words.push(format!("guarantee_slots={n}"));
        }
        if let Some(m) = self.guarantee_memory {
            words.push(format!(
                "guarantee_memory={}",
                ByteSize::b(m).display().iec()
            ));
        }
        if let Some(n) = self.limit_slots {
            words.push(format!("limit_slots={}", limit(n.map(|n| n.to_string()))));
        }
        if let Some(m) = self.limit_memory {
            let shown = m.map(|m| ByteSize::b(m).display().iec().to_string());
            words.push(format!("limit_memory={}", limit(shown)));
        }
        if let Some(n) = self.max_queued {
            words.push(format!("max_queued={n}"));
        }
        if let Some(b) = self.fuel_budget {
            words.push(format!("fuel_budget={}", limit(b.map(|b| b.to_string()))));
        }
        if let Some(n) = self.max_task_fuel {
            words.push(format!("max_task_fuel={}", limit(n.map(|n| n.to_string()))));
        }
        if let Some(m) = self.max_task_memory {
            let shown = m.map(|m| ByteSize::b(m).display().iec().to_string());
            words.push(format!("max_task_memory={}", limit(shown)));
        }
        if let Some(t) = self.max_task_timeout {
            let shown = t.map(|t| humantime::format_duration(t).to_string());
            words.push(format!("max_task_timeout={}", limit(shown)));
        }
        if let Some(m) = self.max_module_size {
            let shown = m.map(|m| ByteSize::b(m).display().iec().to_string());
            words.push(format!("max_module_size={}", limit(shown)));
        }
        if let Some(a) = &self.allowed_imports {
            let shown = a.as_ref().map_or_else(|| "all".into(), ToString::to_string);
            words.push(format!("allowed_imports={shown}"));
        }
        if let Some(d) = &self.denied_imports {
            words.push(format!(
                "denied_imports={}",
                limit(Some(d.to_string()).filter(|d| !d.is_empty()))
            ));
        }
        if let Some(m) = self.max_input_storage {
            words.push(format!(
                "max_input_storage={}",
                ByteSize::b(m).display().iec()
            ));
        }
        words.join(" ")
    }

    /// `current` with the change applied.
    pub fn apply(&self, current: &TenantSettings) -> TenantSettings {
        TenantSettings {
            weight: self.weight.unwrap_or(current.weight),
            guarantee_slots: self.guarantee_slots.unwrap_or(current.guarantee_slots),
            guarantee_memory: self
                .guarantee_memory
                .map_or(current.guarantee_memory, ByteSize::b),
            limit_slots: self.limit_slots.unwrap_or(current.limit_slots),
            limit_memory: self
                .limit_memory
                .map_or(current.limit_memory, |m| m.map(ByteSize::b)),
            max_queued: self.max_queued.unwrap_or(current.max_queued),
            fuel_budget: self.fuel_budget.unwrap_or(current.fuel_budget),
            max_task_fuel: self.max_task_fuel.unwrap_or(current.max_task_fuel),
            max_task_memory: self
                .max_task_memory
                .map_or(current.max_task_memory, |m| m.map(ByteSize::b)),
            max_task_timeout: self.max_task_timeout.unwrap_or(current.max_task_timeout),
            max_module_size: self
                .max_module_size
                .map_or(current.max_module_size, |m| m.map(ByteSize::b)),
            allowed_imports: self
                .allowed_imports
                .clone()
                .unwrap_or_else(|| current.allowed_imports.clone()),
            denied_imports: self
                .denied_imports
                .clone()
                .unwrap_or_else(|| current.denied_imports.clone()),
            max_input_storage: self
                .max_input_storage
                .map_or(current.max_input_storage, ByteSize::b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonsense_is_refused_by_name() {
        let mut s = TenantSettings::default();
        assert_eq!(s.validate("acme"), Ok(()));
        s.weight = 0.0;
        assert!(s.validate("acme").unwrap_err().contains("weight"));
        s.weight = f64::NAN;
        assert!(s.validate("acme").unwrap_err().contains("weight"));
        s.weight = 2.0;
        s.guarantee_slots = 4;
        s.limit_slots = Some(2);
        assert!(s
            .validate("acme")
            .unwrap_err()
            .contains("exceeds its limit"));
        s.limit_slots = Some(4);
        assert_eq!(s.validate("acme"), Ok(()));
        s.fuel_budget = Some("1000/10s".parse().unwrap());
        assert!(s.validate("acme").unwrap_err().contains("1 minute"));
        s.fuel_budget = Some("1000/90s".parse().unwrap());
        assert!(s.validate("acme").unwrap_err().contains("whole minutes"));
        s.fuel_budget = Some("0/1h".parse().unwrap());
        assert!(s.validate("acme").unwrap_err().contains("fuel budget"));
        s.fuel_budget = Some("10_000_000/1h".parse().unwrap());
        assert_eq!(s.validate("acme"), Ok(()));
        assert_eq!(s.fuel_budget.unwrap().to_string(), "10000000/1h");
        assert!("10000".parse::<FuelBudget>().is_err());
        assert!("lots/1h".parse::<FuelBudget>().is_err());
        assert!(s.validate("").is_err());
    }

    #[test]
    fn a_tasks_own_asks_are_held_to_the_tenants_caps_by_name() {
        let caps = TenantSettings {
            max_task_fuel: Some(1_000),
            max_task_memory: Some(ByteSize::mib(64)),
            max_task_timeout: Some(Duration::from_secs(60)),
            ..TenantSettings::default()
        };
        let mut limits = crate::task::TaskLimits {
            fuel: 1_000,
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(60),
            max_output_bytes: 1,
            max_disk_bytes: 1,
        };
        assert_eq!(caps.check_task("acme", &limits), Ok(()));
        limits.fuel = 1_001;
        let e = caps.check_task("acme", &limits).unwrap_err();
        assert!(
            e.contains("at most 1000 of fuel") && e.contains("1001"),
            "{e}"
        );
        limits.fuel = 1;
        limits.memory_bytes = 65 << 20;
        assert!(caps
            .check_task("acme", &limits)
            .unwrap_err()
            .contains("of memory"));
        limits.memory_bytes = 1;
        limits.timeout = Duration::from_secs(61);
        assert!(caps
            .check_task("acme", &limits)
            .unwrap_err()
            .contains("of time"));
        // No caps, no refusal; a zero cap is refused as nonsense.
        assert_eq!(
            TenantSettings::default().check_task("acme", &limits),
            Ok(())
        );
        let zero = TenantSettings {
            max_task_fuel: Some(0),
            ..TenantSettings::default()
        };
        assert!(zero.validate("acme").unwrap_err().contains("max_task_fuel"));
        let parsed = crate::config::HostConfig::parse(
            "[tenants.acme]\nmax_task_timeout = \"10m\"\nmax_task_memory = \"1GiB\"\n",
        )
        .unwrap();
        assert_eq!(
            parsed.tenants["acme"].max_task_timeout,
            Some(Duration::from_secs(600))
        );
    }

    /// The provided functions `names` (`MODULE::NAME`).
    fn imports(names: &[&str]) -> ImportSet {
        let mut set = ImportSet::EMPTY;
        for name in names {
            let (module, name) = name.split_once("::").unwrap();
            assert!(set.insert(module, name), "{module}::{name} is provided");
        }
        set
    }

    const SHA: &str = "356bfb9b13770000000000000000000000000000000000000000000000000000";

    #[test]
    fn a_module_is_held_to_the_tenants_size_cap_and_import_rules_by_name() {
        let open = "wasi_snapshot_preview1::path_open";
        let write = "wasi_snapshot_preview1::fd_write";
        let progress = "corral::progress";
        let no_files = TenantSettings {
            denied_imports: ImportRules::parse(&["wasi_snapshot_preview1::path_*"]).unwrap(),
            max_module_size: Some(ByteSize::kib(1)),
            ..TenantSettings::default()
        };
        assert_eq!(
            no_files.check_module("acme", SHA, 1024, imports(&[write, progress])),
            Ok(())
        );
        let e = no_files
            .check_module("acme", SHA, 1024, imports(&[write, open]))
            .unwrap_err();
        assert!(
            e.contains("module 356bfb9b1377 imports wasi_snapshot_preview1::path_open")
                && e.contains("denied by \"wasi_snapshot_preview1::path_*\""),
            "{e}"
        );
        let e = no_files
            .check_module("acme", SHA, 1025, ImportSet::EMPTY)
            .unwrap_err();
        assert!(
            e.contains("is 1025 bytes") && e.contains("at most 1024 bytes (1.0 KiB)"),
            "{e}"
        );
        // An allow list admits only what it names; a denial wins over it.
        let only_io = TenantSettings {
            allowed_imports: Some(
                ImportRules::parse(&["wasi_snapshot_preview1::fd_*", "corral::*"]).unwrap(),
            ),
            denied_imports: ImportRules::parse(&["corral::progress"]).unwrap(),
            ..TenantSettings::default()
        };
        assert_eq!(
            only_io.check_module("acme", SHA, 1 << 30, imports(&[write])),
            Ok(())
        );
        let e = only_io
            .check_module("acme", SHA, 1, imports(&[write, open]))
            .unwrap_err();
        assert!(
            e.contains("path_open") && e.contains("not among its allowed imports"),
            "{e}"
        );
        let e = only_io
            .check_module("acme", SHA, 1, imports(&[progress]))
            .unwrap_err();
        assert!(e.contains("denied by \"corral::progress\""), "{e}");
        // An empty allow list admits modules that import nothing.
        let nothing = TenantSettings {
            allowed_imports: Some(ImportRules::default()),
            ..TenantSettings::default()
        };
        assert_eq!(
            nothing.check_module("acme", SHA, 1, ImportSet::EMPTY),
            Ok(())
        );
        assert!(nothing
            .check_module("acme", SHA, 1, imports(&[write]))
            .is_err());
        // No rules, no refusal.
        assert_eq!(
            TenantSettings::default().check_module("acme", SHA, u64::MAX, ImportSet::all()),
            Ok(())
        );
    }

    #[test]
    fn module_rules_are_read_from_the_config_and_nonsense_is_refused() {
        let parsed = crate::config::HostConfig::parse(
            "[tenants.acme]\nmax_module_size = \"8MiB\"\nallowed_imports = \
             [\"wasi_snapshot_preview1::*\"]\ndenied_imports = \
             [\"wasi_snapshot_preview1::sock_*\"]\n",
        )
        .unwrap();
        let acme = &parsed.tenants["acme"];
        assert_eq!(acme.max_module_size, Some(ByteSize::mib(8)));
        assert_eq!(
            acme.denied_imports.texts(),
            ["wasi_snapshot_preview1::sock_*"]
        );
        assert_eq!(
            acme.allowed_imports
                .as_ref()
                .unwrap()
                .matched()
                .iter()
                .count(),
            46
        );
        let e = crate::config::HostConfig::parse(
            "[tenants.acme]\ndenied_imports = [\"wasi_snapshot_preview1::path_opne\"]\n",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("path_opne"), "{e:#}");
        let zero = TenantSettings {
            max_module_size: Some(ByteSize::b(0)),
            ..TenantSettings::default()
        };
        assert!(zero
            .validate("acme")
            .unwrap_err()
            .contains("max_module_size"));
        let many = TenantSettings {
            denied_imports: ImportRules(vec!["corral::log".parse().unwrap(); 257]),
            ..TenantSettings::default()
        };
        assert!(many.validate("acme").unwrap_err().contains("256"));
        // A change replaces the rules it names, and says so for the audit log.
        let change = TenantChange {
            allowed_imports: Some(None),
            denied_imports: Some(ImportRules::parse(&["corral::*"]).unwrap()),
            max_module_size: Some(Some(4096)),
            ..TenantChange::default()
        };
        let next = change.apply(acme);
        assert_eq!(next.allowed_imports, None);
        assert_eq!(next.denied_imports.texts(), ["corral::*"]);
        assert_eq!(next.max_module_size, Some(ByteSize::kib(4)));
        assert_eq!(
            change.describe(),
            "max_module_size=4.0 KiB allowed_imports=all denied_imports=corral::*"
        );
    }

    #[test]
    fn a_change_keeps_what_it_does_not_name() {
        let current = TenantSettings {
            weight: 3.0,
            limit_slots: Some(8),
            ..TenantSettings::default()
        };
        let change = TenantChange {
            guarantee_slots: Some(2),
            limit_memory: Some(Some(1 << 30)),
            ..TenantChange::default()
        };
        let next = change.apply(&current);
        assert_eq!(next.weight, 3.0);
        assert_eq!(next.limit_slots, Some(8));
        assert_eq!(next.guarantee_slots, 2);
        assert_eq!(next.limit_memory, Some(ByteSize::gib(1)));
        let unlimited = TenantChange {
            limit_slots: Some(None),
            ..TenantChange::default()
        };
        assert_eq!(unlimited.apply(&next).limit_slots, None);
    }
}
