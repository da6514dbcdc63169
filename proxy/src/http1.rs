//! One HTTP/1.0 GET, written by hand, for dnslens asking a dnslens: `dnslens anomalies`
//! (the admin port), `dnslens probe` (a pod's probe socket) and the admin port's relay of
//! `/metrics?pod=NAME` to that pod's socket (`admin::pods`). The request is one line and a
//! Host header; the server (axum) closes after an HTTP/1.0 answer, so the answer is read to
//! its end, bounded, and split here. A client library (hyper with a unix connector) would
//! add a runtime to a process that lives for one request. No config keys, no metrics.

/// The request for `path`.
pub fn request(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")
}

/// An answer read to its end, split.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer<'a> {
    /// The first line, e.g. `HTTP/1.1 503 Service Unavailable`.
    pub status_line: &'a str,
    pub status: u16,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// Splits `answer`; `None` when it is not an HTTP answer.
pub fn parse(answer: &[u8]) -> Option<Answer<'_>> {
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?.trim();
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let content_type = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.trim());
    Some(Answer {
        status_line,
        status,
        content_type,
        body: &answer[split + 4..],
    })
}

/// Sends the GET on a blocking `stream` (its timeouts already set) and reads at most `most`
/// bytes of the answer.
pub fn get_blocking(
    mut stream: impl std::io::Read + std::io::Write,
    path: &str,
    host: &str,
    most: u64,
) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    stream.write_all(request(path, host).as_bytes())?;
    let mut answer = Vec::new();
    stream.take(most).read_to_end(&mut answer)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_split_into_status_type_and_body() {
        let answer = parse(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\ncontent-length: 3\r\n\r\nab\n").unwrap();
        assert_eq!(
            answer,
            Answer {
                status_line: "HTTP/1.1 503 Service Unavailable",
                status: 503,
                content_type: Some("text/plain"),
                body: b"ab\n",
            }
        );
        assert_eq!(
            parse(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().content_type,
            None
        );
        assert!(parse(b"HTTP/1.0 200 OK\r\n").is_none());
        assert!(parse(b"garbage\r\n\r\n").is_none());
        assert!(parse(b"HTTP/1.0 abc OK\r\n\r\n").is_none());
    }
}
