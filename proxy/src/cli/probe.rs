//! `dnslens probe ready|live --socket PATH`: an exec probe's command. Asks the dnslens of
//! this pod over its probe socket (`admin.probe_socket`) and exits 0 when it answers 200,
//! 1 otherwise, with the answer's first line on stderr.
//!
//! One HTTP/1.0 GET on a unix socket, written by hand: a client library (hyper with a unix
//! connector) would add a runtime and a dependency to a process that lives for one request.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ProbeCheck {
    /// `/readyz`: serving, not shutting down.
    Ready,
    /// `/healthz`: the process answers at all.
    Live,
}

/// The most of an answer read: the status line and a short body.
const MOST: u64 = 16 * 1024;

pub fn run(check: ProbeCheck, socket: &Path, timeout: Duration) -> ExitCode {
    let path = match check {
        ProbeCheck::Ready => "/readyz",
        ProbeCheck::Live => "/healthz",
    };
    match ask(socket, path, timeout) {
        Ok(answer) => {
            let status = answer.lines().next().unwrap_or("").trim();
            if status.split_whitespace().nth(1) == Some("200") {
                ExitCode::SUCCESS
            } else {
                eprintln!("dnslens probe: {path}: {status}");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("dnslens probe: {}: {e}", socket.display());
            ExitCode::from(1)
        }
    }
}

fn ask(socket: &Path, path: &str, timeout: Duration) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.take(MOST).read_to_end(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}
