//! A real Jaeger (all-in-one v1.75.0, built from its Go module by
//! `scripts/control-plane.sh build`, cached outside the clone) started on loopback by
//! `scripts/control-plane.sh jaeger`: OTLP in, in-memory storage, the query API out.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::control_plane::{built, repo};
use crate::harness::TempDir;

pub struct Jaeger {
    pub dir: TempDir,
    /// OTLP over gRPC, `http://127.0.0.1:PORT`.
    pub otlp_grpc: String,
    /// The query API and UI, `http://127.0.0.1:PORT`.
    pub query: String,
}

impl Jaeger {
    pub fn start() -> Jaeger {
        built("jaeger");
        let dir = TempDir::new("jaeger");
        let out = Command::new(repo().join("scripts/control-plane.sh"))
            .arg("jaeger")
            .arg(&dir.0)
            .output()
            .expect("scripts/control-plane.sh runs");
        assert!(
            out.status.success(),
            "jaeger did not start:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env: BTreeMap<String, String> = std::fs::read_to_string(dir.0.join("jaeger.env"))
            .expect("jaeger.env written")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Jaeger {
            otlp_grpc: env["JAEGER_OTLP_GRPC"].clone(),
            query: env["JAEGER_QUERY"].clone(),
            dir,
        }
    }

    pub fn stop(&self) {
        let status = Command::new(repo().join("scripts/control-plane.sh"))
            .arg("stop-jaeger")
            .arg(&self.dir.0)
            .status()
            .expect("scripts/control-plane.sh runs");
        assert!(status.success());
    }

    /// Jaeger's trace search (`/api/traces`) for dnslens's lookups from `start` to `end`
    /// (unix seconds) with these exact `tags`: the traces found.
    pub fn search(&self, start: f64, end: f64, tags: &str) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-fsS", "-G", &format!("{}/api/traces", self.query)])
            .args(["--data-urlencode", "service=dnslens"])
            .args(["--data-urlencode", "operation=dns.lookup"])
            .args([
                "--data-urlencode",
                &format!("start={}", (start * 1e6) as u64),
            ])
            .args(["--data-urlencode", &format!("end={}", (end * 1e6) as u64)])
            .args(["--data-urlencode", "limit=1000"])
            .args(["--data-urlencode", &format!("tags={tags}")])
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body: Value = serde_json::from_slice(&out.stdout).expect("Jaeger answers JSON");
        body["data"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until the search finds `count` traces (export and Jaeger's batching are
    /// asynchronous); the traces.
    pub fn wait_for(&self, start: f64, end: f64, tags: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.search(start, end, tags);
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "Jaeger has {} traces for {tags}, not {count}",
                found.len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/control-plane.sh"))
            .arg("stop-jaeger")
            .arg(&self.dir.0)
            .status();
    }
}
