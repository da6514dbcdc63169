//! `dnslens-load`'s resolver models against the real resolvers: for each model, the real
//! client and the model look up the same names in the same namespace (dnslens in front of
//! Knot, no cache), and the queries that reached Knot for one lookup and the lookup's
//! outcome must be the same — for a name that exists (after a whole walk) and for the
//! empty-NOERROR trap (musl fails there, glibc and Go walk past it).

use std::path::PathBuf;

use crate::harness::*;
use crate::namespaces::{run_scene, Scene};
use crate::resolvers::{Clients, Resolver, RACE_RESOLV_CONF};

/// The load generator, built beside dnslens by `cargo test --workspace`.
fn dnslens_load() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_dnslens")).with_file_name("dnslens-load");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (scripts/test.sh does)",
        path.display()
    );
    path
}

#[test]
fn each_model_sends_what_its_real_resolver_sends() {
    let clients = Clients::build();
    let load = dnslens_load();
    let dir = TempDir::new("load-models");
    let cases = [
        (Resolver::Glibc, "glibc", "github.com"),
        (Resolver::Glibc, "glibc", "alauda.cn"),
        (Resolver::Musl, "musl", "github.com"),
        (Resolver::Musl, "musl", "alauda.cn"),
        (Resolver::Go, "go", "github.com"),
        (Resolver::Go, "go", "alauda.cn"),
    ];
    let mut steps = Vec::new();
    for (i, (real, model, name)) in cases.iter().enumerate() {
        steps.push(clients.resolve(*real, &[name]));
        steps.push(format!(
            "'{}' --server 127.0.0.1:53 --model {model} --name {name} --concurrency 1 \
             --lookups 1 --timeout 1s --attempts 2 --ndots 5 \
             --search 'default.svc.cluster.local svc.cluster.local cluster.local' \
             --quiet --json '{}'",
            load.display(),
            dir.0.join(format!("{i}.json")).display()
        ));
    }
    let run = run_scene(&Scene {
        resolv_conf: RACE_RESOLV_CONF.into(),
        window: "2s",
        steps,
        ..Scene::default()
    });
    let at_knot = |step: usize| {
        series_sum(&run.snapshots[step + 1], "dnslens_upstream_requests_total")
            - series_sum(&run.snapshots[step], "dnslens_upstream_requests_total")
    };
    for (i, (real, model, name)) in cases.iter().enumerate() {
        let (real_step, model_step) = (2 * i, 2 * i + 1);
        let real_ok = run.outputs[real_step].contains(" ok");
        assert!(
            real_ok || run.outputs[real_step].contains(" failed"),
            "{real:?} {name}: {}",
            run.outputs[real_step]
        );
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.0.join(format!("{i}.json"))).unwrap_or_default(),
        )
        .unwrap_or_else(|e| {
            panic!(
                "{model} {name}: no report ({e}): {}",
                run.outputs[model_step]
            )
        });
        assert_eq!(report["lookups"], 1, "{model} {name}: {report}");
        assert_eq!(
            report["failed_lookups"] == 0,
            real_ok,
            "{model} {name}: the model's outcome is the real resolver's: {report}\n{}",
            run.outputs[real_step]
        );
        assert_eq!(
            at_knot(model_step),
            at_knot(real_step),
            "{model} {name}: queries at Knot, model vs real"
        );
        assert_eq!(
            report["queries"].as_f64(),
            Some(at_knot(model_step)),
            "{model} {name}: the model counts what it sent"
        );
    }
    // What the table in README says: a whole walk for an external name, and musl's stop.
    assert_eq!(at_knot(0), 8.0, "glibc github.com");
    assert_eq!(
        at_knot(6),
        2.0,
        "musl alauda.cn: stops at the empty NOERROR"
    );
}
