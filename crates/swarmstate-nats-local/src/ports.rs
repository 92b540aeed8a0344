//! Loopback ports for the fixtures: free ones for servers to bind, and held ones nothing
//! listens on.

use std::net::{SocketAddr, TcpListener};

use tokio::net::TcpSocket;

/// Ports that were free a moment ago: bound together on 127.0.0.1 (so they are distinct), then
/// released for the server to take. Someone else may take one first; callers retry.
pub(crate) fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| {
            TcpListener::bind(("127.0.0.1", 0))
                .unwrap_or_else(|err| panic!("binding 127.0.0.1:0 to find a free port: {err}"))
        })
        .collect();
    listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .expect("bound listener has an address")
                .port()
        })
        .collect()
}

/// A socket bound to a free `127.0.0.1` port that never listens: while it is held, no one else
/// can take the port and every connection to it is refused.
pub(crate) fn unreachable_port() -> TcpSocket {
    TcpSocket::new_v4()
        .and_then(|socket| {
            socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            Ok(socket)
        })
        .unwrap_or_else(|err| panic!("binding 127.0.0.1:0 to reserve a port: {err}"))
}

pub(crate) fn local_port(socket: &TcpSocket) -> u16 {
    socket
        .local_addr()
        .expect("a bound socket has an address")
        .port()
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn an_unreachable_port_refuses_connections() {
        let socket = unreachable_port();
        let port = local_port(&socket);
        let refused = std::net::TcpStream::connect(("127.0.0.1", port)).expect_err("connected");
        assert_eq!(
            refused.kind(),
            io::ErrorKind::ConnectionRefused,
            "{refused}"
        );
        // Held, so no one else can take it.
        let taken = TcpListener::bind(("127.0.0.1", port)).expect_err("bound a held port");
        assert_eq!(taken.kind(), io::ErrorKind::AddrInUse, "{taken}");
    }
}
