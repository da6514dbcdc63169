//! `dnslens probe ready|live --socket PATH`: an exec probe's command. Asks the dnslens of
//! this pod over its probe socket (`admin.probe_socket`) and exits 0 when it answers 200,
//! 1 otherwise, with the answer's first line on stderr.
//!
//! One HTTP/1.0 GET on a unix socket ([`crate::http1`]).

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
        Ok(answer) => match crate::http1::parse(&answer) {
            Some(answer) if answer.status == 200 => ExitCode::SUCCESS,
            Some(answer) => {
                eprintln!("dnslens probe: {path}: {}", answer.status_line);
                ExitCode::from(1)
            }
            None => {
                eprintln!("dnslens probe: {path}: not an HTTP answer");
                ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("dnslens probe: {}: {e}", socket.display());
            ExitCode::from(1)
        }
    }
}

fn ask(socket: &Path, path: &str, timeout: Duration) -> std::io::Result<Vec<u8>> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    crate::http1::get_blocking(stream, path, "localhost", MOST)
}
