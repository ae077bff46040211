// Drives the gateway's demo page (GET /) in a real Chromium: two people chat in a room and
// see each other's presence and the live counters; a third connects with a JWT sent as the
// ["bearer", token] subprotocol, which the browser accepts only if the server selects it.
// Usage: node demo_page.js ANONYMOUS_URL TOKEN_URL TOKEN   (run by scripts/browser_check.sh)
"use strict";
const { chromium } = require("playwright-core");

const [anonUrl, tokenUrl, token] = process.argv.slice(2);
const T = { timeout: 10000 };
const text = (page, id) => page.textContent("#" + id);

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox"],
  });
  try {
    const alice = await browser.newPage();
    const bob = await browser.newPage();
    for (const [page, name] of [[alice, "alice"], [bob, "bob"]]) {
      await page.goto(anonUrl);
      await page.fill("#user", name);
      await page.click("#connect button");
      await page.waitForFunction((n) => document.getElementById("state").textContent === "connected as " + n, name, T);
      await page.click("#join button");
    }
    await alice.fill("#text", "hello from a browser");
    await alice.click("#say button");
    await bob.waitForFunction(() => document.getElementById("log").textContent.includes('[lobby] alice: "hello from a browser"'), null, T);
    await bob.waitForFunction(() => document.getElementById("members").textContent === "alice, bob", null, T);
    await bob.waitForFunction(() => document.getElementById("connections").textContent === "2", null, T);
    console.log("chat, presence and stats: ok (" + (await text(bob, "members")) + ")");

    const dana = await browser.newPage();
    await dana.goto(tokenUrl);
    await dana.fill("#user", "not-used");
    await dana.fill("#token", token);
    await dana.click("#connect button");
    await dana.waitForFunction(() => document.getElementById("state").textContent === "connected with a token", null, T);
    await dana.click("#join button");
    await dana.waitForFunction(() => document.getElementById("members").textContent === "dana", null, T);
    console.log("bearer subprotocol: ok (the token's subject, " + (await text(dana, "members")) + ", is the user)");
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error("browser check failed:", e.message);
  process.exit(1);
});
