//! Wire format: just enough of a DNS message to forward it faithfully.
//!
//! The proxy never decodes a whole message on the hot path. It reads the header and the
//! question, finds the client's EDNS UDP payload size by skipping resource records up to the
//! OPT record, and otherwise moves bytes: the ID is rewritten in place, the rest (flags, EDNS
//! options, the DO bit) goes upstream untouched.
//!
//! Reading is a bounds-checked cursor ([`Reader`]) that skips names without decoding them,
//! written here rather than taken from hickory-proto: hickory's `Header`/`Query`/`Name`
//! decoders build a heap `Name` for every name read, which measured 1,150 of the ~6,400
//! instructions of a cached answer (callgrind, README). Label lengths (≤ 63), name length
//! (≤ 255), label types (only plain labels and compression pointers) and bounds are checked
//! as hickory checks them; a compression pointer in a query's question (nothing precedes it
//! that it could point to) is malformed; pointers elsewhere end a name and are not followed
//! (nothing here needs the name they point to). The fuzz tests cover every reader.
//!
//! Everything here is a pure function over byte slices; the transports live in the proxy's
//! `listen` and `forward`. No configuration keys, no metrics.

#![forbid(unsafe_code)]

use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::BinEncodable;
use std::net::IpAddr;

/// Transport a message travelled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Udp, Transport::Tcp];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

#[cfg(feature = "prometheus")]
impl prometheus_client::encoding::EncodeLabelValue for Transport {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// TYPE of the EDNS pseudo-record.
pub const RTYPE_OPT: u16 = 41;
/// TYPE of the SOA record.
pub const RTYPE_SOA: u16 = 6;
/// The address QTYPEs a `getaddrinfo` asks for.
pub const QTYPE_A: u16 = 1;
pub const QTYPE_AAAA: u16 = 28;
/// ANY (QTYPE 255, RFC 1035 `*`).
pub const QTYPE_ANY: u16 = 255;
/// HINFO, the record type of RFC 8482's answer to ANY.
const RTYPE_HINFO: u16 = 13;
/// The DO bit in the OPT record's TTL field (RFC 3225).
const EDNS_DO_BIT: u32 = 0x8000;

/// Size of the fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// UDP payload a client may receive without EDNS (RFC 1035 §4.2.1).
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;
/// Largest UDP payload dnslens ever sends back, whatever a client advertises.
pub const MAX_UDP_PAYLOAD: u16 = 65_000;

/// Response codes, as the RCODE field of a header holds them (RFC 1035 §4.1.1): one
/// spelling for matching an answer and for producing one.
pub enum Rcode {}

impl Rcode {
    pub const NOERROR: u8 = 0;
    pub const FORMERR: u8 = 1;
    pub const SERVFAIL: u8 = 2;
    pub const NXDOMAIN: u8 = 3;
    pub const NOTIMP: u8 = 4;
    pub const REFUSED: u8 = 5;
}

/// The other address type of an A or AAAA question (the twin a resolver asks with it).
pub fn address_twin(qtype: u16) -> Option<u16> {
    match qtype {
        QTYPE_A => Some(QTYPE_AAAA),
        QTYPE_AAAA => Some(QTYPE_A),
        _ => None,
    }
}

/// Why a message cannot be forwarded. For a client query, [`WireError::reason`] is the
/// `reason` label of `dnslens_requests_dropped_total` (`NotAResponse` cannot come from
/// `parse_query`); an upstream response that does not parse is counted `malformed` in
/// `dnslens_responses_dropped_total`, whatever the reason.
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
    pub fn answer_rcode(self) -> Option<u8> {
        match self {
            WireError::QuestionCount | WireError::Malformed => Some(Rcode::FORMERR),
            WireError::NotImplemented => Some(Rcode::NOTIMP),
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
    /// The query carries an EDNS OPT record (its answer must carry one too, RFC 6891).
    pub edns: bool,
    /// The EDNS DO bit: the client wants DNSSEC records.
    pub dnssec_ok: bool,
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

/// A bounds-checked cursor over a message. Every read past the end is `Malformed`.
struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

/// The header fields the proxy reads.
struct Header {
    id: u16,
    flags: u16,
    questions: u16,
    answers: u16,
    authorities: u16,
    additionals: u16,
}

const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
/// Longest name on the wire (RFC 1035 §2.3.4), and longest label.
const MAX_NAME: usize = 255;
const MAX_LABEL: usize = 63;

impl<'a> Reader<'a> {
    fn new(msg: &'a [u8]) -> Reader<'a> {
        Reader { msg, pos: 0 }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let bytes = self
            .msg
            .get(self.pos..self.pos.saturating_add(n))
            .ok_or(WireError::Malformed)?;
        self.pos += n;
        Ok(bytes)
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The 12-byte header; `TooShort` without one.
    fn header(&mut self) -> Result<Header, WireError> {
        if self.msg.len() < HEADER_LEN {
            return Err(WireError::TooShort);
        }
        Ok(Header {
            id: self.u16()?,
            flags: self.u16()?,
            questions: self.u16()?,
            answers: self.u16()?,
            authorities: self.u16()?,
            additionals: self.u16()?,
        })
    }

    /// Skips a name: plain labels up to the root label, or up to a compression pointer
    /// (allowed only with `pointers`; not followed).
    fn skip_name(&mut self, pointers: bool) -> Result<(), WireError> {
        let mut length = 0usize;
        loop {
            let len = *self.bytes(1)?.first().ok_or(WireError::Malformed)?;
            match len & 0xC0 {
                0x00 if len == 0 => return Ok(()),
                0x00 => {
                    length += usize::from(len) + 1;
                    // The root label's byte counts too.
                    if usize::from(len) > MAX_LABEL || length + 1 > MAX_NAME {
                        return Err(WireError::Malformed);
                    }
                    self.bytes(usize::from(len))?;
                }
                0xC0 if pointers => {
                    self.bytes(1)?;
                    return Ok(());
                }
                // Pointers where none may be, and the extended label types (0x40, 0x80).
                _ => return Err(WireError::Malformed),
            }
        }
    }

    /// Skips one question (name, QTYPE, QCLASS) and returns its QTYPE.
    fn question(&mut self, pointers: bool) -> Result<u16, WireError> {
        self.skip_name(pointers)?;
        let qtype = self.u16()?;
        self.u16()?;
        Ok(qtype)
    }

    /// Skips one resource record and says where its fields are.
    fn record(&mut self) -> Result<RecordSpan, WireError> {
        let start = self.pos;
        self.skip_name(true)?;
        let rtype = self.u16()?;
        let class = self.u16()?;
        let ttl_at = self.pos;
        let ttl = self.u32()?;
        let rdlength_at = self.pos;
        let rdlength = self.u16()?;
        self.bytes(usize::from(rdlength))?;
        Ok(RecordSpan {
            start,
            rtype,
            class,
            ttl,
            ttl_at,
            rdlength_at,
            end: self.pos,
        })
    }
}

/// Parses a client query: header, exactly one question, and the EDNS payload size.
pub fn parse_query(msg: &[u8]) -> Result<QueryInfo, WireError> {
    let mut reader = Reader::new(msg);
    let header = reader.header()?;
    if header.flags & FLAG_QR != 0 {
        return Err(WireError::NotAQuery);
    }
    if (header.flags >> 11) & 0x0F != 0 {
        return Err(WireError::NotImplemented);
    }
    if header.questions != 1 {
        return Err(WireError::QuestionCount);
    }
    let qtype = reader.question(false)?;
    let question_end = reader.pos;
    let records =
        u32::from(header.answers) + u32::from(header.authorities) + u32::from(header.additionals);
    let opt = find_opt(&mut reader, records)?;
    let udp_payload = opt.map_or(CLASSIC_UDP_PAYLOAD, |(size, _)| {
        size.clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD)
    });
    Ok(QueryInfo {
        id: header.id,
        qtype,
        question_end,
        udp_payload,
        edns: opt.is_some(),
        dnssec_ok: opt.is_some_and(|(_, ttl)| ttl & EDNS_DO_BIT != 0),
    })
}

/// Parses the parts of an upstream response used to match it to its query.
pub fn parse_response(msg: &[u8]) -> Result<ResponseInfo, WireError> {
    let mut reader = Reader::new(msg);
    let header = reader.header()?;
    if header.flags & FLAG_QR == 0 {
        return Err(WireError::NotAResponse);
    }
    if header.questions != 1 {
        return Err(WireError::QuestionCount);
    }
    reader.question(true)?;
    Ok(ResponseInfo {
        id: header.id,
        truncated: header.flags & FLAG_TC != 0,
        rcode: (header.flags & 0x0F) as u8,
        question_end: reader.pos,
    })
}

/// Skips `records` resource records and returns the OPT record's CLASS (the UDP payload
/// size) and TTL (extended RCODE, version, flags), if one is present. A record that runs
/// past the end of the message is `Malformed`.
fn find_opt(reader: &mut Reader<'_>, records: u32) -> Result<Option<(u16, u32)>, WireError> {
    let mut opt = None;
    for _ in 0..records {
        let record = reader.record()?;
        if record.rtype == RTYPE_OPT {
            opt = Some((record.class, record.ttl));
        }
    }
    Ok(opt)
}

/// Where one resource record sits in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSpan {
    /// Offset of the record's owner name.
    pub start: usize,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    /// Offset of the 4-byte TTL field.
    pub ttl_at: usize,
    /// Offset of the 2-byte RDLENGTH field; the RDATA follows it up to `end`.
    pub rdlength_at: usize,
    pub end: usize,
}

/// The records of a response, section by section.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sections {
    pub answers: Vec<RecordSpan>,
    pub authorities: Vec<RecordSpan>,
    pub additionals: Vec<RecordSpan>,
}

impl Sections {
    pub fn all(&self) -> impl Iterator<Item = &RecordSpan> {
        self.answers
            .iter()
            .chain(&self.authorities)
            .chain(&self.additionals)
    }
}

/// Walks every record of a message (its questions skipped). Used off the per-query path:
/// when an answer is stored in the cache, and by the mitigations.
pub fn sections(msg: &[u8]) -> Result<Sections, WireError> {
    let mut reader = Reader::new(msg);
    let header = reader.header()?;
    for _ in 0..header.questions {
        reader.question(true)?;
    }
    let mut read = |count: u16| -> Result<Vec<RecordSpan>, WireError> {
        (0..count).map(|_| reader.record()).collect()
    };
    Ok(Sections {
        answers: read(header.answers)?,
        authorities: read(header.authorities)?,
        additionals: read(header.additionals)?,
    })
}

/// The TTL a negative answer may be cached for (RFC 2308 §5): the smaller of the SOA
/// record's own TTL and its MINIMUM field. `None` without an SOA in the authority section
/// (such an answer must not be cached).
pub fn negative_ttl(msg: &[u8], sections: &Sections) -> Option<u32> {
    sections
        .authorities
        .iter()
        .find(|r| r.rtype == RTYPE_SOA)
        .and_then(|soa| {
            // MINIMUM is the last 4 bytes of the SOA RDATA, whatever the names before it.
            let minimum = msg.get(soa.end.checked_sub(4)?..soa.end)?;
            let minimum = u32::from_be_bytes(minimum.try_into().ok()?);
            Some(soa.ttl.min(minimum))
        })
}

/// A copy of `msg` whose OPT record carries no options (cookies, padding, client subnet):
/// what a cache may hand to other clients. The OPT header (payload size, DO bit) stays.
pub fn without_edns_options(msg: &[u8], sections: &Sections) -> Vec<u8> {
    let Some(opt) = sections
        .additionals
        .iter()
        .find(|r| r.rtype == RTYPE_OPT && r.end > r.rdlength_at + 2)
    else {
        return msg.to_vec();
    };
    let mut out = Vec::with_capacity(msg.len());
    out.extend_from_slice(&msg[..opt.rdlength_at]);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&msg[opt.end..]);
    out
}

/// Whether a response's authority section holds an SOA record: a well-formed negative
/// answer (RFC 2308) has one; an upstream answering NOERROR with nothing at all has not.
/// Unparsable responses count as "no".
pub fn authority_has_soa(msg: &[u8]) -> bool {
    let mut reader = Reader::new(msg);
    let Ok(header) = reader.header() else {
        return false;
    };
    for _ in 0..header.questions {
        if reader.question(true).is_err() {
            return false;
        }
    }
    for _ in 0..header.answers {
        if reader.record().is_err() {
            return false;
        }
    }
    (0..header.authorities).any(|_| reader.record().is_ok_and(|r| r.rtype == RTYPE_SOA))
}

/// The addresses (A and AAAA records) of a response's answer section, the first `out.len()`
/// of them written to `out`; returns how many were written. Unparsable records end the
/// walk (what was read before stays).
pub fn answer_addresses(msg: &[u8], out: &mut [IpAddr]) -> usize {
    let mut reader = Reader::new(msg);
    let Ok(header) = reader.header() else {
        return 0;
    };
    for _ in 0..header.questions {
        if reader.question(true).is_err() {
            return 0;
        }
    }
    let mut written = 0;
    for _ in 0..header.answers {
        if written == out.len() {
            break;
        }
        let Ok(record) = reader.record() else { break };
        let rdata = &msg[record.rdlength_at + 2..record.end];
        let address = match (record.rtype, rdata.len()) {
            (QTYPE_A, 4) => <[u8; 4]>::try_from(rdata).ok().map(IpAddr::from),
            (QTYPE_AAAA, 16) => <[u8; 16]>::try_from(rdata).ok().map(IpAddr::from),
            _ => None,
        };
        if let Some(address) = address {
            out[written] = address;
            written += 1;
        }
    }
    written
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

/// Sets the 4-bit header RCODE in place.
pub fn set_rcode(msg: &mut [u8], rcode: u8) {
    if let Some(b) = msg.get_mut(3) {
        *b = (*b & 0xf0) | (rcode & 0x0f);
    }
}

/// ANCOUNT: records in the answer section.
pub fn answer_count(msg: &[u8]) -> u16 {
    msg.get(6..8)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
}

/// The CD (checking disabled) header bit: it changes what a validating upstream answers.
pub fn checking_disabled(msg: &[u8]) -> bool {
    msg.get(3).is_some_and(|b| b & 0x10 != 0)
}

/// The query name of a question section (as `msg[HEADER_LEN..question_end]`), lower case,
/// without the trailing dot ("." for the root). A question's name is never compressed
/// (nothing precedes it), so labels are read in place.
pub fn question_name(question: &[u8]) -> Option<String> {
    let mut text = Vec::with_capacity(question.len());
    let mut rest = question;
    loop {
        let (&len, tail) = rest.split_first()?;
        if len == 0 {
            break;
        }
        let label = tail.get(..usize::from(len)).filter(|_| len < 64)?;
        if !text.is_empty() {
            text.push(b'.');
        }
        text.extend(label.iter().map(u8::to_ascii_lowercase));
        rest = &tail[usize::from(len)..];
    }
    if text.is_empty() {
        text.push(b'.');
    }
    // Names are ASCII in practice; other bytes are kept as the characters of their values.
    match String::from_utf8(text) {
        Ok(ascii) if ascii.is_ascii() => Some(ascii),
        Ok(utf8) => Some(utf8.bytes().map(char::from).collect()),
        Err(e) => Some(e.into_bytes().into_iter().map(char::from).collect()),
    }
}

/// The query name of a question section as it was asked — case kept, no trailing dot —
/// for telemetry (the OpenTelemetry `dns.question.name`): bytes outside 32..=126 as
/// `\DDD` (tab, CR and LF as `\t`, `\r`, `\n`), backslash, quote and a dot inside a label
/// escaped. Only the first `labels` labels when given (a lookup's base name).
pub fn question_name_as_asked(question: &[u8], labels: Option<usize>) -> Option<String> {
    let mut text = String::with_capacity(question.len());
    let mut rest = question;
    let mut taken = 0;
    while labels.is_none_or(|most| taken < most) {
        let (&len, tail) = rest.split_first()?;
        if len == 0 {
            break;
        }
        let label = tail.get(..usize::from(len)).filter(|_| len < 64)?;
        if taken > 0 {
            text.push('.');
        }
        for &byte in label {
            match byte {
                b'\\' => text.push_str("\\\\"),
                b'"' => text.push_str("\\\""),
                b'.' => text.push_str("\\."),
                b'\t' => text.push_str("\\t"),
                b'\r' => text.push_str("\\r"),
                b'\n' => text.push_str("\\n"),
                32..=126 => text.push(char::from(byte)),
                _ => text.push_str(&format!("\\{byte:03}")),
            }
        }
        taken += 1;
        rest = &tail[usize::from(len)..];
    }
    if text.is_empty() {
        text.push('.');
    }
    Some(text)
}

/// A copy of `query` asking for `qtype` instead (same name, flags and EDNS).
pub fn with_qtype(query: &[u8], question_end: usize, qtype: u16) -> Vec<u8> {
    let mut out = query.to_vec();
    if let Some(field) = question_end
        .checked_sub(4)
        .and_then(|at| out.get_mut(at..at + 2))
    {
        field.copy_from_slice(&qtype.to_be_bytes());
    }
    out
}

/// A copy of `query` asking for `name` instead (same type, class, flags and EDNS). `None`
/// when `name` is not a valid domain name.
pub fn with_qname(query: &[u8], question_end: usize, name: &str) -> Option<Vec<u8>> {
    let mut fqdn = Name::from_ascii(name).ok()?;
    fqdn.set_fqdn(true);
    let wire = fqdn.to_bytes().ok()?;
    let type_class = query.get(question_end.checked_sub(4)?..question_end)?;
    let mut out = Vec::with_capacity(query.len() + wire.len());
    out.extend_from_slice(query.get(..HEADER_LEN)?);
    out.extend_from_slice(&wire);
    out.extend_from_slice(type_class);
    out.extend_from_slice(query.get(question_end..)?);
    Some(out)
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
/// question cannot be echoed (`question_end` is `None`) the answer has no question. An
/// answer to an EDNS query carries an OPT record of the proxy's own (RFC 6891 §7).
pub fn error_answer(query: &[u8], question_end: Option<usize>, rcode: u8) -> Vec<u8> {
    let question = question_end
        .and_then(|end| query.get(HEADER_LEN..end))
        .unwrap_or(&[]);
    let parsed = parse_query(query).ok().filter(|_| !question.is_empty());
    let edns = parsed.is_some_and(|info| info.edns);
    let mut out = Vec::with_capacity(HEADER_LEN + question.len() + OPT_RECORD_LEN);
    out.extend_from_slice(query.get(..HEADER_LEN).unwrap_or(&[0; HEADER_LEN]));
    out.resize(HEADER_LEN, 0);
    // QR=1, keep opcode and RD; clear AA, TC.
    out[2] = 0x80 | (out[2] & 0x79);
    // RA=1, keep CD, clear Z/AD, set RCODE.
    out[3] = 0x80 | (out[3] & CD_BIT) | (rcode & 0x0f);
    let qdcount: u16 = if question.is_empty() { 0 } else { 1 };
    out[4..6].copy_from_slice(&qdcount.to_be_bytes());
    out[6..12].fill(0);
    out.extend_from_slice(question);
    if edns {
        out[11] = 1;
        let mut opt = proxy_opt_record();
        // RFC 3225 §3: the DO bit of the query is copied into the response.
        if parsed.is_some_and(|info| info.dnssec_ok) {
            opt[OPT_DO_BYTE] |= OPT_DO_BIT;
        }
        out.extend_from_slice(&opt);
    }
    out
}

/// The answer RFC 8482 §4.2 allows to an ANY query: one synthesized HINFO record (CPU
/// "RFC8482", OS empty, TTL 3600) instead of every record at the name — no amplification
/// to spend, nothing forwarded. The header, question and OPT are as in [`error_answer`].
pub fn minimal_any_answer(query: &[u8], question_end: usize) -> Vec<u8> {
    let base = error_answer(query, Some(question_end), Rcode::NOERROR);
    let question_len = question_end.saturating_sub(HEADER_LEN);
    if base.get(4..6) != Some(&[0, 1]) || base.len() < HEADER_LEN + question_len {
        return base;
    }
    let (head, opt) = base.split_at(HEADER_LEN + question_len);
    let mut out = Vec::with_capacity(base.len() + 21);
    out.extend_from_slice(head);
    out[6..8].copy_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0xc0, 0x0c]); // the question's name
    out.extend_from_slice(&RTYPE_HINFO.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // IN
    out.extend_from_slice(&3600u32.to_be_bytes());
    out.extend_from_slice(&9u16.to_be_bytes());
    out.push(7);
    out.extend_from_slice(b"RFC8482");
    out.push(0);
    out.extend_from_slice(opt);
    out
}

/// Length of an OPT record without options.
const OPT_RECORD_LEN: usize = 11;
/// The DO bit in an OPT record: the top bit of the flags after the TTL's extended RCODE and
/// version bytes (owner 1, TYPE 2, CLASS 2, then byte 7).
const OPT_DO_BYTE: usize = 7;
const OPT_DO_BIT: u8 = 0x80;
/// The UDP payload size dnslens advertises in OPT records of its own (DNS Flag Day 2020).
pub const PROXY_UDP_PAYLOAD: u16 = 1232;
/// RD: bit 0 of header byte 2. CD: bit 4 of header byte 3.
const RD_BIT: u8 = 0x01;
const CD_BIT: u8 = 0x10;

/// dnslens's own OPT record: root owner, TYPE 41, CLASS = payload size, TTL 0, no options.
fn proxy_opt_record() -> [u8; OPT_RECORD_LEN] {
    let size = PROXY_UDP_PAYLOAD.to_be_bytes();
    [0, 0, 41, size[0], size[1], 0, 0, 0, 0, 0, 0]
}

/// An answer cut to fit a client's UDP payload size: header with TC set, the question, and
/// the answer's OPT record if it has one (RFC 6891 §7: a responder that understood EDNS
/// includes OPT, and a client reads its absence as "no EDNS here"). Record counts match
/// what is kept. An answer that does not parse keeps only its header.
pub fn truncated_answer(response: &[u8]) -> Vec<u8> {
    let header = || {
        let mut out = response
            .get(..HEADER_LEN)
            .unwrap_or(&[0; HEADER_LEN])
            .to_vec();
        out[2] |= 0x02;
        out
    };
    let (Ok(info), Ok(sections)) = (parse_response(response), sections(response)) else {
        let mut out = header();
        out[4..12].fill(0);
        return out;
    };
    let opt = sections
        .additionals
        .iter()
        .find(|r| r.rtype == RTYPE_OPT)
        .and_then(|r| response.get(r.start..r.end));
    let mut out = header();
    out[6..12].fill(0);
    out.extend_from_slice(&response[HEADER_LEN..info.question_end]);
    if let Some(opt) = opt {
        out[11] = 1;
        out.extend_from_slice(opt);
    }
    out
}

/// Puts the asker's question bytes and RD/CD bits on an answer to its question: answers
/// from the cache or shared by a coalesced leader carry the first asker's, and resolvers
/// that randomise the case of names (0x20) drop an answer whose question differs from theirs
/// byte for byte. An answer whose question is not the same question is left as it is.
pub fn echo_question(answer: &mut [u8], query: &[u8], question_end: usize) {
    if answer.len() < HEADER_LEN || query.len() < HEADER_LEN {
        return;
    }
    answer[2] = (answer[2] & !RD_BIT) | (query[2] & RD_BIT);
    answer[3] = (answer[3] & !CD_BIT) | (query[3] & CD_BIT);
    let Some(question) = query.get(HEADER_LEN..question_end) else {
        return;
    };
    let end = question_end;
    let same =
        answer[4..6] == [0, 1] && same_question(query, question_end, answer, end.min(answer.len()));
    if same {
        answer[HEADER_LEN..end].copy_from_slice(question);
    }
}

#[cfg(test)]
mod tests;
