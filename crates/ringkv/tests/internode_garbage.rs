//! Garbage on the inter-node port (TCP frames and UDP gossip): the node closes the offending
//! connection, keeps serving clients, and stays `up` in everyone's view.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{Cluster, Rng, seed_from_env_or_clock};
use ringkv_core::{NodeId, PartitionId};
use ringkv_node::wire::{Request, Response};

/// How long the node has to close a connection that sent garbage.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `bytes` (then half-closes if `finish`), and reports whether the node closed the
/// connection within `CLOSE_TIMEOUT`.
fn node_closes(addr: SocketAddr, bytes: Vec<u8>, finish: bool) -> bool {
    bytes_before_close(addr, bytes, finish, CLOSE_TIMEOUT).is_some()
}

/// Sends `bytes` (then half-closes if `finish`); if the node closes the connection within
/// `within`, how many bytes it sent before.
fn bytes_before_close(
    addr: SocketAddr,
    bytes: Vec<u8>,
    finish: bool,
    within: Duration,
) -> Option<usize> {
    let mut s = TcpStream::connect(addr).expect("connect to the inter-node port");
    if s.write_all(&bytes).is_err() {
        return Some(0); // Reset while we were still writing: closed.
    }
    if finish {
        let _ = s.shutdown(Shutdown::Write);
    }
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    let mut received = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).expect("set_read_timeout");
        match s.read(&mut buf) {
            Ok(0) => return Some(received),
            Ok(n) => received += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(_) => return Some(received),
        }
    }
}

async fn assert_closes(c: &Cluster, node: usize, bytes: Vec<u8>, finish: bool, what: &str) {
    let addr = c.listen_addr(node);
    let closed = tokio::task::spawn_blocking(move || node_closes(addr, bytes, finish))
        .await
        .expect("socket task");
    assert!(
        closed,
        "{} kept the connection open after {what}",
        c.id(node)
    );
    // Replication still works (W=3, R=3 need the inter-node links).
    c.assert_serves_with(node, what, "w=3", "r=3").await;
    assert_eq!(
        c.member_status((node + 1) % c.len(), node).await.as_deref(),
        Some("up"),
        "after {what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_tcp_frames_close_the_connection_and_the_node_serves_on() {
    let c = Cluster::start(3).await;
    let seed = seed_from_env_or_clock("garbage_tcp_frames");
    let mut rng = Rng::new(seed);

    // (a) Random bytes, then end of stream.
    for _ in 0..3 {
        let len = 1 + rng.below(16 * 1024);
        assert_closes(&c, 0, rng.bytes(len), true, "random bytes").await;
    }
    // (b) A length prefix announcing 1 GiB (over any frame limit), and a little of it.
    let mut huge = (1u32 << 30).to_be_bytes().to_vec();
    huge.extend_from_slice(&rng.bytes(1000));
    assert_closes(&c, 0, huge, false, "a 1 GiB length prefix").await;
    let mut max = u32::MAX.to_be_bytes().to_vec();
    max.extend_from_slice(&[0u8; 16]);
    assert_closes(&c, 1, max, false, "a 4 GiB length prefix").await;
    // (c) A complete frame whose body does not decode: an enum variant index no frame has
    // (postcard varint 127), then junk.
    for body in [vec![0x7f, 0xff, 0xff, 0xff, 0xff, 0xff], {
        let mut b = vec![0xff, 0xff, 0xff, 0xff, 0x0f];
        b.extend_from_slice(&rng.bytes(200));
        b
    }] {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        assert_closes(&c, 0, frame, false, "an undecodable frame").await;
    }
    // An empty frame (length 0) does not decode either.
    assert_closes(&c, 2, vec![0, 0, 0, 0], false, "an empty frame").await;
    for i in 0..3 {
        c.assert_serves_with(i, "after-tcp-garbage", "w=3", "r=3")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_gossip_datagrams_do_not_disturb_the_cluster() {
    let c = Cluster::start(3).await;
    let seed = seed_from_env_or_clock("random_gossip_datagrams");
    let mut rng = Rng::new(seed);
    let socket = UdpSocket::bind("127.0.0.1:0").expect("UDP socket");
    let target = c.listen_addr(0);
    let started = Instant::now();
    // For 3 s (30 gossip rounds), a stream of random datagrams; n1 must stay up in every
    // view and keep serving.
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(3) {
        for _ in 0..50 {
            let len = rng.below(1500);
            let mut d = rng.bytes(len);
            if sent % 7 == 0 && !d.is_empty() {
                d[0] = 0; // Some look like the start of a valid message.
            }
            // A full socket buffer drops datagrams; that is fine.
            let _ = socket.send_to(&d, target);
            sent += 1;
        }
        for observer in 1..3 {
            assert_eq!(
                c.member_status(observer, 0).await.as_deref(),
                Some("up"),
                "{} sees n1 after {sent} datagrams",
                c.id(observer)
            );
        }
        c.assert_serves_with(0, "gossip-garbage", "w=3", "r=3")
            .await;
    }
    // The cluster still converges on one view with everyone up.
    c.wait_formed().await;
}

/// Sends `frames` as one peer (after its `Hello`) and returns the response to each request.
fn exchange(addr: SocketAddr, requests: Vec<Request>) -> Vec<Response> {
    use ringkv_node::wire::{Frame, PROTOCOL_VERSION};
    let mut s = TcpStream::connect(addr).expect("connect to the inter-node port");
    s.set_read_timeout(Some(CLOSE_TIMEOUT))
        .expect("set_read_timeout");
    let send = |s: &mut TcpStream, frame: &Frame| {
        let body = postcard::to_stdvec(frame).expect("encode a frame");
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        s.write_all(&bytes).expect("send a frame");
    };
    let hello = Frame::Hello {
        protocol: PROTOCOL_VERSION,
        node: NodeId::new("peer-x").expect("a node id"),
    };
    send(&mut s, &hello);
    let mut answers = Vec::new();
    for (id, body) in requests.into_iter().enumerate() {
        let id = id as u64;
        send(
            &mut s,
            &Frame::Request {
                id,
                timeout_ms: 2_000,
                body,
            },
        );
        loop {
            let mut len = [0u8; 4];
            s.read_exact(&mut len).expect("a response frame's length");
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut body).expect("a response frame");
            match postcard::from_bytes::<Frame>(&body).expect("a decodable frame") {
                Frame::Response { id: got, body } if got == id => {
                    answers.push(body);
                    break;
                }
                _ => continue,
            }
        }
    }
    answers
}

/// A well-formed request that names a partition the ring does not have is refused with an
/// error (the engine keeps state per partition asked about: a peer must not make it count
/// to 2^32), a request for more Merkle groups than a tree has is answered with the tree's
/// groups only, a request for the digests of a leaf out of the tree is refused and one for
/// more leaves than an exchange asks about is answered for that many at most; the connection
/// stays open and the node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_outside_the_ring_are_refused_and_oversized_lists_are_cut() {
    let c = Cluster::start(3).await;
    let q = c.status(0).await["cluster"]["partitions"]
        .as_u64()
        .expect("Q") as u32;
    let outside = |index: u32| PartitionId::new(index, u32::MAX).expect("a partition id");
    let inside = PartitionId::new(q - 1, q).expect("a partition id");
    let requests = vec![
        Request::MerkleSummary {
            partition: outside(q),
        },
        Request::MerkleSummary {
            partition: outside(u32::MAX - 1),
        },
        Request::LeafDigests {
            partition: outside(q + 7),
            leaves: vec![0, 1],
            after: None,
        },
        Request::HandoffChunk {
            partition: outside(q),
            after: None,
            max_bytes: 1024,
        },
        Request::SameVersions {
            partition: outside(q),
            keys: vec![],
        },
        Request::HandoffReceived {
            node: NodeId::new("peer-x").expect("a node id"),
            target: 1,
            partitions: vec![0, q],
        },
        Request::MerkleLeaves {
            partition: inside,
            groups: vec![3; 100_000],
        },
        Request::MerkleSummary { partition: inside },
        Request::LeafDigests {
            partition: inside,
            leaves: vec![0, 300],
            after: None,
        },
        Request::LeafDigests {
            partition: inside,
            leaves: vec![5; 100_000],
            after: None,
        },
    ];
    let addr = c.listen_addr(0);
    let answers = tokio::task::spawn_blocking(move || exchange(addr, requests))
        .await
        .expect("socket task");
    for (i, answer) in answers[..6].iter().enumerate() {
        match answer {
            Response::Error(why) => assert!(
                why.contains("not in this ring") || why.contains("claimant"),
                "request {i}: {why}"
            ),
            other => panic!("request {i} outside the ring was answered {other:?}"),
        }
    }
    match &answers[6] {
        Response::Leaves(groups) => assert_eq!(groups.len(), 16, "groups answered"),
        other => panic!("MerkleLeaves was answered {other:?}"),
    }
    assert!(
        matches!(answers[7], Response::Merkle { .. }),
        "a partition inside the ring is served: {:?}",
        answers[7]
    );
    match &answers[8] {
        Response::Error(why) => assert!(why.contains("not one of"), "{why}"),
        other => panic!("LeafDigests of leaf 300 was answered {other:?}"),
    }
    match &answers[9] {
        Response::Digests { whole, .. } => assert!(*whole <= 64, "{whole} leaves answered"),
        other => panic!("LeafDigests of 100 000 leaves was answered {other:?}"),
    }
    for i in 0..3 {
        c.assert_serves_with(i, "after-outside-the-ring", "w=3", "r=3")
            .await;
    }
}

/// The node's `inbound_hello_timeout` (`Limits`).
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// A length-delimited frame as a peer sends it.
fn framed(frame: &ringkv_node::wire::Frame) -> Vec<u8> {
    let body = postcard::to_stdvec(frame).expect("encode a frame");
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    bytes
}

/// A connection that says nothing is closed once `inbound_hello_timeout` has passed, and one
/// whose first frame is a request rather than a `Hello` at once, unanswered: connections that
/// never introduce themselves cannot keep the inbound slots (1024) and lock real peers out.
/// (Before the bound, a silent connection stayed open for as long as its client kept it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_that_do_not_open_with_a_hello_are_closed() {
    let c = Cluster::launch(1, &[]).await;
    let addr = c.listen_addr(0);
    let silent = tokio::task::spawn_blocking(move || {
        bytes_before_close(addr, Vec::new(), false, HELLO_TIMEOUT + CLOSE_TIMEOUT)
    })
    .await
    .expect("socket task");
    assert_eq!(silent, Some(0), "a silent connection was kept open");

    let ping = framed(&ringkv_node::wire::Frame::Request {
        id: 1,
        timeout_ms: 2_000,
        body: Request::Ping,
    });
    let unintroduced =
        tokio::task::spawn_blocking(move || bytes_before_close(addr, ping, false, CLOSE_TIMEOUT))
            .await
            .expect("socket task");
    assert_eq!(
        unintroduced,
        Some(0),
        "a request before the hello was answered or its connection kept"
    );
    c.assert_serves_with(0, "after-silent-connections", "w=1", "r=1")
        .await;
}
