// Drives the gateway's demo page (GET /) in a real Chromium:
// - two people chat in a room and see each other's presence and the live counters;
// - the live charts move with the traffic: a burst of messages shows in the messages/s chart,
//   refused upgrades in the refusals chart, both nodes of the cluster with their backplane in
//   the nodes table; with SCREENSHOT=FILE the panel is saved there;
// - a third connects with a JWT sent as the ["bearer", token] subprotocol, which the browser
//   accepts only if the server selects it;
// - a fourth is on a second gateway (started here, on the same Redis) that is restarted: its
//   page gets 1012, reconnects by itself, re-joins its room and hears the first node again;
// - a fifth, on that second gateway, gets every message of a room with history (in Redis)
//   exactly once and in order across a dropped connection and across a restart of its
//   gateway (the history survives it: recovered, no "lost" notice);
// - Redis stops: the nodes table shows this node's backplane disconnected.
// Usage: node demo_page.js ANONYMOUS_URL TOKEN_URL TOKEN, with SVC_WS_BIN, REDIS_URL and
// REDIS_PID in the environment (run by scripts/browser_check.sh).
"use strict";
const { spawn } = require("node:child_process");
const { chromium } = require("playwright-core");

const [anonUrl, tokenUrl, token] = process.argv.slice(2);
const T = { timeout: 10000 };
const text = (page, id) => page.textContent("#" + id);
const children = [];

// Starts `svc-ws serve` on `port` (0: any) on the shared Redis; resolves to its process and
// address once it listens.
function gateway(port) {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, REDIS_URL: process.env.REDIS_URL, WS_SHUTDOWN_SPREAD: "0.5", WS_HISTORY_SIZE: "100" };
    delete env.AUTH_JWT__SECRET;
    const child = spawn(process.env.SVC_WS_BIN, ["serve", "--port", String(port)], { env, stdio: ["ignore", "ignore", "pipe"] });
    children.push(child);
    let err = "";
    const timer = setTimeout(() => reject(new Error("gateway did not start: " + err)), 10000);
    child.stderr.on("data", (chunk) => {
      err += chunk;
      const m = /listening on ws:\/\/([^/]+)\/ws/.exec(err);
      if (m) { clearTimeout(timer); resolve({ child, addr: m[1] }); }
    });
    child.on("exit", (code) => reject(new Error("gateway exited (" + code + "): " + err)));
  });
}

function stop(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve(child.exitCode);
    child.on("exit", (code) => resolve(code));
    child.kill("SIGTERM");
  });
}

// The values a chart last drew (its <svg data-last>), as numbers.
const last = (page, id) => page.$eval("#chart-" + id, (svg) => (svg.dataset.last || "").split(",").map(Number));

async function connect(page, url, name) {
  await page.goto(url);
  await page.fill("#user", name);
  await page.click("#connect button");
  await page.waitForFunction((n) => document.getElementById("state").textContent === "connected as " + n, name, T);
  await page.click("#join button");
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox"],
  });
  try {
    const nodeB = await gateway(0);
    const alice = await browser.newPage({ viewport: { width: 1100, height: 720 } });
    const bob = await browser.newPage();
    await connect(alice, anonUrl, "alice");
    await connect(bob, anonUrl, "bob");
    await alice.fill("#text", "hello from a browser");
    await alice.click("#say button");
    await bob.waitForFunction(() => document.getElementById("log").textContent.includes('[lobby] alice: "hello from a browser"'), null, T);
    await bob.waitForFunction(() => document.getElementById("members").textContent === "alice, bob", null, T);
    await bob.waitForFunction(() => document.getElementById("connections").textContent === "2", null, T);
    console.log("chat, presence and stats: ok (" + (await text(bob, "members")) + ")");

    // Chromium offered permessage-deflate and the gateway accepted it (WS_COMPRESSION=shared,
    // the default); a long message, compressed both ways, arrives intact.
    const ext = await bob.evaluate(() => client.socket.extensions);
    if (!ext.startsWith("permessage-deflate") || !ext.includes("server_no_context_takeover")) {
      throw new Error("compression not negotiated: extensions = " + JSON.stringify(ext));
    }
    const long = "compressible ".repeat(200) + "end";
    await alice.fill("#text", long);
    await alice.click("#say button");
    await bob.waitForFunction((t) => document.getElementById("log").textContent.includes('[lobby] alice: "' + t + '"'), long, T);
    // The gateway deflated it (its counter of deflated messages moved).
    const deflated = await bob.evaluate(async () => {
      const text = await (await fetch("/metrics")).text();
      const line = text.split("\n").find((l) => l.startsWith("svc_ws_messages_deflated_total "));
      return line ? Number(line.split(" ")[1]) : -1;
    });
    if (!(deflated >= 1)) throw new Error("the gateway deflated nothing: " + deflated);
    console.log("compression: ok (" + ext + "; a " + long.length + "-character message intact, " + deflated + " deflated)");

    // The nodes table: this node and the other one, both with their backplane connected.
    await alice.waitForFunction(() => {
      const rows = [...document.querySelectorAll("#nodes tr")];
      return rows.length === 2 && rows.every((r) => r.dataset.state === "connected");
    }, null, T);
    console.log("nodes table: ok (two nodes, backplane connected)");

    // A burst of 300 messages in about a second: the messages/s chart shows it, in and out
    // (each publish is echoed to alice and bob). Presence polling alone is a few per second.
    const quiet = await last(alice, "messages");
    await alice.evaluate(async () => {
      for (let i = 0; i < 30; i++) {
        for (let j = 0; j < 10; j++) client.publish("lobby", "burst " + (i * 10 + j));
        await new Promise((r) => setTimeout(r, 33));
      }
    });
    await alice.waitForFunction(() => {
      const [rin, rout] = document.getElementById("chart-messages").dataset.last.split(",").map(Number);
      return rin >= 50 && rout >= 100;
    }, null, T);
    const [rin, rout] = await last(alice, "messages");
    console.log("messages chart: ok (quiet " + quiet.map((v) => v.toFixed(1)).join("/") + " per s; burst in " + rin.toFixed(0) + "/s, out " + rout.toFixed(0) + "/s)");

    // Refused upgrades (a token that is not a JWT: 401) show in the refusals chart.
    await alice.evaluate(() => new Promise((resolve) => {
      const url = new URL("/ws", location.href);
      url.protocol = "ws:";
      for (let i = 0; i < 5; i++) new WebSocket(url, ["bearer", "not-a-jwt"]).onclose = resolve;
    }));
    // Five refusals within about a second: at least two in one sample, whichever way they fall.
    await alice.waitForFunction(() => Number(document.getElementById("chart-refusals").dataset.peak) >= 2, null, T);
    console.log("refusals chart: ok (peak " + (await alice.$eval("#chart-refusals", (s) => Number(s.dataset.peak).toFixed(1))) + "/s)");
    await alice.waitForFunction(() => Number(document.getElementById("chart-connections").dataset.points) >= 5, null, T);

    const dana = await browser.newPage();
    await dana.goto(tokenUrl);
    await dana.fill("#user", "not-used");
    await dana.fill("#token", token);
    await dana.click("#connect button");
    await dana.waitForFunction(() => document.getElementById("state").textContent === "connected with a token", null, T);
    await dana.click("#join button");
    await dana.waitForFunction(() => document.getElementById("members").textContent === "dana", null, T);
    console.log("bearer subprotocol: ok (the token's subject, " + (await text(dana, "members")) + ", is the user)");

    // A rolling restart of node B: carol's page gets 1012 and comes back by itself.
    const carol = await browser.newPage();
    await connect(carol, "http://" + nodeB.addr + "/", "carol");
    await alice.waitForFunction(() => document.getElementById("members").textContent === "alice, bob, carol", null, T);
    const port = nodeB.addr.split(":").pop();
    const code = await stop(nodeB.child);
    if (code !== 0) throw new Error("node B exited with " + code);
    await carol.waitForFunction(() => document.getElementById("log").textContent.includes("server restarting (1012)"), null, T);
    let nodeB2 = await gateway(port);
    await carol.waitForFunction(() => document.getElementById("state").textContent === "connected as carol", null, T);
    // Re-joined: a message published on node A reaches carol on the new node B (sent again
    // each second until it does: node B subscribes to the room on Redis as carol re-joins).
    await carol.waitForFunction(() => document.getElementById("members").textContent === "alice, bob, carol", null, T);
    const arrived = () => carol.evaluate(() => document.getElementById("log").textContent.includes('[lobby] alice: "welcome back"'));
    for (let i = 0; i < 10 && !(await arrived()); i++) {
      await alice.fill("#text", "welcome back");
      await alice.click("#say button");
      await new Promise((r) => setTimeout(r, 1000));
    }
    if (!(await arrived())) throw new Error("carol did not hear alice after the restart");
    console.log("restart: ok (1012, reconnected and re-joined by itself)");
    // Every message once and in order: gina (node B) follows a room with history that alice
    // (node A) publishes to, across a dropped connection and a restart of node B.
    const gina = await browser.newPage();
    await gina.goto("http://" + nodeB.addr + "/");
    await gina.fill("#user", "gina");
    await gina.click("#connect button");
    await gina.waitForFunction(() => document.getElementById("state").textContent === "connected as gina", null, T);
    await gina.fill("#room", "ordered");
    await gina.click("#join button");
    await gina.evaluate(() => client.join("ordered"));
    await gina.evaluate(() => {
      window.got = [];
      window.lost = [];
      window.joins = [];
      client.on("message", (m) => m.room === "ordered" && got.push(m));
      client.on("joined", (j) => joins.push(j));
      client.on("lost", (l) => lost.push(l));
    });
    const publish = (from, to) => alice.evaluate(async ([from, to]) => {
      for (let n = from; n <= to; n++) await client.publish("ordered", n);
    }, [from, to]);
    const received = (n) => gina.waitForFunction((n) => got.length >= n, n, T);
    const inOrder = async (n, what) => {
      await new Promise((r) => setTimeout(r, 300)); // nothing more comes
      const got = await gina.evaluate(() => got.map((m) => [m.data, m.offset]));
      const data = got.map(([d]) => d), offsets = got.map(([, o]) => o);
      const want = Array.from({ length: n }, (_, i) => i + 1);
      if (JSON.stringify(data) !== JSON.stringify(want)) throw new Error(what + ": got " + JSON.stringify(data));
      if (offsets.some((o, i) => i > 0 && o !== offsets[i - 1] + 1)) throw new Error(what + ": offsets " + JSON.stringify(offsets));
    };
    await publish(1, 10);
    await received(10);
    await gina.evaluate(() => client._dropForTest());
    await publish(11, 20);
    await received(20);
    await inOrder(20, "a dropped connection");
    const stopped = await stop(nodeB2.child);
    if (stopped !== 0) throw new Error("node B exited with " + stopped);
    await publish(21, 30); // while node B is down: kept in Redis
    nodeB2 = await gateway(port);
    await gina.waitForFunction(() => document.getElementById("state").textContent === "connected as gina", null, T);
    await publish(31, 35);
    await received(35);
    await inOrder(35, "a gateway restart");
    const lostCount = await gina.evaluate(() => lost.length);
    if (lostCount !== 0 || !(await gina.isHidden("#notice"))) throw new Error("lost fired across a restart with the history in Redis");
    const rejoin = await gina.evaluate(() => joins[joins.length - 1]);
    if (!rejoin.recovered || rejoin.replayed < 10) throw new Error("the re-join after the restart: " + JSON.stringify(rejoin));
    console.log("recovery: ok (35 messages once and in order across a dropped connection and a restart of node B; " + rejoin.replayed + " replayed from Redis)");

    if (process.env.SCREENSHOT) {
      // The panel after all of the above: the burst, the refusals, node B's restart (its old id silent, its new one connected).
      await alice.waitForFunction(() => document.querySelectorAll("#nodes tr").length === 3, null, T);
      await alice.locator("aside").screenshot({ path: process.env.SCREENSHOT });
      console.log("screenshot: " + process.env.SCREENSHOT);
    }

    // Redis stops: this node's backplane shows disconnected in the nodes table.
    process.kill(Number(process.env.REDIS_PID), "SIGKILL");
    await alice.waitForFunction(() => {
      const first = document.querySelector("#nodes tr");
      return first && first.dataset.state === "disconnected";
    }, null, T);
    console.log("backplane state: ok (disconnected once Redis stopped)");
  } finally {
    await browser.close();
    for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
  }
})().catch((e) => {
  console.error("browser check failed:", e.message);
  for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
  process.exit(1);
});
