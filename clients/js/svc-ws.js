// svc-ws.js: a dependency-free client for the svc-ws gateway (docs/protocol.md), as one ES
// module for browsers and Node (>= 22, or 20 with --experimental-websocket; or pass a
// `WebSocket` constructor). The gateway serves this file at GET /client.js.
//
//   import { connect } from "/client.js";
//   const client = connect({ url: "wss://chat.example.com/ws", getToken, rooms: ["lobby"] });
//   client.on("message", (m) => show(m.room, m.from, m.data));
//   client.on("lost", ({ room }) => reloadRoom(room)); // a gap that could not be replayed
//   await client.publish("lobby", { text: "hi" });
//
// What it does by itself: reconnects after a drop (exponential backoff with jitter; at once,
// after a random pause of up to 1 s, after 1012 "service restart"), asks `getToken` for a
// token before every connection, re-joins its rooms with the last position it saw in each
// (`since`), so the gateway replays what was missed, and drops the messages it has seen
// already. See clients/js/README.md.

/** Close codes after which the client does not reconnect: the server meant it (1000), or
 * the client is at fault and would be again (protocol error, bad data, policy, too big).
 * 1008 is retried when `getToken` can bring a new token. Codes 4000-4999 are final too. */
const FINAL_CODES = new Set([1000, 1002, 1003, 1007, 1008, 1009, 1010]);

/** The characters of a subprotocol (an RFC 7230 token): a token made of others goes as
 * `?token=` instead. */
const TOKEN_CHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

const DEFAULTS = {
  backoff: { base: 500, max: 10000, jitter: 1 },
  restartDelay: 1000,
  connectTimeout: 10000,
  heartbeat: { interval: 25000, timeout: 10000 },
  maxQueued: 1000,
};

/**
 * Opens a client; it connects at once and keeps connecting until `close()`.
 * @param {import("./svc-ws").ConnectOptions} options
 * @returns {Client}
 */
export function connect(options) {
  return new Client(options);
}

/** An error answer of the gateway, or a request that could not be answered. */
export class RequestError extends Error {
  /**
   * @param {string} message
   * @param {{ code?: number, request?: object }} [details]
   */
  constructor(message, details = {}) {
    super(message);
    this.name = "RequestError";
    /** The close code, when the connection closed before the answer came. */
    this.code = details.code;
    /** The request that failed. */
    this.request = details.request;
  }
}

export class Client {
  #options;
  #WebSocket;
  #backoff;
  #heartbeat;
  /** The current socket, or null between connections. */
  #ws = null;
  /** "connecting" | "open" | "reconnecting" | "closed" */
  #state = "connecting";
  /** Failed attempts since the last connection that stayed up. */
  #attempt = 0;
  #timers = { retry: null, connect: null, stable: null, beat: null, beatTimeout: null };
  /** room -> { position: {offset, epoch} | null, joined: bool (on this connection),
   *  joining: bool, since: position sent with the join, answer, waiters: [{resolve, reject}] } */
  #rooms = new Map();
  /** id -> { resolve, reject, request } for requests sent on the current connection. */
  #pending = new Map();
  /** Requests made while not connected: sent once the connection is open. */
  #queue = [];
  #listeners = new Map();
  #nextId = 1;
  #closedByUser = false;
  #closedPromise = null;
  /** Whether a connection was ever open (then a new one is a reconnect). */
  #opened = false;

  /** @param {import("./svc-ws").ConnectOptions} options */
  constructor(options = {}) {
    this.#options = options;
    this.#WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError(
        "svc-ws: no WebSocket: pass the `WebSocket` option (Node 20 needs --experimental-websocket)",
      );
    }
    this.#backoff = { ...DEFAULTS.backoff, ...(options.backoff || {}) };
    this.#heartbeat =
      options.heartbeat === false || options.heartbeat === 0
        ? null
        : { ...DEFAULTS.heartbeat, ...(options.heartbeat || {}) };
    // Positions saved by the application (say in sessionStorage) resume where it left off.
    const positions = options.positions || {};
    for (const room of options.rooms || []) this.#room(room, positions[room]);
    for (const room of Object.keys(positions)) this.#room(room, positions[room]);
    this.#url(); // a missing or malformed URL throws here, not later
    this.#open();
  }

  /** "connecting" | "open" | "reconnecting" | "closed". */
  get state() {
    return this.#state;
  }

  /** The current WebSocket (null between connections): for its `extensions` or `protocol`. */
  get socket() {
    return this.#ws;
  }

  /**
   * The last position seen in each joined room with history: room -> {offset, epoch}.
   * Save it to resume after a page reload (the `positions` option).
   */
  positions() {
    const out = {};
    for (const [room, r] of this.#rooms) if (r.position) out[room] = { ...r.position };
    return out;
  }

  /** Adds a listener; returns a function that removes it. */
  on(event, callback) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(callback);
    return () => this.off(event, callback);
  }

  /** Removes a listener added with `on`. */
  off(event, callback) {
    this.#listeners.get(event)?.delete(callback);
  }

  /**
   * Joins `room` (and re-joins it after every reconnect). Resolves with the gateway's answer:
   * `joined` for a room with history, else `ack`. Joined already: the last answer.
   * @param {string} room
   * @param {{since?: {offset: number, epoch: string}}} [options] a position to resume from
   */
  join(room, options = {}) {
    if (this.#closedByUser) return Promise.reject(new RequestError("client closed"));
    const r = this.#room(room, options.since);
    if (r.joined && r.answer) return Promise.resolve(r.answer);
    const answered = new Promise((resolve, reject) => r.waiters.push({ resolve, reject }));
    if (this.#state === "open" && !r.joining) this.#sendJoin(room, r);
    return answered;
  }

  /** Leaves `room`: no more messages from it, no re-join after a reconnect. */
  leave(room) {
    const r = this.#rooms.get(room);
    this.#rooms.delete(room);
    if (r) for (const w of r.waiters) w.reject(new RequestError("left " + room));
    if (this.#state !== "open") return Promise.resolve(undefined);
    return this.#request({ type: "leave", room }).then(() => undefined);
  }

  /**
   * Publishes `data` to `room` (its other members get it). Resolves with the publication's
   * position, `{offset, epoch}`, in a room with history; with `undefined` otherwise.
   * Rejects if the gateway refuses it, or if the connection drops before the answer (the
   * publication may then have happened or not).
   */
  publish(room, data) {
    return this.#request({ type: "publish", room, data }).then(position);
  }

  /** Sends `data` to every connection of user `to`. */
  send(to, data) {
    return this.#request({ type: "send", to, data }).then(() => undefined);
  }

  /** Sends `data` to every connection (needs the broadcast scope). */
  broadcast(data) {
    return this.#request({ type: "broadcast", data }).then(() => undefined);
  }

  /**
   * A room's kept publications after `since` (from the oldest kept without it), at most
   * `limit`: resolves with `{room, offset, epoch, publications}`. Changes no position.
   */
  history(room, options = {}) {
    const req = { type: "history", room };
    if (options.since) req.since = { offset: options.since.offset, epoch: options.since.epoch };
    if (options.limit !== undefined) req.limit = options.limit;
    return this.#request(req).then(({ room, offset, epoch, publications }) => ({
      room,
      offset,
      epoch,
      publications: publications.map(message),
    }));
  }

  /** Who is in `room` (everyone connected, without a room): resolves with `{room, users}`. */
  presence(room) {
    const req = { type: "presence" };
    if (room !== undefined && room !== null) req.room = room;
    return this.#request(req).then(({ room, users }) => ({ room, users }));
  }

  /**
   * Closes the connection for good (code 1000): no reconnect; pending requests reject.
   * Resolves once the socket is closed.
   */
  close(code = 1000, reason = "") {
    if (this.#closedByUser) return this.#closedPromise;
    this.#closedByUser = true;
    const ws = this.#ws;
    this.#closedPromise = new Promise((resolve) => {
      if (!ws || ws.readyState === 3) return resolve();
      // A socket that never closes (a dead network) must not hold the caller.
      const timer = setTimeout(resolve, 2000);
      ws.addEventListener("close", () => {
        clearTimeout(timer);
        resolve();
      });
    });
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
        ws.close();
      }
    }
    this.#closed(ws, code, reason);
    return this.#closedPromise;
  }

  /** For tests: the connection drops with no closing handshake seen by this client (as a
   * network failure would): it reconnects as after a 1006. */
  _dropForTest() {
    const ws = this.#ws;
    if (!ws) return;
    this.#closed(ws, 1006, "dropped for a test");
    try {
      ws.close();
    } catch {
      /* already closing */
    }
  }

  // ---- The connection ------------------------------------------------------------------

  async #open() {
    this.#state = this.#attempt || this.#opened ? "reconnecting" : "connecting";
    let token = this.#options.token;
    if (this.#options.getToken) {
      try {
        token = await this.#options.getToken();
      } catch (e) {
        this.#emit("error", e instanceof Error ? e : new Error(String(e)));
        if (!this.#closedByUser) this.#retry(1006, "getToken failed");
        return;
      }
    }
    if (this.#closedByUser) return;
    const url = new URL(this.#url());
    let protocols;
    if (token) {
      // The ["bearer", token] subprotocol keeps the token out of the URL (and so out of
      // access logs); the gateway selects `bearer`, which a browser requires.
      if (TOKEN_CHARS.test(token)) protocols = ["bearer", token];
      else url.searchParams.set("token", token);
    }
    let ws;
    try {
      ws = protocols ? new this.#WebSocket(url.href, protocols) : new this.#WebSocket(url.href);
    } catch (e) {
      // A malformed URL: no use trying again.
      this.#emit("error", e);
      this.#closedByUser = true;
      this.#finish(1006, String(e && e.message));
      return;
    }
    this.#ws = ws;
    this.#timers.connect = setTimeout(() => {
      this.#closed(ws, 1006, "connect timeout");
      try {
        ws.close();
      } catch {
        /* not open yet */
      }
    }, this.#options.connectTimeout ?? DEFAULTS.connectTimeout);
    ws.onopen = () => this.#onOpen(ws);
    ws.onmessage = (ev) => this.#onMessage(ws, ev.data);
    ws.onerror = () => {
      if (ws !== this.#ws) return;
      this.#emit("error", new Error("WebSocket error on " + url.origin + url.pathname));
      // A connection that failed before it opened (refused, 401): Node 20's WebSocket
      // reports no close event after the error, so this is the end of it.
      if (this.#state !== "open") this.#closed(ws, 1006, "connection failed");
    };
    ws.onclose = (ev) => this.#closed(ws, ev.code, ev.reason);
  }

  #url() {
    let url = this.#options.url;
    const here = globalThis.location && globalThis.location.href;
    if (!url) {
      if (!here) throw new TypeError("svc-ws: the `url` option is required outside a browser");
      url = "/ws";
    }
    const u = new URL(url, here);
    if (u.protocol === "http:") u.protocol = "ws:";
    if (u.protocol === "https:") u.protocol = "wss:";
    return u.href;
  }

  #onOpen(ws) {
    if (ws !== this.#ws) return;
    clearTimeout(this.#timers.connect);
    const attempt = this.#attempt;
    this.#state = "open";
    this.#opened = true;
    // A connection that stays up a while ends the backoff; one the server closes at once
    // does not (no tight loop against a server that accepts and closes).
    this.#timers.stable = setTimeout(() => (this.#attempt = 0), this.#backoff.max);
    this.#emit("open", { attempt });
    for (const [room, r] of this.#rooms) this.#sendJoin(room, r);
    const queued = this.#queue.splice(0);
    for (const q of queued) this.#transmit(q);
    this.#beat(ws);
  }

  /** Sends an echo every heartbeat interval; no answer within the timeout: the connection is
   * dead (a half-open TCP connection that would otherwise be noticed only minutes later). */
  #beat(ws) {
    if (!this.#heartbeat) return;
    this.#timers.beat = setTimeout(() => {
      if (ws !== this.#ws) return;
      this.#timers.beatTimeout = setTimeout(() => {
        this.#closed(ws, 1006, "heartbeat timeout");
        try {
          ws.close();
        } catch {
          /* closing */
        }
      }, this.#heartbeat.timeout);
      this.#request({ type: "echo", data: "heartbeat" }).then(
        () => {
          clearTimeout(this.#timers.beatTimeout);
          this.#beat(ws);
        },
        () => clearTimeout(this.#timers.beatTimeout),
      );
    }, this.#heartbeat.interval);
  }

  /** The connection `ws` ended (or is abandoned): reject what waited on it, then reconnect
   * or stop. */
  #closed(ws, code, reason) {
    if (ws !== this.#ws || ws === null) {
      if (this.#closedByUser && this.#state !== "closed") this.#finish(code, reason);
      return;
    }
    this.#ws = null;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    this.#clearTimers();
    const why = "connection closed (" + code + (reason ? " " + reason : "") + ")";
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const r of this.#rooms.values()) r.joined = r.joining = false;
    for (const p of pending) p.reject(new RequestError(why, { code, request: p.request }));
    if (this.#closedByUser) return this.#finish(code, reason);
    const retry = this.#retryable(code);
    this.#emit("close", { code, reason, reconnect: retry });
    if (retry) this.#retry(code, reason);
    else this.#finish(code, reason, false);
  }

  #retryable(code) {
    if (code >= 4000 && code < 5000) return false;
    if (code === 1008) return Boolean(this.#options.getToken);
    return !FINAL_CODES.has(code);
  }

  #retry(code, reason) {
    let delay;
    if (code === 1012) {
      // A node restarting: come back at once, spread over a second so that its clients do
      // not all arrive together.
      delay = Math.random() * (this.#options.restartDelay ?? DEFAULTS.restartDelay);
    } else {
      const { base, max, jitter } = this.#backoff;
      const cap = Math.min(max, base * 2 ** this.#attempt);
      delay = cap * (1 - jitter * Math.random());
      this.#attempt++;
    }
    this.#state = "reconnecting";
    this.#emit("reconnecting", { attempt: this.#attempt, delay, code, reason });
    this.#timers.retry = setTimeout(() => this.#open(), delay);
  }

  /** Closed for good: reject everything that waits. */
  #finish(code, reason, emitClose = true) {
    if (this.#state === "closed") return;
    this.#state = "closed";
    this.#closedByUser = true;
    this.#clearTimers();
    const err = new RequestError("client closed", { code });
    for (const q of this.#queue.splice(0)) q.reject(err);
    for (const r of this.#rooms.values()) for (const w of r.waiters.splice(0)) w.reject(err);
    if (emitClose) this.#emit("close", { code, reason, reconnect: false });
  }

  #clearTimers() {
    for (const k of Object.keys(this.#timers)) {
      clearTimeout(this.#timers[k]);
      this.#timers[k] = null;
    }
  }

  // ---- Requests and answers ------------------------------------------------------------

  #room(room, since) {
    let r = this.#rooms.get(room);
    if (!r) {
      r = { position: null, joined: false, joining: false, answer: null, waiters: [] };
      this.#rooms.set(room, r);
    }
    if (since && since.epoch !== undefined && typeof since.offset === "number") {
      r.position = { offset: since.offset, epoch: String(since.epoch) };
    }
    return r;
  }

  #sendJoin(room, r) {
    const req = { type: "join", room };
    const since = r.position;
    if (since) req.since = { offset: since.offset, epoch: since.epoch };
    r.joining = true;
    // Handled as the answer arrives, not a promise later: the replayed messages may be in
    // the same chunk of the stream, and they need the room's state from `joined`.
    this.#transmit({
      req,
      resolve: (answer) => this.#onJoined(room, r, since, answer),
      reject: (e) => {
        r.joining = false;
        if (e.code !== undefined) return; // the connection dropped: the next one re-joins
        // The gateway refused the room (its name, the room limit): it is not re-joined.
        if (this.#rooms.get(room) === r) this.#rooms.delete(room);
        for (const w of r.waiters.splice(0)) w.reject(e);
        this.#emit("error", e);
      },
    });
  }

  #onJoined(room, r, since, answer) {
    r.joining = false;
    if (this.#rooms.get(room) !== r) return; // left meanwhile
    r.joined = true;
    r.answer = answer;
    if (answer.type === "joined") {
      const at = { offset: answer.offset, epoch: answer.epoch };
      if (!answer.recovered) {
        // What was missed cannot be replayed: go on from the room's position; the
        // application reloads what the room shows.
        r.position = at;
        this.#emit("lost", { room, offset: at.offset, epoch: at.epoch, reason: "joined" });
      } else if (answer.replayed > 0) {
        // The replayed messages follow and move the position forward one by one.
        r.position = { offset: since ? since.offset : 0, epoch: at.epoch };
      } else {
        r.position = at;
      }
    }
    this.#emit("joined", answer);
    for (const w of r.waiters.splice(0)) w.resolve(answer);
  }

  #request(req) {
    if (this.#closedByUser) return Promise.reject(new RequestError("client closed", { request: req }));
    return new Promise((resolve, reject) => {
      const q = { req, resolve, reject };
      if (this.#state === "open") return this.#transmit(q);
      const max = this.#options.maxQueued ?? DEFAULTS.maxQueued;
      if (this.#queue.length >= max) {
        return reject(new RequestError("not connected, and " + max + " requests wait already", { request: req }));
      }
      this.#queue.push(q);
    });
  }

  #transmit({ req, resolve, reject }) {
    const id = this.#nextId++;
    const frame = JSON.stringify({ ...req, id });
    this.#pending.set(id, { resolve, reject, request: req });
    try {
      this.#ws.send(frame);
    } catch (e) {
      this.#pending.delete(id);
      reject(new RequestError("send failed: " + (e && e.message), { code: 1006, request: req }));
    }
  }

  #onMessage(ws, raw) {
    if (ws !== this.#ws) return;
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      return this.#emit("error", new Error("not JSON from the gateway: " + String(raw).slice(0, 100)));
    }
    const pending = msg.id !== undefined ? this.#pending.get(msg.id) : undefined;
    if (pending) this.#pending.delete(msg.id);
    switch (msg.type) {
      case "message":
        return this.#onRoomMessage(msg);
      case "recovery":
        return this.#onRecovery(msg);
      case "error":
        if (pending) return pending.reject(new RequestError(msg.error, { request: pending.request }));
        return this.#emit("error", new RequestError(msg.error));
      case "presence":
        this.#emit("presence", { room: msg.room, users: msg.users });
        return pending && pending.resolve(msg);
      default:
        // ack, joined, history, echo: answers.
        return pending && pending.resolve(msg);
    }
  }

  #onRoomMessage(msg) {
    let r = msg.room !== undefined ? this.#rooms.get(msg.room) : undefined;
    if (!r && typeof msg.offset === "number" && String(msg.room).startsWith("@user:")) {
      // The user's own stream (direct messages, with history): the gateway joins it at
      // connect; followed like a room from now on, so a reconnect re-joins it from here.
      r = this.#room(msg.room);
      r.joined = true;
    }
    if (r && typeof msg.offset === "number") {
      // Before the room's `joined` on this connection a message comes from the user's
      // membership through another connection: the replay after `joined` covers it.
      if (!r.joined) return;
      const last = r.position;
      if (last && last.epoch === msg.epoch && msg.offset <= last.offset) return; // seen
      r.position = { offset: msg.offset, epoch: msg.epoch };
    }
    this.#emit("message", message(msg));
  }

  #onRecovery(msg) {
    const r = this.#rooms.get(msg.room);
    if (!r) return;
    if (msg.recovered === false) {
      r.position = { offset: msg.offset, epoch: msg.epoch };
      this.#emit("lost", { room: msg.room, offset: msg.offset, epoch: msg.epoch, reason: "recovery" });
    }
  }

  #emit(event, value) {
    const listeners = this.#listeners.get(event);
    if (!listeners) return;
    for (const cb of [...listeners]) {
      try {
        cb(value);
      } catch (e) {
        // A listener's bug must not break the client: report it as uncaught, later.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}

/** A `message` as the application gets it. */
function message(msg) {
  const out = { room: msg.room, from: msg.from, data: msg.data };
  if (msg.offset !== undefined) {
    out.offset = msg.offset;
    out.epoch = msg.epoch;
  }
  return out;
}

/** The position an `ack` carries, if any. */
function position(ack) {
  return ack && ack.offset !== undefined ? { offset: ack.offset, epoch: ack.epoch } : undefined;
}
