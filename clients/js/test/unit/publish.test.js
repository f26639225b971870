// Publishing (acknowledged and fire-and-forget), queue-group acks, token refresh.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fakeNodesAndClients, event, nextEvent, record, sleep, until } from "../helpers.js";

const { node, client } = fakeNodesAndClients();
const outcome = (promise) => promise.then((value) => ({ value }), (error) => ({ error }));

describe("publish", () => {
  it("resolves with epoch and seq once the node says ok; rejects with the node's code", async () => {
    const n1 = await node();
    const c = client(n1.url);
    const conn = await n1.connection();
    const stored = c.publish("chat.lobby", { text: "hi" }, { id: "msg-1" });
    const refused = outcome(c.publish("chat.*", 1));
    const p1 = await conn.next("pub");
    const p2 = await conn.next("pub");
    assert.deepEqual(p1, { op: "pub", topic: "chat.lobby", data: { text: "hi" }, ref: p1.ref, id: "msg-1" });
    assert.notEqual(p1.ref, p2.ref);
    // Answers come in any order, matched by ref.
    conn.send({ op: "error", code: "invalid_topic", message: "wildcards", ref: p2.ref });
    conn.send({ op: "ok", ref: p1.ref, epoch: "E", seq: 41 });
    assert.deepEqual(await stored, { epoch: "E", seq: 41 });
    const { error } = await refused;
    assert.equal(error.code, "invalid_topic");
    assert.equal(error.name, "MurmurError");
  });

  it("unavailable, rate_limited and forbidden reject with that code", async () => {
    const n1 = await node();
    const c = client(n1.url);
    const conn = await n1.connection();
    for (const code of ["unavailable", "rate_limited", "forbidden"]) {
      const result = outcome(c.publish("t", code));
      const pub = await conn.next("pub");
      conn.send({ op: "error", code, message: code, ref: pub.ref });
      assert.equal((await result).error.code, code);
    }
  });

  it("waits for a connection, then sends; rejects with connection_lost when the connection drops first", async () => {
    const n1 = await node();
    const c = client(n1.url);
    const early = c.publish("t", "queued before the welcome");
    const conn = await n1.connection();
    const pub = await conn.next("pub");
    assert.equal(pub.data, "queued before the welcome");
    conn.send({ op: "ok", ref: pub.ref, epoch: "E", seq: 1 });
    assert.deepEqual(await early, { epoch: "E", seq: 1 });
    const lost = outcome(c.publish("t", "in flight"));
    await conn.next("pub");
    conn.kill();
    assert.equal((await lost).error.code, "connection_lost");
  });

  it("times out without an answer; queue_full beyond maxQueuedPublishes while disconnected", async () => {
    const n1 = await node();
    const c = client(n1.url, { publishTimeoutMs: 100, maxQueuedPublishes: 2 });
    const conn = await n1.connection();
    await nextEvent(c, "connected");
    const silent = outcome(c.publish("t", 1));
    await conn.next("pub");
    assert.equal((await silent).error.code, "timeout");
    await n1.stop();
    await nextEvent(c, "disconnected");
    const queued = [outcome(c.publish("t", 1)), outcome(c.publish("t", 2))];
    const full = await outcome(c.publish("t", 3));
    assert.equal(full.error.code, "queue_full");
    assert.equal(c.publishNoAck("t", 4), false);
    // The queued ones time out too (no connection came).
    for (const r of await Promise.all(queued)) assert.equal(r.error.code, "timeout");
    await assert.rejects(c.publish("t", undefined), TypeError);
  });

  it("publishNoAck sends a pub without ref; its refusal is a client error event", async () => {
    const n1 = await node();
    const c = client(n1.url);
    const conn = await n1.connection();
    await nextEvent(c, "connected");
    assert.equal(c.publishNoAck("x", [1, 2]), true);
    assert.deepEqual(await conn.next("pub"), { op: "pub", topic: "x", data: [1, 2] });
    const error = nextEvent(c, "error");
    conn.send({ op: "error", code: "invalid_topic", message: "bad" });
    assert.equal((await error).code, "invalid_topic");
  });
});

describe("queue groups", () => {
  it("acks when the handler's promise resolves, not before; groups are not deduplicated or resumed", async () => {
    const n1 = await node();
    const c = client(n1.url);
    let release;
    const gate = new Promise((resolve) => (release = resolve));
    const got = [];
    const sub = c.subscribe("jobs.>", async (e) => {
      got.push(e);
      await gate;
    }, { group: "workers" });
    const conn = await n1.connection();
    const frame = await conn.acceptSub();
    assert.deepEqual(frame, { op: "sub", id: sub.id, topic: "jobs.>", group: "workers" });
    conn.send(event(sub.id, "jobs.a", 5, { delivery: "17", redelivered: false }));
    // A redelivery of an older seq (another member's unacked event) must reach the handler.
    conn.send(event(sub.id, "jobs.a", 3, { delivery: "18", redelivered: true }));
    await until("two deliveries", () => got.length === 2);
    assert.deepEqual(got.map((e) => [e.seq, e.redelivered]), [[5, false], [3, true]]);
    await assert.rejects(conn.next("ack", 100), /no 'ack'/);
    release();
    const acks = [await conn.next("ack"), await conn.next("ack")];
    assert.deepEqual(acks.map((a) => a.delivery).sort(), ["17", "18"]);
    assert.equal(sub.cursor(), null);
    conn.kill();
    const again = await (await n1.connection(1)).acceptSub();
    assert.equal("from" in again, false, "a group member does not resume");
  });

  it("a synchronous handler is acked when it returns; a failing one is not acked and reported", async () => {
    const n1 = await node();
    const c = client(n1.url);
    const sub = c.subscribe("jobs", (e) => {
      if (e.seq === 2) throw new Error("boom");
      if (e.seq === 3) return Promise.reject(new Error("async boom"));
    }, { group: "w" });
    const errors = record(sub, ["error"]);
    const conn = await n1.connection();
    await conn.acceptSub();
    for (const seq of [1, 2, 3, 4]) conn.send(event(sub.id, "jobs", seq, { delivery: `d${seq}` }));
    const acked = [await conn.next("ack"), await conn.next("ack")];
    assert.deepEqual(acked.map((a) => a.delivery), ["d1", "d4"]);
    await until("two errors", () => errors.length === 2);
    assert.deepEqual(errors.map(([, e]) => e.code), ["handler_failed", "handler_failed"]);
    await assert.rejects(conn.next("ack", 100), /no 'ack'/);
  });

  it("ack: 'manual' leaves it to event.ack(), which is void once the connection is gone", async () => {
    const n1 = await node();
    const c = client(n1.url);
    const got = [];
    const sub = c.subscribe("m", (e) => got.push(e), { group: "w", ack: "manual" });
    const conn = await n1.connection();
    await conn.acceptSub();
    conn.send(event(sub.id, "m", 1, { delivery: "a" }));
    conn.send(event(sub.id, "m", 2, { delivery: "b" }));
    await until("two", () => got.length === 2);
    await assert.rejects(conn.next("ack", 100), /no 'ack'/);
    assert.equal(got[0].ack(), true);
    assert.equal(got[0].ack(), true, "idempotent");
    assert.deepEqual(await conn.next("ack"), { op: "ack", delivery: "a" });
    await assert.rejects(conn.next("ack", 100), /no 'ack'/, "sent once");
    conn.kill();
    await nextEvent(c, "connected");
    assert.equal(got[1].ack(), false, "the node handed it on when the connection ended");
    await sleep(50);
    assert.equal((await n1.connection(1)).received.some((f) => f.op === "ack"), false);
  });
});

describe("tokens", () => {
  it("getToken on connect; on expiring it refreshes with a new token", async () => {
    const n1 = await node();
    let issued = 0;
    const c = client(n1.url, { getToken: async () => `tok-${++issued}` });
    const conn = await n1.connection();
    await nextEvent(c, "connected");
    assert.equal(conn.hello.token, "tok-1");
    const refreshed = nextEvent(c, "refreshed");
    conn.send({ op: "expiring", in_ms: 29000 });
    const refresh = await conn.next("refresh");
    assert.equal(refresh.token, "tok-2");
    conn.send({ op: "ok", ref: refresh.ref, expires_at: 1900000000000 });
    assert.deepEqual(await refreshed, { expiresAt: 1900000000000 });
    // A refused refresh is an error event; the connection stays.
    const error = nextEvent(c, "error");
    conn.send({ op: "expiring", in_ms: 1000 });
    const second = await conn.next("refresh");
    conn.send({ op: "error", code: "unauthorized", message: "another user", ref: second.ref });
    assert.equal((await error).code, "unauthorized");
    assert.equal(c.state, "connected");
  });

  it("a getToken that throws is an error, then a retry", async () => {
    const n1 = await node();
    let calls = 0;
    const c = client(n1.url, {
      getToken: () => {
        calls += 1;
        if (calls === 1) throw new Error("auth server down");
        return "ok-token";
      },
    });
    const seen = record(c, ["error", "disconnected", "connected"]);
    await nextEvent(c, "connected");
    assert.deepEqual(seen.map(([n]) => n), ["error", "disconnected", "connected"]);
    assert.equal(seen[0][1].code, "token_unavailable");
    assert.equal((await n1.connection()).hello.token, "ok-token");
  });

  it("a static token goes in hello", async () => {
    const n1 = await node();
    const c = client(n1.url, { token: "static" });
    await nextEvent(c, "connected");
    assert.equal((await n1.connection()).hello.token, "static");
  });
});
