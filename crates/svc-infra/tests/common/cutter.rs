//! A TCP forwarder on 127.0.0.1:0 in front of a server, which can cut every connection
//! through it at once (both sockets dropped, no close handshake: what a dropped network
//! does to a WebSocket) and send new connections to another server.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::AbortHandle,
};

pub struct Cutter {
    pub addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    pipes: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Cutter {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = Arc::new(Mutex::new(upstream));
        let pipes = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let (to, list) = (upstream.clone(), pipes.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = *to.lock().unwrap();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                list.lock().unwrap().push(pipe.abort_handle());
            }
        })
        .abort_handle();
        Self {
            addr,
            upstream,
            pipes,
            accept,
        }
    }

    /// Drops every connection through the forwarder, on both sides.
    pub fn cut_all(&self) {
        for pipe in self.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }

    /// New connections go to `upstream` from now on.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all();
    }
}
