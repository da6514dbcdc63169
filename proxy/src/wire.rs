//! Wire format: just enough of a DNS message to forward it faithfully.
//!
//! The proxy never decodes a whole message on the hot path. It reads the header and the
//! question with hickory-proto's decoders (so name compression, label lengths and bounds are
//! checked by a maintained parser), finds the client's EDNS UDP payload size by skipping
//! resource records up to the OPT record, and otherwise moves bytes: the ID is rewritten in
//! place, the rest (flags, EDNS options, the DO bit) goes upstream untouched.
//!
//! Everything here is a pure function over byte slices; the transports live in `listen` and
//! `forward`. No configuration keys, no metrics.

use hickory_proto::op::{Header, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// Size of the fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// UDP payload a client may receive without EDNS (RFC 1035 §4.2.1).
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;
/// Largest UDP payload dnslens ever sends back, whatever a client advertises.
pub const MAX_UDP_PAYLOAD: u16 = 65_000;

/// Response codes dnslens itself produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
}

/// Why a message cannot be forwarded. Each maps to a `reason` label of
/// `dnslens_requests_dropped_total` or `dnslens_responses_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("shorter than a DNS header")]
    TooShort,
    #[error("a response arrived where a query was expected")]
    NotAQuery,
    #[error("a query arrived where a response was expected")]
    NotAResponse,
    #[error("opcode is not QUERY")]
    NotImplemented,
    #[error("question count is not 1")]
    QuestionCount,
    #[error("malformed question or records")]
    Malformed,
}

impl WireError {
    /// Stable label value for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            WireError::TooShort => "too_short",
            WireError::NotAQuery => "not_a_query",
            WireError::NotAResponse => "not_a_response",
            WireError::NotImplemented => "not_implemented",
            WireError::QuestionCount => "question_count",
            WireError::Malformed => "malformed",
        }
    }

    /// The error answer RFC 1035 asks for, if any: FORMERR for a query we cannot parse,
    /// NOTIMP for an opcode we do not forward; nothing for a stray response or a runt
    /// (answering those would let anyone bounce packets off the proxy).
    pub fn answer_rcode(self) -> Option<Rcode> {
        match self {
            WireError::QuestionCount | WireError::Malformed => Some(Rcode::FormErr),
            WireError::NotImplemented => Some(Rcode::NotImp),
            WireError::TooShort | WireError::NotAQuery | WireError::NotAResponse => None,
        }
    }
}

/// What the proxy needs to know about a client query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryInfo {
    /// The client's message ID, restored on the answer.
    pub id: u16,
    /// QTYPE of the single question.
    pub qtype: u16,
    /// Offset just past the question section: `msg[HEADER_LEN..question_end]` is the question.
    pub question_end: usize,
    /// Largest UDP answer the client accepts: 512, or its EDNS payload size if larger.
    pub udp_payload: u16,
}

/// What the proxy needs to know about an upstream response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseInfo {
    pub id: u16,
    pub truncated: bool,
    /// The 4-bit header RCODE.
    pub rcode: u8,
    pub question_end: usize,
}

/// Parses a client query: header, exactly one question, and the EDNS payload size.
pub fn parse_query(msg: &[u8]) -> Result<QueryInfo, WireError> {
    let mut decoder = BinDecoder::new(msg);
    let header = Header::read(&mut decoder).map_err(|_| WireError::TooShort)?;
    if header.metadata.message_type != MessageType::Query {
        return Err(WireError::NotAQuery);
    }
    if header.metadata.op_code != OpCode::Query {
        return Err(WireError::NotImplemented);
    }
    if header.counts.queries != 1 {
        return Err(WireError::QuestionCount);
    }
    let query = Query::read(&mut decoder).map_err(|_| WireError::Malformed)?;
    let question_end = decoder.index();
    let records = u32::from(header.counts.answers)
        + u32::from(header.counts.authorities)
        + u32::from(header.counts.additionals);
    let udp_payload = find_edns_payload(&mut decoder, records)?
        .map_or(CLASSIC_UDP_PAYLOAD, |size| {
            size.clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD)
        });
    Ok(QueryInfo {
        id: header.metadata.id,
        qtype: u16::from(query.query_type()),
        question_end,
        udp_payload,
    })
}

/// Parses the parts of an upstream response used to match it to its query.
pub fn parse_response(msg: &[u8]) -> Result<ResponseInfo, WireError> {
    let mut decoder = BinDecoder::new(msg);
    let header = Header::read(&mut decoder).map_err(|_| WireError::TooShort)?;
    if header.metadata.message_type != MessageType::Response {
        return Err(WireError::NotAResponse);
    }
    if header.counts.queries != 1 {
        return Err(WireError::QuestionCount);
    }
    Query::read(&mut decoder).map_err(|_| WireError::Malformed)?;
    Ok(ResponseInfo {
        id: header.metadata.id,
        truncated: header.metadata.truncation,
        rcode: header.metadata.response_code.low(),
        question_end: decoder.index(),
    })
}

/// Skips `records` resource records and returns the UDP payload size of the OPT record, if
/// one is present. A record that runs past the end of the message is `Malformed`.
fn find_edns_payload(decoder: &mut BinDecoder<'_>, records: u32) -> Result<Option<u16>, WireError> {
    let mut payload = None;
    for _ in 0..records {
        let (rtype, class) = skip_record(decoder)?;
        if rtype == u16::from(RecordType::OPT) {
            payload = Some(class);
        }
    }
    Ok(payload)
}

/// Skips one resource record; returns its TYPE and CLASS.
fn skip_record(decoder: &mut BinDecoder<'_>) -> Result<(u16, u16), WireError> {
    Name::read(decoder).map_err(|_| WireError::Malformed)?;
    let rtype = read_u16(decoder)?;
    let class = read_u16(decoder)?;
    let _ttl = decoder.read_u32().map_err(|_| WireError::Malformed)?;
    let rdlength = read_u16(decoder)?;
    decoder
        .read_slice(usize::from(rdlength))
        .map_err(|_| WireError::Malformed)?;
    Ok((rtype, class))
}

/// Whether a response's authority section holds an SOA record: a well-formed negative
/// answer (RFC 2308) has one; an upstream answering NOERROR with nothing at all has not.
/// Unparsable responses count as "no".
pub fn authority_has_soa(msg: &[u8]) -> bool {
    let mut decoder = BinDecoder::new(msg);
    let Ok(header) = Header::read(&mut decoder) else {
        return false;
    };
    for _ in 0..header.counts.queries {
        if Query::read(&mut decoder).is_err() {
            return false;
        }
    }
    for _ in 0..header.counts.answers {
        if skip_record(&mut decoder).is_err() {
            return false;
        }
    }
    (0..header.counts.authorities).any(|_| {
        skip_record(&mut decoder).is_ok_and(|(rtype, _)| rtype == u16::from(RecordType::SOA))
    })
}

fn read_u16(decoder: &mut BinDecoder<'_>) -> Result<u16, WireError> {
    decoder
        .read_u16()
        .map(|v| v.unverified(/* any value is acceptable here */))
        .map_err(|_| WireError::Malformed)
}

/// Reads the ID of a message that is at least a header long.
pub fn id(msg: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.first()?, *msg.get(1)?]))
}

/// Overwrites the message ID in place. Messages shorter than two bytes are left alone.
pub fn set_id(msg: &mut [u8], id: u16) {
    if let Some(bytes) = msg.get_mut(0..2) {
        bytes.copy_from_slice(&id.to_be_bytes());
    }
}

/// The 4-bit header RCODE of a message at least a header long.
pub fn rcode(msg: &[u8]) -> u8 {
    msg.get(3).map_or(0, |b| b & 0x0f)
}

/// True when two question sections ask the same thing: names equal ignoring ASCII case,
/// QTYPE and QCLASS equal byte for byte.
pub fn same_question(query: &[u8], query_end: usize, response: &[u8], response_end: usize) -> bool {
    let (Some(q), Some(r)) = (
        query.get(HEADER_LEN..query_end),
        response.get(HEADER_LEN..response_end),
    ) else {
        return false;
    };
    if q.len() != r.len() || q.len() < 4 {
        return false;
    }
    let split = q.len() - 4;
    q[..split].eq_ignore_ascii_case(&r[..split]) && q[split..] == r[split..]
}

/// An answer carrying only the header and question, with `rcode` set: what the proxy sends
/// for FORMERR, NOTIMP, SERVFAIL and REFUSED. `query` must be at least a header long; if the
/// question cannot be echoed (`question_end` is `None`) the answer has no question.
pub fn error_answer(query: &[u8], question_end: Option<usize>, rcode: Rcode) -> Vec<u8> {
    let question = question_end
        .and_then(|end| query.get(HEADER_LEN..end))
        .unwrap_or(&[]);
    let mut out = Vec::with_capacity(HEADER_LEN + question.len());
    out.extend_from_slice(query.get(..HEADER_LEN).unwrap_or(&[0; HEADER_LEN]));
    out.resize(HEADER_LEN, 0);
    // QR=1, keep opcode and RD; clear AA, TC.
    out[2] = 0x80 | (out[2] & 0x79);
    // RA=1, clear Z/AD/CD, set RCODE.
    out[3] = 0x80 | (rcode as u8);
    let qdcount: u16 = if question.is_empty() { 0 } else { 1 };
    out[4..6].copy_from_slice(&qdcount.to_be_bytes());
    out[6..12].fill(0);
    out.extend_from_slice(question);
    out
}

/// The answer a UDP client gets when the real one is larger than its payload size:
/// the header with TC set and no records, plus the question, so it retries over TCP.
/// Never larger than the query that asked (no amplification).
pub fn truncated_answer(response: &[u8], question_end: usize) -> Vec<u8> {
    let end = question_end.min(response.len());
    let mut out = response[..end].to_vec();
    if out.len() >= HEADER_LEN {
        out[2] |= 0x02;
        out[6..12].fill(0);
    }
    out
}

#[cfg(test)]
mod tests;
