//! Property tests of the RESP2 request parser (`ringkv_node::resp::parser`): it never panics,
//! never holds more than its bound, refuses oversize announcements before buffering them,
//! and yields the same commands however the input is split.

use proptest::prelude::*;
use ringkv_node::resp::parser::{Parser, ParserLimits, ProtocolError, encode_command};

fn small_limits() -> ParserLimits {
    ParserLimits {
        max_bulk_bytes: 100,
        max_array_len: 16,
        max_inline_bytes: 64,
        max_command_bytes: 1000,
    }
}

/// Feeds `chunks` one at a time, draining commands after each; answers the commands and the
/// error that ended the stream, if any. Asserts the buffer bound after every drain.
fn run(limits: ParserLimits, chunks: &[Vec<u8>]) -> (Vec<Vec<Vec<u8>>>, Option<ProtocolError>) {
    let mut parser = Parser::new(limits);
    let mut commands = Vec::new();
    for chunk in chunks {
        parser.feed(chunk);
        loop {
            match parser.next_command() {
                Ok(Some(cmd)) => {
                    assert!(!cmd.is_empty(), "empty commands are skipped");
                    let cost: usize = cmd.iter().map(|a| a.len()).sum();
                    assert!(cost <= limits.max_command_bytes);
                    commands.push(cmd.iter().map(|a| a.to_vec()).collect());
                }
                Ok(None) => break,
                Err(e) => return (commands, Some(e)),
            }
        }
        assert!(
            parser.buffered_bytes() <= limits.max_unparsed_bytes(),
            "{} bytes buffered, bound {}",
            parser.buffered_bytes(),
            limits.max_unparsed_bytes()
        );
    }
    (commands, None)
}

/// Splits `bytes` at the given cut points (taken modulo its length).
fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.push(0);
    cuts.push(bytes.len());
    cuts.sort();
    cuts.dedup();
    cuts.windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

fn commands() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
    let arg = prop::collection::vec(any::<u8>(), 0..40);
    let command = prop::collection::vec(arg, 1..8);
    prop::collection::vec(command, 1..6)
}

/// Bytes biased toward RESP's own punctuation, so the parser reaches its deeper states.
fn resp_ish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        3 => prop::sample::select(b"*$:+-0123456789\r\n \"'\\x".to_vec()),
        1 => any::<u8>(),
    ];
    prop::collection::vec(byte, 0..600)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_nor_overfill(
        bytes in prop_oneof![resp_ish_bytes(), prop::collection::vec(any::<u8>(), 0..600)],
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        run(small_limits(), &split(&bytes, &cuts));
    }

    #[test]
    fn encoded_commands_round_trip_however_split(
        cmds in commands(),
        cuts in prop::collection::vec(any::<usize>(), 0..30),
    ) {
        let mut wire = Vec::new();
        for c in &cmds {
            encode_command(c, &mut wire);
        }
        let limits = ParserLimits::for_max_value_bytes(1024);
        let (whole, err) = run(limits, &[wire.clone()]);
        prop_assert_eq!(err, None);
        prop_assert_eq!(&whole, &cmds);
        let (pieces, err) = run(limits, &split(&wire, &cuts));
        prop_assert_eq!(err, None);
        prop_assert_eq!(&pieces, &cmds);
    }

    #[test]
    fn every_byte_boundary_gives_the_same_commands(cmds in commands()) {
        let mut wire = Vec::new();
        for c in &cmds {
            encode_command(c, &mut wire);
        }
        let bytes: Vec<Vec<u8>> = wire.iter().map(|b| vec![*b]).collect();
        let (got, err) = run(ParserLimits::for_max_value_bytes(1024), &bytes);
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, cmds);
    }

    #[test]
    fn inline_words_parse_as_words(
        words in prop::collection::vec("[A-Za-z0-9_:.-]{1,12}", 1..6),
        crlf in any::<bool>(),
    ) {
        let mut line = words.join(" ").into_bytes();
        line.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        let (got, err) = run(small_limits(), &[line]);
        prop_assert_eq!(err, None);
        let expected: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        prop_assert_eq!(got, vec![expected]);
    }

    #[test]
    fn oversize_bulk_announcements_are_refused_before_buffering(
        extra in 1u64..(i64::MAX as u64 - 200),
    ) {
        let limits = small_limits();
        let len = limits.max_bulk_bytes as u64 + extra;
        let mut parser = Parser::new(limits);
        parser.feed(format!("*2\r\n$3\r\nGET\r\n${len}\r\n").as_bytes());
        parser.feed(&[b'x'; 50]);
        prop_assert_eq!(
            parser.next_command(),
            Err(ProtocolError::BulkTooLong { len, max: limits.max_bulk_bytes })
        );
    }

    #[test]
    fn oversize_array_announcements_are_refused(
        extra in 1u64..(i64::MAX as u64 - 200),
    ) {
        let limits = small_limits();
        let len = limits.max_array_len as u64 + extra;
        let mut parser = Parser::new(limits);
        parser.feed(format!("*{len}\r\n$3\r\nGET\r\n").as_bytes());
        prop_assert_eq!(
            parser.next_command(),
            Err(ProtocolError::ArrayTooLong { len, max: limits.max_array_len })
        );
    }
}

#[test]
fn the_node_limits_hold_a_value_a_key_and_a_context() {
    let limits = ParserLimits::for_max_value_bytes(1024 * 1024);
    assert!(limits.max_bulk_bytes > 1024 * 1024);
    let tiny = ParserLimits::for_max_value_bytes(10);
    assert!(tiny.max_bulk_bytes >= ringkv_core::constants::MAX_CONTEXT_BYTES);
    assert!(tiny.max_bulk_bytes >= ringkv_core::constants::MAX_KEY_BYTES);
}
