use serde_json::{json, Value};

use super::webhook::{review, ReviewResult};
use super::*;

fn config() -> InjectConfig {
    InjectConfig {
        upstreams: vec!["10.96.0.10".into()],
        ..InjectConfig::default()
    }
}

fn pod(spec: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": "team-a"},
        "spec": spec,
    })
}

fn app_spec() -> Value {
    json!({"containers": [{"name": "app", "image": "alpine:3.20"}]})
}

fn arg_after<'a>(container: &'a Value, flag: &str) -> Vec<&'a str> {
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1])
        .collect()
}

#[test]
fn a_pod_gets_a_native_sidecar_and_cluster_first_dns() {
    let mut p = pod(app_spec());
    assert_eq!(
        inject(&mut p, "default", &config()).unwrap(),
        Outcome::Injected
    );
    let spec = &p["spec"];
    assert_eq!(spec["dnsPolicy"], "None");
    assert_eq!(spec["dnsConfig"]["nameservers"], json!(["127.0.0.1"]));
    assert_eq!(
        spec["dnsConfig"]["searches"],
        json!([
            "team-a.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local"
        ])
    );
    assert_eq!(
        spec["dnsConfig"]["options"],
        json!([{"name": "ndots", "value": "5"}])
    );
    let sidecar = &spec["initContainers"][0];
    assert_eq!(sidecar["name"], "dnslens");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(arg_after(sidecar, "--listen"), ["127.0.0.1:53"]);
    assert_eq!(arg_after(sidecar, "--upstream"), ["10.96.0.10"]);
    assert_eq!(
        arg_after(sidecar, "--search"),
        [
            "team-a.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local"
        ]
    );
    assert_eq!(arg_after(sidecar, "--ndots"), ["5"]);
    let sc = &sidecar["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["capabilities"]["add"], json!(["NET_BIND_SERVICE"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env: Vec<&str> = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(env, ["POD_NAME", "POD_NAMESPACE", "NODE_NAME"]);
    assert_eq!(spec["containers"][0]["name"], "app", "the app is untouched");
    assert_eq!(p["metadata"]["annotations"]["dnslens.io/injected"], "true");
}

#[test]
fn before_1_29_injection_is_refused_not_done_wrong() {
    // A sidecar in a regular container would keep a Job's pod from ever completing.
    let mut p = pod(app_spec());
    let before = p.clone();
    let old = InjectConfig {
        kube_version: "1.28".into(),
        ..config()
    };
    let refused = inject(&mut p, "default", &old).unwrap_err().to_string();
    assert!(refused.contains("needs 1.29 or newer"), "{refused}");
    assert_eq!(p, before, "nothing changed");
    assert!(matches!(
        old.check_kube_version(),
        Err(InjectError::KubeTooOld(v)) if v == "1.28"
    ));
    for ok in ["1.29", "v1.31", "1.32+", "2.0"] {
        let config = InjectConfig {
            kube_version: ok.into(),
            ..config()
        };
        assert!(config.check_kube_version().is_ok(), "{ok}");
    }
    assert!(matches!(
        InjectConfig {
            kube_version: "one.two".into(),
            ..config()
        }
        .check_kube_version(),
        Err(InjectError::KubeVersion(_))
    ));
}

#[test]
fn the_pods_own_dns_config_is_kept_after_ours() {
    let mut spec = app_spec();
    spec["dnsConfig"] = json!({
        "nameservers": ["10.0.0.2"],
        "searches": ["corp.example", "svc.cluster.local"],
        "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
    });
    let mut p = pod(spec);
    inject(&mut p, "default", &config()).unwrap();
    let dns = &p["spec"]["dnsConfig"];
    assert_eq!(dns["nameservers"], json!(["127.0.0.1", "10.0.0.2"]));
    assert_eq!(
        dns["searches"],
        json!([
            "team-a.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "corp.example"
        ])
    );
    assert_eq!(
        dns["options"],
        json!([{"name": "ndots", "value": "2"}, {"name": "edns0"}])
    );
    assert_eq!(arg_after(&p["spec"]["initContainers"][0], "--ndots"), ["2"]);
}

#[test]
fn workloads_get_it_in_their_pod_template() {
    for (kind, path) in [
        ("Deployment", "/spec/template/spec"),
        ("StatefulSet", "/spec/template/spec"),
        ("DaemonSet", "/spec/template/spec"),
        ("Job", "/spec/template/spec"),
        ("CronJob", "/spec/jobTemplate/spec/template/spec"),
    ] {
        let template = json!({"metadata": {"labels": {"app": "x"}}, "spec": app_spec()});
        let spec = if kind == "CronJob" {
            json!({"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}})
        } else {
            json!({"template": template})
        };
        let mut object = json!({"kind": kind, "metadata": {"name": "x"}, "spec": spec});
        assert_eq!(
            inject(&mut object, "ns1", &config()).unwrap(),
            Outcome::Injected,
            "{kind}"
        );
        let pod_spec = object.pointer(path).unwrap();
        assert_eq!(pod_spec["initContainers"][0]["name"], "dnslens", "{kind}");
        assert_eq!(
            pod_spec["dnsConfig"]["searches"][0],
            "ns1.svc.cluster.local"
        );
    }
    let mut service = json!({"kind": "Service", "metadata": {"name": "s"}, "spec": {}});
    let before = service.clone();
    assert_eq!(
        inject(&mut service, "d", &config()).unwrap(),
        Outcome::NotAWorkload
    );
    assert_eq!(service, before);
    let mut broken = json!({"kind": "Deployment", "metadata": {"name": "b"}, "spec": {}});
    let err = inject(&mut broken, "d", &config()).unwrap_err().to_string();
    assert_eq!(err, "Deployment b: has no pod template");
}

#[test]
fn skips_are_unchanged_and_say_why() {
    let cases = [
        (
            json!({"metadata": {"name": "a", "annotations": {"dnslens.io/inject": "disabled"}}}),
            app_spec(),
            "annotated dnslens.io/inject: disabled",
        ),
        (
            json!({"metadata": {"name": "b"}}),
            json!({"hostNetwork": true, "containers": []}),
            "hostNetwork",
        ),
        (
            json!({"metadata": {"name": "c"}}),
            json!({"dnsPolicy": "Default", "containers": []}),
            "dnsPolicy Default",
        ),
    ];
    for (meta, spec, why) in cases {
        let mut p = json!({"kind": "Pod", "metadata": meta["metadata"], "spec": spec});
        let before = p.clone();
        match inject(&mut p, "d", &config()).unwrap() {
            Outcome::Skipped(reason) => assert!(reason.starts_with(why), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(p, before);
    }
}

#[test]
fn injecting_twice_changes_nothing_and_annotations_override() {
    let mut p = pod(app_spec());
    p["metadata"]["annotations"] = json!({
        "dnslens.io/upstream": "10.0.0.53, 10.0.0.54",
        "dnslens.io/tracing-endpoint": "http://otel:4317",
        "dnslens.io/sample-ratio": "0.5",
        "dnslens.io/autopath": "true",
        "dnslens.io/cache": "false",
    });
    inject(&mut p, "d", &config()).unwrap();
    let once = p.clone();
    assert_eq!(
        inject(&mut p, "d", &config()).unwrap(),
        Outcome::AlreadyInjected
    );
    assert_eq!(p, once);
    let sidecar = &p["spec"]["initContainers"][0];
    assert_eq!(arg_after(sidecar, "--upstream"), ["10.0.0.53", "10.0.0.54"]);
    let args = sidecar["args"].to_string();
    assert!(
        args.contains("--autopath") && !args.contains("--cache"),
        "{args}"
    );
    let env = sidecar["env"].to_string();
    assert!(
        env.contains("http://otel:4317") && env.contains("\"0.5\""),
        "{env}"
    );
}

#[test]
fn yaml_documents_round_trip_with_a_report() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\nspec:\n  containers:\n  - name: app\n    image: x\n---\n# a comment only\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  k: v\n";
    let (out, report) = inject_yaml(text, "prod", &config()).unwrap();
    assert_eq!(
        report,
        ["Pod a: injected", "ConfigMap c: not a workload, unchanged"]
    );
    let docs: Vec<Value> = dnslens_yaml::from_documents(&out).unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1]["data"]["k"], "v");
    // Key order is kept: apiVersion first, as written.
    assert!(out.starts_with("apiVersion: v1\nkind: Pod\n"), "{out}");
    assert!(matches!(
        inject_yaml("kind: [unclosed", "d", &config()),
        Err(InjectError::Yaml(_))
    ));
}

fn admission_review(object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-b",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "dryRun": false,
        }
    }))
    .unwrap()
}

#[test]
fn the_webhook_answers_with_a_patch_that_makes_the_same_pod() {
    // A pod as a ReplicaSet controller creates it: generateName, no namespace in the object.
    let object = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-7d9c-", "labels": {"app": "web"}},
        "spec": app_spec(),
    });
    let (answer, result) = review(&admission_review(object.clone()), &config(), false);
    assert_eq!(result, ReviewResult::Injected);
    let response = &answer["response"];
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    use base64::Engine;
    let patch_bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch_bytes).unwrap();
    let mut patched = object.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    let mut expected = object;
    inject(&mut expected, "team-b", &config()).unwrap();
    assert_eq!(patched, expected);
    assert_eq!(
        patched["spec"]["dnsConfig"]["searches"][0],
        "team-b.svc.cluster.local"
    );
    assert_eq!(patched["spec"]["initContainers"][0]["name"], "dnslens");
    assert_eq!(patched["spec"]["containers"][0]["name"], "app");
}

/// Found by the `webhook` fuzz target: the response repeated whatever `kind` the body had
/// ("Adm#issionReview"); a body that is not an AdmissionReview gets a failure instead.
#[test]
fn only_an_admission_review_gets_an_admission_review_back() {
    let pod = json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": app_spec()});
    let mut body: Value = serde_json::from_slice(&admission_review(pod)).unwrap();
    for (key, value) in [("kind", "Adm#issionReview"), ("apiVersion", "v1")] {
        let mut wrong = body.clone();
        wrong[key] = json!(value);
        let (answer, result) = review(&serde_json::to_vec(&wrong).unwrap(), &config(), false);
        assert_eq!(result, ReviewResult::Error, "{key}: {value}");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(
            answer["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
    }
    body["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let (answer, result) = review(&serde_json::to_vec(&body).unwrap(), &config(), false);
    assert_eq!(result, ReviewResult::Injected);
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1beta1");
}

#[test]
fn the_webhook_never_blocks_unless_asked_to_fail_closed() {
    let hostile: [&[u8]; 4] = [
        b"",
        b"{not json",
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE","userInfo":{},"object":{"metadata":{"name":"x"},"spec":"nonsense"}}}"#,
    ];
    for body in hostile {
        let (answer, result) = review(body, &config(), false);
        assert_eq!(result, ReviewResult::Error);
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        let warning = answer["response"]["warnings"][0].as_str().unwrap();
        assert!(
            warning.starts_with("dnslens: sidecar not injected: "),
            "{warning}"
        );
        let (closed, _) = review(body, &config(), true);
        assert_eq!(closed["response"]["allowed"], false);
        assert!(closed["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .starts_with("dnslens: sidecar not injected"));
    }
    // The uid of a readable request is echoed even when the object is bad.
    let (answer, _) = review(hostile[3], &config(), false);
    assert_eq!(answer["response"]["uid"], "u1");
    // A pod that is skipped on purpose is allowed without a patch.
    let skipped = json!({"kind": "Pod", "metadata": {"name": "h"}, "spec": {"hostNetwork": true, "containers": []}});
    let (answer, result) = review(&admission_review(skipped), &config(), true);
    assert_eq!(result, ReviewResult::Unchanged);
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());
}

#[test]
fn the_pod_may_bind_port_53_unprivileged_and_keeps_its_own_sysctls() {
    let sysctls_after = |own: Value| {
        let mut spec = app_spec();
        spec["securityContext"] = json!({"sysctls": own});
        let mut p = pod(spec);
        assert_eq!(
            inject(&mut p, "team-a", &config()).unwrap(),
            Outcome::Injected
        );
        p["spec"]["securityContext"]["sysctls"].clone()
    };
    let port = |value: &str| json!({"name": "net.ipv4.ip_unprivileged_port_start", "value": value});
    let somaxconn = json!({"name": "net.core.somaxconn", "value": "1024"});
    assert_eq!(
        sysctls_after(json!([somaxconn.clone()])),
        json!([somaxconn, port("53")])
    );
    // A pod that already allows lower ports keeps its value; a higher one is lowered.
    assert_eq!(sysctls_after(json!([port("0")])), json!([port("0")]));
    assert_eq!(sysctls_after(json!([port("1024")])), json!([port("53")]));
    // And a pod without any gets it.
    let mut p = pod(app_spec());
    inject(&mut p, "team-a", &config()).unwrap();
    assert_eq!(p["spec"]["securityContext"]["sysctls"], json!([port("53")]));
}

#[test]
fn a_dry_run_admission_is_answered_with_the_patch_but_not_counted_as_injected() {
    let object = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-7d9c-", "labels": {"app": "web"}},
        "spec": app_spec(),
    });
    let mut body: Value = serde_json::from_slice(&admission_review(object.clone())).unwrap();
    body["request"]["dryRun"] = json!(true);
    let body = serde_json::to_vec(&body).unwrap();
    let (dry, result) = review(&body, &config(), false);
    assert_eq!(result, ReviewResult::DryRun);
    let (real, result) = review(&admission_review(object), &config(), false);
    assert_eq!(result, ReviewResult::Injected);
    assert_eq!(dry["response"]["patch"], real["response"]["patch"]);
}

#[test]
fn the_sidecar_images_pull_secrets_join_the_pods_own() {
    let config = InjectConfig {
        upstreams: vec!["10.96.0.10".into()],
        image_pull_secrets: vec!["regcred".into(), "mirror".into()],
        ..InjectConfig::default()
    };
    let mut pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "imagePullSecrets": [{"name": "mirror"}, {"name": "app-registry"}],
            "containers": [{"name": "app", "image": "registry.example/app:1"}],
        },
    });
    assert!(matches!(
        inject(&mut pod, "shop", &config),
        Ok(Outcome::Injected)
    ));
    assert_eq!(
        pod["spec"]["imagePullSecrets"],
        serde_json::json!([{"name": "mirror"}, {"name": "app-registry"}, {"name": "regcred"}])
    );
    // None configured: the pod's list is left as it was (or absent).
    let mut bare = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    });
    let plain = InjectConfig {
        upstreams: vec!["10.96.0.10".into()],
        ..InjectConfig::default()
    };
    inject(&mut bare, "shop", &plain).unwrap();
    assert!(bare["spec"].get("imagePullSecrets").is_none());
}
