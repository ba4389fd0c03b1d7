//! Claiming the process's stdio for the protocol (plug-in side).
//!
//! The protocol owns fd 1. Before anything else runs, [`claim`] duplicates fd 1 to a private
//! close-on-exec descriptor used only for protocol messages, and points fd 1 at stderr, so a stray
//! `println!`, a C library banner or a dependency's output lands in the logs instead of corrupting
//! the wire (protocol.md §2.11).

use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// The protocol's private ends of stdin and stdout.
pub struct ClaimedStdio {
    pub input: Pin<Box<dyn AsyncRead + Send>>,
    pub output: Pin<Box<dyn AsyncWrite + Send>>,
}

/// Takes fd 0 and fd 1 for the protocol; afterwards fd 1 writes to stderr.
///
/// Must be called inside a tokio runtime.
pub fn claim() -> std::io::Result<ClaimedStdio> {
    // `try_clone_to_owned` uses F_DUPFD_CLOEXEC, so the private descriptor is not inherited by
    // anything the plug-in spawns.
    let wire_out: OwnedFd = std::io::stdout().as_fd().try_clone_to_owned()?;
    nix::unistd::dup2_stdout(std::io::stderr()).map_err(std::io::Error::from)?;
    let wire_in: OwnedFd = std::io::stdin().as_fd().try_clone_to_owned()?;
    // Children of the plug-in must not read our protocol input (protocol.md §2.11): fd 0 becomes
    // /dev/null, the private duplicate above keeps the pipe.
    let devnull = std::fs::File::open("/dev/null")?;
    nix::unistd::dup2_stdin(&devnull).map_err(std::io::Error::from)?;

    let output: Pin<Box<dyn AsyncWrite + Send>> =
        match tokio::net::unix::pipe::Sender::from_owned_fd(wire_out.try_clone()?) {
            Ok(pipe) => Box::pin(pipe),
            // Not a pipe (a file or a terminal when run by hand): fall back to blocking I/O on
            // tokio's blocking pool.
            Err(_) => Box::pin(tokio::fs::File::from_std(std::fs::File::from(wire_out))),
        };
    let input: Pin<Box<dyn AsyncRead + Send>> =
        match tokio::net::unix::pipe::Receiver::from_owned_fd(wire_in.try_clone()?) {
            Ok(pipe) => Box::pin(pipe),
            Err(_) => Box::pin(tokio::fs::File::from_std(std::fs::File::from(wire_in))),
        };
    Ok(ClaimedStdio { input, output })
}
