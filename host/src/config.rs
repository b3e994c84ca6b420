//! The host's configuration: one serde struct read from TOML (`corral host --config FILE`),
//! unknown keys refused, checked by [`HostConfig::validate`]. `host.sample.toml` at the crate
//! root is a commented sample.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::allocator::Strategy;
use crate::partition::PartitionTemplate;
use crate::scheduler::Order;
use crate::tenant::TenantSettings;

/// Room left in a message for what is not stdin or output (spec, names, figures).
const MESSAGE_OVERHEAD_BYTES: u64 = 1 << 20;

/// Everything `corral host` can be told in its config file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// How tasks are spread over partitions.
    pub strategy: Strategy,
    /// Which tenant's task goes next: `fair` (weighted dominant resource fairness) or `fifo`
    /// (the oldest waiting task, whatever its tenant).
    pub order: Order,
    /// How often agents are told to heartbeat.
    #[serde(with = "humantime_serde_compat")]
    pub heartbeat_interval: Duration,
    /// An agent silent (or disconnected) this long is lost; its tasks are LOST and retried.
    #[serde(with = "humantime_serde_compat")]
    pub heartbeat_timeout: Duration,
    /// Largest module accepted.
    pub max_module_size: ByteSize,
    /// Largest stdin a task may carry.
    pub max_stdin_size: ByteSize,
    /// Most output kept per task: the cap on each of stdout and stderr, and on output files in all.
    pub max_output_size: ByteSize,
    /// Retries after a LOST (or, when asked, FAILED) attempt, for tasks that do not say.
    pub default_retries: u32,
    /// Limits for tasks that do not set their own.
    pub default_fuel: u64,
    /// Default memory cap (and reservation) of a task.
    pub default_memory: ByteSize,
    /// Default wall-clock limit of a task.
    #[serde(with = "humantime_serde_compat")]
    pub default_timeout: Duration,
    /// Default disk quota of a task: the bytes by which it may grow files.
    pub default_max_disk: ByteSize,
    /// The largest disk quota a task may ask for; larger ones are clamped to it.
    pub max_disk_size: ByteSize,
    /// Largest input accepted (`corral submit --input`): inputs are streamed to the data
    /// dir's disk, never held in memory.
    pub max_input_size: ByteSize,
    /// How long an input no kept task mounts is kept after its last use (upload or submit)
    /// before it is removed.
    #[serde(with = "humantime_serde_compat")]
    pub input_retention: Duration,
    /// Module uploads received at once; more wait for one to end (up to
    /// `upload_idle_timeout`), so that at most this many times `max_module_size` is buffered.
    pub max_concurrent_uploads: u32,
    /// An upload that sends no chunk for this long is abandoned, and one that waits this long
    /// for its turn is refused as busy.
    #[serde(with = "humantime_serde_compat")]
    pub upload_idle_timeout: Duration,
    /// How long a task that ended is kept, with its output and idempotency key, before it is
    /// removed.
    #[serde(with = "humantime_serde_compat")]
    pub task_retention: Duration,
    /// How long a module no kept task refers to is kept after its last use (upload or
    /// submit) before it is removed.
    #[serde(with = "humantime_serde_compat")]
    pub module_retention: Duration,
    /// How long an entry of the audit log is kept (at most
    /// [`MAX_AUDIT_ENTRIES`](crate::state::MAX_AUDIT_ENTRIES) are, whatever their age).
    #[serde(with = "humantime_serde_compat")]
    pub audit_retention: Duration,
    /// The window over which `corral tenant list` reports the fuel of a tenant without a
    /// budget (one with a budget is reported over its budget's period).
    #[serde(with = "humantime_serde_compat")]
    pub fuel_window: Duration,
    /// Free space kept on the data dir's filesystem: a new task or module is refused
    /// (`RESOURCE_EXHAUSTED`) while less than this would be left after it: headroom for the
    /// results of tasks already accepted and the host's own records. 0 turns the check off.
    pub min_free_disk: ByteSize,
    /// Named partitions carved from the agents they select; the rest of each agent is shared.
    pub partitions: Vec<PartitionTemplate>,
    /// Tenants' settings, by name; `corral tenant set` overrides a tenant's.
    pub tenants: BTreeMap<String, TenantSettings>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::Binpack,
            order: Order::Fair,
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            max_module_size: ByteSize::mib(64),
            max_stdin_size: ByteSize::mib(16),
            max_output_size: ByteSize::mib(16),
            default_retries: 2,
            default_fuel: 10_000_000_000,
            default_memory: ByteSize::mib(512),
            default_timeout: Duration::from_secs(60),
            default_max_disk: ByteSize::mib(256),
            max_disk_size: ByteSize::gib(4),
            max_input_size: ByteSize::gib(4),
            input_retention: Duration::from_secs(24 * 3600),
            max_concurrent_uploads: 4,
            upload_idle_timeout: Duration::from_secs(30),
            task_retention: Duration::from_secs(7 * 24 * 3600),
            module_retention: Duration::from_secs(24 * 3600),
            audit_retention: Duration::from_secs(90 * 24 * 3600),
            fuel_window: Duration::from_secs(3600),
            min_free_disk: ByteSize::mib(128),
            partitions: Vec::new(),
            tenants: BTreeMap::new(),
        }
    }
}

impl HostConfig {
    /// Reads and validates a TOML config file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval.is_zero() {
            return Err("heartbeat_interval must be above zero".into());
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(format!(
                "heartbeat_timeout ({}) must be longer than heartbeat_interval ({})",
                humantime::format_duration(self.heartbeat_timeout),
                humantime::format_duration(self.heartbeat_interval)
            ));
        }
        if self.default_fuel == 0 || self.default_memory.as_u64() == 0 {
            return Err("default_fuel and default_memory must be above zero".into());
        }
        if self.default_timeout.is_zero() {
            return Err("default_timeout must be above zero".into());
        }
        if self.task_retention.is_zero()
            || self.module_retention.is_zero()
            || self.input_retention.is_zero()
            || self.audit_retention.is_zero()
        {
            return Err(
                "task_retention, module_retention, input_retention and audit_retention must be above zero".into(),
            );
        }
        if self.fuel_window < crate::tenant::MIN_BUDGET_PERIOD
            || self.fuel_window > crate::tenant::MAX_BUDGET_PERIOD
        {
            return Err("fuel_window must be 1 minute to 31 days".into());
        }
        if self.max_concurrent_uploads == 0 || self.upload_idle_timeout.is_zero() {
            return Err("max_concurrent_uploads and upload_idle_timeout must be above zero".into());
        }
        // A final report carries stdout, stderr and output files, each up to the cap, and a
        // launch carries stdin: each must fit in one message, with room for the rest.
        let message = corral_proto::MAX_MESSAGE_BYTES as u64;
        let room = MESSAGE_OVERHEAD_BYTES;
        let most_output = (message - room) / 3;
        if self.max_output_size.as_u64() > most_output {
            return Err(format!(
                "max_output_size {} is too large: a task's stdout, stderr and output files, each \
                 up to it, must fit in one {} message; at most {}",
                self.max_output_size,
                ByteSize::b(message),
                ByteSize::b(most_output)
            ));
        }
        if self.max_stdin_size.as_u64() > message - room {
            return Err(format!(
                "max_stdin_size {} is too large: a launch must fit in one {} message; at most {}",
                self.max_stdin_size,
                ByteSize::b(message),
                ByteSize::b(message - room)
            ));
        }
        for (name, settings) in &self.tenants {
            settings.validate(name)?;
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &self.partitions {
            if p.name.is_empty() || p.name.contains('/') {
                return Err(format!(
                    "partition name {:?} must be non-empty and contain no '/'",
                    p.name
                ));
            }
            if p.name == crate::partition::DEFAULT_PARTITION {
                return Err("partition name \"default\" is the shared remainder's".into());
            }
            if !names.insert(&p.name) {
                return Err(format!("partition {:?} is defined twice", p.name));
            }
            if p.slots == 0 || p.memory.as_u64() == 0 {
                return Err(format!(
                    "partition {:?} needs at least one slot and some memory",
                    p.name
                ));
            }
        }
        Ok(())
    }
}

/// Durations as humantime strings (`"15s"`, `"1m30s"`).
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration (like \"15s\"): {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_file_parses() {
        let text = include_str!("../host.sample.toml");
        let config = HostConfig::parse(text).unwrap();
        assert_eq!(config.partitions.len(), 1);
        assert_eq!(config.tenants["acme"].weight, 2.0);
        assert_eq!(config.tenants["acme"].limit_slots, Some(16));
        assert_eq!(config.heartbeat_timeout, Duration::from_secs(15));
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(HostConfig::parse("").unwrap(), HostConfig::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        let e = HostConfig::parse("heartbeat_timout = \"5s\"").unwrap_err();
        assert!(e.contains("heartbeat_timout"), "{e}");
        let e = HostConfig::parse("heartbeat_timeout = \"soon\"").unwrap_err();
        assert!(e.contains("soon"), "{e}");
        let e = HostConfig::parse("heartbeat_timeout = \"1s\"").unwrap_err();
        assert!(e.contains("longer than heartbeat_interval"), "{e}");
        let e = HostConfig::parse("strategy = \"random\"").unwrap_err();
        assert!(e.contains("random"), "{e}");
        let e = HostConfig::parse("max_output_size = \"32MiB\"").unwrap_err();
        assert!(
            e.contains("max_output_size") && e.contains("at most"),
            "{e}"
        );
        let e = HostConfig::parse("max_stdin_size = \"96MiB\"").unwrap_err();
        assert!(e.contains("max_stdin_size"), "{e}");
        assert!(HostConfig::parse("max_output_size = \"31MiB\"").is_ok());
        let dup = "[[partitions]]\nname=\"a\"\nslots=1\nmemory=\"1GiB\"\n[[partitions]]\nname=\"a\"\nslots=1\nmemory=\"1GiB\"\n";
        assert!(HostConfig::parse(dup).unwrap_err().contains("twice"));
        let e = HostConfig::parse("[tenants.acme]\nweight = -1\n").unwrap_err();
        assert!(e.contains("acme") && e.contains("weight"), "{e}");
        let e = HostConfig::parse("[tenants.acme]\nwieght = 2\n").unwrap_err();
        assert!(e.contains("wieght"), "{e}");
    }
}
