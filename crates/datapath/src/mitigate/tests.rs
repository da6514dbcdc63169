use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use super::*;
use crate::test_messages::{a_answer, negative_answer, query};
use dnslens_wire::QTYPE_A;

fn pod_model() -> SearchModel {
    SearchModel::Fixed {
        suffixes: vec![
            "team-a.svc.cluster.local".into(),
            "svc.cluster.local".into(),
            "cluster.local".into(),
        ],
        ndots: 5,
    }
}

#[test]
fn autopath_walks_the_rest_of_the_list_then_the_name() {
    let walk = autopath_walk(&pod_model(), "alauda.cn.team-a.svc.cluster.local").unwrap();
    assert_eq!(
        walk,
        vec![
            "alauda.cn.svc.cluster.local",
            "alauda.cn.cluster.local",
            "alauda.cn"
        ]
    );
    // Only the first expansion starts a walk.
    assert_eq!(
        autopath_walk(&pod_model(), "alauda.cn.svc.cluster.local"),
        None
    );
    assert_eq!(autopath_walk(&pod_model(), "alauda.cn"), None);
    assert_eq!(
        autopath_walk(&pod_model(), "team-a.svc.cluster.local"),
        None
    );
    // Node-local's convention is never certain enough.
    let node = SearchModel::Kubernetes {
        cluster_domain: "cluster.local".into(),
        host_suffixes: vec![],
        ndots: 5,
    };
    assert_eq!(
        autopath_walk(&node, "alauda.cn.team-a.svc.cluster.local"),
        None
    );
}

#[test]
fn cname_answer_aliases_the_asked_name() {
    let asked = query("alauda.cn.team-a.svc.cluster.local.", RecordType::A, false);
    let found = a_answer("alauda.cn.", &[120, 60]);
    let out = cname_answer(&asked, "alauda.cn", &found).unwrap();
    let msg = Message::from_vec(&out).unwrap();
    assert_eq!(
        msg.queries[0].name().to_ascii(),
        "alauda.cn.team-a.svc.cluster.local."
    );
    assert_eq!(msg.answers.len(), 3);
    let alias = &msg.answers[0];
    assert_eq!(alias.name.to_ascii(), "alauda.cn.team-a.svc.cluster.local.");
    assert_eq!(alias.ttl, 60);
    match &alias.data {
        RData::CNAME(target) => assert_eq!(target.0.to_ascii(), "alauda.cn."),
        other => panic!("not a CNAME: {other:?}"),
    }
    assert_eq!(msg.answers[1].name.to_ascii(), "alauda.cn.");
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert!(cname_answer(&asked, "alauda.cn", &[1, 2, 3]).is_none());
}

#[test]
fn shield_looks_only_at_empty_address_answers_of_expansions() {
    let model = pod_model();
    let question = |name: &str, qtype: RecordType| {
        let q = query(name, qtype, false);
        let info = wire::parse_query(&q).unwrap();
        q[HEADER_LEN..info.question_end].to_vec()
    };
    let expansion = "alauda.cn.team-a.svc.cluster.local.";
    let empty = negative_answer(
        expansion,
        RecordType::A,
        ResponseCode::NoError,
        Some((30, 30)),
    );
    let nx = negative_answer(
        expansion,
        RecordType::A,
        ResponseCode::NXDomain,
        Some((30, 30)),
    );
    let data = a_answer(expansion, &[30]);
    let q = question(expansion, RecordType::A);
    assert!(shield_candidate(&model, &q, QTYPE_A, &empty));
    assert!(!shield_candidate(&model, &q, QTYPE_A, &nx));
    assert!(!shield_candidate(&model, &q, QTYPE_A, &data));
    assert!(!shield_candidate(
        &model,
        &question(expansion, RecordType::MX),
        15,
        &empty
    ));
    // The absolute name of an outside domain is no expansion.
    assert!(!shield_candidate(
        &model,
        &question("alauda.cn.", RecordType::A),
        QTYPE_A,
        &empty
    ));
}
