use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

use super::*;

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut msg = Message::new(0x1234, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        msg.set_edns(e);
    }
    msg.to_vec().unwrap()
}

#[test]
fn parses_a_plain_query() {
    let q = query("example.org.", RecordType::AAAA, None);
    let info = parse_query(&q).unwrap();
    assert_eq!(info.id, 0x1234);
    assert_eq!(info.qtype, 28);
    assert_eq!(info.udp_payload, CLASSIC_UDP_PAYLOAD);
    assert_eq!(info.question_end, q.len());
}

#[test]
fn reads_the_edns_payload_size_and_clamps_it() {
    let q = query("example.org.", RecordType::A, Some(1232));
    let info = parse_query(&q).unwrap();
    assert_eq!(info.udp_payload, 1232);
    assert!(info.question_end < q.len());
    // A payload below 512 means 512 (RFC 6891 §6.2.3).
    assert_eq!(
        parse_query(&query("a.", RecordType::A, Some(100)))
            .unwrap()
            .udp_payload,
        512
    );
    assert_eq!(
        parse_query(&query("a.", RecordType::A, Some(65535)))
            .unwrap()
            .udp_payload,
        MAX_UDP_PAYLOAD
    );
}

#[test]
fn rejects_what_is_not_a_single_question_query() {
    assert_eq!(parse_query(&[0u8; 5]), Err(WireError::TooShort));
    assert_eq!(parse_query(&[]), Err(WireError::TooShort));

    let mut response = query("example.org.", RecordType::A, None);
    response[2] |= 0x80;
    assert_eq!(parse_query(&response), Err(WireError::NotAQuery));

    let mut notify = query("example.org.", RecordType::SOA, None);
    notify[2] |= 4 << 3;
    assert_eq!(parse_query(&notify), Err(WireError::NotImplemented));

    let mut none = query("example.org.", RecordType::A, None);
    none[5] = 0;
    assert_eq!(parse_query(&none), Err(WireError::QuestionCount));
    let mut two = query("example.org.", RecordType::A, None);
    two[5] = 2;
    assert_eq!(parse_query(&two), Err(WireError::QuestionCount));
}

#[test]
fn rejects_truncated_and_lying_messages() {
    let q = query("example.org.", RecordType::A, None);
    for cut in HEADER_LEN..q.len() {
        assert_eq!(
            parse_query(&q[..cut]),
            Err(WireError::Malformed),
            "cut at {cut}"
        );
    }
    // A label length that runs past the end.
    let mut bad_label = q.clone();
    bad_label[HEADER_LEN] = 63;
    assert_eq!(parse_query(&bad_label), Err(WireError::Malformed));
    // A compression pointer pointing at itself.
    let mut looped = q[..HEADER_LEN].to_vec();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(parse_query(&looped), Err(WireError::Malformed));
    // An additional-record count with no records behind it.
    let mut lying = q.clone();
    lying[11] = 3;
    assert_eq!(parse_query(&lying), Err(WireError::Malformed));
}

#[test]
fn fuzzed_bytes_never_panic() {
    // Deterministic pseudo-random inputs, each mutation of a valid query.
    let base = query(
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
        Some(1232),
    );
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..20_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut m = base.clone();
        let pos = (state as usize) % m.len();
        m[pos] = (state >> 32) as u8;
        m.truncate(((state >> 40) as usize) % (base.len() + 1));
        let _ = parse_query(&m);
        let _ = parse_response(&m);
    }
}

#[test]
fn matches_questions_ignoring_name_case_only() {
    let q = query("Example.ORG.", RecordType::A, None);
    let r = query("example.org.", RecordType::A, Some(1232));
    let qi = parse_query(&q).unwrap();
    let ri = parse_query(&r).unwrap();
    assert!(same_question(&q, qi.question_end, &r, ri.question_end));
    let other_type = query("example.org.", RecordType::AAAA, None);
    assert!(!same_question(
        &q,
        qi.question_end,
        &other_type,
        qi.question_end
    ));
    let other_name = query("example.net.", RecordType::A, None);
    assert!(!same_question(
        &q,
        qi.question_end,
        &other_name,
        qi.question_end
    ));
    // 'A' (0x41) and 'a' (0x61) differ as QTYPE bytes even though they are letters.
    let https = query("example.org.", RecordType::HTTPS, None); // 65 = 0x41
    let mut lower = https.clone();
    let end = parse_query(&https).unwrap().question_end;
    lower[end - 3] = 0x61;
    assert!(!same_question(&https, end, &lower, end));
}

#[test]
fn error_answers_echo_id_question_and_set_rcode() {
    let q = query("example.org.", RecordType::A, None);
    let info = parse_query(&q).unwrap();
    let a = error_answer(&q, Some(info.question_end), Rcode::SERVFAIL);
    let msg = Message::from_vec(&a).unwrap();
    assert_eq!(msg.metadata.id, 0x1234);
    assert_eq!(msg.metadata.message_type, MessageType::Response);
    assert_eq!(msg.metadata.response_code.low(), 2);
    assert_eq!(msg.queries.len(), 1);
    assert!(msg.answers.is_empty() && msg.additionals.is_empty());
    assert!(msg.edns.is_none());
    // Without a question: header only.
    let formerr = error_answer(&q, None, Rcode::FORMERR);
    assert_eq!(formerr.len(), HEADER_LEN);
    assert_eq!(rcode(&formerr), 1);
}

#[test]
fn error_answers_to_edns_queries_carry_the_proxys_opt() {
    let q = query("example.org.", RecordType::A, Some(4096));
    let info = parse_query(&q).unwrap();
    let a = error_answer(&q, Some(info.question_end), Rcode::SERVFAIL);
    let msg = Message::from_vec(&a).unwrap();
    let edns = msg
        .edns
        .expect("an EDNS query gets an OPT back (RFC 6891 section 7)");
    assert_eq!(edns.max_payload(), PROXY_UDP_PAYLOAD);
    assert_eq!(msg.metadata.response_code.low(), 2);
}

/// A response to `q` with `n` TXT records of 200 bytes and an OPT with a cookie option.
fn big_answer(q: &[u8], n: usize) -> Vec<u8> {
    use hickory_proto::rr::rdata::TXT;
    use hickory_proto::rr::{RData, Record};
    let mut msg = Message::from_vec(q).unwrap();
    msg.metadata.message_type = MessageType::Response;
    let name = msg.queries[0].name().clone();
    for i in 0..n {
        let text = format!("{i:0200}");
        msg.add_answer(Record::from_rdata(
            name.clone(),
            60,
            RData::TXT(TXT::new(vec![text])),
        ));
    }
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.options_mut()
        .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
            10,
            vec![1, 2, 3, 4, 5, 6, 7, 8],
        ));
    msg.set_edns(edns);
    msg.to_vec().unwrap()
}

#[test]
fn truncated_answer_keeps_question_and_opt_and_sets_tc() {
    let q = query("example.org.", RecordType::TXT, Some(1232));
    let big = big_answer(&q, 20);
    let t = truncated_answer(&big);
    let msg = Message::from_vec(&t).unwrap();
    assert!(msg.metadata.truncation);
    assert_eq!(msg.queries.len(), 1);
    assert!(msg.answers.is_empty() && msg.authorities.is_empty());
    let edns = msg.edns.expect("the OPT record is kept");
    assert_eq!(edns.max_payload(), 1232);
    assert!(t.len() < 100, "{} bytes", t.len());
    // Without EDNS in the answer: header and question only.
    let plain = query("example.org.", RecordType::TXT, None);
    let end = parse_query(&plain).unwrap().question_end;
    let mut plain_answer = plain.clone();
    plain_answer[2] |= 0x80;
    let t = truncated_answer(&plain_answer);
    assert_eq!(t.len(), end);
    assert!(parse_response(&t).unwrap().truncated);
    // Garbage keeps only a header with TC and no counts.
    let t = truncated_answer(&[0x12, 0x34, 0x80, 0, 0, 1, 0, 9, 0, 0, 0, 0, 7]);
    assert_eq!(t, vec![0x12, 0x34, 0x82, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn echo_question_puts_back_the_askers_case_and_rd_cd_bits() {
    let first = query("Example.ORG.", RecordType::A, None);
    let mut answer = first.clone();
    answer[2] = 0x81; // QR, RD
    answer[3] = 0x80; // RA, no CD
    let mut second = query("eXaMpLe.org.", RecordType::A, None);
    second[2] &= !0x01; // RD clear
    second[3] |= 0x10; // CD set
    let end = parse_query(&second).unwrap().question_end;
    echo_question(&mut answer, &second, end);
    assert_eq!(&answer[HEADER_LEN..end], &second[HEADER_LEN..end]);
    assert_eq!(answer[2], 0x80);
    assert_eq!(answer[3], 0x90);
    // Another question is left alone (only the bits follow the asker).
    let other = query("example.net.", RecordType::A, None);
    let before = answer.clone();
    echo_question(&mut answer, &other, end);
    assert_eq!(&answer[HEADER_LEN..end], &before[HEADER_LEN..end]);
}

#[test]
fn id_helpers() {
    let mut q = query("example.org.", RecordType::A, None);
    set_id(&mut q, 0xbeef);
    assert_eq!(id(&q), Some(0xbeef));
    assert_eq!(id(&[1]), None);
    let mut tiny = [7u8];
    set_id(&mut tiny, 1);
    assert_eq!(tiny, [7]);
}

#[test]
fn finds_an_soa_in_the_authority_section() {
    use hickory_proto::rr::rdata::SOA;
    use hickory_proto::rr::{RData, Record};
    let q = query("nosuch.example.org.", RecordType::A, None);
    let mut nodata = Message::from_vec(&q).unwrap();
    nodata.metadata.message_type = MessageType::Response;
    assert!(
        !authority_has_soa(&nodata.to_vec().unwrap()),
        "empty NOERROR without SOA"
    );
    let soa = SOA::new(
        Name::from_ascii("ns.example.org.").unwrap(),
        Name::from_ascii("hostmaster.example.org.").unwrap(),
        1,
        3600,
        600,
        86400,
        60,
    );
    nodata.add_authority(Record::from_rdata(
        Name::from_ascii("example.org.").unwrap(),
        60,
        RData::SOA(soa),
    ));
    let bytes = nodata.to_vec().unwrap();
    assert!(authority_has_soa(&bytes));
    assert!(
        !authority_has_soa(&bytes[..bytes.len() - 5]),
        "cut short: no"
    );
    assert!(!authority_has_soa(&[1, 2, 3]));
}

#[test]
fn finds_the_soa_in_a_real_nodata_answer() {
    // hickory-server's NODATA for alauda.cn.default.svc.cluster.local A (the demo zone).
    let hex = "abcd8500000100000001000006616c6175646102636e0764656661756c740373766307636c7573746572056c6f63616c000001000107636c7573746572056c6f63616c00000600010000001e002a026e7303646e73c0350a686f73746d6173746572c0350000000100001c2000000708000151800000001e";
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    assert!(authority_has_soa(&bytes));
}

#[test]
fn names_are_checked_as_a_decoder_would() {
    let q = query("example.org.", RecordType::A, None);
    let end = parse_query(&q).unwrap().question_end;
    // A compression pointer in a query's question has nothing before it to point to.
    let mut pointer = q[..HEADER_LEN].to_vec();
    pointer.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
    assert_eq!(parse_query(&pointer), Err(WireError::Malformed));
    // Extended label types (0x40, 0x80) are not DNS labels.
    for kind in [0x40u8, 0x80] {
        let mut extended = q.clone();
        extended[HEADER_LEN] = kind | 7;
        assert_eq!(
            parse_query(&extended),
            Err(WireError::Malformed),
            "{kind:#x}"
        );
    }
    // A label of 64 bytes, and a name of more than 255.
    let mut long_label = q[..HEADER_LEN].to_vec();
    long_label.push(64);
    long_label.extend(std::iter::repeat_n(b'a', 64));
    long_label.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert_eq!(parse_query(&long_label), Err(WireError::Malformed));
    let mut long_name = q[..HEADER_LEN].to_vec();
    for _ in 0..5 {
        long_name.push(63);
        long_name.extend(std::iter::repeat_n(b'a', 63));
    }
    long_name.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert_eq!(parse_query(&long_name), Err(WireError::Malformed));
    // In a response, records named by pointers to the question are read (not followed).
    let mut answer = q.clone();
    answer[2] |= 0x80;
    answer[7] = 1;
    answer.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
    let sections = sections(&answer).unwrap();
    assert_eq!(sections.answers.len(), 1);
    assert_eq!(sections.answers[0].ttl, 60);
    assert_eq!(sections.answers[0].start, end);
    assert_eq!(sections.answers[0].end, answer.len());
    assert_eq!(parse_response(&answer).unwrap().question_end, end);
}

#[test]
fn question_names_are_lower_case_text() {
    let q = query("WWW.Example.ORG.", RecordType::A, None);
    let end = parse_query(&q).unwrap().question_end;
    assert_eq!(
        question_name(&q[HEADER_LEN..end]).as_deref(),
        Some("www.example.org")
    );
    assert_eq!(question_name(&[0, 0, 1, 0, 1]).as_deref(), Some("."));
    // A byte above ASCII stands for the character of its value, as before any decoding.
    assert_eq!(
        question_name(&[3, b'c', 0xC9, b'x', 0, 0, 1, 0, 1]).as_deref(),
        Some("c\u{c9}x")
    );
    assert_eq!(question_name(&[5, b'a']), None, "a label past the end");
}

/// OpenTelemetry's `dns.question.name`: as it appears in the query, escaped where it is not
/// printable.
#[test]
fn question_names_as_asked_keep_case_and_escape_the_unprintable() {
    let q = query("WWW.Example.ORG.", RecordType::A, None);
    let end = parse_query(&q).unwrap().question_end;
    let question = &q[HEADER_LEN..end];
    assert_eq!(
        question_name_as_asked(question, None).as_deref(),
        Some("WWW.Example.ORG")
    );
    assert_eq!(
        question_name_as_asked(question, Some(2)).as_deref(),
        Some("WWW.Example")
    );
    assert_eq!(
        question_name_as_asked(&[0, 0, 1, 0, 1], None).as_deref(),
        Some(".")
    );
    let odd = [
        7, b'a', b'.', b'"', b'\\', b'\t', 0xC9, 0x01, 1, b'B', 0, 0, 1, 0, 1,
    ];
    assert_eq!(
        question_name_as_asked(&odd, None).as_deref(),
        Some(r#"a\.\"\\\t\201\001.B"#)
    );
    assert_eq!(
        question_name_as_asked(&[5, b'a'], None),
        None,
        "a label past the end"
    );
}

/// RFC 3225 §3 (issue 24): the DO bit of a query's OPT is copied into the answer's OPT —
/// the RFC 8482 minimal answer to ANY and every error answer alike.
#[test]
fn the_do_bit_of_the_query_comes_back_in_minimal_and_error_answers() {
    let mut msg = Message::from_vec(&query("example.org.", RecordType::ANY, Some(1232))).unwrap();
    msg.edns.as_mut().unwrap().set_dnssec_ok(true);
    let with_do = msg.to_vec().unwrap();
    let plain = query("example.org.", RecordType::ANY, Some(1232));
    for (q, dnssec_ok) in [(&with_do, true), (&plain, false)] {
        let info = parse_query(q).unwrap();
        assert_eq!(info.dnssec_ok, dnssec_ok);
        let minimal = Message::from_vec(&minimal_any_answer(q, info.question_end)).unwrap();
        assert_eq!(minimal.answers[0].record_type(), RecordType::HINFO);
        assert_eq!(minimal.edns.as_ref().unwrap().flags().dnssec_ok, dnssec_ok);
        let error =
            Message::from_vec(&error_answer(q, Some(info.question_end), Rcode::SERVFAIL)).unwrap();
        assert_eq!(error.edns.as_ref().unwrap().flags().dnssec_ok, dnssec_ok);
    }
}
