//! DNS messages for unit tests, built with hickory-proto (a real encoder, not hand bytes).

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

pub fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("test names are valid")
}

/// A recursive query; `edns` adds an OPT record with a cookie option, as dig sends.
pub fn query(qname: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
    let mut msg = Message::new(0x4242, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(name(qname), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        e.options_mut()
            .insert(EdnsOption::Unknown(10, vec![1, 2, 3, 4, 5, 6, 7, 8]));
        msg.set_edns(e);
    }
    msg.to_vec().expect("encodes")
}

fn response(qname: &str, qtype: RecordType, rcode: ResponseCode) -> Message {
    let mut msg = Message::new(0x4242, MessageType::Response, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.metadata.recursion_available = true;
    msg.metadata.response_code = rcode;
    msg.add_query(Query::query(name(qname), qtype));
    msg
}

/// NOERROR with one A record per TTL given.
pub fn a_answer(qname: &str, ttls: &[u32]) -> Vec<u8> {
    let mut msg = response(qname, RecordType::A, ResponseCode::NoError);
    for (i, ttl) in ttls.iter().enumerate() {
        msg.add_answer(Record::from_rdata(
            name(qname),
            *ttl,
            RData::A(A(Ipv4Addr::new(192, 0, 2, i as u8 + 1))),
        ));
    }
    msg.to_vec().expect("encodes")
}

/// A negative answer (NXDOMAIN, or NODATA with `NoError`), with an SOA of the given TTL
/// and MINIMUM when `soa` is set.
pub fn negative_answer(
    qname: &str,
    qtype: RecordType,
    rcode: ResponseCode,
    soa: Option<(u32, u32)>,
) -> Vec<u8> {
    let mut msg = response(qname, qtype, rcode);
    if let Some((ttl, minimum)) = soa {
        let soa = SOA::new(
            name("ns.cluster.local."),
            name("hostmaster.cluster.local."),
            1,
            3600,
            600,
            86400,
            minimum,
        );
        msg.add_authority(Record::from_rdata(
            name("cluster.local."),
            ttl,
            RData::SOA(soa),
        ));
    }
    msg.to_vec().expect("encodes")
}

/// `answer` with an OPT record carrying a cookie option added.
pub fn with_cookie(answer: &[u8]) -> Vec<u8> {
    let mut msg = Message::from_vec(answer).expect("decodes");
    let mut e = Edns::new();
    e.set_max_payload(1232);
    e.options_mut().insert(EdnsOption::Unknown(10, vec![9; 24]));
    msg.set_edns(e);
    msg.to_vec().expect("encodes")
}

/// The TTLs of a message's answer and authority records, in order.
pub fn ttls(msg: &[u8]) -> Vec<u32> {
    let msg = Message::from_vec(msg).expect("decodes");
    msg.answers
        .iter()
        .chain(&msg.authorities)
        .map(|r| r.ttl)
        .collect()
}
