//! Errors, each with the exit code it ends the program with.

use std::path::PathBuf;

/// Exit codes (documented in the README and `matrix-call --help`).
pub mod exit {
    /// Done: the command succeeded; a call that was answered ended normally.
    pub const OK: u8 = 0;
    /// Anything else: a homeserver error, a store error, an I/O error.
    pub const OTHER: u8 = 1;
    /// A bad command line or input file (clap uses 2 as well).
    pub const USAGE: u8 = 2;
    /// Authentication: not logged in, wrong user name or password, session no longer valid.
    pub const AUTH: u8 = 3;
    /// Not found: unknown user, no DM room with the user, room unknown or not joined.
    pub const NOT_FOUND: u8 = 4;
    /// The call was not answered: rejected, busy, no answer, answered elsewhere; or no call came
    /// in within `--timeout` (`answer`, `reject`).
    pub const NOT_ANSWERED: u8 = 5;
    /// The call failed after it was answered, or could not be set up (media, signalling).
    pub const CALL_FAILED: u8 = 6;
    /// The homeserver could not be reached.
    pub const UNREACHABLE: u8 = 7;
    /// Interrupted by Ctrl-C (SIGINT) or SIGTERM; a call in progress was hung up first.
    pub const INTERRUPTED: u8 = 130;
}

/// What went wrong, in one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or input.
    #[error("{0}")]
    Usage(String),
    /// Not logged in, wrong credentials, token revoked.
    #[error("{0}")]
    Auth(String),
    /// A user or room that does not exist or that we cannot call.
    #[error("{0}")]
    NotFound(String),
    /// The call was not answered (the end reason as text).
    #[error("call not answered: {0}")]
    NotAnswered(String),
    /// The call failed.
    #[error("call failed: {0}")]
    CallFailed(String),
    /// No connection to the homeserver.
    #[error("cannot reach the homeserver: {0}")]
    Unreachable(String),
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: anyhow::Error,
    },
    /// Anything else.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::File { .. } => exit::USAGE,
            CliError::Auth(_) => exit::AUTH,
            CliError::NotFound(_) => exit::NOT_FOUND,
            CliError::NotAnswered(_) => exit::NOT_ANSWERED,
            CliError::CallFailed(_) => exit::CALL_FAILED,
            CliError::Unreachable(_) => exit::UNREACHABLE,
            CliError::Interrupted => exit::INTERRUPTED,
            CliError::Other(_) => exit::OTHER,
        }
    }

    /// A short machine-readable kind for `--json`.
    pub fn kind(&self) -> &'static str {
        match self {
            CliError::Usage(_) => "usage",
            CliError::File { .. } => "file",
            CliError::Auth(_) => "auth",
            CliError::NotFound(_) => "not_found",
            CliError::NotAnswered(_) => "not_answered",
            CliError::CallFailed(_) => "call_failed",
            CliError::Unreachable(_) => "unreachable",
            CliError::Interrupted => "interrupted",
            CliError::Other(_) => "other",
        }
    }

    /// A file error.
    pub fn file(path: impl Into<PathBuf>, source: impl Into<anyhow::Error>) -> Self {
        CliError::File { path: path.into(), source: source.into() }
    }
}

/// Classifies a matrix-sdk error: authentication, connection or other.
pub fn from_matrix(context: &str, e: matrix_sdk::Error) -> CliError {
    use matrix_sdk::ruma::api::error::ErrorKind;
    match e.client_api_error_kind() {
        Some(ErrorKind::Forbidden) => {
            return CliError::Auth(format!("{context}: wrong user name or password"));
        }
        Some(ErrorKind::UnknownToken(_)) => {
            return CliError::Auth(format!(
                "{context}: the session is no longer valid (logged out elsewhere?): run `matrix-call login` again"
            ));
        }
        Some(ErrorKind::UserDeactivated) => {
            return CliError::Auth(format!("{context}: the account is deactivated"));
        }
        _ => {}
    }
    if let matrix_sdk::Error::Http(h) = &e {
        if is_connection_error(h) {
            return CliError::Unreachable(format!("{context}: {}", one_line(&e)));
        }
    }
    CliError::Other(anyhow::anyhow!("{context}: {}", one_line(&e)))
}

/// Classifies a matrix-sdk HTTP error.
pub fn from_http(context: &str, e: matrix_sdk::HttpError) -> CliError {
    from_matrix(context, matrix_sdk::Error::Http(Box::new(e)))
}

fn is_connection_error(e: &matrix_sdk::HttpError) -> bool {
    match e {
        matrix_sdk::HttpError::Reqwest(r) => r.is_connect() || r.is_timeout(),
        _ => false,
    }
}

/// An error and its causes on one line.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_documented_exit_code() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        assert_eq!(CliError::Auth("x".into()).exit_code(), 3);
        assert_eq!(CliError::NotFound("x".into()).exit_code(), 4);
        assert_eq!(CliError::NotAnswered("x".into()).exit_code(), 5);
        assert_eq!(CliError::CallFailed("x".into()).exit_code(), 6);
        assert_eq!(CliError::Unreachable("x".into()).exit_code(), 7);
        assert_eq!(CliError::Interrupted.exit_code(), 130);
        assert_eq!(CliError::Other(anyhow::anyhow!("x")).exit_code(), 1);
        assert_eq!(CliError::file("a.wav", anyhow::anyhow!("missing")).to_string(), "a.wav: missing");
    }

    #[test]
    fn one_line_joins_causes_without_newlines() {
        let e = anyhow::anyhow!("inner\nline").context("outer");
        let s = one_line(e.as_ref());
        assert_eq!(s, "outer: inner line");
    }
}
