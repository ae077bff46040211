//! [`bind`]: the listener a WebSocket server accepts on, with an accept queue sized for the
//! moment a node restarts and all its clients come back at once.

use std::io;

use tokio::net::{TcpListener, TcpSocket, ToSocketAddrs, lookup_host};

/// The listen backlog [`bind`] asks for. Linux caps it at `net.core.somaxconn` (4096 by
/// default since kernel 5.4), so asking for more gains nothing there.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener to `addr` (the first of its addresses that binds) with a listen
/// backlog of [`LISTEN_BACKLOG`] and `SO_REUSEADDR` on Unix, as
/// [`tokio::net::TcpListener::bind`] sets it.
///
/// Use it instead of `TcpListener::bind`, which asks for a backlog of 128, as the standard
/// library does. When more connections than that complete their TCP handshake before the
/// accept loop takes them, the kernel drops the next SYNs (`ListenOverflows` in
/// `nstat`), and each of those clients tries again only after the SYN retransmission
/// timeout of 1 s (then 2 s more). Measured on a reconnect storm of 10,000 clients, 200
/// handshakes in flight (docs/benchmarks.md, "Handshake rate"): 71 or more connections
/// dropped per run at 128, none at 4096.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let listener = svc_infra::websocket::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, axum::Router::new()).await
/// # }
/// ```
pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
    let mut last_error = None;
    for addr in lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any address",
        )
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn binds_a_free_port_and_accepts() {
        let listener = tokio::time::timeout(Duration::from_secs(10), bind("127.0.0.1:0"))
            .await
            .expect("bind in time")
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (accepted, connected) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(listener.accept(), tokio::net::TcpStream::connect(addr))
        })
        .await
        .expect("accept in time");
        accepted.expect("accept");
        connected.expect("connect");
    }

    /// 300 clients complete their TCP handshake while nothing accepts: with the 128 of
    /// `TcpListener::bind`, the kernel drops the SYNs past 129 and those connects take the
    /// 1 s SYN retransmission timeout (fails on a listener from `TcpListener::bind`).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_burst_beyond_128_connects_without_accepting() {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if somaxconn < 300 {
            eprintln!("skipped: net.core.somaxconn is {somaxconn}, below the burst of 300");
            return;
        }
        let listener = bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let connects = (0..300).map(|_| {
            tokio::time::timeout(
                Duration::from_millis(900),
                tokio::net::TcpStream::connect(addr),
            )
        });
        let results = futures_util::future::join_all(connects).await;
        let in_time = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(in_time, 300, "connects done before the SYN retransmission");
        drop(listener);
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error() {
        let first = bind("127.0.0.1:0").await.expect("bind");
        let addr = first.local_addr().expect("local addr");
        let second = tokio::time::timeout(Duration::from_secs(10), bind(addr))
            .await
            .expect("bind in time");
        assert_eq!(
            second.err().map(|e| e.kind()),
            Some(io::ErrorKind::AddrInUse)
        );
    }
}
