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

/// Most storage calls handed to tokio's blocking pool at once, queued or running (the pool
/// runs up to 512 threads and queues the rest without a bound). Each call carries a key and
/// possibly values; past this, callers wait for a slot.
pub const BLOCKING_CALLS_MAX: usize = 1024;

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
    /// Calls on the blocking pool at once, queued or running (`BLOCKING_CALLS_MAX`).
    pub blocking_slots: Arc<tokio::sync::Semaphore>,
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
            blocking_slots: Arc::new(tokio::sync::Semaphore::new(BLOCKING_CALLS_MAX)),
            storage: None,
        }
    }

    /// Runs a blocking call where `blocking` says. Fails only if the pool's task panicked.
    pub(crate) async fn run_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        match self.blocking {
            Blocking::Pool => {
                // A call holds its slot from before it is queued until it returns, so while
                // the engine stalls (fjall throttling writers, a slow fsync) the pool holds at
                // most BLOCKING_CALLS_MAX calls and their keys and values; later callers wait
                // here, where their deadlines reach them, instead of in the pool's queue.
                let slot = self
                    .blocking_slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::task::spawn_blocking(move || {
                    let _slot = slot;
                    f()
                })
                .await
                .map_err(|e| e.to_string())
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// While the pool's calls are stuck (an engine stall), no more than the slots are handed
    /// to it; the next caller waits for one and runs once a slot is free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_blocking_pool_holds_at_most_its_slots() {
        let seams = Seams {
            blocking_slots: Arc::new(tokio::sync::Semaphore::new(2)),
            ..Seams::production()
        };
        let started = Arc::new(AtomicUsize::new(0));
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let (ran_tx, mut ran) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let calls: Vec<_> = (0..3)
            .map(|i| {
                let (seams, started, gate, ran_tx) =
                    (seams.clone(), started.clone(), gate.clone(), ran_tx.clone());
                tokio::spawn(async move {
                    seams
                        .run_blocking(move || {
                            started.fetch_add(1, Ordering::SeqCst);
                            ran_tx.send(i).unwrap();
                            gate.lock().unwrap().recv().unwrap();
                        })
                        .await
                })
            })
            .collect();
        // Two calls get slots and block in the "engine"; the third waits for a slot.
        ran.recv().await.unwrap();
        ran.recv().await.unwrap();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            started.load(Ordering::SeqCst),
            2,
            "a third call reached the pool"
        );
        assert_eq!(seams.blocking_slots.available_permits(), 0);
        for _ in 0..3 {
            release.send(()).unwrap();
        }
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert_eq!(started.load(Ordering::SeqCst), 3);
        assert_eq!(
            seams.blocking_slots.available_permits(),
            2,
            "every slot given back"
        );
    }
}
