// The JavaScript client (clients/js/svc-ws.js) against the real gateway binary, which each
// test starts itself: `svc-ws serve --port 0` in memory, with history (WS_HISTORY_SIZE=100),
// anonymous users, JWTs (AUTH_JWT__SECRET) and an API key for POST /api/publish.
//
// Run with: node --experimental-websocket --test clients/js/test/
// (scripts/test.sh does; the binary is $SVC_WS_BIN, else $CARGO_TARGET_DIR/debug/svc-ws,
// else target/debug/svc-ws: build it first with `cargo build -p svc-ws`).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

import { connect } from "../svc-ws.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const BIN =
  process.env.SVC_WS_BIN ||
  path.join(process.env.CARGO_TARGET_DIR || path.join(ROOT, "target"), "debug", "svc-ws");
const SECRET = "js-client-test-secret-of-at-least-32-bytes";
const API_KEY = "js-test-key-0123456789";
const WAIT_MS = 10000;

if (!existsSync(BIN)) throw new Error(`no gateway binary at ${BIN}: cargo build -p svc-ws, or set SVC_WS_BIN`);
if (typeof WebSocket !== "function") throw new Error("no global WebSocket: run node with --experimental-websocket (Node 20)");

const children = new Set();
after(() => {
  for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
});

/** Starts `svc-ws serve` on `port` (0: any free one); resolves once it listens. */
function gateway(port = 0) {
  const env = {
    ...process.env,
    WS_HISTORY_SIZE: "100",
    WS_GATEWAY_ANONYMOUS: "true",
    WS_API_KEYS: `tests:${API_KEY}:admin`,
    AUTH_JWT__SECRET: SECRET,
    WS_SHUTDOWN_SPREAD: "0",
    RUST_LOG: "warn,svc_ws=info",
  };
  for (const name of ["REDIS_URL", "AUTH_JWT_SECRET", "JWT_SECRET", "APP_ENV"]) delete env[name];
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, ["serve", "--port", String(port)], { env, stdio: ["ignore", "ignore", "pipe"] });
    children.add(child);
    let log = "";
    const timer = setTimeout(() => reject(new Error("the gateway did not start: " + log)), WAIT_MS);
    child.stderr.on("data", (chunk) => {
      log += chunk;
      const m = /listening on ws:\/\/([^/]+)\/ws/.exec(log);
      if (m && timer) {
        clearTimeout(timer);
        const addr = m[1];
        resolve({ child, addr, port: Number(addr.split(":").pop()), url: `ws://${addr}/ws`, stop: () => stop(child) });
      }
    });
    child.on("exit", (code) => {
      children.delete(child);
      clearTimeout(timer);
      reject(new Error(`the gateway exited (${code}): ${log}`));
    });
  });
}

/** SIGTERM (its clients get 1012), then waits for the exit. */
function stop(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve(child.exitCode);
    child.on("exit", (code) => resolve(code));
    child.kill("SIGTERM");
  });
}

/** A JWT for `sub`, from `svc-ws token`. */
function token(sub) {
  return execFileSync(BIN, ["token", "--sub", sub], { env: { ...process.env, AUTH_JWT__SECRET: SECRET } })
    .toString()
    .trim();
}

/** POST /api/publish to a room; resolves with the position. */
async function publish(gw, room, data) {
  const res = await fetch(`http://${gw.addr}/api/publish`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-api-key": API_KEY },
    body: JSON.stringify({ room, data }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  return res.json();
}

/** Resolves once `predicate()` is true; rejects after WAIT_MS with `what`. */
async function until(what, predicate) {
  const deadline = Date.now() + WAIT_MS;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A client that records what it gets. */
function recorded(options) {
  const client = connect({ heartbeat: false, ...options });
  const seen = { messages: [], joined: [], lost: [], closes: [], reconnecting: [], errors: [] };
  client.on("message", (m) => seen.messages.push(m));
  client.on("joined", (j) => seen.joined.push(j));
  client.on("lost", (l) => seen.lost.push(l));
  client.on("close", (c) => seen.closes.push(c));
  client.on("reconnecting", (r) => seen.reconnecting.push(r));
  client.on("error", (e) => seen.errors.push(e));
  return { client, seen };
}

const offsets = (messages) => messages.map((m) => m.offset);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

test("messages arrive in order with their positions; publish resolves with its own", { timeout: 30000 }, async () => {
  const gw = await gateway();
  const { client: alice, seen } = recorded({ url: gw.url + "?user=alice", rooms: ["r1"] });
  const bob = connect({ url: gw.url + "?user=bob", heartbeat: false });
  try {
    const joined = await alice.join("r1"); // joined already through `rooms`: the same answer
    assert.equal(joined.type, "joined");
    assert.equal(joined.recovered, true);
    assert.equal(joined.offset, 0);
    for (let i = 1; i <= 10; i++) assert.equal((await publish(gw, "r1", { n: i })).offset, i);
    await until("the first message", () => seen.messages.length >= 1);
    // An empty room's epoch is "" until its first publication.
    const epoch = seen.messages[0].epoch;
    assert.ok(epoch);
    for (let i = 11; i <= 20; i++) assert.deepEqual(await bob.publish("r1", { n: i }), { offset: i, epoch });
    await until("20 messages", () => seen.messages.length === 20);
    assert.deepEqual(offsets(seen.messages), range(1, 20));
    assert.deepEqual(seen.messages.map((m) => m.data.n), range(1, 20));
    assert.ok(seen.messages.every((m) => m.room === "r1" && m.epoch === epoch));
    assert.equal(seen.messages[10].from, "bob");
    assert.deepEqual(alice.positions(), { r1: { offset: 20, epoch } });
    // presence and history answer as promises.
    assert.deepEqual(await bob.presence("r1"), { room: "r1", users: ["alice"] });
    const h = await bob.history("r1", { since: { offset: 17, epoch } });
    assert.deepEqual(offsets(h.publications), [18, 19, 20]);
    // A refused request rejects, and the connection stays open.
    await assert.rejects(alice.join(""), /room name/);
    assert.equal(alice.state, "open");
    assert.deepEqual(seen.lost, []);
  } finally {
    await alice.close();
    await bob.close();
    await gw.stop();
  }
});

test("across a dropped connection every message arrives exactly once, in order; getToken is asked each time", { timeout: 30000 }, async () => {
  const gw = await gateway();
  let calls = 0;
  let gate = null;
  const { client, seen } = recorded({
    url: gw.url,
    rooms: ["r2"],
    backoff: { base: 50, max: 200 },
    getToken: async () => {
      calls++;
      if (gate) await gate.promise;
      return token("carol");
    },
  });
  // Another connection of the same user keeps carol in the room (rooms are per user), so the
  // new connection gets live messages of r2 before its re-join is answered: those must wait
  // for the replay, not jump ahead of it.
  const twin = connect({ url: gw.url, token: token("carol"), rooms: ["r2"], heartbeat: false });
  try {
    await twin.join("r2");
    await client.join("r2");
    assert.equal(calls, 1);
    for (let i = 1; i <= 5; i++) await publish(gw, "r2", i);
    await until("5 messages", () => seen.messages.length === 5);

    // The connection drops; while the client waits for its token, 10 messages go by.
    let open;
    gate = { promise: new Promise((r) => (open = r)) };
    client._dropForTest();
    await until("getToken for the reconnect", () => calls === 2);
    assert.equal(client.state, "reconnecting");
    for (let i = 6; i <= 15; i++) await publish(gw, "r2", i);
    gate = null;
    // As the new connection opens (its re-join goes out right after this event), 5 more are
    // published by another user's connection: they reach the new connection through the twin's
    // membership, before the `joined` answer and the replay of 6..15.
    const pub = connect({ url: gw.url + "?user=pub", heartbeat: false });
    await pub.presence();
    const sent = [];
    const off = client.on("open", () => {
      off();
      for (let i = 16; i <= 20; i++) sent.push(pub.publish("r2", i));
    });
    open();
    await until("the publications at the reconnect", () => sent.length === 5);
    await Promise.all(sent);
    await pub.close();
    // More publications while it re-joins: replayed and live ones meet.
    for (let i = 21; i <= 25; i++) await publish(gw, "r2", i);
    await until("25 messages", () => seen.messages.length >= 25);
    await new Promise((r) => setTimeout(r, 200)); // nothing more comes
    assert.deepEqual(offsets(seen.messages), range(1, 25));
    assert.deepEqual(seen.messages.map((m) => m.data), range(1, 25));
    const rejoin = seen.joined.at(-1);
    assert.equal(rejoin.recovered, true);
    assert.ok(rejoin.replayed >= 10, "replayed " + rejoin.replayed);
    assert.deepEqual(seen.lost, []);
    assert.equal(seen.closes[0].code, 1006);
    assert.equal(seen.closes[0].reconnect, true);

    // A token the gateway refuses (401 before the upgrade, 1006 here) is retried with
    // backoff, and the next getToken brings a good one.
    let bad = true;
    const { client: dave, seen: daveSeen } = recorded({
      url: gw.url,
      rooms: ["r2"],
      backoff: { base: 50, max: 200 },
      getToken: () => (bad ? ((bad = false), "not.a.jwt") : token("dave")),
    });
    try {
      await dave.join("r2");
      assert.equal(daveSeen.reconnecting.length, 1);
      assert.equal(dave.state, "open");
    } finally {
      await dave.close();
    }
  } finally {
    await client.close();
    await twin.close();
    await gw.stop();
  }
});

test("messages seen already are dropped", { timeout: 30000 }, async () => {
  const gw = await gateway();
  // Every frame from the gateway arrives twice, answers and messages alike.
  class Doubling extends WebSocket {
    set onmessage(handler) {
      super.onmessage = handler && ((ev) => (handler(ev), handler(ev)));
    }
    get onmessage() {
      return super.onmessage;
    }
  }
  const { client, seen } = recorded({ url: gw.url + "?user=erin", rooms: ["r3"], WebSocket: Doubling });
  try {
    await client.join("r3");
    for (let i = 1; i <= 10; i++) await publish(gw, "r3", i);
    await until("10 messages", () => seen.messages.length >= 10);
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(offsets(seen.messages), range(1, 10));
    assert.equal(seen.joined.length, 1);
  } finally {
    await client.close();
    await gw.stop();
  }
});

test("a gateway restart loses the in-memory history: lost fires and the client goes on in the new epoch", { timeout: 30000 }, async () => {
  let gw = await gateway();
  const { client, seen } = recorded({ url: gw.url + "?user=frank", rooms: ["r4"], backoff: { base: 100, max: 500 } });
  try {
    await client.join("r4");
    for (let i = 1; i <= 3; i++) await publish(gw, "r4", i);
    await until("3 messages", () => seen.messages.length === 3);

    await gw.stop();
    await until("the 1012", () => seen.closes.length === 1);
    assert.deepEqual(seen.closes[0], { code: 1012, reason: "service restart", reconnect: true });
    assert.ok(seen.reconnecting[0].delay <= 1000, "1012: reconnect within a second");
    gw = await gateway(gw.port);
    await until("lost", () => seen.lost.length === 1);
    const lost = seen.lost[0];
    assert.equal(lost.room, "r4");
    assert.equal(lost.reason, "joined");
    assert.notEqual(lost.epoch, seen.messages[0].epoch);
    assert.equal(seen.joined.at(-1).recovered, false);
    assert.deepEqual(client.positions(), { r4: { offset: lost.offset, epoch: lost.epoch } });

    // The new stream starts again at 1: its messages are new, not "seen already".
    for (let i = 1; i <= 2; i++) await publish(gw, "r4", "new " + i);
    await until("2 more messages", () => seen.messages.length === 5);
    assert.deepEqual(offsets(seen.messages), [1, 2, 3, 1, 2]);
    // (The empty room's epoch was "", the new stream's is its own.)
    assert.equal(seen.messages[3].epoch, seen.messages[4].epoch);
    assert.notEqual(seen.messages[4].epoch, seen.messages[0].epoch);
  } finally {
    await client.close();
    await gw.stop();
  }
});

test("close() is final: no reconnect, requests reject", { timeout: 30000 }, async () => {
  const gw = await gateway();
  const { client, seen } = recorded({ url: gw.url, rooms: ["r5"] });
  try {
    await client.join("r5");
    await client.close();
    assert.equal(client.state, "closed");
    assert.deepEqual(seen.closes, [{ code: 1000, reason: "", reconnect: false }]);
    await assert.rejects(client.publish("r5", 1), /client closed/);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(seen.reconnecting.length, 0);
  } finally {
    await gw.stop();
  }
});

test("direct messages (the user's own stream) are recovered after a dropped connection", { timeout: 30000 }, async () => {
  const gw = await gateway();
  // Away half a second: the two messages sent meanwhile can only come from the replay.
  const { client, seen } = recorded({ url: gw.url, token: token("dora"), backoff: { base: 500, max: 500, jitter: 0 } });
  const post = async (data) => {
    const res = await fetch(`http://${gw.addr}/api/publish`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-api-key": API_KEY },
      body: JSON.stringify({ to: "dora", data }),
    });
    assert.equal(res.status, 200, await res.clone().text());
  };
  try {
    await client.presence(); // connected
    await post(1);
    await until("the first direct message", () => seen.messages.length === 1);
    assert.equal(seen.messages[0].room, "@user:dora");
    client._dropForTest();
    await post(2);
    await post(3);
    await until("3 direct messages", () => seen.messages.length === 3);
    assert.deepEqual(seen.messages.map((m) => m.data), [1, 2, 3]);
    assert.deepEqual(offsets(seen.messages), [1, 2, 3]);
    assert.deepEqual(client.positions()["@user:dora"].offset, 3);
  } finally {
    await client.close();
    await gw.stop();
  }
});
