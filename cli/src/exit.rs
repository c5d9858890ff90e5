//! The process exit codes, defined once: scripts depend on them.

use std::fmt;
use std::io;
use std::process::ExitCode;

/// The command did what was asked.
pub const SUCCESS: u8 = 0;
/// The request failed: not found, refused, unavailable, unreachable.
pub const FAILED: u8 = 1;
/// The command line was wrong (clap uses the same code for its errors).
pub const USAGE: u8 = 2;

/// A mistake in the command line found after clap accepted it.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// How a command's outcome ends the process.
pub enum Outcome {
    /// Exit quietly with this code.
    Quiet(u8),
    /// Print this one-line message as an error and exit with this code.
    Failed(String, u8),
}

/// Decides the exit code and message for a failed command.
pub fn outcome(err: &anyhow::Error) -> Outcome {
    // A reader that went away (`fuddle-cli members watch | head -1`) is the
    // normal end of a pipeline, not a failure.
    if err.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    }) {
        return Outcome::Quiet(SUCCESS);
    }
    let usage = err.chain().any(|e| {
        e.is::<UsageError>()
            || matches!(
                e.downcast_ref::<fuddle_client::Error>(),
                Some(fuddle_client::Error::InvalidAddress { .. })
            )
    });
    let message = format!("{err:#}").replace('\n', " ");
    Outcome::Failed(message, if usage { USAGE } else { FAILED })
}

impl Outcome {
    /// Reports the outcome on stderr and turns it into the process's code.
    pub fn report(self) -> ExitCode {
        match self {
            Outcome::Quiet(code) => ExitCode::from(code),
            Outcome::Failed(message, code) => {
                eprintln!("error: {message}");
                ExitCode::from(code)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(err: anyhow::Error) -> (String, u8) {
        match outcome(&err) {
            Outcome::Quiet(code) => (String::new(), code),
            Outcome::Failed(message, code) => (message, code),
        }
    }

    #[test]
    fn request_failures_exit_1_with_the_message() {
        let err = fuddle_client::Error::Unreachable {
            addr: "127.0.0.1:8220".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            code(err.into()),
            (
                "cannot reach 127.0.0.1:8220: connection refused".into(),
                FAILED
            )
        );
        let err = fuddle_client::Error::InvalidArgument("service: must be 1-128 bytes".into());
        assert_eq!(
            code(err.into()),
            (
                "invalid argument: service: must be 1-128 bytes".into(),
                FAILED
            )
        );
    }

    #[test]
    fn usage_mistakes_exit_2() {
        assert_eq!(code(UsageError("bad".into()).into()).1, USAGE);
        let err = fuddle_client::Error::InvalidAddress {
            addr: "x".into(),
            reason: "missing port".into(),
        };
        assert_eq!(code(err.into()).1, USAGE);
    }

    #[test]
    fn a_closed_pipe_is_a_quiet_success() {
        let err = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(code(err), (String::new(), SUCCESS));
    }

    #[test]
    fn messages_are_one_line() {
        let err = anyhow::anyhow!("first\nsecond");
        assert_eq!(code(err).0, "first second");
    }
}
