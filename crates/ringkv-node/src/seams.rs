//! The seams: how the node reaches the network, the wall clock, randomness and blocking work.
//!
//! A running server uses `Seams::production()`: TCP and UDP sockets from tokio, the system
//! clock, the operating system's random generator, and storage calls on tokio's blocking pool.
//! The deterministic cluster simulation (`ringkv-sim cluster`) passes its own: a simulated
//! network (turmoil), a skewable virtual clock, a seeded generator, storage calls run inline
//! (a blocking-pool thread would finish at a time the simulation does not control), and a
//! storage engine it keeps across a simulated crash. The node's logic is the same code in both;
//! only what is behind these traits differs.
//!
//! Everything else that varies goes through tokio, which the simulation already controls:
//! `tokio::time` (deadlines, intervals, backoff) and `tokio::spawn`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use ringkv_storage::{HintStore, StorageEngine};
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream between two nodes (a TCP connection in production).
pub trait Connection: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Connection for T {}

pub type BoxConnection = Box<dyn Connection>;

/// Accepts inter-node connections.
pub trait Listener: Send + 'static {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxConnection, SocketAddr)>>;
}

/// The network: inter-node connections and the gossip datagram transport.
pub trait Network: Send + Sync + 'static {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxConnection>>;
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>>;
    /// Chitchat's datagram transport.
    fn gossip(&self) -> &dyn chitchat::transport::Transport;
}

/// The wall clock (used only where a time must mean the same across restarts and nodes: the
/// gossip generation of an incarnation, and the time shown for the last anti-entropy pass).
pub trait WallClock: Send + Sync + 'static {
    fn unix_millis(&self) -> u64;
}

/// Random numbers (the node's epoch, the seed of gossip peer selection).
pub trait Entropy: Send + Sync + 'static {
    fn next_u64(&self) -> u64;
}

/// Where blocking storage calls run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocking {
    /// On tokio's blocking pool (the engines fsync; the async workers stay free).
    Pool,
    /// On the calling task (the simulation: no thread it does not schedule).
    Inline,
}

/// The node's seams; cheap to clone.
#[derive(Clone)]
pub struct Seams {
    pub network: Arc<dyn Network>,
    pub clock: Arc<dyn WallClock>,
    pub entropy: Arc<dyn Entropy>,
    pub blocking: Blocking,
    /// An engine and hint store already open. `None`: open the engine the settings name in
    /// the data directory (the simulation passes the in-memory engine it keeps across a
    /// simulated crash, which is what survives the crash).
    pub storage: Option<(Arc<dyn StorageEngine>, Arc<dyn HintStore>)>,
}

impl Seams {
    pub fn production() -> Seams {
        Seams {
            network: Arc::new(TokioNetwork),
            clock: Arc::new(SystemClock),
            entropy: Arc::new(OsEntropy),
            blocking: Blocking::Pool,
            storage: None,
        }
    }

    /// Runs a blocking call where `blocking` says. Fails only if the pool's task panicked.
    pub(crate) async fn run_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        match self.blocking {
            Blocking::Pool => tokio::task::spawn_blocking(f)
                .await
                .map_err(|e| e.to_string()),
            Blocking::Inline => Ok(f()),
        }
    }
}

/// TCP and UDP sockets from tokio.
pub struct TokioNetwork;

struct TokioListener(tokio::net::TcpListener);

impl Listener for TokioListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxConnection, SocketAddr)>> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            crate::sockets::tune(&stream);
            Ok((Box::new(stream) as BoxConnection, peer))
        })
    }
}

impl Network for TokioNetwork {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxConnection>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            crate::sockets::tune(&stream);
            Ok(Box::new(stream) as BoxConnection)
        })
    }

    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            Ok(Box::new(TokioListener(listener)) as Box<dyn Listener>)
        })
    }

    fn gossip(&self) -> &dyn chitchat::transport::Transport {
        &chitchat::transport::UdpTransport
    }
}

/// The system clock.
pub struct SystemClock;

impl WallClock for SystemClock {
    fn unix_millis(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// The operating system's random generator (through `rand`).
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn next_u64(&self) -> u64 {
        rand::random()
    }
}
