//! Properties of the client context token (`ringkv_core::context`): it round trips, it is
//! header-safe, and the decoder answers every other input with an error, never a panic.

use proptest::prelude::*;
use ringkv_core::constants::{MAX_CONTEXT_BYTES, MAX_CONTEXT_ENTRIES, MAX_COUNTER};
use ringkv_core::{Context, ContextError, NodeId, ReplicaId, VersionVector};

/// The alphabet of a token: URL-safe base64 without padding.
fn header_safe(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn replica() -> impl Strategy<Value = ReplicaId> {
    ("[A-Za-z0-9_.-]{1,64}", any::<u32>())
        .prop_map(|(node, epoch)| ReplicaId::new(NodeId::new(node).unwrap(), epoch))
}

fn vector() -> impl Strategy<Value = VersionVector> {
    prop_oneof![
        // Small vectors like real ones: a few replica ids of a few epochs.
        prop::collection::vec(((0..5u8, 0..3u32), 1..1000u64), 0..6).prop_map(|entries| {
            VersionVector::from_entries(entries.into_iter().map(|((n, e), c)| {
                (
                    ReplicaId::new(NodeId::new(format!("node-{n}")).unwrap(), e),
                    c,
                )
            }))
        }),
        // Any replica id, counters up to the limit.
        prop::collection::vec((replica(), 1..=MAX_COUNTER), 0..40)
            .prop_map(VersionVector::from_entries),
    ]
}

/// A valid token, and the vector it encodes.
fn token() -> impl Strategy<Value = (VersionVector, String)> {
    vector().prop_map(|v| {
        let token = Context::new(v.clone()).encode();
        (v, token)
    })
}

/// Decoding never panics, and what decodes is a canonical vector that re-encodes to the same
/// token (one vector, one token).
fn check_decode(input: &str) -> Result<(), TestCaseError> {
    match Context::decode(input) {
        Ok(context) => {
            prop_assert!(
                context
                    .vector()
                    .entries()
                    .all(|(_, c)| c > 0 && c <= MAX_COUNTER)
            );
            prop_assert!(context.vector().len() <= MAX_CONTEXT_ENTRIES);
            prop_assert_eq!(context.encode(), input);
        }
        Err(error) => prop_assert!(!error.to_string().is_empty()),
    }
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn encode_then_decode_is_identity((vector, token) in token()) {
        prop_assert!(header_safe(&token), "{token:?} is not header-safe");
        prop_assert!(token.len() <= MAX_CONTEXT_BYTES);
        prop_assert_eq!(Context::decode(&token).map(|c| c.vector().clone()), Ok(vector.clone()));
        prop_assert_eq!(Context::new(vector).try_encode(), Ok(token));
    }

    #[test]
    fn a_counter_over_the_limit_is_refused(
        (vector, _) in token(),
        who in replica(),
        huge in (MAX_COUNTER + 1)..=u64::MAX,
    ) {
        let mut entries: Vec<(ReplicaId, u64)> =
            vector.entries().map(|(r, c)| (r.clone(), c)).collect();
        entries.retain(|(r, _)| *r != who);
        entries.push((who, huge));
        let forged = Context::new(VersionVector::from_entries(entries));
        prop_assert_eq!(forged.try_encode(), Err(ContextError::CounterTooLarge(huge)));
        prop_assert_eq!(
            Context::decode(&forged.encode()).map(|c| c.vector().clone()),
            Err(ContextError::CounterTooLarge(huge))
        );
    }

    #[test]
    fn arbitrary_strings_never_panic(input in ".{0,200}") {
        check_decode(&input)?;
    }

    #[test]
    fn header_alphabet_strings_never_panic(input in "[A-Za-z0-9_-]{0,200}") {
        check_decode(&input)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check_decode(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn a_changed_character_is_rejected(
        (_, token) in token(),
        at: prop::sample::Index,
        replacement in prop::sample::select(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=. ".to_vec()
        ),
    ) {
        let mut bytes = token.clone().into_bytes();
        let i = at.index(bytes.len());
        prop_assume!(bytes[i] != replacement);
        bytes[i] = replacement;
        let altered = String::from_utf8(bytes).unwrap();
        check_decode(&altered)?;
        // A 32-bit checksum lets about one alteration in 4 billion through; a proptest run
        // never meets one, so any success here is a broken checksum.
        prop_assert!(Context::decode(&altered).is_err(), "{altered:?} was accepted");
    }

    #[test]
    fn a_truncated_or_extended_token_is_rejected(
        (_, token) in token(),
        cut: prop::sample::Index,
        tail in "[A-Za-z0-9_-]{1,8}",
    ) {
        let truncated = &token[..cut.index(token.len())];
        check_decode(truncated)?;
        prop_assert!(Context::decode(truncated).is_err());
        let extended = format!("{token}{tail}");
        check_decode(&extended)?;
        prop_assert!(Context::decode(&extended).is_err());
    }
}

#[test]
fn limits_are_enforced() {
    let many = VersionVector::from_entries(
        (0..=MAX_CONTEXT_ENTRIES)
            .map(|i| (ReplicaId::new(NodeId::new(format!("n{i}")).unwrap(), 0), 1)),
    );
    let context = Context::new(many);
    assert!(matches!(
        context.try_encode(),
        Err(ContextError::TooManyEntries { .. })
    ));
    assert!(matches!(
        Context::decode(&context.encode()),
        Err(ContextError::TooManyEntries { .. })
    ));
    // Exactly at the entry limit, with short ids, a token fits and decodes.
    let most = VersionVector::from_entries((0..MAX_CONTEXT_ENTRIES).map(|i| {
        (
            ReplicaId::new(NodeId::new(format!("n{i}")).unwrap(), 0),
            MAX_COUNTER,
        )
    }));
    let token = Context::new(most.clone()).try_encode().unwrap();
    assert_eq!(Context::decode(&token).unwrap().vector().clone(), most);
    // Long ids make a token past the byte limit: `try_encode` says so before a client sees it.
    let long = VersionVector::from_entries((0..MAX_CONTEXT_ENTRIES).map(|i| {
        (
            ReplicaId::new(NodeId::new(format!("{i:0>64}")).unwrap(), u32::MAX),
            MAX_COUNTER,
        )
    }));
    assert!(matches!(
        Context::new(long).try_encode(),
        Err(ContextError::TooLong { .. })
    ));
}
