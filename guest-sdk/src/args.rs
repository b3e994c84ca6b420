//! A small command-line parser for tasks: `--flag`, `--name value`, `--name=value` and
//! positionals, with errors that name the offending argument.

use std::fmt;
use std::str::FromStr;

/// A usage error: unknown flag, missing or malformed value, extra argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// So that `?` works in a task's `fn run() -> Result<(), String>`.
impl From<UsageError> for String {
    fn from(error: UsageError) -> Self {
        error.0
    }
}

/// Arguments not yet consumed. Take flags and values first, then positionals, then
/// [`Args::finish`] to reject anything left over.
///
/// ```
/// use corral_guest::args::Args;
/// let mut args = Args::new(vec!["--k".into(), "3".into(), "--json".into(), "data.csv".into()]);
/// assert!(args.flag("--json"));
/// assert_eq!(args.value("--k", 2usize).unwrap(), 3);
/// assert_eq!(args.value("--seed", 42u64).unwrap(), 42);
/// assert_eq!(args.positional(), Some("data.csv".to_string()));
/// args.finish().unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct Args {
    rest: Vec<String>,
}

impl Args {
    /// From explicit arguments (without `argv[0]`).
    pub fn new(args: Vec<String>) -> Self {
        Self { rest: args }
    }

    /// From the task's own arguments.
    pub fn from_env() -> Self {
        Self::new(crate::input::args())
    }

    /// Whether the boolean flag `name` is present (consumes every occurrence).
    pub fn flag(&mut self, name: &str) -> bool {
        let before = self.rest.len();
        self.rest.retain(|a| a != name);
        self.rest.len() != before
    }

    /// The value of `--name value` or `--name=value`, parsed; `default` when absent.
    pub fn value<T: FromStr>(&mut self, name: &str, default: T) -> Result<T, UsageError>
    where
        T::Err: fmt::Display,
    {
        let prefix = format!("{name}=");
        let mut found = None;
        let mut i = 0;
        while i < self.rest.len() {
            if self.rest[i] == name {
                if i + 1 >= self.rest.len() {
                    return Err(UsageError(format!("{name} needs a value")));
                }
                found = Some(self.rest.remove(i + 1));
                self.rest.remove(i);
            } else if let Some(value) = self.rest[i].strip_prefix(&prefix) {
                found = Some(value.to_string());
                self.rest.remove(i);
            } else {
                i += 1;
            }
        }
        match found {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|e| UsageError(format!("{name} {raw:?}: {e}"))),
        }
    }

    /// The next positional argument, if any.
    pub fn positional(&mut self) -> Option<String> {
        let i = self
            .rest
            .iter()
            .position(|a| !a.starts_with("--") || a == "-")?;
        Some(self.rest.remove(i))
    }

    /// Fails naming the first argument nobody consumed.
    pub fn finish(self) -> Result<(), UsageError> {
        match self.rest.first() {
            None => Ok(()),
            Some(arg) if arg.starts_with("--") => Err(UsageError(format!("unknown flag {arg}"))),
            Some(arg) => Err(UsageError(format!("unexpected argument {arg:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::new(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn values_in_both_forms() {
        let mut a = args(&["--seed=7", "--test-fraction", "0.5"]);
        assert_eq!(a.value("--seed", 0u64).unwrap(), 7);
        assert_eq!(a.value("--test-fraction", 0.2f64).unwrap(), 0.5);
        a.finish().unwrap();
    }

    #[test]
    fn errors_name_the_argument() {
        assert_eq!(
            args(&["--k"]).value("--k", 3usize).unwrap_err().0,
            "--k needs a value"
        );
        let err = args(&["--k", "three"]).value("--k", 3usize).unwrap_err().0;
        assert!(err.starts_with("--k \"three\""), "{err}");
        assert_eq!(
            args(&["--frob"]).finish().unwrap_err().0,
            "unknown flag --frob"
        );
        let mut extra = args(&["a.csv", "b.csv"]);
        assert_eq!(extra.positional().as_deref(), Some("a.csv"));
        assert_eq!(
            extra.finish().unwrap_err().0,
            "unexpected argument \"b.csv\""
        );
    }
}
