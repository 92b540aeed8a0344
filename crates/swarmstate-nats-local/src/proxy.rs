//! A loopback TCP proxy that can be cut: the link a partitionable [`NatsCluster`] puts on every
//! route from one node to another.
//!
//! [`NatsCluster`]: crate::NatsCluster

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// Forwards every connection made to its `127.0.0.1` port to one target, in both directions,
/// until it is cut.
///
/// While cut, it closes every connection it carries and closes each new connection as soon as
/// it is accepted, so the connecting side sees its connection end (as on a reset) rather than
/// hang. Dropping it stops accepting and closes every connection it carries.
#[derive(Debug)]
pub(crate) struct Proxy {
    port: u16,
    /// `true` while connections may pass. Every forwarding task holds a receiver and ends when
    /// this turns `false` or is dropped.
    open: watch::Sender<bool>,
    /// Connections being forwarded right now.
    carried: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Binds a free port on `127.0.0.1` and starts forwarding to `target`; open from the start.
    ///
    /// Must be called within a tokio runtime; the proxy's tasks run on it.
    pub(crate) async fn start(target: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let (open, receiver) = watch::channel(true);
        let carried = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn(accept_loop(listener, target, receiver, carried.clone()));
        Ok(Proxy {
            port,
            open,
            carried,
            accept,
        })
    }

    /// The port it listens on, on `127.0.0.1`.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// How many connections it is forwarding right now (connected to the target and not yet
    /// closed by either side or by a cut).
    pub(crate) fn carried(&self) -> usize {
        self.carried.load(Ordering::Acquire)
    }

    /// Lets connections through again (`true`), or closes every connection and refuses new
    /// ones (`false`).
    pub(crate) fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The forwarding tasks end on their own when `open` is dropped right after this.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    open: watch::Receiver<bool>,
    carried: Arc<AtomicUsize>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Out of file descriptors or similar: the connecting side retries, so do we.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        if *open.borrow() {
            tokio::spawn(forward(inbound, target, open.clone(), carried.clone()));
        }
        // Otherwise `inbound` is dropped here, closing it: the link is cut.
    }
}

/// Copies bytes between `inbound` and a new connection to `target` until either side closes
/// or the proxy is cut; then drops (closes) both.
async fn forward(
    inbound: TcpStream,
    target: SocketAddr,
    mut open: watch::Receiver<bool>,
    carried: Arc<AtomicUsize>,
) {
    let relay = async move {
        let mut inbound = inbound;
        let Ok(mut outbound) = TcpStream::connect(target).await else {
            return;
        };
        carried.fetch_add(1, Ordering::AcqRel);
        // Counts down however the relay ends, including being dropped by a cut.
        let _carrying = Carrying(carried);
        // Cluster routes carry small latency-sensitive messages (heartbeats, votes, acks); Nagle's
        // algorithm would delay them where a direct route would not.
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
    };
    tokio::select! {
        () = relay => {}
        // An error means the proxy was dropped: a cut too.
        _ = open.wait_for(|open| !*open) => {}
    }
}

/// Counts one carried connection down when dropped.
struct Carrying(Arc<AtomicUsize>);

impl Drop for Carrying {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server that echoes every connection, and its address.
    async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut reader, mut writer) = stream.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        (address, task)
    }

    async fn connect(proxy: &Proxy) -> TcpStream {
        TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .expect("the proxy listens")
    }

    /// Sends `message` and reads the echo; `None` if the connection ends first.
    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Option<Vec<u8>> {
        stream.write_all(message).await.ok()?;
        let mut echoed = vec![0; message.len()];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
            .await
            .expect("the proxy neither answered nor closed within 5 s");
        read.ok().map(|_| echoed)
    }

    /// Whether the connection ends (EOF or error) within 5 s without delivering any data.
    async fn ends(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await {
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    #[tokio::test]
    async fn a_cut_closes_carried_connections_and_refuses_new_ones_until_healed() {
        let (target, _echo) = echo_server().await;
        let proxy = Proxy::start(target).await.unwrap();

        let mut carried = connect(&proxy).await;
        assert_eq!(
            round_trip(&mut carried, b"hello").await.as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(proxy.carried(), 1);

        proxy.set_open(false);
        assert!(
            ends(&mut carried).await,
            "a carried connection survived the cut"
        );
        assert_eq!(proxy.carried(), 0);
        let mut during_cut = connect(&proxy).await;
        assert!(
            ends(&mut during_cut).await,
            "a connection made during the cut was not closed"
        );

        proxy.set_open(true);
        let mut after_heal = connect(&proxy).await;
        assert_eq!(
            round_trip(&mut after_heal, b"again").await.as_deref(),
            Some(&b"again"[..])
        );

        drop(proxy);
        assert!(
            ends(&mut after_heal).await,
            "a connection outlived the dropped proxy"
        );
    }
}
