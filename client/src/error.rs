//! The SDK's error type and its mapping from gRPC statuses and transport
//! failures.

use std::error::Error as StdError;
use std::io;

use tonic::{Code, Status};

/// Everything that can go wrong in a call to the registry.
///
/// The variants are the distinctions a caller (the CLI, an application)
/// acts on; each carries the server's own message text where there is one.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No node could be reached: the connection was refused, timed out or
    /// broke before an answer came.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// The last address that was tried.
        addr: String,
        /// What went wrong, in a few lowercase words ("connection refused").
        reason: String,
    },
    /// The member, node or session named in the request does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The member id is owned by another live session.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request broke a rule or a limit; the message names the field.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The cluster could not serve the request (no leader, shutting down).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// No answer came within the time allowed.
    #[error("timed out: {0}")]
    Timeout(String),
    /// An address given to [`crate::Client::connect`] cannot be used.
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The server answered with something the protocol does not allow (a
    /// required field missing).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A background subscription or view stopped for good; the message says
    /// why.
    #[error("stopped: {0}")]
    Stopped(String),
    /// Any other gRPC status, kept whole.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Other(Status),
}

impl Error {
    /// Whether the error is a transient one that a long-lived stream should
    /// survive by reconnecting, rather than report and stop.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Unavailable(_) | Error::Timeout(_) => true,
            Error::Other(status) => matches!(
                status.code(),
                Code::Unknown
                    | Code::Internal
                    | Code::Aborted
                    | Code::Cancelled
                    | Code::ResourceExhausted
            ),
            _ => false,
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::NotFound => Error::NotFound(or_default(message, "not found")),
            Code::AlreadyExists => Error::AlreadyExists(or_default(message, "already exists")),
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::Unavailable => Error::Unavailable(message),
            Code::DeadlineExceeded => Error::Timeout(message),
            _ => Error::Other(status),
        }
    }
}

fn or_default(message: String, default: &str) -> String {
    if message.is_empty() {
        default.to_owned()
    } else {
        message
    }
}

/// A readable name for a gRPC code; tonic's own `Display` gives a whole
/// sentence, which reads badly in a one-line error.
fn code_name(code: Code) -> String {
    format!("{code:?}")
}

/// Whether a status was made on the client side from a transport failure
/// (a broken connection, a reset stream) rather than sent by a server.
/// Transport statuses carry the underlying error as their source; statuses
/// decoded from a server's trailers never do.
pub(crate) fn is_transport_status(status: &Status) -> bool {
    StdError::source(status).is_some()
}

/// Why a stream stopped, in a few words: the operating system's reason for
/// a transport failure, else the node's status.
pub(crate) fn stream_failure(status: Status) -> String {
    match StdError::source(&status) {
        Some(source) => transport_reason(source),
        None => Error::from(status).to_string(),
    }
}

/// The most telling few words about a transport failure, found by walking
/// the error's source chain down to the operating system's error.
pub(crate) fn transport_reason(err: &(dyn StdError + 'static)) -> String {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    let mut innermost = err.to_string();
    while let Some(e) = current {
        if let Some(io_err) = e.downcast_ref::<io::Error>() {
            return io_reason(io_err);
        }
        let text = e.to_string();
        if !text.is_empty() {
            innermost = text;
        }
        current = e.source();
    }
    innermost
}

/// Describes an io error the way a person would say it: "connection
/// refused", not "Connection refused (os error 111)".
fn io_reason(err: &io::Error) -> String {
    use io::ErrorKind::*;
    match err.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut | HostUnreachable
        | NetworkUnreachable | AddrNotAvailable | NotConnected | BrokenPipe | UnexpectedEof => {
            err.kind().to_string()
        }
        _ => {
            let text = err.to_string();
            match text.find(" (os error") {
                Some(cut) => text[..cut].to_owned(),
                None => text,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("tcp connect error")
        }
    }

    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn reason_digs_down_to_the_io_error() {
        let err = Wrapper(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(transport_reason(&err), "connection refused");
    }

    #[test]
    fn reason_strips_the_os_error_number() {
        let err = Wrapper(io::Error::other(
            "failed to lookup address information (os error -2)",
        ));
        assert_eq!(
            transport_reason(&err),
            "failed to lookup address information"
        );
    }

    #[test]
    fn statuses_map_to_variants_with_the_server_message() {
        let err = Error::from(Status::not_found("member \"x\" not found"));
        assert_eq!(err.to_string(), "member \"x\" not found");
        let err = Error::from(Status::invalid_argument("service: must be 1-128 bytes"));
        assert_eq!(
            err.to_string(),
            "invalid argument: service: must be 1-128 bytes"
        );
        let err = Error::from(Status::failed_precondition("no session"));
        assert_eq!(err.to_string(), "FailedPrecondition: no session");
        assert!(Error::from(Status::unavailable("no leader")).is_transient());
        assert!(!Error::from(Status::already_exists("taken")).is_transient());
    }

    #[test]
    fn server_statuses_are_not_transport_statuses() {
        assert!(!is_transport_status(&Status::unavailable("no leader")));
        let mut status = Status::unavailable("tcp connect error");
        status.set_source(std::sync::Arc::new(io::Error::from(
            io::ErrorKind::ConnectionRefused,
        )));
        assert!(is_transport_status(&status));
    }
}
