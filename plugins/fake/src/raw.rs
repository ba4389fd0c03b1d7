//! Misbehaving output: bytes written straight to the protocol pipe (bypassing the SDK), a stderr
//! flood, and self-inflicted signals.
//!
//! The protocol pipe is reached through [`crate::RAW_WIRE`], a duplicate of the real fd 1 taken
//! before the SDK claimed it. A duplicate shares the open file description, so it is also
//! non-blocking once the SDK has registered its own copy with tokio: a plain blocking
//! `write_all` would fail with `WouldBlock` as soon as the 64 KiB pipe fills. Writes therefore go
//! through a tokio pipe sender, which waits for the pipe to drain; a wire that is not a pipe (a
//! file or a terminal, when run by hand) is written with blocking I/O on the blocking pool.
//!
//! The SDK writes to the same pipe concurrently. Each junk line is one `write` of less than
//! `PIPE_BUF` bytes, so it is never torn, but a line of many megabytes can absorb a message the
//! SDK writes meanwhile; that is the misbehaviour being simulated.

use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;

use nix::sys::signal::{SigHandler, Signal};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;

/// Size of one write of `fake.big_line` and of `fake.flood`'s reused buffer.
const CHUNK: usize = 64 * 1024;

/// A writer onto the real protocol pipe.
enum RawWire {
    Pipe(pipe::Sender),
    Blocking(std::fs::File),
}

impl RawWire {
    /// Opens a fresh handle on the raw wire. Needs the tokio runtime.
    fn open() -> io::Result<Self> {
        let wire = crate::RAW_WIRE
            .get()
            .ok_or_else(|| io::Error::other("no raw wire: the plug-in was not started through bkg_plugin_fake::run"))?;
        let file = wire.try_clone()?;
        if file.metadata()?.file_type().is_fifo() {
            Ok(Self::Pipe(pipe::Sender::from_file(file)?))
        } else {
            Ok(Self::Blocking(file))
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Self::Pipe(sender) => sender.write_all(buf).await,
            Self::Blocking(file) => {
                let mut file = file.try_clone()?;
                let buf = buf.to_vec();
                tokio::task::spawn_blocking(move || file.write_all(&buf)).await.map_err(io::Error::other)?
            }
        }
    }
}

/// The `i`-th of `lines` junk lines: not JSON, and the last one not even UTF-8.
pub(crate) fn junk_line(i: u64, lines: u64) -> Vec<u8> {
    let mut line = format!("this is not json {i}").into_bytes();
    if i + 1 == lines {
        line.extend_from_slice(b" \xff\xfe\xc3\x28 (invalid UTF-8)");
    }
    line.push(b'\n');
    line
}

/// `fake.junk`: writes `lines` junk lines to the protocol pipe, one `write` each.
pub(crate) async fn write_junk(lines: u64) -> io::Result<()> {
    let mut wire = RawWire::open()?;
    for i in 0..lines {
        wire.write_all(&junk_line(i, lines)).await?;
    }
    Ok(())
}

/// `fake.big_line`: writes `bytes` times `x` and then one `\n` to the protocol pipe. Stops early
/// when `cancel` is set, but always ends the line so that the reader can resynchronise. Returns
/// how many `x` were written.
pub(crate) async fn write_big_line(bytes: u64, cancel: CancellationToken) -> io::Result<u64> {
    let mut wire = RawWire::open()?;
    let chunk = vec![b'x'; CHUNK];
    let mut written = 0u64;
    while written < bytes && !cancel.is_cancelled() {
        let n = usize::try_from(bytes - written).map_or(CHUNK, |left| left.min(CHUNK));
        wire.write_all(&chunk[..n]).await?;
        written += n as u64;
    }
    wire.write_all(b"\n").await?;
    Ok(written)
}

/// What `fake.flood` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flooded {
    pub(crate) bytes: u64,
    pub(crate) lines: u64,
}

/// `fake.flood`: writes exactly `bytes` bytes of text lines to `out`, each `line_len` bytes long
/// including its `\n` (the last one shorter when `bytes` is not a multiple). Blocking; one buffer
/// of whole lines is reused for every call of `out`, which should lock stderr per write only, so
/// that log lines from other threads slip in between whole lines instead of waiting for the end.
/// Stops early when `cancel` is set.
pub(crate) fn flood(
    mut out: impl FnMut(&[u8]) -> io::Result<()>,
    bytes: u64,
    line_len: usize,
    cancel: &CancellationToken,
) -> io::Result<Flooded> {
    let line_len = line_len.max(1);
    let mut line: Vec<u8> = b"flood ".iter().copied().cycle().take(line_len).collect();
    line[line_len - 1] = b'\n';
    let lines_per_chunk = (CHUNK / line_len).max(1);
    let chunk = line.repeat(lines_per_chunk);
    let len = line_len as u64;

    let mut done = Flooded { bytes: 0, lines: 0 };
    while done.bytes < bytes && !cancel.is_cancelled() {
        let left = bytes - done.bytes;
        let (buf, lines): (&[u8], u64) = if left >= chunk.len() as u64 {
            (&chunk, lines_per_chunk as u64)
        } else if left >= len {
            let whole = left / len;
            // `whole * len <= left < chunk.len()`, so this fits in usize.
            (&chunk[..(whole * len) as usize], whole)
        } else {
            // The last, shorter line: a suffix of a full line, so it still ends with `\n`.
            (&line[line_len - left as usize..], 1)
        };
        out(buf)?;
        done.bytes += buf.len() as u64;
        done.lines += lines;
    }
    Ok(done)
}

/// Sets `signal` to its default action or to "ignore".
#[allow(unsafe_code)]
pub(crate) fn set_signal(signal: Signal, ignore: bool) -> nix::Result<()> {
    let handler = if ignore { SigHandler::SigIgn } else { SigHandler::SigDfl };
    // SAFETY: `signal(2)` is unsafe because a handler function must be async-signal-safe.
    // SIG_IGN and SIG_DFL run no code of ours, so there is nothing to get wrong; replacing a
    // handler std installed (its SIGSEGV stack-overflow reporter) only restores the default.
    unsafe { nix::sys::signal::signal(signal, handler) }.map(drop)
}

/// Keeps a deliberate crash from writing a core file into the plug-in's working directory (the
/// daemon's data dir); the process still dies of the same signal.
pub(crate) fn disable_core_dump() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot disable core dumps");
    }
}
