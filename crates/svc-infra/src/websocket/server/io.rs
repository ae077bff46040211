//! The two halves of an upgraded connection: [`Reader`] for the socket's reading task,
//! [`Writer`] inside its [`Outbound`]. A plain TCP connection's stream is held once, by the
//! writer, and the reader reads it through the `Outbound` (whose lock it takes for the
//! read): no shared allocation for the two halves, which every connection would pay for.
//! Anything else (TLS, a stream hyper wraps) is split and boxed.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::outbound::Outbound;

/// The reading half of a connection.
pub(crate) enum Reader {
    /// The TCP stream the connection's [`Writer::Tcp`] holds.
    Tcp,
    Boxed(Box<dyn AsyncRead + Send + Unpin>),
}

/// The writing half of a connection. Dropping it closes a TCP connection (both ways).
pub(crate) enum Writer {
    Tcp(TcpStream),
    Boxed(Box<dyn AsyncWrite + Send + Unpin>),
}

impl Reader {
    pub(crate) fn boxed(reader: impl AsyncRead + Send + Unpin + 'static) -> Self {
        Self::Boxed(Box::new(reader))
    }

    /// A reader at its end (what is left once a socket stops reading); allocates nothing.
    pub(crate) fn empty() -> Self {
        Self::boxed(tokio::io::empty())
    }
}

impl Writer {
    pub(crate) fn boxed(writer: impl AsyncWrite + Send + Unpin + 'static) -> Self {
        Self::Boxed(Box::new(writer))
    }
}

impl Reader {
    /// Reads into `buf`; `out` is the connection's sending side, whose writer holds a TCP
    /// stream. Once the writer is released, reading a TCP stream finds the end of it.
    pub(crate) fn poll_read(
        &mut self,
        out: &Outbound,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self {
            Self::Tcp => out.poll_read_tcp(cx, buf),
            Self::Boxed(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl Writer {
    /// Reads the TCP stream this writer holds (nothing, at its end, for any other writer).
    pub(crate) fn poll_read_tcp(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self {
            Self::Tcp(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Boxed(_) => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            Self::Boxed(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            Self::Boxed(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(w) => w.is_write_vectored(),
            Self::Boxed(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(w) => Pin::new(w).poll_flush(cx),
            Self::Boxed(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            Self::Boxed(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
