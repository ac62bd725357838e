//! The laws of dotted version vector sets (`ringkv_core::version`), checked on sets built by
//! replaying random histories: clients read from random replicas, write through random
//! coordinators with the context they read (or none), and replicas sync with each other.
//! Sets are never built from raw parts here, so every set is one the system can reach.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use proptest::prelude::*;
use ringkv_core::{Context, Dot, NodeId, ReplicaId, Sibling, VersionSet, VersionVector};

const REPLICAS: usize = 4;
const CLIENTS: usize = 3;
const MAX_OPS: usize = 40;

fn replica_id(i: usize) -> ReplicaId {
    ReplicaId::new(NodeId::new(format!("n{i}")).unwrap(), 1 + i as u32 % 2)
}

/// One step of a history.
#[derive(Debug, Clone)]
enum Op {
    /// The client reads the key at a replica and keeps the context it got.
    Read { client: usize, replica: usize },
    /// The client writes through a coordinator, with the context of its last read or with
    /// none (a blind write).
    Write {
        client: usize,
        replica: usize,
        blind: bool,
    },
    /// `to` pulls what `from` holds (read repair, anti-entropy, hinted handoff).
    Sync { from: usize, to: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..CLIENTS, 0..REPLICAS).prop_map(|(client, replica)| Op::Read { client, replica }),
        3 => (0..CLIENTS, 0..REPLICAS, prop::bool::weighted(0.25))
            .prop_map(|(client, replica, blind)| Op::Write { client, replica, blind }),
        2 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Op::Sync { from, to }),
    ]
}

fn history() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 0..MAX_OPS)
}

/// An acknowledged write, as the test remembers it.
#[derive(Debug, Clone)]
struct Write {
    dot: Dot,
    value: Bytes,
    /// The context the client sent with it (vector and exact dots).
    context: Context,
}

/// The result of replaying a history.
#[derive(Debug, Clone)]
struct World {
    states: Vec<VersionSet>,
    /// Every state any replica was in, in order (the empty state first).
    snapshots: Vec<VersionSet>,
    /// For each replica, its states in order.
    per_replica: Vec<Vec<VersionSet>>,
    /// Every context a client read or sent.
    contexts: Vec<VersionVector>,
    writes: Vec<Write>,
}

impl World {
    fn replay(ops: &[Op]) -> World {
        let mut world = World {
            states: vec![VersionSet::new(); REPLICAS],
            snapshots: vec![VersionSet::new()],
            per_replica: vec![vec![VersionSet::new()]; REPLICAS],
            contexts: vec![VersionVector::new()],
            writes: Vec::new(),
        };
        let mut client_context = vec![Context::default(); CLIENTS];
        for op in ops {
            match *op {
                Op::Read { client, replica } => {
                    client_context[client] = Context::of(&world.states[replica]);
                    world.contexts.push(client_context[client].vector().clone());
                }
                Op::Write {
                    client,
                    replica,
                    blind,
                } => {
                    let context = if blind {
                        Context::default()
                    } else {
                        client_context[client].clone()
                    };
                    // Values are unique, so a value names its write.
                    let value = Bytes::from(format!("w{}", world.writes.len()));
                    let (next, dot) = world.states[replica].update_exact(
                        context.vector(),
                        context.dots(),
                        Some(value.clone()),
                        &replica_id(replica),
                    );
                    world.contexts.push(context.vector().clone());
                    if !blind {
                        // Like an HTTP client: it goes on with the context its PUT answered,
                        // which names its own write as an exact dot.
                        client_context[client] = context.with_dot(dot.clone());
                    }
                    world.writes.push(Write {
                        dot,
                        value,
                        context,
                    });
                    world.set(replica, next);
                }
                Op::Sync { from, to } => {
                    let next = world.states[to].sync(&world.states[from]);
                    world.set(to, next);
                }
            }
        }
        world
    }

    fn set(&mut self, replica: usize, state: VersionSet) {
        self.snapshots.push(state.clone());
        self.per_replica[replica].push(state.clone());
        self.states[replica] = state;
    }

    /// Every replica synced with every other: what the cluster converges to.
    fn converged(&self) -> VersionSet {
        self.states
            .iter()
            .fold(VersionSet::new(), |acc, s| acc.sync(s))
    }

    fn snapshot(&self, pick: prop::sample::Index) -> &VersionSet {
        pick.get(&self.snapshots)
    }

    fn context(&self, pick: prop::sample::Index) -> &VersionVector {
        pick.get(&self.contexts)
    }

    /// Whether some acknowledged write was sent with a context covering `dot`.
    fn superseded(&self, dot: &Dot) -> bool {
        self.writes.iter().any(|w| w.context.covers(dot))
    }
}

fn value(s: &str) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(s.as_bytes()))
}

fn dots(set: &VersionSet) -> BTreeSet<Dot> {
    set.siblings().iter().map(|s| s.dot.clone()).collect()
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sync_is_commutative(ops in history(), a: prop::sample::Index, b: prop::sample::Index) {
        let world = World::replay(&ops);
        let (a, b) = (world.snapshot(a), world.snapshot(b));
        prop_assert_eq!(a.sync(b), b.sync(a));
    }

    #[test]
    fn sync_is_associative(
        ops in history(),
        a: prop::sample::Index,
        b: prop::sample::Index,
        c: prop::sample::Index,
    ) {
        let world = World::replay(&ops);
        let (a, b, c) = (world.snapshot(a), world.snapshot(b), world.snapshot(c));
        prop_assert_eq!(a.sync(b).sync(c), a.sync(&b.sync(c)));
    }

    #[test]
    fn sync_is_idempotent(ops in history(), a: prop::sample::Index, b: prop::sample::Index) {
        let world = World::replay(&ops);
        let (a, b) = (world.snapshot(a), world.snapshot(b));
        prop_assert_eq!(&a.sync(a), a);
        let ab = a.sync(b);
        prop_assert_eq!(&ab.sync(b), &ab);
        prop_assert!(ab.includes(a) && ab.includes(b));
    }

    #[test]
    fn a_write_covering_every_sibling_replaces_them_all(
        ops in history(),
        s: prop::sample::Index,
        extra: prop::sample::Index,
        coordinator in 0..REPLICAS,
    ) {
        let world = World::replay(&ops);
        let s = world.snapshot(s);
        // The set's own context, possibly joined with more history the client saw elsewhere.
        let mut context = s.context().clone();
        context.merge(world.context(extra));
        let (next, dot) = s.update(&context, value("new"), &replica_id(coordinator));
        prop_assert_eq!(next.siblings(), &[Sibling { dot, value: value("new") }][..]);
        prop_assert!(next.context().descends(&context));
    }

    #[test]
    fn two_writes_with_one_context_both_survive(
        ops in history(),
        s: prop::sample::Index,
        context: prop::sample::Index,
        coordinator in 0..REPLICAS,
        other in 0..REPLICAS,
    ) {
        let world = World::replay(&ops);
        let s = world.snapshot(s);
        let context = world.context(context);
        // Through the same coordinator, one after the other.
        let (s1, d1) = s.update(context, value("one"), &replica_id(coordinator));
        let (s2, d2) = s1.update(context, value("two"), &replica_id(coordinator));
        prop_assert!(d1 != d2);
        let kept = dots(&s2);
        prop_assert!(kept.contains(&d1) && kept.contains(&d2));
        prop_assert!(s2.values().any(|v| v == "one") && s2.values().any(|v| v == "two"));
        // Through two coordinators at once, then synced.
        if other != coordinator {
            let (t1, d1) = s.update(context, value("one"), &replica_id(coordinator));
            let (t2, d2) = s.update(context, value("two"), &replica_id(other));
            let merged = dots(&t1.sync(&t2));
            prop_assert!(merged.contains(&d1) && merged.contains(&d2));
        }
    }

    #[test]
    fn a_blind_write_removes_nothing(
        ops in history(),
        s: prop::sample::Index,
        coordinator in 0..REPLICAS,
    ) {
        let world = World::replay(&ops);
        let s = world.snapshot(s);
        let (next, dot) = s.update(&VersionVector::new(), None, &replica_id(coordinator));
        let mut expected: Vec<Sibling> = s.siblings().to_vec();
        expected.push(Sibling { dot, value: None });
        expected.sort_by(|a, b| a.dot.cmp(&b.dot));
        prop_assert_eq!(next.siblings(), &expected[..]);
    }

    #[test]
    fn contexts_and_siblings_stay_bounded(ops in history()) {
        let world = World::replay(&ops);
        let writers: BTreeSet<ReplicaId> =
            world.writes.iter().map(|w| w.dot.replica.clone()).collect();
        for s in &world.snapshots {
            // One entry per replica id that ever coordinated a write, nothing more.
            prop_assert!(s.context().entries().all(|(r, _)| writers.contains(r)));
            prop_assert!(s.context().len() <= writers.len());
            // A sibling is never a write this set knows was superseded: siblings are bounded
            // by real concurrency, not by how often stale contexts were reused.
            for sibling in s.siblings() {
                for w in &world.writes {
                    prop_assert!(
                        !(w.context.covers(&sibling.dot) && s.covers(&w.dot)),
                        "{:?} survives in a set that saw {:?}, which superseded it",
                        sibling.dot,
                        w.dot
                    );
                }
            }
            // So the siblings are at most the writes this set saw and did not see superseded.
            let seen = |w: &&Write| s.covers(&w.dot);
            let live = world
                .writes
                .iter()
                .filter(seen)
                .filter(|w| !world.writes.iter().filter(seen).any(|l| l.context.covers(&w.dot)))
                .count();
            prop_assert!(s.siblings().len() <= live);
        }
        // Nothing is ever pruned: a replica's context only grows.
        for states in &world.per_replica {
            for pair in states.windows(2) {
                prop_assert!(pair[1].context().descends(pair[0].context()));
            }
        }
    }

    /// The model test: after everything is synced, the siblings are exactly the acknowledged
    /// writes that no later write superseded (whose context covered their dot), each with
    /// the value it was written with. No acknowledged write is lost; nothing superseded
    /// comes back.
    #[test]
    fn no_acknowledged_write_is_lost(ops in history(), order in Just(()).prop_perturb(|_, mut rng| {
        let mut order: Vec<usize> = (0..REPLICAS).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        order
    })) {
        let world = World::replay(&ops);
        let converged = order
            .iter()
            .fold(VersionSet::new(), |acc, &i| acc.sync(&world.states[i]));
        prop_assert_eq!(&converged, &world.converged());
        let expected: BTreeMap<Dot, Bytes> = world
            .writes
            .iter()
            .filter(|w| !world.superseded(&w.dot))
            .map(|w| (w.dot.clone(), w.value.clone()))
            .collect();
        let got: BTreeMap<Dot, Bytes> = converged
            .siblings()
            .iter()
            .map(|s| (s.dot.clone(), s.value.clone().expect("the test writes no tombstone")))
            .collect();
        prop_assert_eq!(got, expected);
        prop_assert!(converged.is_well_formed());
    }

    #[test]
    fn every_operation_keeps_sets_well_formed(
        ops in history(),
        a: prop::sample::Index,
        b: prop::sample::Index,
        context: prop::sample::Index,
        coordinator in 0..REPLICAS,
    ) {
        let world = World::replay(&ops);
        prop_assert!(world.snapshots.iter().all(VersionSet::is_well_formed));
        let (a, b) = (world.snapshot(a), world.snapshot(b));
        prop_assert!(a.sync(b).is_well_formed());
        let (next, _) = a.update(world.context(context), None, &replica_id(coordinator));
        prop_assert!(next.is_well_formed());
    }

    #[test]
    fn after_a_purge_no_old_context_covers_a_new_write(
        ops in history(),
        coordinator in 0..REPLICAS,
        writes_after in 1..4usize,
    ) {
        // Every replica converges, the key is deleted with the full context, and the tombstone
        // is purged: each replica raises its dot floor to the highest counter of its own id
        // in the tombstone, then forgets the key.
        let world = World::replay(&ops);
        let converged = world.converged();
        let (tombstone, _) = converged.update(
            converged.context(),
            None,
            &replica_id(coordinator),
        );
        prop_assert!(tombstone.is_tombstone_only());
        let floors: Vec<u64> = (0..REPLICAS)
            .map(|r| tombstone.highest_counter(&replica_id(r)))
            .collect();
        // New blind writes through the coordinator on the forgotten key.
        let mut state = VersionSet::new();
        let mut new_dots = Vec::new();
        for _ in 0..writes_after {
            let id = replica_id(coordinator);
            let floored = state.raise_floor(&id, floors[coordinator]);
            prop_assert!(floored.is_well_formed());
            let (next, dot) = floored.update(&VersionVector::new(), value("new"), &id);
            prop_assert!(next.is_well_formed());
            new_dots.push(dot);
            state = next;
        }
        // No context anybody held before the purge covers a write made after it.
        let old_contexts = world
            .writes
            .iter()
            .map(|w| w.context.clone())
            .chain(world.snapshots.iter().map(Context::of))
            .chain([Context::of(&tombstone)]);
        for context in old_contexts {
            for dot in &new_dots {
                prop_assert!(!context.covers(dot), "{:?} covers the new write {:?}", context, dot);
            }
        }
        // Blind writes remove nothing: every new write is a live sibling.
        prop_assert_eq!(state.values().count(), writes_after);
    }

    #[test]
    fn postcard_round_trip_is_identity(ops in history(), s: prop::sample::Index) {
        let world = World::replay(&ops);
        let s = world.snapshot(s);
        let bytes = postcard::to_allocvec(s).unwrap();
        let back: VersionSet = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&back, s);
        prop_assert_eq!(back.digest(), s.digest());
    }

    /// Fingerprints tell sets apart exactly: equal sets have one fingerprint, different sets
    /// different ones, and `same_as_fingerprint` (the gate of every purge and handoff check)
    /// agrees with set equality.
    #[test]
    fn fingerprints_are_equal_exactly_when_sets_are(
        ops in history(),
        a: prop::sample::Index,
        b: prop::sample::Index,
    ) {
        let world = World::replay(&ops);
        let (a, b) = (world.snapshot(a), world.snapshot(b));
        prop_assert_eq!(a.fingerprint() == b.fingerprint(), a == b);
        prop_assert_eq!(a.same_as_fingerprint(&b.fingerprint()), a == b);
        prop_assert!(a.same_as_fingerprint(&a.clone().fingerprint()));
    }

    /// Sets that differ only in their value bytes (what a client chooses) have different
    /// fingerprints.
    #[test]
    fn sets_differing_only_in_value_bytes_have_different_fingerprints(
        x in prop::collection::vec(any::<u8>(), 0..64),
        y in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let (a, b) = (one_value(&x), one_value(&y));
        prop_assert_eq!(a.fingerprint() == b.fingerprint(), x == y);
        prop_assert_eq!(a.same_as_fingerprint(&b.fingerprint()), x == y);
    }

    #[test]
    fn arbitrary_bytes_never_decode_to_a_broken_set(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        check_decoded(&bytes)?;
    }

    #[test]
    fn corrupted_encodings_never_decode_to_a_broken_set(
        ops in history(),
        s: prop::sample::Index,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let world = World::replay(&ops);
        let mut bytes = postcard::to_allocvec(world.snapshot(s)).unwrap();
        for (at, byte) in flips {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
        }
        check_decoded(&bytes)?;
    }
}

/// Decoding must not panic, and what decodes must keep the invariants and the sync laws.
fn check_decoded(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(set) = postcard::from_bytes::<VersionSet>(bytes) {
        prop_assert!(set.is_well_formed());
        prop_assert_eq!(set.sync(&set), set.clone());
        prop_assert_eq!(set.sync(&VersionSet::new()), VersionSet::new().sync(&set));
    }
    let _ = postcard::from_bytes::<VersionVector>(bytes);
    Ok(())
}

/// A set of one sibling, written by `n1` (epoch 1) without context, holding `value`.
fn one_value(value: &[u8]) -> VersionSet {
    let writer = ReplicaId::new(NodeId::new("n1").unwrap(), 1);
    let value = Bytes::copy_from_slice(value);
    VersionSet::new()
        .update(&VersionVector::new(), Some(value), &writer)
        .0
}

/// Two different sets with the same 64-bit `digest`: one sibling each, 8-byte values a
/// client could have written. Found by a distinguished-point collision search over the
/// 8 value bytes (about 2^32 xxh3 calls, two minutes on one core), which is the point: the
/// digest cannot prove two sets equal.
fn colliding_sets() -> (VersionSet, VersionSet) {
    let a = one_value(&0x37d5_7a8a_69a9_a8dd_u64.to_le_bytes());
    let b = one_value(&0x5530_52df_e4e7_45f3_u64.to_le_bytes());
    (a, b)
}

#[test]
fn sets_with_one_digest_are_told_apart_by_their_fingerprints() {
    let (a, b) = colliding_sets();
    assert_ne!(a, b);
    assert_eq!(
        a.digest(),
        b.digest(),
        "the pair collides in the 64-bit digest"
    );
    assert_ne!(a.fingerprint(), b.fingerprint());
    assert!(!a.same_as_fingerprint(&b.fingerprint()));
    assert!(!b.same_as_fingerprint(&a.fingerprint()));
    assert!(a.same_as_fingerprint(&a.fingerprint()));
}

#[test]
fn a_fingerprint_is_32_bytes_on_the_wire() {
    let f = one_value(b"v").fingerprint();
    let bytes = postcard::to_allocvec(&f).unwrap();
    assert_eq!(bytes.as_slice(), f.as_bytes());
    assert_eq!(
        postcard::from_bytes::<ringkv_core::Fingerprint>(&bytes).unwrap(),
        f
    );
}

#[test]
fn replay_is_deterministic() {
    // There is no clock and no randomness inside the core: one history, one outcome.
    let ops = vec![
        Op::Write {
            client: 0,
            replica: 0,
            blind: true,
        },
        Op::Write {
            client: 1,
            replica: 1,
            blind: true,
        },
        Op::Sync { from: 1, to: 0 },
        Op::Read {
            client: 2,
            replica: 0,
        },
        Op::Write {
            client: 2,
            replica: 2,
            blind: false,
        },
        Op::Sync { from: 2, to: 0 },
    ];
    let (w1, w2) = (World::replay(&ops), World::replay(&ops));
    assert_eq!(w1.states, w2.states);
    let converged = w1.converged();
    assert_eq!(
        converged.values().collect::<Vec<_>>(),
        vec![&Bytes::from("w2")]
    );
}

#[test]
fn without_the_floor_a_forgotten_key_reissues_an_old_dot() {
    // Why purging needs the dot floor: a replica that forgot a key counts from zero again,
    // and a client still holding a context from before the delete covers the new write.
    let id = replica_id(0);
    let (first, _) = VersionSet::new().update(&VersionVector::new(), value("old"), &id);
    let old_context = Context::of(&first);
    let (tombstone, _) = first.update(first.context(), None, &id);
    let (_, reissued) = VersionSet::new().update(&VersionVector::new(), value("new"), &id);
    assert!(
        old_context.covers(&reissued),
        "the unfloored dot is {reissued:?}"
    );
    let floored = VersionSet::new().raise_floor(&id, tombstone.highest_counter(&id));
    let (_, fresh) = floored.update(&VersionVector::new(), value("new"), &id);
    assert!(!old_context.covers(&fresh), "the floored dot is {fresh:?}");
    assert!(!Context::of(&tombstone).covers(&fresh));
}
