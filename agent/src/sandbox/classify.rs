//! How a run ended, as one [`Outcome`]: the limiter's cap first, then the timeout, the guest's
//! exit, and wasmtime's traps.

use wasmtime::Trap;
use wasmtime_wasi::I32Exit;

use super::outcome::Outcome;

/// Turns how the run ended into its one outcome. `cap_hit`: the limiter refused a grow.
pub(crate) fn classify(
    result: Result<wasmtime::Result<()>, tokio::time::error::Elapsed>,
    cap_hit: bool,
) -> Outcome {
    if cap_hit {
        // The guest asked for more than its cap; whatever it did next (trap on the failed
        // allocation, spin, exit) follows from that.
        return Outcome::MemoryLimit;
    }
    let error = match result {
        Err(_elapsed) => return Outcome::Timeout,
        Ok(Ok(())) => return Outcome::Success,
        Ok(Err(error)) => error,
    };
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return match exit.0 {
            0 => Outcome::Success,
            code => Outcome::Exit { code },
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Outcome::OutOfFuel,
        Some(Trap::Interrupt) => Outcome::Timeout,
        Some(Trap::StackOverflow) => Outcome::StackOverflow,
        Some(trap) => Outcome::Trap {
            message: trap.to_string(),
        },
        // A host function failed (e.g. `corral.log` given a range outside memory): the guest
        // broke the ABI, which ends it like a trap.
        None => Outcome::Trap {
            message: format!("{error:#}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_wins_over_what_followed_it() {
        let trapped = Ok(Err(wasmtime::Error::from(Trap::UnreachableCodeReached)));
        assert_eq!(classify(trapped, true), Outcome::MemoryLimit);
        assert_eq!(classify(Ok(Ok(())), false), Outcome::Success);
        let exit = Ok(Err(wasmtime::Error::from(I32Exit(0))));
        assert_eq!(classify(exit, false), Outcome::Success);
        let exit = Ok(Err(wasmtime::Error::from(I32Exit(4))));
        assert_eq!(classify(exit, false), Outcome::Exit { code: 4 });
        let fuel = Ok(Err(wasmtime::Error::from(Trap::OutOfFuel)));
        assert_eq!(classify(fuel, false), Outcome::OutOfFuel);
        let stack = Ok(Err(wasmtime::Error::from(Trap::StackOverflow)));
        assert_eq!(classify(stack, false), Outcome::StackOverflow);
    }
}
