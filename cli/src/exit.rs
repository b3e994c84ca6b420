//! The exit statuses of `corral run` and `corral submit --wait`, one table for both, keyed by
//! the contract's outcome kind.
//!
//! WASI preview1 only lets a guest exit with 0 to 125, so a status of 126 or above always comes
//! from Corral, never from the guest.
//!
//! | status | meaning                                                         |
//! |--------|-----------------------------------------------------------------|
//! | 0-125  | the guest's own exit code (`success` is 0)                      |
//! | 126    | `invalid_module`: the module cannot be run                      |
//! | 127    | `link_error`: an import the sandbox lacks                       |
//! | 128    | `trap`                                                          |
//! | 129    | `stack_overflow`                                                |
//! | 130    | `out_of_fuel`                                                   |
//! | 131    | `memory_limit`                                                  |
//! | 132    | `timeout`                                                       |
//! | 133    | Corral itself failed (`agent_error`, unreadable file, bad grant) |
//! | 134    | usage error (unknown flag, malformed value)                     |
//! | 135    | `killed`: stopped by `corral task kill`                         |
//! | 136    | the task was LOST with no attempts left                         |
//! | 137    | `compile_limit`: compiling went over the compile budget         |
//! | 138    | `disk_limit`: the guest grew files past its disk quota          |
//! | 139    | the host refused the token: none, malformed, unknown, revoked, expired, or not allowed this |
//! | 140    | a job ended FAILED: some task did not finish (`job wait`, `submit --wait` of a job) |
//!
//! A job that ended KILLED exits 135.

use corral_proto::pb::OutcomeKind;

/// `invalid_module`.
pub const INVALID_MODULE: u8 = 126;
/// `link_error`.
pub const LINK_ERROR: u8 = 127;
/// `trap`.
pub const TRAP: u8 = 128;
/// `stack_overflow`.
pub const STACK_OVERFLOW: u8 = 129;
/// `out_of_fuel`.
pub const OUT_OF_FUEL: u8 = 130;
/// `memory_limit`.
pub const MEMORY_LIMIT: u8 = 131;
/// `timeout`.
pub const TIMEOUT: u8 = 132;
/// Corral could not do what was asked (not the guest's doing), `agent_error` included.
pub const CORRAL_FAILED: u8 = 133;
/// The command line was wrong.
pub const USAGE: u8 = 134;
/// `killed`.
pub const KILLED: u8 = 135;
/// A cluster task ended LOST: its agent vanished and no attempts were left.
pub const LOST: u8 = 136;
/// `compile_limit`.
pub const COMPILE_LIMIT: u8 = 137;
/// `disk_limit`.
pub const DISK_LIMIT: u8 = 138;
/// The host refused the caller's token (authentication or authorization).
pub const ACCESS_DENIED: u8 = 139;
/// A job ended FAILED: some of its tasks did not finish.
pub const JOB_FAILED: u8 = 140;

/// The exit status for a run that ended with `kind` (and, for `exit`, the guest's code).
pub fn status(kind: OutcomeKind, exit_code: i32) -> u8 {
    match kind {
        OutcomeKind::Success => 0,
        // WASI keeps guest codes in 0..126; clamp anyway so a status never lies.
        OutcomeKind::Exit => u8::try_from(exit_code)
            .ok()
            .filter(|c| *c < 126)
            .unwrap_or(TRAP),
        OutcomeKind::InvalidModule => INVALID_MODULE,
        OutcomeKind::LinkError => LINK_ERROR,
        OutcomeKind::Trap => TRAP,
        OutcomeKind::StackOverflow => STACK_OVERFLOW,
        OutcomeKind::OutOfFuel => OUT_OF_FUEL,
        OutcomeKind::MemoryLimit => MEMORY_LIMIT,
        OutcomeKind::Timeout => TIMEOUT,
        OutcomeKind::Killed => KILLED,
        OutcomeKind::CompileLimit => COMPILE_LIMIT,
        OutcomeKind::DiskLimit => DISK_LIMIT,
        OutcomeKind::AgentError | OutcomeKind::Unspecified => CORRAL_FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_documented_status() {
        let expected = [
            (OutcomeKind::Success, 0),
            (OutcomeKind::InvalidModule, 126),
            (OutcomeKind::LinkError, 127),
            (OutcomeKind::Trap, 128),
            (OutcomeKind::StackOverflow, 129),
            (OutcomeKind::OutOfFuel, 130),
            (OutcomeKind::MemoryLimit, 131),
            (OutcomeKind::Timeout, 132),
            (OutcomeKind::AgentError, 133),
            (OutcomeKind::Killed, 135),
            (OutcomeKind::CompileLimit, 137),
            (OutcomeKind::DiskLimit, 138),
        ];
        for (kind, code) in expected {
            assert_eq!(status(kind, 0), code, "{kind:?}");
        }
        assert_eq!((USAGE, LOST), (134, 136));
    }

    #[test]
    fn guest_codes_pass_through() {
        assert_eq!(status(OutcomeKind::Exit, 3), 3);
        assert_eq!(status(OutcomeKind::Exit, 125), 125);
        assert_eq!(status(OutcomeKind::Exit, 200), TRAP);
        assert_eq!(status(OutcomeKind::Exit, -1), TRAP);
    }
}
