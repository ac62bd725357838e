//! Forged gossip datagrams: gossip is unauthenticated UDP under a constant cluster id, and a
//! node learns the nodes a Syn's digest lists. One forged Syn listing enough unknown nodes (a
//! few with very long ids, or about 1,500 with short ones) used to grow the node's own digest
//! until answering any Syn panicked its gossip task, freezing its view of the cluster. A node
//! now refuses ids longer than 64 bytes and stops learning nodes where its digest would leave a
//! SynAck too little room (vendor/chitchat/VENDORED.md); gossip keeps running. Nodes run in
//! this process on loopback; the forger is a UDP socket of the test's.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use chitchat::{ChitchatEnvelope, ChitchatId, ChitchatMessage, Digest, Heartbeat, ProtocolVersion};
use common::{Running, eventually, node_ids, settled, settled_cluster, start};
use ringkv_node::ServerArgs;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// The largest UDP payload, what chitchat sizes its datagrams to.
const UDP_PAYLOAD_MAX: usize = 65_507;

/// A Syn of the ringkv cluster whose digest lists `ids`, as bytes on the wire.
fn forged_syn(ids: impl IntoIterator<Item = ChitchatId>) -> Vec<u8> {
    let mut digest = Digest::default();
    for id in ids {
        digest.add_node(id, Heartbeat::default(), 0, 0);
    }
    let envelope = ChitchatEnvelope {
        version: ProtocolVersion::V0,
        message: ChitchatMessage::Syn {
            cluster_id: "ringkv".into(),
            digest,
        },
    };
    let mut buf = Vec::new();
    envelope.serialize(&mut buf);
    assert!(buf.len() <= UDP_PAYLOAD_MAX, "{} bytes", buf.len());
    buf
}

fn gossip_addr(node: &Running) -> SocketAddr {
    node.listen.parse().unwrap()
}

/// Waits for a datagram from `from` that `wanted` accepts (others are dropped) and returns its
/// length; fails the test after `within`, saying whether `node`'s gossip stopped.
async fn receive(
    forger: &UdpSocket,
    node: &Running,
    within: Duration,
    what: &str,
    wanted: impl Fn(&ChitchatMessage) -> bool,
) -> usize {
    let from = gossip_addr(node);
    let mut buf = vec![0u8; 1 << 16];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let received = tokio::time::timeout_at(deadline, forger.recv_from(&mut buf)).await;
        let Ok(received) = received else {
            panic!(
                "{what}: nothing within {within:?}; gossip failure: {:?}",
                node.node.membership().gossip_failure()
            );
        };
        let (len, sender) = received.unwrap();
        if sender != from {
            continue;
        }
        let envelope = ChitchatEnvelope::deserialize(&mut &buf[..len]).unwrap();
        if wanted(&envelope.message) {
            return len;
        }
    }
}

fn is_syn_ack(m: &ChitchatMessage) -> bool {
    matches!(m, ChitchatMessage::SynAck { .. })
}

fn is_syn(m: &ChitchatMessage) -> bool {
    matches!(m, ChitchatMessage::Syn { .. })
}

/// Forged nodes never heartbeat, so they are dead from a node's next gossip round on: gossip
/// leaves them out of its digest after half this grace and forgets them after all of it.
const GRACE: Duration = Duration::from_secs(6);

fn short_grace(args: &mut ServerArgs) {
    args.test_dead_node_grace_ms = Some(GRACE.as_millis() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_syn_with_overlong_node_ids_leaves_gossip_running_and_nodes_joining() {
    let shutdown = CancellationToken::new();
    let n1 = start("n1", None, &shutdown, |_| {}).await;
    let forger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let advertised = forger.local_addr().unwrap();

    // Six ids of about 10.8 KB: a digest of 65,480 bytes, which with n1's own entry leaves a
    // SynAck less than the 100 bytes of delta chitchat asserts.
    let fill = (65_480 - 2 - 6 * (2 + 8 + 7 + 24)) / 6;
    let syn = forged_syn((0..6).map(|i| {
        let id = format!("{i}{}", "x".repeat(fill - 1));
        ChitchatId::new(id, 1, advertised)
    }));
    forger.send_to(&syn, gossip_addr(&n1)).await.unwrap();
    let reply = receive(
        &forger,
        &n1,
        Duration::from_secs(10),
        "n1 never answered the forged Syn",
        is_syn_ack,
    )
    .await;
    // The answer's digest lists n1 alone: none of the forged ids was learnt.
    assert!(reply < 4096, "a SynAck of {reply} bytes");

    // Gossip still runs: a node joins through n1, is claimed and sees the same settled ring.
    let n2 = start("n2", Some(&n1.listen), &shutdown, |_| {}).await;
    let ids = node_ids(&["n1", "n2"]);
    eventually(
        Duration::from_secs(30),
        "n2 never joined after the forged Syn",
        || settled(&[&n1, &n2], &ids),
    )
    .await;
    for n in [&n1, &n2] {
        assert_eq!(n.node.membership().gossip_failure(), None);
    }
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_node_ids_stops_at_the_digest_limit_and_gossip_keeps_running() {
    let shutdown = CancellationToken::new();
    let ([n1, n2], ids) = settled_cluster(["n1", "n2"], [&shutdown, &shutdown], short_grace).await;
    let forger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let advertised = forger.local_addr().unwrap();

    // 3,000 short ids in three datagrams, about 130 KB of digest entries: twice what a
    // datagram holds. Each forged Syn is answered (the node did not panic building the
    // SynAck), the last ones from a node that refuses the ids past its limit.
    for batch in 0..3 {
        let syn = forged_syn(
            (batch * 1000..(batch + 1) * 1000)
                .map(|i| ChitchatId::new(format!("f{i}"), 1, advertised)),
        );
        forger.send_to(&syn, gossip_addr(&n1)).await.unwrap();
        receive(
            &forger,
            &n1,
            Duration::from_secs(10),
            &format!("n1 never answered forged Syn {batch}"),
            is_syn_ack,
        )
        .await;
    }

    // n1 knows forged nodes at the forger's address and, finding them dead, gossips there now
    // and then (one round in two): each Syn received is one more gossip round of n1's after
    // the flood. Its Syn carries its whole digest, forged nodes included for half the grace.
    for round in 0..3 {
        let syn = receive(
            &forger,
            &n1,
            Duration::from_secs(10),
            &format!("n1 stopped gossiping after the flood (round {round})"),
            is_syn,
        )
        .await;
        assert!(
            syn > 30_000,
            "n1 learnt forged nodes up to its limit: a {syn}-byte Syn"
        );
    }
    // n2, which learnt the forged nodes from n1, gossips too, and both still see each other.
    assert!(settled(&[&n1, &n2], &ids));
    for n in [&n1, &n2] {
        assert_eq!(n.node.membership().gossip_failure(), None);
    }

    // Once gossip forgets the forged nodes (after the grace), a new node can join again.
    let n3 = start("n3", Some(&n1.listen), &shutdown, short_grace).await;
    let ids = node_ids(&["n1", "n2", "n3"]);
    eventually(
        Duration::from_secs(60),
        "n3 never joined once the forged nodes were forgotten",
        || settled(&[&n1, &n2, &n3], &ids),
    )
    .await;
    for n in [&n1, &n2, &n3] {
        assert_eq!(n.node.membership().gossip_failure(), None);
    }
    shutdown.cancel();
}
