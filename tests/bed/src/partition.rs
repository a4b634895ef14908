//! A TCP forwarder that can partition its client from the upstream, the way a network partition
//! does: while cut, bytes in both directions are swallowed (requests hang, nothing reaches the
//! server, nothing comes back; new connections are accepted and hang too). Healing resets every
//! connection that lived through the cut (their streams lost bytes) and forwards again.
//! TLS passes through untouched, so the client still verifies the real server's certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The forwarder; it stops when dropped.
pub struct Partition {
    /// Where clients connect.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    heal: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Partition {
    /// Forwards 127.0.0.1:<free port> to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Partition> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let (heal, epochs) = watch::channel(0u64);
        let c = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, upstream, c.clone(), epochs.clone()));
            }
        });
        Ok(Partition { addr, cut, heal, task })
    }

    /// Cuts the link: from now on nothing passes.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Heals the link: connections that lived through the cut are reset, new ones pass.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.heal.send_modify(|e| *e += 1);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, cut: Arc<AtomicBool>, mut epochs: watch::Receiver<u64>) {
    epochs.borrow_and_update();
    // Accepted during a cut: the connection hangs until the heal resets it.
    if cut.load(Ordering::SeqCst) {
        let _ = epochs.changed().await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut doomed = false;
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        tokio::select! {
            n = cr.read(&mut up) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    doomed |= cut.load(Ordering::SeqCst);
                    if !doomed && sw.write_all(&up[..n]).await.is_err() { return; }
                }
            },
            n = sr.read(&mut down) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    doomed |= cut.load(Ordering::SeqCst);
                    if !doomed && cw.write_all(&down[..n]).await.is_err() { return; }
                }
            },
            _ = epochs.changed() => if doomed || cut.load(Ordering::SeqCst) {
                // Lived through a cut: reset (dropping both ends closes them).
                return;
            },
        }
        if cut.load(Ordering::SeqCst) {
            doomed = true;
        }
    }
}
