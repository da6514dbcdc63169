use super::*;

fn k8s() -> SearchModel {
    SearchModel::Kubernetes {
        cluster_domain: "cluster.local".into(),
        host_suffixes: vec!["corp.example".into()],
        ndots: 5,
    }
}

fn pod() -> SearchModel {
    SearchModel::Fixed {
        suffixes: vec![
            "default.svc.cluster.local".into(),
            "svc.cluster.local".into(),
            "cluster.local".into(),
        ],
        ndots: 5,
    }
}

fn readings(model: &SearchModel, qname: &str) -> Vec<(String, Option<usize>)> {
    model
        .candidates(qname)
        .into_iter()
        .map(|c| (c.base.to_string(), c.suffix.map(|(i, _)| i)))
        .collect()
}

#[test]
fn fixed_list_reads_most_specific_first_and_ends_absolute() {
    let m = pod();
    assert_eq!(
        readings(&m, "alauda.cn.default.svc.cluster.local"),
        [
            ("alauda.cn".into(), Some(0)),
            ("alauda.cn.default".into(), Some(1)),
            ("alauda.cn.default.svc".into(), Some(2)),
            ("alauda.cn.default.svc.cluster.local".into(), None),
        ]
    );
    assert_eq!(
        readings(&m, "alauda.cn.svc.cluster.local")[0],
        ("alauda.cn".into(), Some(1))
    );
    assert_eq!(
        readings(&m, "alauda.cn.cluster.local")[0],
        ("alauda.cn".into(), Some(2))
    );
    assert_eq!(readings(&m, "alauda.cn"), [("alauda.cn".into(), None)]);
    // The suffix itself is not an expansion of an empty name.
    assert_eq!(
        readings(&m, "cluster.local"),
        [("cluster.local".into(), None)]
    );
    let c = m.candidates("alauda.cn.svc.cluster.local")[0];
    assert_eq!(c.suffix, Some((1, "svc.cluster.local")));
}

#[test]
fn kubernetes_convention_finds_any_namespace() {
    let m = k8s();
    let c = m.candidates("x.example.com.team-a.svc.cluster.local");
    assert_eq!(c[0].base, "x.example.com");
    assert_eq!(c[0].suffix, Some((0, "team-a.svc.cluster.local")));
    assert_eq!(c[1].base, "x.example.com.team-a");
    assert_eq!(c[1].suffix, Some((1, "svc.cluster.local")));
    assert_eq!(c.last().unwrap().suffix, None);

    assert_eq!(
        readings(&m, "github.com.cluster.local")[0],
        ("github.com".into(), Some(2))
    );
    assert_eq!(
        readings(&m, "github.com.corp.example")[0],
        ("github.com".into(), Some(3))
    );
    assert_eq!(readings(&m, "github.com"), [("github.com".into(), None)]);
    // <ns>.svc.cluster.local alone: only the svc reading (no empty base).
    assert_eq!(
        readings(&m, "team-a.svc.cluster.local")[0],
        ("team-a".into(), Some(1))
    );
}

#[test]
fn resolv_conf_gives_search_and_ndots() {
    let dir = std::env::temp_dir().join(format!("dnslens-search-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("resolv.conf");
    std::fs::write(
        &path,
        "nameserver 10.96.0.10\nsearch team-a.svc.cluster.local svc.cluster.local cluster.local corp.example.\noptions ndots:5\n",
    )
    .unwrap();
    let (suffixes, ndots) = read_resolv_conf(&path).unwrap();
    assert_eq!(
        suffixes,
        [
            "team-a.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "corp.example"
        ]
    );
    assert_eq!(ndots, 5);
    let settings = SearchConfig {
        resolv_conf: path.clone(),
        ..SearchConfig::default()
    };
    let model = SearchModel::build(Mode::Sidecar, &settings);
    assert_eq!(model.candidates("a.team-a.svc.cluster.local")[0].base, "a");
    assert!(read_resolv_conf(&dir.join("missing")).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
