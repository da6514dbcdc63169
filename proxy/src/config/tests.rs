use std::io::Write;

use super::*;

fn parse(text: &str) -> Result<Config, String> {
    Config::from_yaml(text)
}

#[test]
fn example_configs_load_as_they_are() {
    for (name, text) in [
        ("sidecar.yaml", include_str!("../../../config/sidecar.yaml")),
        (
            "node-local.yaml",
            include_str!("../../../config/node-local.yaml"),
        ),
    ] {
        let config = parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        config.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!config.forward.upstreams.is_empty(), "{name}");
        assert_eq!(config.deprecated, [], "{name}: old key names");
    }
    let node = parse(include_str!("../../../config/node-local.yaml")).unwrap();
    assert_eq!(node.mode, Mode::NodeLocal);
    assert_eq!(node.listen, vec!["169.254.20.10:53".parse().unwrap()]);
}

#[test]
fn empty_file_is_the_default() {
    assert_eq!(parse("").unwrap(), Config::default());
    assert_eq!(parse("\n# only a comment\n").unwrap(), Config::default());
}

#[test]
fn upstream_port_defaults_to_53() {
    let c = parse(
        "forward: {upstreams: [10.0.0.1, '10.0.0.2:5300', '::1', '[fd00::1]:54', '[fd00::2]']}",
    )
    .unwrap();
    let ports: Vec<String> = c.forward.upstreams.iter().map(|u| u.to_string()).collect();
    assert_eq!(
        ports,
        [
            "10.0.0.1:53",
            "10.0.0.2:5300",
            "[::1]:53",
            "[fd00::1]:54",
            "[fd00::2]:53"
        ]
    );
}

#[test]
fn an_unset_kubernetes_variable_says_so() {
    let e = "$(KUBE_DNS_SERVICE_HOST)"
        .parse::<UpstreamAddr>()
        .unwrap_err();
    assert!(e.contains("Kubernetes variable that was not set"), "{e}");
    assert!(e.contains("clusterDNS"), "{e}");
}

#[test]
fn errors_are_one_line_and_name_the_culprit() {
    let cases = [
        ("listne: [127.0.0.1:53]", "listne"),
        ("forward: {upstreams: [not-an-ip]}", "not-an-ip"),
        ("listen: [127.0.0.1]", "listen"),
        ("mode: proxy", "proxy"),
        ("forward: {timeout: soon}", "timeout"),
        ("upstream_timeout: soon", "upstream_timeout"),
        ("forward: {udp_socket: 3}", "udp_socket"),
        ("forward: {attempts: -1}", "attempts"),
        ("search: {lsit: [a]}", "lsit"),
        ("search: 3", "search"),
        ("listen: {a: 1}", "listen"),
    ];
    for (yaml, culprit) in cases {
        let err = parse(yaml).expect_err(yaml);
        assert!(!err.contains('\n'), "{yaml}: multi-line error {err:?}");
        assert!(
            err.contains(culprit),
            "{yaml}: {err:?} does not name {culprit}"
        );
    }
}

#[test]
fn validation_catches_values_that_cannot_work() {
    let ok = "listen: ['127.0.0.1:53']\nforward: {upstreams: ['10.96.0.10']}\n";
    parse(ok).unwrap().validate().unwrap();
    let with = |forward: &str| {
        format!("listen: ['127.0.0.1:53']\nforward: {{upstreams: ['10.96.0.10'], {forward}}}")
    };
    let cases = [
        (
            "listen: ['127.0.0.1:53']\nforward: {upstreams: ['127.0.0.1:53']}".to_string(),
            "forwarding loop",
        ),
        (
            "listen: ['0.0.0.0:53']\nforward: {upstreams: ['127.0.0.1']}".to_string(),
            "forwarding loop",
        ),
        (
            "listen: ['127.0.0.1:53']\nforward: {upstreams: ['0.0.0.0']}".to_string(),
            "cannot be sent to",
        ),
        (
            "listen: ['127.0.0.1:53']\nforward: {upstreams: ['10.0.0.1:0']}".to_string(),
            "cannot be sent to",
        ),
        (
            "listen: ['127.0.0.1:53']\nforward: {upstreams: []}".to_string(),
            "at least one upstream",
        ),
        (
            "listen: []\nforward: {upstreams: ['10.96.0.10']}".to_string(),
            "at least one address",
        ),
        (with("attempts: 0"), "forward.attempts"),
        (with("attempts: 11"), "forward.attempts"),
        (with("timeout: 0s"), "forward.timeout"),
        (with("udp_sockets: 0"), "udp_sockets"),
        (with("max_inflight: 0"), "max_inflight"),
        (with("backoff_min: 10s, backoff_max: 1s"), "backoff"),
        (
            format!("{ok}listener: {{tcp_max_connections: 0}}"),
            "tcp_max_connections",
        ),
        (format!("{ok}search: {{ndots: 16}}"), "search.ndots"),
        (format!("{ok}search: {{list: ['a b']}}"), "search.list"),
        (
            format!("{ok}search: {{cluster_domain: '.'}}"),
            "search.cluster_domain",
        ),
    ];
    for (yaml, needle) in cases {
        let yaml = yaml.as_str();
        let err = parse(yaml).unwrap().validate().expect_err(yaml).to_string();
        assert!(err.contains(needle), "{yaml}: {err}");
        assert!(!err.contains('\n'));
    }
}

#[test]
fn overrides_win_over_the_file() {
    let mut c = parse("forward: {upstreams: ['10.0.0.1'], attempts: 3}\nmode: node-local").unwrap();
    c.apply(Overrides {
        upstreams: vec!["10.0.0.2".parse().unwrap()],
        attempts: Some(1),
        ..Overrides::default()
    });
    assert_eq!(
        c.forward.upstreams,
        vec!["10.0.0.2".parse::<UpstreamAddr>().unwrap()]
    );
    assert_eq!(c.forward.attempts, 1);
    assert_eq!(c.mode, Mode::NodeLocal, "not overridden, kept");
}

#[test]
fn defaults_follow_the_mode() {
    let dir = tempdir();
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.96.0.10\n").unwrap();
    let mut sidecar = Config::default();
    sidecar.search.resolv_conf = resolv.clone();
    let sidecar = sidecar.finish().unwrap();
    assert_eq!(sidecar.listen, vec!["127.0.0.1:53".parse().unwrap()]);
    let mut node = Config {
        mode: Mode::NodeLocal,
        ..Config::default()
    };
    node.search.resolv_conf = resolv.clone();
    let err = node.clone().finish().unwrap_err().to_string();
    assert!(
        err.starts_with("listener.allow: node-local mode needs"),
        "{err}"
    );
    node.listener.allow = vec!["10.244.0.0/16".parse().unwrap()];
    let node = node.finish().unwrap();
    assert_eq!(node.listen, vec!["169.254.20.10:53".parse().unwrap()]);
}

#[test]
fn mitigations_and_cache_are_checked() {
    let mut base = Config {
        listen: vec!["127.0.0.1:53".parse().unwrap()],
        ..Config::default()
    };
    base.forward.upstreams = vec!["10.96.0.10".parse().unwrap()];
    let yaml = "mode: node-local\nlistener: {allow: [10.0.0.0/8]}\nmitigations: {autopath: true}\n";
    let mut node = Config::from_yaml(yaml).unwrap();
    node.forward.upstreams = base.forward.upstreams.clone();
    node.listen = base.listen.clone();
    let err = node.validate().unwrap_err().to_string();
    assert!(
        err.starts_with("mitigations.autopath: needs the client's exact search list"),
        "{err}"
    );
    // With pod identity it serves the clients it verified.
    node.pod_identity.enabled = true;
    node.validate()
        .expect("node-local autopath with pod identity");
    let mut cache = base.clone();
    cache.cache.enabled = true;
    cache.cache.min_ttl = std::time::Duration::from_secs(60);
    cache.cache.max_ttl = std::time::Duration::from_secs(30);
    assert!(cache
        .validate()
        .unwrap_err()
        .to_string()
        .starts_with("cache:"));
    let bad_cidr = Config::from_yaml("listener: {allow: [10.0.0.0/33]}").unwrap_err();
    assert!(bad_cidr.contains("allow"), "{bad_cidr}");
    assert!(!bad_cidr.contains('\n'));
}

#[test]
fn upstreams_come_from_resolv_conf_without_ourselves() {
    let dir = tempdir();
    let resolv = dir.join("resolv.conf");
    let mut f = std::fs::File::create(&resolv).unwrap();
    writeln!(f, "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.1\nnameserver 10.96.0.10\noptions ndots:5").unwrap();
    let listen = ["127.0.0.1:53".parse().unwrap()];
    let ups = upstreams_from_resolv_conf(&resolv, &listen).unwrap();
    assert_eq!(ups, vec!["10.96.0.10:53".parse().unwrap()]);

    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    let err = upstreams_from_resolv_conf(&resolv, &listen)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no nameserver besides dnslens"), "{err}");
    let err = upstreams_from_resolv_conf(&dir.join("missing"), &listen)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot be read"), "{err}");
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dnslens-config-test-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn cluster_dns_gives_node_local_the_node_cache_zones() {
    let dir = tempdir();
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.0.0.2\n").unwrap();
    let mut node = Config {
        mode: Mode::NodeLocal,
        listener: crate::listen::ListenerConfig {
            allow: vec!["10.244.0.0/16".parse().unwrap()],
            ..Default::default()
        },
        ..Config::default()
    };
    node.search.resolv_conf = resolv.clone();
    node.search.cluster_domain = "corp.cluster.".into();
    node.forward.cluster_dns = Some("10.96.0.10".parse().unwrap());
    let node = node.finish().unwrap();
    assert_eq!(
        node.forward.upstreams,
        vec!["10.0.0.2".parse().unwrap()],
        "the node's resolvers"
    );
    let zones: Vec<(String, String, bool)> = node
        .forward
        .zones
        .iter()
        .map(|z| (z.zone.clone(), z.upstreams[0].to_string(), z.force_tcp))
        .collect();
    let cluster = |zone: &str| (zone.to_string(), "10.96.0.10:53".to_string(), true);
    assert_eq!(
        zones,
        [
            cluster("corp.cluster"),
            cluster("in-addr.arpa"),
            cluster("ip6.arpa")
        ]
    );
    // A zone listed explicitly wins over its default; the others are still added.
    let mut own = node.clone();
    own.forward.zones = vec![crate::config::ForwardZone {
        zone: "In-Addr.Arpa.".into(),
        upstreams: vec!["10.0.0.53".parse().unwrap()],
        force_tcp: false,
    }];
    let own = own.finish().unwrap();
    let zones: Vec<(&str, String)> = own
        .forward
        .zones
        .iter()
        .map(|z| (z.zone.as_str(), z.upstreams[0].to_string()))
        .collect();
    assert_eq!(
        zones,
        [
            ("In-Addr.Arpa.", "10.0.0.53:53".to_string()),
            ("corp.cluster", "10.96.0.10:53".to_string()),
            ("ip6.arpa", "10.96.0.10:53".to_string())
        ]
    );
    // A sidecar gets no zones from cluster_dns.
    let mut sidecar = Config::default();
    sidecar.search.resolv_conf = resolv;
    sidecar.forward.cluster_dns = Some("10.96.0.10".parse().unwrap());
    let sidecar = sidecar.finish().unwrap();
    assert!(sidecar.forward.zones.is_empty());
}

#[test]
fn zone_upstreams_are_checked_like_the_others() {
    let base = "listen: ['127.0.0.1:53']\n";
    let zones_of =
        |zones: &str| format!("{base}forward: {{upstreams: ['10.96.0.10'], zones: {zones}}}");
    for (zones, culprit) in [
        (
            "[{zone: cluster.local, upstreams: ['127.0.0.1:53']}]",
            "forward.zones: 127.0.0.1:53 is the proxy's own listen address",
        ),
        (
            "[{zone: cluster.local, upstreams: ['0.0.0.0']}]",
            "forward.zones: 0.0.0.0:53 cannot be sent to",
        ),
        (
            "[{zone: a.local, upstreams: [10.0.0.1]}, {zone: A.local., upstreams: [10.0.0.2]}]",
            "forward.zones: zone 'a.local' is listed twice",
        ),
        (
            "[{zone: cluster.local, upstream: [10.0.0.1]}]",
            "unknown field `upstream`",
        ),
    ] {
        let e = match parse(&zones_of(zones)) {
            Ok(c) => c
                .validate()
                .map(|()| "accepted".to_string())
                .unwrap_or_else(|e| e.to_string()),
            Err(e) => e,
        };
        assert!(e.contains(culprit), "{zones}: {e}");
    }
    let many: Vec<String> = (0..65)
        .map(|i| format!("{{zone: z{i}.local, upstreams: ['10.1.0.{i}']}}"))
        .collect();
    let c = parse(&zones_of(&format!("[{}]", many.join(", ")))).unwrap();
    let e = c.check_values().unwrap_err().to_string();
    assert!(e.contains("66 distinct upstreams; at most 64"), "{e}");
}

/// The keys that moved into `forward:`, `search:` and `admin:` still load for one release:
/// each lands in its new place, and the config names it with its new key (a warning at
/// load). Old and new both set is an error naming both.
#[test]
fn old_top_level_keys_load_into_their_sections_with_a_deprecation() {
    let old = "upstreams: [10.0.0.1]\nforward_zones: [{zone: corp, upstreams: [10.0.0.2]}]\n\
               cluster_dns: 10.96.0.10\nupstream_timeout: 3s\nattempts: 4\n\
               search: [a.example]\nndots: 2\ncluster_domain: k.local\nresolv_conf: /r\n\
               metrics_listen: '127.0.0.1:9999'\nui: {trace_url: 'http://t/{trace_id}'}\n";
    let new = "forward: {upstreams: [10.0.0.1], zones: [{zone: corp, upstreams: [10.0.0.2]}], \
               cluster_dns: 10.96.0.10, timeout: 3s, attempts: 4}\n\
               search: {list: [a.example], ndots: 2, cluster_domain: k.local, resolv_conf: /r}\n\
               admin: {listen: '127.0.0.1:9999', ui: {trace_url: 'http://t/{trace_id}'}}\n";
    let (old, new) = (parse(old).unwrap(), parse(new).unwrap());
    let moved: Vec<String> = old
        .deprecated
        .iter()
        .map(|d| format!("{} -> {}", d.old, d.new))
        .collect();
    assert_eq!(
        moved,
        [
            "search (a list) -> search.list",
            "upstreams -> forward.upstreams",
            "forward_zones -> forward.zones",
            "cluster_dns -> forward.cluster_dns",
            "upstream_timeout -> forward.timeout",
            "attempts -> forward.attempts",
            "ndots -> search.ndots",
            "cluster_domain -> search.cluster_domain",
            "resolv_conf -> search.resolv_conf",
            "metrics_listen -> admin.listen",
            "ui -> admin.ui",
        ]
    );
    assert!(old.deprecated[1]
        .to_string()
        .contains("`upstreams` is deprecated: use `forward.upstreams`"));
    assert_eq!(
        Config {
            deprecated: Vec::new(),
            ..old
        },
        new
    );
    assert_eq!(new.deprecated, []);
    let both = parse("upstreams: [10.0.0.1]\nforward: {upstreams: [10.0.0.2]}").unwrap_err();
    assert!(
        both.contains("both `upstreams` and `forward.upstreams` are set"),
        "{both}"
    );
    assert!(!both.contains('\n'));
}
