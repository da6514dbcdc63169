//! Frame Streams' control frames, dnstap's encoding (decoded back with the same prost
//! messages; the integration tests decode it with Debian's `dnstap` reader) and the config.

use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use super::frame::{self, Control, FrameError};
use super::proto;
use super::*;

#[test]
fn control_frames_are_escaped_and_carry_the_content_type() {
    let ready = frame::control(Control::Ready);
    assert_eq!(&ready[..4], &[0, 0, 0, 0], "escape");
    let len = u32::from_be_bytes([ready[4], ready[5], ready[6], ready[7]]) as usize;
    assert_eq!(len, ready.len() - 8);
    let (kind, types) = frame::parse_control(&ready[8..]).expect("parses");
    assert_eq!(kind, Control::Ready);
    assert_eq!(types, vec![frame::CONTENT_TYPE.to_vec()]);
    // STOP and FINISH have no fields.
    assert_eq!(
        frame::control(Control::Stop),
        vec![0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 3]
    );
    let mut data = Vec::new();
    frame::data(&mut data, b"abc");
    assert_eq!(data, vec![0, 0, 0, 3, b'a', b'b', b'c']);
}

#[test]
fn a_bad_control_frame_is_an_error_not_a_panic() {
    assert_eq!(frame::parse_control(&[]), Err(FrameError::Truncated));
    assert_eq!(
        frame::parse_control(&[0, 0, 0, 9]),
        Err(FrameError::UnknownType(9))
    );
    // ACCEPT with a field whose length runs past the frame.
    assert_eq!(
        frame::parse_control(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, b'x']),
        Err(FrameError::Truncated)
    );
    assert_eq!(
        frame::parse_control(&[0, 0, 0, 1, 0, 0, 0, 1]),
        Err(FrameError::Truncated)
    );
}

/// One event as a data frame; its payload, after checking the frame's length prefix.
fn frame_payload(event: Event, header: &Header) -> Vec<u8> {
    let mut frame = Vec::new();
    encode_frame(event, header, &mut frame);
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    assert_eq!(len, frame.len() - 4, "the length prefix covers the payload");
    frame[4..].to_vec()
}

#[test]
fn a_client_query_is_encoded_with_its_client_time_and_bytes() {
    let at = UNIX_EPOCH + Duration::new(1_796_000_000, 123_456_789);
    let peer: SocketAddr = "10.244.1.7:40001".parse().unwrap();
    let header = Header::new(Some(b"node-1"), Some(b"dnslens 0.1.0"));
    let bytes = frame_payload(
        event_for_test(
            MessageKind::ClientQuery,
            Transport::Udp,
            peer,
            at,
            vec![1, 2, 3],
        ),
        &header,
    );
    let decoded: proto::Dnstap = prost::Message::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(decoded.identity.as_deref(), Some(&b"node-1"[..]));
    assert_eq!(decoded.version.as_deref(), Some(&b"dnslens 0.1.0"[..]));
    assert_eq!(decoded.r#type, proto::DNSTAP_TYPE_MESSAGE);
    let m = decoded.message.expect("message");
    assert_eq!(m.r#type, proto::CLIENT_QUERY);
    assert_eq!(m.socket_family, Some(1));
    assert_eq!(m.socket_protocol, Some(1));
    assert_eq!(m.query_address, Some(vec![10, 244, 1, 7]));
    assert_eq!(m.query_port, Some(40001));
    assert_eq!(
        (m.query_time_sec, m.query_time_nsec),
        (Some(1_796_000_000), Some(123_456_789))
    );
    assert_eq!(m.query_message, Some(vec![1, 2, 3]));
    assert_eq!(m.response_message, None);

    // An upstream's answer over TCP: the upstream is the response side.
    let upstream: SocketAddr = "[fd00::a]:53".parse().unwrap();
    let bytes = frame_payload(
        event_for_test(
            MessageKind::ForwarderResponse,
            Transport::Tcp,
            upstream,
            at,
            vec![9],
        ),
        &header,
    );
    let m = prost::Message::decode(bytes.as_slice())
        .map(|d: proto::Dnstap| d.message.expect("message"))
        .expect("decodes");
    assert_eq!(m.r#type, proto::FORWARDER_RESPONSE);
    assert_eq!((m.socket_family, m.socket_protocol), (Some(2), Some(2)));
    assert_eq!(m.response_port, Some(53));
    assert_eq!(m.response_address.map(|a| a.len()), Some(16));
    assert_eq!(m.response_message, Some(vec![9]));
    assert_eq!(m.query_address, None);
}

#[test]
fn the_socket_is_a_unix_path_or_tcp_host_port_said_in_one_line() {
    let target = |s: &str| {
        DnstapConfig {
            socket: Some(s.into()),
            ..Default::default()
        }
        .target()
    };
    assert_eq!(
        target("/run/dnstap.sock"),
        Ok(Some(Target::Unix("/run/dnstap.sock".into())))
    );
    assert_eq!(
        target("unix:///run/d.sock"),
        Ok(Some(Target::Unix("/run/d.sock".into())))
    );
    assert_eq!(
        target("tcp://10.0.0.9:6000"),
        Ok(Some(Target::Tcp("10.0.0.9:6000".into())))
    );
    assert_eq!(
        target("vector.logging:6000"),
        Ok(Some(Target::Tcp("vector.logging:6000".into())))
    );
    assert_eq!(DnstapConfig::default().target(), Ok(None));
    for bad in [
        "unix://relative.sock",
        "tcp://nohost",
        "tcp://h:0",
        "dnstap.sock",
    ] {
        let e = target(bad).expect_err(bad);
        assert!(e.starts_with("socket"), "{bad}: {e}");
        assert!(!e.contains('\n'));
    }
    let empty_queue = DnstapConfig {
        queue: 0,
        ..Default::default()
    };
    assert_eq!(
        empty_queue.validate(),
        Err("queue must be at least 1".into())
    );
}
