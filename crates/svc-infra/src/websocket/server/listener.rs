//! [`bind`]: the listener a WebSocket server accepts on, ready for the moment a node
//! restarts and all its clients come back at once: an accept queue that holds them, and a
//! descriptor table that need not grow while they arrive.

use std::io;

use tokio::net::{TcpListener, TcpSocket, ToSocketAddrs, lookup_host};

/// The listen backlog [`bind`] asks for. Linux caps it at `net.core.somaxconn` (4096 by
/// default since kernel 5.4), so asking for more gains nothing there.
pub const LISTEN_BACKLOG: u32 = 4096;

/// How many descriptors [`bind`] makes room for in the process's descriptor table (fewer
/// when the open-file soft limit is lower): 65,536, 512 KiB of kernel memory.
const DESCRIPTOR_TABLE: u32 = 65_536;

/// Binds a TCP listener to `addr` (the first of its addresses that binds) with a listen
/// backlog of [`LISTEN_BACKLOG`] and `SO_REUSEADDR` on Unix, as
/// [`tokio::net::TcpListener::bind`] sets it; on Linux it also grows the process's
/// descriptor table, once, to 65,536 entries (or the largest power of two within the
/// open-file soft limit).
///
/// Use it instead of `TcpListener::bind`, for two reasons measured on a reconnect storm of
/// 10,000 clients, 200 handshakes in flight (docs/benchmarks.md, "Handshake rate"):
///
/// - `TcpListener::bind` asks for a backlog of 128, as the standard library does. When
///   more connections than that complete their TCP handshake before the accept loop takes
///   them, the kernel drops the next SYNs (`ListenOverflows` in `nstat`), and each of those
///   clients tries again only after the SYN retransmission timeout of 1 s (then 2 s more).
/// - Linux grows a process's descriptor table by doubling when a new descriptor does not
///   fit, and in a multi-threaded process each growth waits for an RCU grace period
///   (`expand_files`, `synchronize_rcu`) with the thread that asked blocked: here the
///   accept loop, 12 to 41 ms each time, six times on the way to 10,000 connections. No
///   connection is accepted meanwhile: with a backlog of 128 that is when SYNs are
///   dropped, and with any backlog it is the tail of the handshake times. Grown here,
///   before anything waits, the table does not grow during the storm.
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
            Ok(listener) => {
                #[cfg(target_os = "linux")]
                grow_descriptor_table(&listener);
                return Ok(listener);
            }
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

/// Grows the descriptor table to [`DESCRIPTOR_TABLE`] entries, or to the largest power of
/// two the open-file soft limit allows: a duplicate of `listener` at `n - 1` or above makes
/// the kernel size the table to hold it; the duplicate is closed at once and the table
/// stays (Linux never shrinks it). A limit too low for 1,024 is left alone.
#[cfg(target_os = "linux")]
fn grow_descriptor_table(listener: &TcpListener) {
    let mut entries = DESCRIPTOR_TABLE;
    while entries >= 1024 {
        let highest = i32::try_from(entries - 1).unwrap_or(i32::MAX);
        // EINVAL when `highest` is at or above the soft limit: try half as many.
        if rustix::io::fcntl_dupfd_cloexec(listener, highest).is_ok() {
            return;
        }
        entries /= 2;
    }
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

    /// The table is grown by `bind`, not by the connections that come later.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bind_grows_the_descriptor_table() {
        let status = |field: &str| -> u64 {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix(field))
                        .and_then(|v| v.trim().parse().ok())
                })
                .unwrap_or(0)
        };
        let soft: u64 = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        let _listener = bind("127.0.0.1:0").await.expect("bind");
        let mut want = u64::from(DESCRIPTOR_TABLE);
        while want > soft && want >= 1024 {
            want /= 2;
        }
        if want < 1024 {
            eprintln!("skipped: open-file soft limit {soft} is below 1,024");
            return;
        }
        assert!(
            status("FDSize:") >= want,
            "FDSize {} after bind, want at least {want} (soft limit {soft})",
            status("FDSize:")
        );
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
