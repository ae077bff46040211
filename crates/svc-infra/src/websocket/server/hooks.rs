//! Lifecycle hooks: the [`ConnectionHooks`] trait and the closures the manager keeps.

use std::{pin::Pin, sync::Arc};

use super::manager::ConnectionManager;
use crate::websocket::{BoxError, ConnectionInfo};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Lifecycle hooks. Both methods default to doing nothing.
///
/// `on_connect` runs after the connection is registered (so a broadcast from inside it
/// reaches the new connection too); if it fails, the registration is rolled back and the
/// socket is closed with 1011. `on_disconnect` runs exactly once per registered connection,
/// after it was removed, however it went (closed by either side, failed send, keepalive,
/// [`ConnectionManager::disconnect_user`], shutdown).
pub trait ConnectionHooks: Send + Sync + 'static {
    /// A connection was registered.
    fn on_connect(
        &self,
        manager: &ConnectionManager,
        info: &ConnectionInfo,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = (manager, info);
        async { Ok(()) }
    }

    /// A connection was removed.
    fn on_disconnect(
        &self,
        manager: &ConnectionManager,
        info: &ConnectionInfo,
    ) -> impl Future<Output = ()> + Send {
        let _ = (manager, info);
        async {}
    }
}

pub(super) type ConnectHook =
    Arc<dyn Fn(ConnectionManager, ConnectionInfo) -> BoxFuture<Result<(), BoxError>> + Send + Sync>;
pub(super) type DisconnectHook =
    Arc<dyn Fn(ConnectionManager, ConnectionInfo) -> BoxFuture<()> + Send + Sync>;

/// The hooks a manager runs, fixed when it is built.
#[derive(Clone, Default)]
pub(super) struct Hooks {
    pub(super) on_connect: Option<ConnectHook>,
    pub(super) on_disconnect: Option<DisconnectHook>,
}

impl Hooks {
    /// Both hooks from an implementation of [`ConnectionHooks`].
    pub(super) fn from_trait<H: ConnectionHooks>(hooks: H) -> Self {
        let hooks = Arc::new(hooks);
        let on_connect = hooks.clone();
        let connect: ConnectHook = Arc::new(move |m, info| {
            let h = on_connect.clone();
            Box::pin(async move { h.on_connect(&m, &info).await })
        });
        let disconnect: DisconnectHook = Arc::new(move |m, info| {
            let h = hooks.clone();
            Box::pin(async move { h.on_disconnect(&m, &info).await })
        });
        Self {
            on_connect: Some(connect),
            on_disconnect: Some(disconnect),
        }
    }

    /// The `on_connect` hook from a closure.
    pub(super) fn connect_fn<F, Fut>(hook: F) -> ConnectHook
    where
        F: Fn(ConnectionManager, ConnectionInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        Arc::new(move |m, i| Box::pin(hook(m, i)))
    }

    /// The `on_disconnect` hook from a closure.
    pub(super) fn disconnect_fn<F, Fut>(hook: F) -> DisconnectHook
    where
        F: Fn(ConnectionManager, ConnectionInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Arc::new(move |m, i| Box::pin(hook(m, i)))
    }
}
