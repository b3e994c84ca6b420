//! `corral-host`: Corral's control plane (the Mesos "master").
//!
//! The host tracks agents, carves their capacity into partitions, places submitted tasks into
//! partitions that can hold them, and records every task's life durably in redb. It never runs
//! guest code and does not link wasmtime: modules are admitted here with
//! [`corral_admission::admit`], the check the sandbox makes before compiling, and stored.
//!
//! # Map
//! - Who may do what: [`auth`] (tokens, their check before any call is read, the principal
//!   a call is from).
//! - Pure decisions: [`state`] (the state machine: every change to tasks, agents and
//!   partitions, with the writes, commands and events it requires), [`partition`] (capacity,
//!   reservations, carving), [`allocator`] (may this partition hold this task; which one is
//!   best), [`scheduler`] (a snapshot in, a plan out), [`registry`] (agents and their
//!   liveness), [`task`] (the lifecycle and retry policy).
//! - Effects: [`store`] (redb, group commits), [`control`] (the actor that applies changes to
//!   the state in batches, makes them durable, then talks to agents and watchers),
//!   [`events`] (task changes for watchers), [`api`] (the gRPC services), [`config`].
//!
//! # Example
//! A host on an ephemeral port, answering a client:
//! ```no_run
//! use corral_host::{api, config::HostConfig, control::ControlPlane};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let data = tempfile::tempdir()?;
//! let plane = ControlPlane::start(HostConfig::default(), data.path())?;
//! let listener = api::bind("127.0.0.1:0".parse()?).await?;
//! println!("host on http://{}", listener.local_addr()?);
//! // Clients need a token: the host's first admin token, kept in a file of its own.
//! plane.bootstrap_admin(&data.path().join("admin.token"), false).await?;
//! api::serve(plane, listener, None, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod allocator;
pub mod api;
pub mod auth;
pub mod config;
pub mod control;
pub mod convert;
pub mod error;
pub mod events;
pub mod free_space;
pub mod job;
pub mod partition;
pub mod registry;
pub mod scheduler;
pub mod state;
pub mod store;
pub mod task;
pub mod tenant;
