//! What one run is given: [`RunSpec`] (arguments, environment, stdin, granted directories,
//! limits, an event observer and a control handle) and [`DirGrant`].

use std::path::PathBuf;

use super::control::RunControl;
use super::guest_api::EventSink;
use super::limits::Limits;

/// A host directory granted to the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// The path the guest opens it by (e.g. `/data`).
    pub guest: String,
    /// Whether the guest may create, write and delete inside it.
    pub writable: bool,
}

impl DirGrant {
    /// Grants `host` as `guest`, read-only.
    pub fn read_only(host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            guest: guest.into(),
            writable: false,
        }
    }

    /// Grants `host` as `guest`, read-write.
    pub fn read_write(host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        Self {
            writable: true,
            ..Self::read_only(host, guest)
        }
    }
}

/// A stdin streamed to the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StdinSource {
    /// A file, opened when the run starts.
    File(PathBuf),
    /// This process's own stdin.
    Inherit,
}

/// Everything a run is given. The guest sees nothing else: no host environment, no files but
/// the granted directories, no sockets.
#[derive(Clone, Default)]
pub struct RunSpec {
    /// `argv[0]`.
    pub program: String,
    /// `argv[1..]`.
    pub args: Vec<String>,
    /// The guest's entire environment.
    pub env: Vec<(String, String)>,
    /// The guest's stdin; it reads end-of-file after these bytes. Shared, not copied, by the
    /// runs given it.
    pub stdin: bytes::Bytes,
    /// Where the guest's stdin comes from instead of [`RunSpec::stdin`], streamed as the guest
    /// reads it and never held in memory whole.
    pub stdin_source: Option<StdinSource>,
    /// Host directories the guest may open.
    pub dirs: Vec<DirGrant>,
    /// Caps on what the run may consume.
    pub limits: Limits,
    /// Called on the run's thread for every progress, log and metric call of the guest.
    pub on_event: Option<EventSink>,
    /// Lets another thread kill the run and read its fuel use while it runs.
    pub control: Option<RunControl>,
}

impl std::fmt::Debug for RunSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &self.env)
            .field("stdin_bytes", &self.stdin.len())
            .field("stdin_source", &self.stdin_source)
            .field("dirs", &self.dirs)
            .field("limits", &self.limits)
            .field("on_event", &self.on_event.is_some())
            .field("control", &self.control.is_some())
            .finish()
    }
}
