//! dnstap's protobuf messages (`dnstap.proto`, the fields dnslens writes), derived with
//! prost rather than generated: two messages, no build step.

/// `dnstap.Dnstap`: who wrote the message, and the message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dnstap {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub identity: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub version: Option<Vec<u8>>,
    #[prost(message, optional, tag = "14")]
    pub message: Option<Message>,
    /// Always `MESSAGE` (1).
    #[prost(int32, required, tag = "15")]
    pub r#type: i32,
}

pub const DNSTAP_TYPE_MESSAGE: i32 = 1;

/// `dnstap.Message`: one DNS message seen at one point.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    #[prost(int32, required, tag = "1")]
    pub r#type: i32,
    /// INET = 1, INET6 = 2.
    #[prost(int32, optional, tag = "2")]
    pub socket_family: Option<i32>,
    /// UDP = 1, TCP = 2.
    #[prost(int32, optional, tag = "3")]
    pub socket_protocol: Option<i32>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub query_address: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub response_address: Option<Vec<u8>>,
    #[prost(uint32, optional, tag = "6")]
    pub query_port: Option<u32>,
    #[prost(uint32, optional, tag = "7")]
    pub response_port: Option<u32>,
    #[prost(uint64, optional, tag = "8")]
    pub query_time_sec: Option<u64>,
    #[prost(fixed32, optional, tag = "9")]
    pub query_time_nsec: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "10")]
    pub query_message: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "12")]
    pub response_time_sec: Option<u64>,
    #[prost(fixed32, optional, tag = "13")]
    pub response_time_nsec: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "14")]
    pub response_message: Option<Vec<u8>>,
}

/// `Message.Type` values dnslens writes.
pub const CLIENT_QUERY: i32 = 5;
pub const CLIENT_RESPONSE: i32 = 6;
pub const FORWARDER_QUERY: i32 = 7;
pub const FORWARDER_RESPONSE: i32 = 8;
