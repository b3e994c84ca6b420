//! The exit statuses of `corral run` (and later `corral submit --wait`).
//!
//! WASI preview1 only lets a guest exit with 0 to 125, so a status of 126 or above always comes
//! from Corral, never from the guest.
//!
//! | status | meaning                                           |
//! |--------|---------------------------------------------------|
//! | 0-125  | the guest's own exit code (`success` is 0)        |
//! | 126    | `invalid_module`: the module cannot be run        |
//! | 127    | `link_error`: an import the sandbox lacks         |
//! | 128    | `trap`                                            |
//! | 129    | `stack_overflow`                                  |
//! | 130    | `out_of_fuel`                                     |
//! | 131    | `memory_limit`                                    |
//! | 132    | `timeout`                                         |
//! | 133    | Corral itself failed (unreadable file, bad grant) |
//! | 134    | usage error (unknown flag, malformed value)       |
//! | 135    | `killed`: stopped by `corral task kill`           |
//! | 136    | the task was LOST with no attempts left           |

use corral_agent::sandbox::Outcome;

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
/// Corral could not do what was asked (not the guest's doing).
pub const CORRAL_FAILED: u8 = 133;
/// The command line was wrong.
pub const USAGE: u8 = 134;
/// `killed`.
pub const KILLED: u8 = 135;
/// A cluster task ended LOST: its agent vanished and no attempts were left.
pub const LOST: u8 = 136;

/// The process exit status for a run that ended with `outcome`.
pub fn status(outcome: &Outcome) -> u8 {
    let code = match outcome {
        Outcome::Exit { code } => *code,
        _ => 0,
    };
    status_of(outcome.kind(), code)
}

/// The exit status for an outcome known by its kind (`success`, `exit`, `trap`, ...) and the
/// guest's exit code, as a cluster task reports it. An unknown kind is Corral's failure.
pub fn status_of(kind: &str, exit_code: i32) -> u8 {
    match kind {
        "success" => 0,
        // WASI keeps guest codes in 0..126; clamp anyway so a status never lies.
        "exit" => u8::try_from(exit_code)
            .ok()
            .filter(|c| *c < 126)
            .unwrap_or(TRAP),
        "invalid_module" => INVALID_MODULE,
        "link_error" => LINK_ERROR,
        "trap" => TRAP,
        "stack_overflow" => STACK_OVERFLOW,
        "out_of_fuel" => OUT_OF_FUEL,
        "memory_limit" => MEMORY_LIMIT,
        "timeout" => TIMEOUT,
        "killed" => KILLED,
        _ => CORRAL_FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_a_distinct_status_outside_the_guest_range() {
        let outcomes = [
            Outcome::InvalidModule {
                message: String::new(),
            },
            Outcome::LinkError {
                message: String::new(),
            },
            Outcome::Trap {
                message: String::new(),
            },
            Outcome::StackOverflow,
            Outcome::OutOfFuel,
            Outcome::MemoryLimit,
            Outcome::Timeout,
            Outcome::Killed,
        ];
        let mut statuses: Vec<u8> = outcomes.iter().map(status).collect();
        statuses.extend([CORRAL_FAILED, USAGE, LOST]);
        let mut unique = statuses.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), statuses.len());
        assert!(statuses.iter().all(|s| *s >= 126));
    }

    #[test]
    fn guest_codes_pass_through() {
        assert_eq!(status(&Outcome::Success), 0);
        assert_eq!(status(&Outcome::Exit { code: 3 }), 3);
        assert_eq!(status(&Outcome::Exit { code: 125 }), 125);
        assert_eq!(status(&Outcome::Exit { code: 200 }), TRAP);
        assert_eq!(status_of("exit", 7), 7);
        assert_eq!(status_of("no_such_outcome", 0), CORRAL_FAILED);
    }
}
