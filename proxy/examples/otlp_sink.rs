//! A small OTLP trace receiver (gRPC and HTTP/protobuf) that writes every span it receives
//! as one tab-separated line (trace id, span id, parent id, name, start ns, end ns,
//! attributes) to stdout or a file. The namespace tests run it beside dnslens inside a test
//! network namespace. With `--count` it only decodes and counts, and keeps the running total
//! in the file: the benchmark's collector, which must cost next to nothing on the load
//! generator's core.
//!
//! Usage: otlp_sink [--count] [GRPC_ADDR [HTTP_ADDR [OUTPUT_FILE]]]  (defaults
//! 127.0.0.1:4317, 127.0.0.1:4318, stdout). Runs until killed.

#[path = "../tests/integration/otlp_receiver.rs"]
mod otlp_receiver;

use std::io::Write;
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let count_only = args.next_if(|a| a == "--count").is_some();
    let grpc = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:4317".into())
        .parse()?;
    let http = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:4318".into())
        .parse()?;
    let path = args.next();
    let receiver = if count_only {
        otlp_receiver::Receiver::start_counting(grpc, http).await
    } else {
        otlp_receiver::Receiver::start_on(grpc, http).await
    };
    eprintln!(
        "otlp_sink: gRPC on {}, HTTP on {}",
        receiver.grpc, receiver.http
    );
    if count_only {
        let path = path.ok_or_else(|| anyhow::anyhow!("--count needs an OUTPUT_FILE"))?;
        let mut reported = None;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let counted = receiver.counted();
            if reported != Some(counted) {
                std::fs::write(&path, format!("{counted}\n"))?;
                reported = Some(counted);
            }
        }
    }
    let mut out: Box<dyn Write> = match path {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
        None => Box::new(std::io::stdout()),
    };
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        for span in receiver.take() {
            writeln!(out, "{}", span.to_line())?;
        }
        out.flush()?;
    }
}
