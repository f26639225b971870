// States, reconnection and every close code, against fake nodes.
import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import { WebSocket } from "ws";
import { Client } from "../../dist/index.js";
import { FakeNode, nextEvent, record, sleep, until } from "../helpers.js";

const fast = { WebSocket, reconnect: { initialDelayMs: 20, maxDelayMs: 50 } };
let cleanup = [];
afterEach(async () => {
  for (const fn of cleanup.reverse()) await fn();
  cleanup = [];
});
async function nodes(...names) {
  const started = await Promise.all(names.map((n) => FakeNode.start(n)));
  cleanup.push(() => Promise.all(started.map((n) => n.stop())));
  return started;
}
function client(urls, options = {}) {
  const c = new Client(urls, { ...fast, ...options });
  cleanup.push(() => c.close());
  return c;
}

describe("connecting", () => {
  it("goes disconnected → connecting → connected, says hello with batches and its name", async () => {
    const [n1] = await nodes("n1");
    const c = client(n1.url, { clientName: "unit" });
    assert.equal(c.state, "disconnected");
    const seen = record(c, ["connecting", "connected", "disconnected"]);
    const connected = await nextEvent(c, "connected");
    assert.deepEqual(connected, { url: n1.url, node: "n1", session: "0123456789abcdef" });
    assert.deepEqual(seen.map(([name]) => name), ["connecting", "connected"]);
    assert.deepEqual(seen[0][1], { url: n1.url, attempt: 1 });
    assert.equal(c.state, "connected");
    assert.equal(c.node, "n1");
    const conn = await n1.connection();
    assert.deepEqual(conn.hello, { op: "hello", client: "unit", batch: true });
  });

  it("asks for the batch bounds given, or none", async () => {
    const [n1, n2] = await nodes("n1", "n2");
    const bounded = client(n1.url, { batch: { maxEvents: 10, maxBytes: 4096 } });
    const plain = client(n2.url, { batch: false });
    await Promise.all([nextEvent(bounded, "connected"), nextEvent(plain, "connected")]);
    assert.deepEqual((await n1.connection()).hello.batch, { max_events: 10, max_bytes: 4096 });
    assert.equal("batch" in (await n2.connection()).hello, false);
    const [n3] = await nodes("n3");
    const compact = client(n3.url, { batch: { compact: true } });
    await nextEvent(compact, "connected");
    assert.deepEqual((await n3.connection()).hello.batch, { compact: true });
  });

  it("is connected only once the node answered hello (the first welcome is unasked)", async () => {
    const silent = await FakeNode.start("silent", { answerHello: false });
    cleanup.push(() => silent.stop());
    const c = client(silent.url, { connectTimeoutMs: 200 });
    const conn = await silent.connection();
    await conn.next("hello");
    await sleep(50);
    assert.equal(c.state, "connecting");
    const dropped = await nextEvent(c, "disconnected");
    assert.equal(dropped.code, null);
    assert.match(dropped.reason, /no welcome within 200 ms/);
  });

  it("rejects bad URLs and a missing WebSocket at once", () => {
    assert.throws(() => new Client([], fast), /at least one/);
    assert.throws(() => new Client("http://x/ws", fast), /ws:\/\/ or wss:\/\//);
    assert.throws(() => new Client("not a url", fast), /not a URL/);
    const saved = globalThis.WebSocket;
    try {
      delete globalThis.WebSocket;
      assert.throws(() => new Client("ws://127.0.0.1:1/ws"), /WebSocket/);
    } finally {
      if (saved) globalThis.WebSocket = saved;
    }
  });
});

describe("close codes", () => {
  // 4000–4499 and the standard ones: reconnect (with backoff) to the next URL.
  for (const code of [1000, 1009, 1011, 4000, 4001, 4002, 4100, 4499]) {
    it(`${code}: reconnects to the next node`, async () => {
      const [n1, n2] = await nodes("n1", "n2");
      const c = client([n1.url, n2.url]);
      await nextEvent(c, "connected");
      const dropped = nextEvent(c, "disconnected");
      (await n1.connection()).close(code, "why");
      const d = await dropped;
      assert.equal(d.code, code);
      assert.equal(d.reason, "why");
      assert.equal(d.url, n1.url);
      assert.ok(d.reconnectInMs >= 0 && d.reconnectInMs <= 20, `first retry within the floor: ${d.reconnectInMs}`);
      const again = await nextEvent(c, "connected");
      assert.equal(again.node, "n2");
    });
  }

  for (const [code, reason] of [
    [1001, "shutting_down"],
    [4003, "resync"],
  ]) {
    it(`${code} (${reason}): moves to another node at once`, async () => {
      const [n1, n2] = await nodes("n1", "n2");
      const c = client([n1.url, n2.url], { reconnect: { initialDelayMs: 5000, maxDelayMs: 5000 } });
      await nextEvent(c, "connected");
      const dropped = nextEvent(c, "disconnected");
      (await n1.connection()).close(code, reason);
      assert.equal((await dropped).reconnectInMs, 0);
      assert.equal((await nextEvent(c, "connected", 1000)).node, "n2");
    });
  }

  it("a node killed without a close frame (1006): reconnects elsewhere", async () => {
    const [n1, n2] = await nodes("n1", "n2");
    const c = client([n1.url, n2.url]);
    await nextEvent(c, "connected");
    const dropped = nextEvent(c, "disconnected");
    (await n1.connection()).kill();
    assert.equal((await dropped).code, 1006);
    assert.equal((await nextEvent(c, "connected")).node, "n2");
  });

  for (const code of [4500, 4502, 4600, 4999]) {
    it(`${code}: closed for good, with the reason`, async () => {
      const [n1, n2] = await nodes("n1", "n2");
      const c = client([n1.url, n2.url], { getToken: () => "t" });
      await nextEvent(c, "connected");
      const sub = c.subscribe("a", () => {});
      await (await n1.connection()).acceptSub();
      const ended = nextEvent(sub, "unsubscribed");
      const closed = nextEvent(c, "closed");
      (await n1.connection()).close(code, "unauthorized");
      assert.deepEqual(await closed, { code, reason: "unauthorized" });
      assert.equal(c.state, "closed");
      assert.equal((await ended).reason, "unauthorized");
      await sleep(100);
      assert.equal(n2.connections.length, 0, "no reconnection");
    });
  }

  it("4501 without getToken: closed (a new token is needed)", async () => {
    const [n1] = await nodes("n1");
    const c = client(n1.url, { token: "old" });
    await nextEvent(c, "connected");
    const closed = nextEvent(c, "closed");
    (await n1.connection()).close(4501, "token_expired");
    assert.deepEqual(await closed, { code: 4501, reason: "token_expired" });
  });

  it("4501 with getToken: reconnects at once with a new token; a second 4501 in a row closes", async () => {
    const [n1, n2] = await nodes("n1", "n2");
    let issued = 0;
    const c = client([n1.url, n2.url], {
      getToken: async () => `token-${++issued}`,
      reconnect: { initialDelayMs: 5000, maxDelayMs: 5000 },
    });
    await nextEvent(c, "connected");
    assert.equal((await n1.connection()).hello.token, "token-1");
    const dropped = nextEvent(c, "disconnected");
    (await n1.connection()).close(4501, "token_expired");
    assert.equal((await dropped).reconnectInMs, 0);
    await nextEvent(c, "connected");
    assert.equal((await n2.connection()).hello.token, "token-2");
    // Accepted, then expired again: still renewable (a welcome came in between).
    (await n2.connection()).close(4501, "token_expired");
    await nextEvent(c, "connected");
    const conn = await n1.connection(1);
    assert.equal(conn.hello.token, "token-3");
    // This one refused before any welcome... simulated by closing again right away twice.
    n2.answerHello = false;
    const closed = nextEvent(c, "closed");
    conn.close(4501, "token_expired");
    (await n2.connection(1)).close(4501, "token_expired");
    assert.equal((await closed).code, 4501);
  });

  it("an error frame then a dropped socket counts as the error's close code", async () => {
    const [n1, n2] = await nodes("n1", "n2");
    const c = client([n1.url, n2.url], { reconnect: { initialDelayMs: 5000, maxDelayMs: 5000 } });
    await nextEvent(c, "connected");
    const errors = record(c, ["error"]);
    const dropped = nextEvent(c, "disconnected");
    const conn = await n1.connection();
    conn.send({ op: "error", code: "resync", message: "the node may have missed events" });
    await sleep(20);
    conn.kill();
    const d = await dropped;
    assert.equal(d.code, 4003, "treated as resync");
    assert.equal(d.reconnectInMs, 0);
    assert.deepEqual(errors, [], "the goodbye is not an error event");
  });

  it("backs off with full jitter, bounded, while no node answers", async () => {
    // Ports that refuse connections: bind then close.
    const [n1] = await nodes("n1");
    const url = n1.url;
    await n1.stop();
    cleanup = cleanup.slice(0, -1);
    const c = client([url], { reconnect: { initialDelayMs: 10, maxDelayMs: 40 } });
    const delays = [];
    c.on("disconnected", (d) => delays.push(d.reconnectInMs));
    await until("six attempts", () => delays.length >= 6, 5000);
    assert.ok(delays.every((d) => d >= 0 && d <= 40), `delays ${delays}`);
    assert.equal(c.state === "connecting" || c.state === "disconnected", true);
  });

  it("pings a silent node and drops it when it stays silent", async () => {
    const [n1, n2] = await nodes("n1", "n2");
    const c = client([n1.url, n2.url], { pingIntervalMs: 100, pongTimeoutMs: 100 });
    await nextEvent(c, "connected");
    const conn = await n1.connection();
    await conn.next("ping", 1000);
    const d = await nextEvent(c, "disconnected", 1000);
    assert.match(d.reason, /no answer to a ping/);
    assert.equal((await nextEvent(c, "connected")).node, "n2");
  });

  it("a node that answers pings keeps the connection", async () => {
    const [n1] = await nodes("n1");
    const c = client(n1.url, { pingIntervalMs: 60, pongTimeoutMs: 60 });
    await nextEvent(c, "connected");
    const conn = await n1.connection();
    for (let i = 0; i < 4; i++) {
      await conn.next("ping", 1000);
      conn.send({ op: "pong" });
    }
    assert.equal(c.state, "connected");
    assert.equal(n1.connections.length, 1);
  });

  it("close() ends it all: closed, subscriptions ended, publishes rejected", async () => {
    const [n1] = await nodes("n1");
    const c = new Client(n1.url, fast);
    await nextEvent(c, "connected");
    const sub = c.subscribe("a.>", () => {});
    const ended = nextEvent(sub, "unsubscribed");
    const inflight = c.publish("a.b", 1).catch((err) => err);
    await (await n1.connection()).next("pub");
    const closed = nextEvent(c, "closed");
    await c.close();
    assert.deepEqual(await closed, { code: 1000, reason: "closed by the client" });
    assert.deepEqual(await ended, { reason: "closed" });
    assert.equal((await inflight).code, "closed");
    await assert.rejects(c.publish("a.b", 2), { code: "closed" });
    assert.throws(() => c.subscribe("x", () => {}), { code: "closed" });
    assert.equal((await (await n1.connection()).closed).code, 1000);
  });
});
