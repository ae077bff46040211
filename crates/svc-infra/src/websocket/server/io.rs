//! The two halves of an upgraded connection: [`Reader`] for the socket's reading task,
//! [`Writer`] inside its [`Outbound`](super::outbound::Outbound). A plain TCP connection's
//! halves are held as they are (one pointer each, to the stream they share); anything else
//! (TLS, a stream hyper wraps) is boxed.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
};

/// The reading half of a connection.
pub(crate) enum Reader {
    Tcp(OwnedReadHalf),
    Boxed(Box<dyn AsyncRead + Send + Unpin>),
}

/// The writing half of a connection.
pub(crate) enum Writer {
    Tcp(OwnedWriteHalf),
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

impl AsyncRead for Reader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            Self::Boxed(r) => Pin::new(r).poll_read(cx, buf),
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
