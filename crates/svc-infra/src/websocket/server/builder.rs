//! [`ManagerBuilder`]: everything a [`ConnectionManager`] is made of, set in one place
//! before it serves.

use std::{fmt, sync::Arc, time::Duration};

use super::{
    backplane::Backplane,
    cluster::PRESENCE_HEARTBEAT,
    history::{HistoryConfig, HistoryStore},
    hooks::{ConnectionHooks, Hooks},
    manager::ConnectionManager,
    outbound::SlowConsumerPolicy,
};
use crate::websocket::{BoxError, ConnectionInfo, WebSocketConfig};

/// Builds a [`ConnectionManager`]: configuration, slow-consumer policy, backplane, presence
/// heartbeat and lifecycle hooks. A built manager does not change.
///
/// ```no_run
/// # async fn demo() {
/// use svc_infra::websocket::{
///     ConnectionManager, SlowConsumerPolicy, WebSocketConfig, backplane::InMemoryBackplane,
/// };
///
/// let manager = ConnectionManager::builder(WebSocketConfig::default())
///     .slow_consumer_policy(SlowConsumerPolicy::DropOldest)
///     .backplane(InMemoryBackplane::new())
///     .on_connect(|manager, info| async move {
///         manager.join_room(&info.user_id, "lobby").await;
///         Ok(())
///     })
///     .build();
/// # let _ = manager;
/// # }
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct ManagerBuilder {
    config: WebSocketConfig,
    policy: SlowConsumerPolicy,
    backplane: Option<Arc<dyn Backplane>>,
    heartbeat: Duration,
    hooks: Hooks,
    history: HistorySetup,
}

/// What the builder was told about history.
pub(super) struct HistorySetup {
    pub(super) config: Option<HistoryConfig>,
    pub(super) store: Option<Arc<dyn HistoryStore>>,
    pub(super) check_every: Duration,
}

impl fmt::Debug for ManagerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerBuilder")
            .field("config", &self.config)
            .field("policy", &self.policy)
            .field("backplane", &self.backplane)
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

impl ManagerBuilder {
    pub(super) fn new(config: WebSocketConfig) -> Self {
        Self {
            config,
            policy: SlowConsumerPolicy::default(),
            backplane: None,
            heartbeat: PRESENCE_HEARTBEAT,
            hooks: Hooks::default(),
            history: HistorySetup {
                config: None,
                store: None,
                check_every: Duration::from_secs(20),
            },
        }
    }

    /// What happens to messages for a connection whose queue is full (default
    /// [`SlowConsumerPolicy::Disconnect`]).
    pub fn slow_consumer_policy(mut self, policy: SlowConsumerPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Makes the manager a node of a cluster: every broadcast, room message and message to
    /// a user also reaches the connections of the other managers on `backplane` (see
    /// [`Backplane`]). Sends still return how many of *this* node's connections they
    /// reached. Default: none, a single node. Build inside a tokio runtime when set (the
    /// presence heartbeat is a task).
    pub fn backplane(mut self, backplane: impl Backplane) -> Self {
        self.backplane = Some(Arc::new(backplane));
        self
    }

    /// How often this node tells the others who is connected to it (default 1 s); a node
    /// not heard from for three of its own periods is forgotten and its users no longer
    /// count.
    pub fn presence_heartbeat(mut self, period: Duration) -> Self {
        self.heartbeat = period;
        self
    }

    /// Lifecycle hooks (see [`ConnectionHooks`]); replaces hooks set before.
    pub fn hooks<H: ConnectionHooks>(mut self, hooks: H) -> Self {
        self.hooks = Hooks::from_trait(hooks);
        self
    }

    /// The `on_connect` hook as a closure; replaces one set before.
    pub fn on_connect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(ConnectionManager, ConnectionInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.hooks.on_connect = Some(Hooks::connect_fn(hook));
        self
    }

    /// The `on_disconnect` hook as a closure; replaces one set before.
    pub fn on_disconnect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(ConnectionManager, ConnectionInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks.on_disconnect = Some(Hooks::disconnect_fn(hook));
        self
    }

    /// Which rooms keep history, and how much (see [`HistoryConfig`]). Without this call
    /// the manager follows `WS_HISTORY_SIZE` and friends ([`HistoryConfig::from_config`]):
    /// no history unless they ask for it.
    pub fn history(mut self, config: HistoryConfig) -> Self {
        self.history.config = Some(config);
        self
    }

    /// Where history is kept. Without this call: the backplane's store when it has one
    /// (Redis, or the hub of an `InMemoryBackplane`), else this process's memory
    /// ([`MemoryHistory`](super::history::MemoryHistory)).
    pub fn history_store(mut self, store: impl HistoryStore) -> Self {
        self.history.store = Some(Arc::new(store));
        self
    }

    /// How often each room with history that has members here is compared with the top
    /// of its stream, so that a lost last publication of a quiet room is noticed. Default
    /// 20 s.
    pub fn history_check(mut self, every: Duration) -> Self {
        self.history.check_every = every.max(Duration::from_millis(10));
        self
    }

    /// The manager.
    pub fn build(self) -> ConnectionManager {
        ConnectionManager::from_parts(
            self.config,
            self.policy,
            self.hooks,
            self.backplane,
            self.heartbeat,
            self.history,
        )
    }
}
