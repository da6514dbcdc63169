//! A small OTLP trace receiver (gRPC and HTTP/protobuf) that writes every span it receives
//! as one tab-separated line (trace id, span id, parent id, name, start ns, end ns,
//! attributes) to stdout or a file. The namespace tests run it beside dnslens inside a test
//! network namespace; the benchmark uses it as the collector.
//!
//! Usage: otlp_sink [GRPC_ADDR [HTTP_ADDR [OUTPUT_FILE]]]  (defaults 127.0.0.1:4317,
//! 127.0.0.1:4318, stdout). Runs until killed.

#[path = "../tests/integration/otlp_receiver.rs"]
mod otlp_receiver;

use std::io::Write;
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let grpc = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:4317".into())
        .parse()?;
    let http = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:4318".into())
        .parse()?;
    let mut out: Box<dyn Write> = match args.next() {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let receiver = otlp_receiver::Receiver::start_on(grpc, http).await;
    eprintln!(
        "otlp_sink: gRPC on {}, HTTP on {}",
        receiver.grpc, receiver.http
    );
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        for span in receiver.take() {
            writeln!(out, "{}", span.to_line())?;
        }
        out.flush()?;
    }
}
