//! RESP2 requests in, replies out: a bounded, incremental parser and the reply encoder.
//! Pure: no I/O, no clock, no async.
//!
//! A request is either an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`, what every
//! client library sends) or an inline command (`GET k\r\n`, what telnet and
//! `redis-cli --pipe` may send: words separated by spaces, with `"..."` and `'...'` quoting as
//! in Redis). An empty array (`*0`, `*-1`) or an empty inline line is skipped, as Redis does.
//!
//! Laws (unit and property tests here and in `crates/ringkv/tests/resp_parser_props.rs`):
//! - the parser never panics, whatever bytes it is fed;
//! - between two `feed`s, once `next_command` answered `Ok(None)`, it holds at most
//!   `ParserLimits::max_unparsed_bytes` unparsed bytes, and a command it assembles holds at
//!   most `max_command_bytes`;
//! - an announced length over its limit is refused when its header line is read, before any
//!   byte of the announced body is buffered or allocated;
//! - how the input is split into `feed` calls never changes the commands it yields;
//! - `encode_command` followed by parsing yields the same arguments.
//!
//! A `ProtocolError` is final: the connection answers it as `-ERR Protocol error: ...` and
//! closes, as Redis does, because the parser no longer knows where the next request starts.

use std::borrow::Cow;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ringkv_core::constants::{MAX_CONTEXT_BYTES, MAX_KEY_BYTES};

/// Most elements an array request may announce (Redis allows more, but no ringkv command
/// needs them: a million keys per `MGET` is plenty).
pub const MAX_ARRAY_LEN: usize = 1024 * 1024;
/// Longest inline command line, as Redis's `PROTO_INLINE_MAX_SIZE`.
pub const MAX_INLINE_BYTES: usize = 64 * 1024;
/// Longest `*<count>` or `$<length>` header line: a sign, 19 digits, CRLF, with room to spare.
pub const MAX_HEADER_LINE_BYTES: usize = 32;
/// Bulk strings may exceed the largest value by this much, so that an oversize value is an
/// ordinary error answer (the connection lives on) rather than a protocol error.
pub const BULK_SLACK_BYTES: usize = 1024;
/// Smallest bound on one whole command (all its arguments together).
pub const MIN_COMMAND_BYTES: usize = 64 * 1024 * 1024;
/// What one parsed argument costs beyond its bytes (the `Bytes` handle in the argument list),
/// counted against `max_command_bytes` so a million empty arguments are bounded too.
const ARG_OVERHEAD_BYTES: usize = 32;

/// The parser's bounds. Every one is checked before the memory it guards is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserLimits {
    /// Longest bulk string (one argument).
    pub max_bulk_bytes: usize,
    /// Most elements of one array request.
    pub max_array_len: usize,
    /// Longest inline command line, without its line end.
    pub max_inline_bytes: usize,
    /// Most bytes of one command: its arguments plus `ARG_OVERHEAD_BYTES` each.
    pub max_command_bytes: usize,
}

impl ParserLimits {
    /// The limits for a node whose largest value is `max_value_bytes`. A bulk string must hold
    /// a value, a key or a context, whichever is largest, plus `BULK_SLACK_BYTES`.
    pub fn for_max_value_bytes(max_value_bytes: usize) -> ParserLimits {
        let max_bulk_bytes =
            max_value_bytes.max(MAX_CONTEXT_BYTES).max(MAX_KEY_BYTES) + BULK_SLACK_BYTES;
        ParserLimits {
            max_bulk_bytes,
            max_array_len: MAX_ARRAY_LEN,
            max_inline_bytes: MAX_INLINE_BYTES,
            max_command_bytes: MIN_COMMAND_BYTES.max(4 * max_bulk_bytes),
        }
    }

    /// The most unparsed bytes the parser holds once `next_command` answered `Ok(None)`: a
    /// partial bulk string, header line or inline line.
    pub fn max_unparsed_bytes(&self) -> usize {
        (self.max_bulk_bytes + 1)
            .max(self.max_inline_bytes + 1)
            .max(MAX_HEADER_LINE_BYTES)
    }
}

/// Why the input is not RESP2 the parser accepts. The text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    BadArrayLength,
    #[error("Protocol error: invalid multibulk length ({len} elements, the limit is {max})")]
    ArrayTooLong { len: u64, max: usize },
    #[error("Protocol error: invalid bulk length")]
    BadBulkLength,
    #[error("Protocol error: invalid bulk length ({len} bytes, the limit is {max})")]
    BulkTooLong { len: u64, max: usize },
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0).escape_default())]
    ExpectedBulk(u8),
    #[error("Protocol error: too big count string (no CRLF within {MAX_HEADER_LINE_BYTES} bytes)")]
    HeaderTooLong,
    #[error("Protocol error: line not terminated by CRLF")]
    MissingCrlf,
    #[error("Protocol error: too big inline request (no line end within {0} bytes)")]
    InlineTooLong(usize),
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: command larger than {0} bytes")]
    CommandTooLarge(usize),
}

/// An array request whose elements are still arriving.
#[derive(Debug)]
struct PartialArray {
    /// Elements still to come.
    remaining: usize,
    args: Vec<Bytes>,
    /// Bytes of `args` plus `ARG_OVERHEAD_BYTES` each, and of the announced bulk string.
    cost_bytes: usize,
    /// The announced length of the bulk string being read, once its header line was read.
    bulk_len: Option<usize>,
}

/// The incremental request parser of one connection.
#[derive(Debug)]
pub struct Parser {
    limits: ParserLimits,
    buf: BytesMut,
    array: Option<PartialArray>,
}

impl Parser {
    pub fn new(limits: ParserLimits) -> Parser {
        Parser {
            limits,
            buf: BytesMut::new(),
            array: None,
        }
    }

    pub fn limits(&self) -> &ParserLimits {
        &self.limits
    }

    /// Appends bytes read from the client. Call `next_command` until it answers `Ok(None)`
    /// before feeding more, so that the buffer stays within its bound.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Frees the input buffer if it holds nothing, so that an idle connection costs no
    /// buffer memory.
    pub fn release_idle_memory(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// Unparsed bytes held (a partial element or line, and anything fed after it).
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Bytes of input this connection holds: unparsed bytes plus the arguments of an array
    /// request still arriving (what the node-wide input budget counts).
    pub fn held_bytes(&self) -> usize {
        let parsed = self.array.as_ref().map_or(0, |a| {
            let announced = a.bulk_len.map_or(0, |len| len + ARG_OVERHEAD_BYTES);
            a.cost_bytes.saturating_sub(announced)
        });
        self.buf.len() + parsed
    }

    /// The next complete command, `Ok(None)` if more input is needed first.
    pub fn next_command(&mut self) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            if let Some(array) = &mut self.array {
                if !read_elements(&mut self.buf, array, &self.limits)? {
                    return Ok(None);
                }
                let array = self.array.take().expect("the array just completed");
                return Ok(Some(array.args));
            }
            let Some(&first) = self.buf.first() else {
                return Ok(None);
            };
            if first == b'*' {
                let Some(count) = take_header(&mut self.buf)? else {
                    return Ok(None);
                };
                let count = parse_length(&count).ok_or(ProtocolError::BadArrayLength)?;
                match count {
                    // An empty or null array carries no command; Redis skips it too.
                    0 | -1 => continue,
                    n if n < 0 => return Err(ProtocolError::BadArrayLength),
                    n if n as u64 > self.limits.max_array_len as u64 => {
                        return Err(ProtocolError::ArrayTooLong {
                            len: n as u64,
                            max: self.limits.max_array_len,
                        });
                    }
                    n => {
                        let n = n as usize;
                        self.array = Some(PartialArray {
                            remaining: n,
                            // Never trust an announcement for an allocation.
                            args: Vec::with_capacity(n.min(64)),
                            cost_bytes: 0,
                            bulk_len: None,
                        });
                    }
                }
            } else {
                let Some(line) = take_inline_line(&mut self.buf, self.limits.max_inline_bytes)?
                else {
                    return Ok(None);
                };
                let args = split_inline(&line)?;
                if !args.is_empty() {
                    return Ok(Some(args));
                }
            }
        }
    }
}

/// Reads elements of `array` from `buf`; `Ok(true)` once all of them arrived.
fn read_elements(
    buf: &mut BytesMut,
    array: &mut PartialArray,
    limits: &ParserLimits,
) -> Result<bool, ProtocolError> {
    while array.remaining > 0 {
        let len = match array.bulk_len {
            Some(len) => len,
            None => {
                let Some(&first) = buf.first() else {
                    return Ok(false);
                };
                if first != b'$' {
                    return Err(ProtocolError::ExpectedBulk(first));
                }
                let Some(header) = take_header(buf)? else {
                    return Ok(false);
                };
                let len = parse_length(&header).ok_or(ProtocolError::BadBulkLength)?;
                if len < 0 {
                    return Err(ProtocolError::BadBulkLength);
                }
                if len as u64 > limits.max_bulk_bytes as u64 {
                    return Err(ProtocolError::BulkTooLong {
                        len: len as u64,
                        max: limits.max_bulk_bytes,
                    });
                }
                let len = len as usize;
                array.cost_bytes += len + ARG_OVERHEAD_BYTES;
                if array.cost_bytes > limits.max_command_bytes {
                    return Err(ProtocolError::CommandTooLarge(limits.max_command_bytes));
                }
                array.bulk_len = Some(len);
                len
            }
        };
        if buf.len() < len + 2 {
            return Ok(false);
        }
        if &buf[len..len + 2] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        array.args.push(buf.split_to(len).freeze());
        buf.advance(2);
        array.bulk_len = None;
        array.remaining -= 1;
    }
    Ok(true)
}

/// Takes a `*<n>\r\n` or `$<n>\r\n` line off `buf` and answers what follows the type byte.
fn take_header(buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
    let window = &buf[..buf.len().min(MAX_HEADER_LINE_BYTES)];
    let Some(end) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= MAX_HEADER_LINE_BYTES {
            return Err(ProtocolError::HeaderTooLong);
        }
        return Ok(None);
    };
    if end < 2 || buf[end - 1] != b'\r' {
        return Err(ProtocolError::MissingCrlf);
    }
    let mut line = buf.split_to(end + 1);
    line.truncate(end - 1);
    line.advance(1);
    Ok(Some(line.freeze()))
}

/// Takes an inline line (ended by `\n`, optionally `\r\n`) off `buf`, without its end.
fn take_inline_line(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, ProtocolError> {
    let window = &buf[..buf.len().min(max + 2)];
    let Some(end) = window.iter().position(|&b| b == b'\n') else {
        // One byte more than the limit may be a `\r` whose `\n` is still on its way.
        if buf.len() > max + 1 {
            return Err(ProtocolError::InlineTooLong(max));
        }
        return Ok(None);
    };
    let mut line = buf.split_to(end + 1);
    line.truncate(end);
    if line.last() == Some(&b'\r') {
        line.truncate(end - 1);
    }
    if line.len() > max {
        return Err(ProtocolError::InlineTooLong(max));
    }
    Ok(Some(line.freeze()))
}

/// A decimal length: an optional `-` and 1 to 19 digits. No `+`, no spaces.
fn parse_length(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut value: i64 = 0;
    for &d in digits {
        value = value.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if negative { -value } else { value })
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c)
}

/// Splits an inline line into arguments as Redis's `sdssplitargs` does: words separated by
/// white space; a word may be `"double quoted"` (escapes `\n \r \t \b \a \\ \" \xHH`) or
/// `'single quoted'` (escape `\'`), and a closing quote must end the word.
pub fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    let mut args = Vec::new();
    let mut i = 0;
    while i < line.len() {
        if is_space(line[i]) {
            i += 1;
            continue;
        }
        let (word, next) = match line[i] {
            b'"' => double_quoted(line, i + 1)?,
            b'\'' => single_quoted(line, i + 1)?,
            _ => {
                let end = line[i..]
                    .iter()
                    .position(|&b| is_space(b))
                    .map_or(line.len(), |p| i + p);
                (line[i..end].to_vec(), end)
            }
        };
        args.push(Bytes::from(word));
        i = next;
    }
    Ok(args)
}

/// The word after an opening `"` at `start - 1`, and the index after its closing quote.
fn double_quoted(line: &[u8], start: usize) -> Result<(Vec<u8>, usize), ProtocolError> {
    let mut word = Vec::new();
    let mut i = start;
    loop {
        match line.get(i) {
            None => return Err(ProtocolError::UnbalancedQuotes),
            Some(b'"') => return closed(line, i + 1).map(|next| (word, next)),
            Some(b'\\') => {
                let hex = line.get(i + 2..i + 4).and_then(|h| {
                    let h = std::str::from_utf8(h).ok()?;
                    u8::from_str_radix(h, 16).ok()
                });
                match (line.get(i + 1), hex) {
                    (Some(b'x'), Some(byte)) => {
                        word.push(byte);
                        i += 4;
                        continue;
                    }
                    (Some(&c), _) => word.push(match c {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    }),
                    (None, _) => return Err(ProtocolError::UnbalancedQuotes),
                }
                i += 2;
            }
            Some(&b) => {
                word.push(b);
                i += 1;
            }
        }
    }
}

/// The word after an opening `'` at `start - 1`, and the index after its closing quote.
fn single_quoted(line: &[u8], start: usize) -> Result<(Vec<u8>, usize), ProtocolError> {
    let mut word = Vec::new();
    let mut i = start;
    loop {
        match (line.get(i), line.get(i + 1)) {
            (None, _) => return Err(ProtocolError::UnbalancedQuotes),
            (Some(b'\\'), Some(b'\'')) => {
                word.push(b'\'');
                i += 2;
            }
            (Some(b'\''), _) => return closed(line, i + 1).map(|next| (word, next)),
            (Some(&b), _) => {
                word.push(b);
                i += 1;
            }
        }
    }
}

/// A closing quote must be followed by white space or the end of the line.
fn closed(line: &[u8], next: usize) -> Result<usize, ProtocolError> {
    match line.get(next) {
        Some(&b) if !is_space(b) => Err(ProtocolError::UnbalancedQuotes),
        _ => Ok(next),
    }
}

/// Encodes a command the way clients send it: an array of bulk strings.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+text`
    Status(Cow<'static, str>),
    /// `-text`: the first word is the error code (`ERR`, `CONFLICT`, `UNAVAILABLE`, ...).
    Error(String),
    /// `:n`
    Integer(i64),
    /// `$len` and the bytes.
    Bulk(Bytes),
    /// `$-1`, the nil bulk string.
    Nil,
    /// `*n` and the elements.
    Array(Vec<Reply>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Status(Cow::Borrowed("OK"))
    }

    /// An error with the generic `ERR` code.
    pub fn err(message: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {message}"))
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the reply's bytes to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Reply::Status(text) => line(out, b'+', text.as_bytes()),
            Reply::Error(text) => line(out, b'-', text.as_bytes()),
            Reply::Integer(n) => line(out, b':', n.to_string().as_bytes()),
            Reply::Bulk(bytes) => {
                line(out, b'$', bytes.len().to_string().as_bytes());
                out.put_slice(bytes);
                out.put_slice(b"\r\n");
            }
            Reply::Nil => out.put_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                for item in items {
                    item.encode(out);
                }
            }
        }
    }
}

/// A one-line reply; CR and LF in `text` become spaces so the line cannot be split.
fn line(out: &mut BytesMut, kind: u8, text: &[u8]) {
    out.put_u8(kind);
    out.extend(
        text.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_limits() -> ParserLimits {
        ParserLimits {
            max_bulk_bytes: 64,
            max_array_len: 8,
            max_inline_bytes: 32,
            max_command_bytes: 256,
        }
    }

    fn parse_all(limits: ParserLimits, input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut p = Parser::new(limits);
        p.feed(input);
        let mut out = Vec::new();
        while let Some(cmd) = p.next_command()? {
            out.push(cmd);
        }
        Ok(out)
    }

    fn words(cmd: &[&str]) -> Vec<Bytes> {
        cmd.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    #[test]
    fn arrays_and_inline_commands_pipelined_in_order() {
        let input = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n*0\r\n\r\nSET a \"b c\"\n*-1\r\n";
        let cmds = parse_all(ParserLimits::for_max_value_bytes(1024), input).unwrap();
        assert_eq!(
            cmds,
            vec![
                words(&["GET", "k"]),
                words(&["PING"]),
                words(&["SET", "a", "b c"])
            ]
        );
    }

    #[test]
    fn half_frames_wait_for_more() {
        let frame = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nva\r\nl\r\n";
        for cut in 0..frame.len() {
            let mut p = Parser::new(small_limits());
            p.feed(&frame[..cut]);
            assert_eq!(p.next_command(), Ok(None), "cut at {cut}");
            p.feed(&frame[cut..]);
            assert_eq!(
                p.next_command(),
                Ok(Some(words(&["SET", "key", "va\r\nl"]))),
                "cut at {cut}"
            );
            assert_eq!(p.next_command(), Ok(None));
            assert_eq!(p.buffered_bytes(), 0);
        }
    }

    #[test]
    fn oversize_announcements_are_refused_at_the_header() {
        let limits = ParserLimits::for_max_value_bytes(1024 * 1024);
        let mut p = Parser::new(limits);
        p.feed(b"*2\r\n$3\r\nSET\r\n$1073741824\r\n");
        assert_eq!(
            p.next_command(),
            Err(ProtocolError::BulkTooLong {
                len: 1 << 30,
                max: limits.max_bulk_bytes
            })
        );
        assert!(p.buf.capacity() < 4096, "nothing was reserved for the body");

        let mut p = Parser::new(limits);
        p.feed(b"*99999999999\r\n");
        assert!(matches!(
            p.next_command(),
            Err(ProtocolError::ArrayTooLong { .. })
        ));
    }

    #[test]
    fn bad_lengths_and_framing_are_protocol_errors() {
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"*x\r\n", ProtocolError::BadArrayLength),
            (b"*-2\r\n", ProtocolError::BadArrayLength),
            (b"*+1\r\n", ProtocolError::BadArrayLength),
            (b"*\r\n", ProtocolError::BadArrayLength),
            (b"*1\r\n$-1\r\n", ProtocolError::BadBulkLength),
            (b"*1\r\n$abc\r\n", ProtocolError::BadBulkLength),
            (
                b"*1\r\n$99999999999999999999\r\n",
                ProtocolError::BadBulkLength,
            ),
            (b"*1\r\n:1\r\n", ProtocolError::ExpectedBulk(b':')),
            (b"*1\r\n$1\r\nab\r\n", ProtocolError::MissingCrlf),
            (b"*1\n", ProtocolError::MissingCrlf),
            (
                b"*11111111111111111111111111111111111",
                ProtocolError::HeaderTooLong,
            ),
            (b"SET \"a\r\n", ProtocolError::UnbalancedQuotes),
            (b"SET 'a'b\r\n", ProtocolError::UnbalancedQuotes),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_all(small_limits(), input).as_ref(),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn long_inline_lines_and_large_commands_are_refused() {
        let long = vec![b'a'; 40];
        assert_eq!(
            parse_all(small_limits(), &long),
            Err(ProtocolError::InlineTooLong(32))
        );
        let mut big = Vec::new();
        let arg = vec![b'v'; 60];
        encode_command(&[&arg, &arg, &arg, &arg, &arg], &mut big);
        assert_eq!(
            parse_all(small_limits(), &big),
            Err(ProtocolError::CommandTooLarge(256))
        );
    }

    #[test]
    fn inline_quoting_follows_redis() {
        let args = split_inline(br#"SET "a\x41\n\"" 'it\'s' plain"#).unwrap();
        assert_eq!(
            args,
            vec![
                Bytes::from_static(b"SET"),
                Bytes::from_static(b"aA\n\""),
                Bytes::from_static(b"it's"),
                Bytes::from_static(b"plain"),
            ]
        );
    }

    #[test]
    fn replies_encode_as_resp2() {
        let mut out = BytesMut::new();
        Reply::Array(vec![
            Reply::ok(),
            Reply::Error("CONFLICT 2 siblings\r\nx".into()),
            Reply::Integer(-3),
            Reply::Bulk(Bytes::from_static(b"a\r\nb")),
            Reply::Nil,
            Reply::Array(vec![]),
        ])
        .encode(&mut out);
        assert_eq!(
            &out[..],
            b"*6\r\n+OK\r\n-CONFLICT 2 siblings  x\r\n:-3\r\n$4\r\na\r\nb\r\n$-1\r\n*0\r\n"
        );
    }

    /// SplitMix64, so the randomized tests below are deterministic.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_bytes_never_panic_nor_overfill_the_buffer() {
        let limits = small_limits();
        // Bytes that steer the parser into its interesting states.
        let alphabet = b"*$:+-0123456789\r\n \"'\\xabGET";
        for seed in 0..2000 {
            let mut rng = Rng(seed);
            let mut p = Parser::new(limits);
            for _ in 0..rng.below(50) {
                let chunk: Vec<u8> = (0..rng.below(40))
                    .map(|_| {
                        if rng.below(4) == 0 {
                            rng.next() as u8
                        } else {
                            alphabet[rng.below(alphabet.len())]
                        }
                    })
                    .collect();
                p.feed(&chunk);
                let outcome = loop {
                    match p.next_command() {
                        Ok(Some(cmd)) => assert!(!cmd.is_empty()),
                        other => break other,
                    }
                };
                if outcome.is_err() {
                    break;
                }
                assert!(
                    p.buffered_bytes() <= limits.max_unparsed_bytes(),
                    "seed {seed}: {} bytes buffered",
                    p.buffered_bytes()
                );
            }
        }
    }

    #[test]
    fn random_commands_round_trip_whatever_the_split() {
        let limits = ParserLimits::for_max_value_bytes(1024);
        for seed in 0..300 {
            let mut rng = Rng(seed);
            let cmds: Vec<Vec<Vec<u8>>> = (0..1 + rng.below(5))
                .map(|_| {
                    (0..1 + rng.below(6))
                        .map(|_| (0..rng.below(20)).map(|_| rng.next() as u8).collect())
                        .collect()
                })
                .collect();
            let mut wire = Vec::new();
            for c in &cmds {
                encode_command(c, &mut wire);
            }
            let mut p = Parser::new(limits);
            let mut got = Vec::new();
            let mut at = 0;
            while at < wire.len() {
                let step = 1 + rng.below(9);
                let end = (at + step).min(wire.len());
                p.feed(&wire[at..end]);
                at = end;
                while let Some(cmd) = p.next_command().unwrap() {
                    got.push(cmd.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
                }
            }
            assert_eq!(got, cmds, "seed {seed}");
            assert_eq!(p.buffered_bytes(), 0);
        }
    }
}
