//! The simulation's seams for the node: turmoil's TCP for the inter-node transport, turmoil's
//! UDP for chitchat (with the gossip faults: datagram loss and partitions), a skewed virtual
//! wall clock and a seeded generator.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use futures::future::BoxFuture;
use ringkv_node::seams::{BoxConnection, Entropy, Listener, Network, WallClock};

use crate::rng::Rng;

/// The largest datagram chitchat sends.
const DATAGRAM_MAX_BYTES: usize = 65_507;

/// Gossip faults the driver switches on and off; every node's socket consults them on send.
#[derive(Debug, Default)]
pub struct GossipFaults {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Pairs of hosts (smaller address first) that cannot exchange datagrams.
    pub cut: BTreeSet<(IpAddr, IpAddr)>,
}

impl GossipFaults {
    fn blocked(&self, a: IpAddr, b: IpAddr) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }
}

pub type SharedFaults = Arc<Mutex<GossipFaults>>;

/// Turmoil's network, as the node's `Network` seam.
pub struct SimNetwork {
    gossip: SimGossip,
}

impl SimNetwork {
    pub fn new(faults: SharedFaults, seed: u64) -> SimNetwork {
        SimNetwork {
            gossip: SimGossip { faults, seed },
        }
    }
}

/// Turmoil binds the unspecified address (a host has one address), not the host's own.
fn unspecified(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port())
}

struct SimListener(turmoil::net::TcpListener);

impl Listener for SimListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxConnection, SocketAddr)>> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            Ok((Box::new(stream) as BoxConnection, peer))
        })
    }
}

impl Network for SimNetwork {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxConnection>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(stream) as BoxConnection)
        })
    }

    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(unspecified(addr)).await?;
            Ok(Box::new(SimListener(listener)) as Box<dyn Listener>)
        })
    }

    fn gossip(&self) -> &dyn Transport {
        &self.gossip
    }
}

struct SimGossip {
    faults: SharedFaults,
    seed: u64,
}

#[async_trait]
impl Transport for SimGossip {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = turmoil::net::UdpSocket::bind(unspecified(listen_addr))
            .await
            .with_context(|| format!("cannot bind {listen_addr}/UDP for gossip"))?;
        Ok(Box::new(SimSocket {
            socket,
            me: listen_addr,
            faults: self.faults.clone(),
            rng: Mutex::new(Rng::new(self.seed)),
            buf: vec![0; DATAGRAM_MAX_BYTES],
        }))
    }
}

struct SimSocket {
    socket: turmoil::net::UdpSocket,
    me: SocketAddr,
    faults: SharedFaults,
    rng: Mutex<Rng>,
    buf: Vec<u8>,
}

#[async_trait]
impl Socket for SimSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.me)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let mut bytes = Vec::new();
        envelope.serialize(&mut bytes);
        let num_bytes_sent = bytes.len();
        let dropped = {
            let faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
            let lost = faults.loss > 0.0
                && self
                    .rng
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .fraction()
                    < faults.loss;
            lost || faults.blocked(self.me.ip(), to.ip())
        };
        if !dropped {
            // A datagram to a crashed host is lost, as UDP loses it.
            let _ = self.socket.send_to(&bytes, to).await;
        }
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let (len, from_addr) = self.socket.recv_from(&mut self.buf).await?;
            let mut slice = &self.buf[..len];
            if let Ok(envelope) = ChitchatEnvelope::deserialize(&mut slice) {
                return Ok(RecvOutcome {
                    from_addr,
                    envelope,
                    num_bytes_received: len,
                });
            }
        }
    }
}

/// Virtual wall clock: the simulation's epoch plus elapsed virtual time, plus this node's skew.
pub struct SkewedClock {
    pub skew_ms: i64,
}

impl WallClock for SkewedClock {
    fn unix_millis(&self) -> u64 {
        let now = turmoil::since_epoch().unwrap_or_default().as_millis() as i64;
        now.saturating_add(self.skew_ms).max(0) as u64
    }
}

/// A seeded generator behind the `Entropy` seam.
pub struct SeededEntropy(Mutex<Rng>);

impl SeededEntropy {
    pub fn new(seed: u64) -> SeededEntropy {
        SeededEntropy(Mutex::new(Rng::new(seed)))
    }
}

impl Entropy for SeededEntropy {
    fn next_u64(&self) -> u64 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).next_u64()
    }
}
