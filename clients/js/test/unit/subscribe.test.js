// Subscriptions: events, batches, duplicates, resume with cursors, gaps, persistence.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fakeNodesAndClients, MemoryStorage, event, nextEvent, record, sleep, until } from "../helpers.js";

const { node, client } = fakeNodesAndClients();
const seqs = (events) => events.map((e) => `${e.topic}#${e.seq}`);

describe("subscribe", () => {
  it("sends sub, says subscribed, delivers events and batches in order", async () => {
    const n1 = await node();
    const c = client(n1.url);
    const got = [];
    const sub = c.subscribe("chat.*", (e) => got.push(e));
    const viaEvent = record(sub, ["event"]);
    const conn = await n1.connection();
    const subscribed = nextEvent(sub, "subscribed");
    const frame = await conn.acceptSub();
    assert.deepEqual(frame, { op: "sub", id: sub.id, topic: "chat.*" }, "first sub starts at latest");
    assert.deepEqual(await subscribed, { recovered: false });
    conn.send(event(sub.id, "chat.a", 1));
    conn.send({ op: "batch", events: [event(sub.id, "chat.a", 2), event(sub.id, "chat.b", 1), event(sub.id, "chat.a", 3)] });
    await until("4 events", () => got.length === 4);
    assert.deepEqual(seqs(got), ["chat.a#1", "chat.a#2", "chat.b#1", "chat.a#3"]);
    assert.deepEqual(got[0], { topic: "chat.a", epoch: "e1", seq: 1, data: { n: 1 }, ts: 1001 });
    assert.equal(viaEvent.length, 4);
    assert.deepEqual(sub.cursor().topics, { "chat.a": { epoch: "e1", seq: 3 }, "chat.b": { epoch: "e1", seq: 1 } });
  });

  it("delivers the events of compact batch runs, each with its topic, epoch, seq and time", async () => {
    const n1 = await node();
    const c = client(n1.url, { batch: { compact: true } });
    const got = [];
    const sub = c.subscribe("chat.*", (e) => got.push(e));
    const conn = await n1.connection();
    await conn.acceptSub();
    conn.send({
      op: "batch",
      runs: [
        { sub: sub.id, topic: "chat.a", epoch: "e1", seq: 1, ts: 1000, data: [{ n: 1 }, { n: 2 }, { n: 3 }], dts: [0, 2] },
        { sub: sub.id, topic: "chat.b", epoch: "e2", seq: 7, ts: 1005, data: ["x"] },
        { sub: sub.id, topic: "chat.a", epoch: "e1", seq: 4, ts: 1006, data: [4, 5] },
      ],
    });
    await until("6 events", () => got.length === 6);
    assert.deepEqual(seqs(got), ["chat.a#1", "chat.a#2", "chat.a#3", "chat.b#7", "chat.a#4", "chat.a#5"]);
    assert.deepEqual(got.map((e) => e.ts), [1000, 1000, 1002, 1005, 1006, 1006]);
    assert.deepEqual(got[3], { topic: "chat.b", epoch: "e2", seq: 7, data: "x", ts: 1005 });
    assert.deepEqual(got[4].data, 4);
    assert.deepEqual(sub.cursor().topics, { "chat.a": { epoch: "e1", seq: 5 }, "chat.b": { epoch: "e2", seq: 7 } });
  });

  it("drops duplicates by (epoch, seq), takes a new epoch", async () => {
    const n1 = await node();
    const c = client(n1.url);
    const got = [];
    const sub = c.subscribe("t", (e) => got.push(e));
    const conn = await n1.connection();
    await conn.acceptSub();
    for (const seq of [1, 2, 2, 1, 3]) conn.send(event(sub.id, "t", seq));
    conn.send(event(sub.id, "t", 1, { epoch: "e2" }));
    conn.send(event(sub.id, "t", 1, { epoch: "e2" }));
    await until("the new epoch's event", () => got.length === 4);
    await sleep(30);
    assert.deepEqual(got.map((e) => `${e.epoch}:${e.seq}`), ["e1:1", "e1:2", "e1:3", "e2:1"]);
  });

  it("resumes after a drop with a cursor (exact topic) and the topics form (wildcard), on the next node", async () => {
    const n1 = await node("n1");
    const n2 = await node("n2");
    const c = client([n1.url, n2.url]);
    const exact = [];
    const wild = [];
    const s1 = c.subscribe("t.x", (e) => exact.push(e));
    const s2 = c.subscribe("t.*", (e) => wild.push(e));
    const conn = await n1.connection();
    const first = [await conn.acceptSub(), await conn.acceptSub()];
    assert.equal(first.every((f) => !("from" in f)), true);
    conn.send(event(s1.id, "t.x", 5));
    conn.send({ op: "batch", events: [event(s2.id, "t.x", 5), event(s2.id, "t.y", 9)] });
    await until("events", () => exact.length === 1 && wild.length === 2);
    const resumed = [nextEvent(s1, "subscribed"), nextEvent(s2, "subscribed")];
    conn.close(4001, "slow_consumer");
    const conn2 = await n2.connection();
    const again = [await conn2.acceptSub(), await conn2.acceptSub()];
    const byId = Object.fromEntries(again.map((f) => [f.id, f]));
    assert.deepEqual(byId[s1.id].from, { epoch: "e1", seq: 5 });
    assert.deepEqual(byId[s2.id].from.topics, { "t.x": { epoch: "e1", seq: 5 }, "t.y": { epoch: "e1", seq: 9 } });
    assert.equal(typeof byId[s2.id].from.since, "number");
    assert.deepEqual(await Promise.all(resumed), [{ recovered: true }, { recovered: true }]);
    // The replay overlaps what was seen: the overlap is dropped.
    for (const seq of [4, 5, 6, 7]) conn2.send(event(s1.id, "t.x", seq));
    await until("replay", () => exact.length === 3);
    assert.deepEqual(exact.map((e) => e.seq), [5, 6, 7]);
  });

  it("a subscription that saw nothing resumes from its start time (since), not latest", async () => {
    const n1 = await node();
    const c = client(n1.url);
    const before = Date.now();
    const sub = c.subscribe("quiet.>", () => {});
    const conn = await n1.connection();
    await conn.acceptSub();
    conn.kill();
    const conn2 = await n1.connection(1);
    const frame = await conn2.acceptSub();
    assert.deepEqual(frame.from.topics, {});
    assert.ok(frame.from.since >= before && frame.from.since <= Date.now(), `since ${frame.from.since}`);
    assert.equal(sub.active, true);
  });

  it("from: earliest, a cursor or since go in the first sub; earliest stays earliest until something is seen", async () => {
    const n1 = await node();
    const c = client(n1.url);
    const a = c.subscribe("a.>", () => {}, { from: "earliest" });
    const b = c.subscribe("b", () => {}, { from: { epoch: "E", seq: 7 } });
    const d = c.subscribe("d.*", () => {}, { from: { since: 1234 } });
    const conn = await n1.connection();
    const firstSubscribed = nextEvent(a, "subscribed");
    const frames = [await conn.acceptSub(), await conn.acceptSub(), await conn.acceptSub()];
    assert.deepEqual(await firstSubscribed, { recovered: false }, "an explicit start is not a recovery");
    assert.deepEqual(frames.map((f) => f.from), ["earliest", { epoch: "E", seq: 7 }, { topics: {}, since: 1234 }]);
    assert.deepEqual([a.id, b.id, d.id], frames.map((f) => f.id));
    const subscribed = nextEvent(a, "subscribed");
    conn.kill();
    const conn2 = await n1.connection(1);
    const again = [await conn2.acceptSub(), await conn2.acceptSub(), await conn2.acceptSub()];
    assert.deepEqual(again.map((f) => f.from), ["earliest", { epoch: "E", seq: 7 }, { topics: {}, since: 1234 }]);
    assert.deepEqual(await subscribed, { recovered: true });
    assert.throws(() => c.subscribe("w.*", () => {}, { from: { epoch: "E", seq: 1 } }), /wildcard/);
    assert.throws(() => c.subscribe("g", () => {}, { group: "g", from: "earliest" }), /queue-group/);
    assert.throws(() => c.subscribe("g", () => {}, { from: { epoch: "", seq: 1 } }), /epoch/);
  });

  it("gap: reported, the cursor moves past it; epoch_changed forgets the old epoch", async () => {
    const n1 = await node();
    const c = client(n1.url);
    const sub = c.subscribe("g.*", () => {}, { from: { topics: { "g.a": { epoch: "e1", seq: 2 }, "g.b": { epoch: "old", seq: 4 } } } });
    const gaps = record(sub, ["gap"]);
    const conn = await n1.connection();
    await conn.acceptSub();
    conn.send({ op: "gap", sub: sub.id, topic: "g.a", epoch: "e1", from_seq: 3, to_seq: 8, reason: "retention" });
    conn.send({ op: "gap", sub: sub.id, topic: "g.b", epoch: "old", from_seq: 5, to_seq: 0, reason: "epoch_changed" });
    await until("two gaps", () => gaps.length === 2);
    assert.deepEqual(gaps.map(([, g]) => g), [
      { topic: "g.a", epoch: "e1", from: 3, to: 8, reason: "retention" },
      { topic: "g.b", epoch: "old", from: 5, to: null, reason: "epoch_changed" },
    ]);
    assert.deepEqual(sub.cursor().topics, { "g.a": { epoch: "e1", seq: 8 } });
    const got = [];
    sub.on("event", (e) => got.push(e.seq));
    conn.send(event(sub.id, "g.a", 8));
    conn.send(event(sub.id, "g.a", 9));
    await until("event 9", () => got.length === 1);
    assert.deepEqual(got, [9], "what the gap covered is not delivered again");
  });

  it("a refused sub: error then unsubscribed with the code; not sent again", async () => {
    const n1 = await node();
    const c = client(n1.url);
    const sub = c.subscribe("bad..topic", () => {});
    const seen = record(sub, ["error", "unsubscribed"]);
    const conn = await n1.connection();
    const frame = await conn.next("sub");
    conn.send({ op: "error", code: "invalid_topic", message: "empty token", ref: frame.id });
    await until("unsubscribed", () => seen.length === 2);
    assert.equal(seen[0][1].code, "invalid_topic");
    assert.deepEqual(seen[1], ["unsubscribed", { reason: "invalid_topic" }]);
    assert.equal(sub.active, false);
    conn.kill();
    const conn2 = await n1.connection(1);
    await assert.rejects(conn2.next("sub", 200), /no 'sub'/);
  });

  it("unsubscribe: unsub, resolved on ok, no more events, not resumed", async () => {
    const n1 = await node();
    const c = client(n1.url);
    const got = [];
    const sub = c.subscribe("u", (e) => got.push(e));
    const keep = c.subscribe("k", () => {});
    const conn = await n1.connection();
    await conn.acceptSub();
    await conn.acceptSub();
    const ended = nextEvent(sub, "unsubscribed");
    const done = sub.unsubscribe();
    const unsub = await conn.next("unsub");
    assert.deepEqual(unsub, { op: "unsub", id: sub.id });
    conn.send(event(sub.id, "u", 1));
    conn.send({ op: "ok", ref: sub.id });
    await done;
    assert.deepEqual(await ended, { reason: "unsubscribed" });
    assert.deepEqual(got, []);
    conn.kill();
    const conn2 = await n1.connection(1);
    assert.equal((await conn2.acceptSub()).id, keep.id);
    await assert.rejects(conn2.next("sub", 200), /no 'sub'/);
  });

  it("a refresh that no longer allows a subscription ends it (forbidden)", async () => {
    const n1 = await node();
    const c = client(n1.url);
    const sub = c.subscribe("secret.>", () => {});
    const errors = record(sub, ["error"]);
    const conn = await n1.connection();
    await conn.acceptSub();
    const ended = nextEvent(sub, "unsubscribed");
    conn.send({ op: "error", code: "forbidden", message: "no longer allowed", ref: sub.id });
    assert.deepEqual(await ended, { reason: "forbidden" });
    assert.equal(errors[0][1].code, "forbidden");
  });
});

describe("cursor persistence", () => {
  it("a new client with the same storage resumes where the last one stopped", async () => {
    const n1 = await node();
    const storage = new MemoryStorage();
    const first = client(n1.url, { storage, persistIntervalMs: 50 });
    const sub = first.subscribe("p.*", () => {});
    const conn = await n1.connection();
    await conn.acceptSub();
    conn.send({ op: "batch", events: [event(sub.id, "p.a", 1), event(sub.id, "p.a", 2), event(sub.id, "p.b", 4)] });
    await until("persisted", () => storage.getItem("murmur-cursor:p.*")?.includes('"p.b"'), 2000);
    await first.close();
    const stored = JSON.parse(storage.getItem("murmur-cursor:p.*"));
    assert.deepEqual(stored.topics, { "p.a": ["e1", 2], "p.b": ["e1", 4] });

    const second = client(n1.url, { storage });
    const sub2 = second.subscribe("p.*", () => {});
    const subscribed = nextEvent(sub2, "subscribed");
    const frame = await (await n1.connection(1)).acceptSub();
    assert.deepEqual(frame.from.topics, { "p.a": { epoch: "e1", seq: 2 }, "p.b": { epoch: "e1", seq: 4 } });
    assert.equal(frame.from.since, stored.since);
    assert.deepEqual(await subscribed, { recovered: true });
  });

  it("close() writes the cursor even inside the throttle interval; a damaged entry is ignored", async () => {
    const n1 = await node();
    const storage = new MemoryStorage();
    storage.setItem("murmur-cursor:q", "{not json");
    const c = client(n1.url, { storage, persistIntervalMs: 60_000 });
    const sub = c.subscribe("q", () => {});
    const conn = await n1.connection();
    assert.equal("from" in (await conn.acceptSub()), false);
    conn.send(event(sub.id, "q", 3));
    await until("cursor", () => sub.cursor().topics.q?.seq === 3);
    await c.close();
    assert.deepEqual(JSON.parse(storage.getItem("murmur-cursor:q")).topics, { q: ["e1", 3] });
  });

  it("a storage that throws is an error event, not a crash", async () => {
    const n1 = await node();
    const storage = { getItem: () => null, setItem: () => { throw new Error("quota"); }, removeItem() {} };
    const c = client(n1.url, { storage, persistIntervalMs: 0 });
    const errors = record(c, ["error"]);
    const got = [];
    const sub = c.subscribe("z", (e) => got.push(e));
    const conn = await n1.connection();
    await conn.acceptSub();
    conn.send(event(sub.id, "z", 1));
    await until("event and error", () => got.length === 1 && errors.length >= 1);
    assert.equal(errors[0][1].code, "storage_failed");
  });
});
