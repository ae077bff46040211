//! WebSocket authentication (being built: see issue 4).
