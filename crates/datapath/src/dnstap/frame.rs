//! Frame Streams, the transport dnstap rides on (farsightsec's `fstrm` protocol, version 1):
//! a data frame is its length (32-bit big-endian, never 0) and its bytes; a control frame
//! is a 0 length (the escape), its own length, its type and its fields (only
//! `CONTENT_TYPE`). On a socket the writer says READY (with the content types it can send),
//! the reader ACCEPTs one, the writer says START and sends data frames; at the end the
//! writer says STOP and the reader FINISH.
//!
//! Written here rather than taken from a crate: the one Rust crate (`framestream`, last
//! released 2020) writes only the unidirectional file form, without the socket handshake,
//! on an old `bytes`; the protocol is five control frames.

/// The content type of dnstap's protobuf payloads.
pub const CONTENT_TYPE: &[u8] = b"protobuf:dnstap.Dnstap";

const FIELD_CONTENT_TYPE: u32 = 0x01;
/// Control frames longer than this are refused (a reader has no reason to send more).
pub const MAX_CONTROL_LEN: u32 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Accept = 0x01,
    Start = 0x02,
    Stop = 0x03,
    Ready = 0x04,
    Finish = 0x05,
}

impl Control {
    fn of(value: u32) -> Option<Control> {
        Some(match value {
            0x01 => Control::Accept,
            0x02 => Control::Start,
            0x03 => Control::Stop,
            0x04 => Control::Ready,
            0x05 => Control::Finish,
            _ => return None,
        })
    }
}

/// A control frame with its escape: READY, ACCEPT and START carry the content type.
pub fn control(kind: Control) -> Vec<u8> {
    let with_type = matches!(kind, Control::Ready | Control::Accept | Control::Start);
    let mut body = (kind as u32).to_be_bytes().to_vec();
    if with_type {
        body.extend(FIELD_CONTENT_TYPE.to_be_bytes());
        body.extend((CONTENT_TYPE.len() as u32).to_be_bytes());
        body.extend(CONTENT_TYPE);
    }
    let mut frame = 0u32.to_be_bytes().to_vec();
    frame.extend((body.len() as u32).to_be_bytes());
    frame.extend(body);
    frame
}

/// Appends a data frame holding `payload` to `out`.
pub fn data(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend((payload.len() as u32).to_be_bytes());
    out.extend(payload);
}

/// Why a control frame from the reader was not the one expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("expected a control frame, got a data frame")]
    NotControl,
    #[error("control frame of {0} bytes (at most {MAX_CONTROL_LEN})")]
    TooLong(u32),
    #[error("control frame too short or with a truncated field")]
    Truncated,
    #[error("unknown control frame type {0:#x}")]
    UnknownType(u32),
    #[error("the reader does not accept {}", String::from_utf8_lossy(CONTENT_TYPE))]
    ContentType,
}

/// A control frame's type and content types, from its body (after escape and length).
pub fn parse_control(body: &[u8]) -> Result<(Control, Vec<Vec<u8>>), FrameError> {
    let word = |at: usize| -> Result<u32, FrameError> {
        body.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(FrameError::Truncated)
    };
    let kind = word(0)?;
    let kind = Control::of(kind).ok_or(FrameError::UnknownType(kind))?;
    let mut types = Vec::new();
    let mut at = 4;
    while at < body.len() {
        let field = word(at)?;
        let len = word(at + 4)? as usize;
        let value = body
            .get(at + 8..at + 8 + len)
            .ok_or(FrameError::Truncated)?;
        if field == FIELD_CONTENT_TYPE {
            types.push(value.to_vec());
        }
        at += 8 + len;
    }
    Ok((kind, types))
}
