// The promise end to end, against a real 3-node cluster started here from target/debug/murmur:
// a subscriber whose node is killed mid-stream gets every event once, in order, or a gap; a
// new client with the persisted cursors resumes where the last one stopped.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { WebSocket } from "ws";
import { Client } from "../../dist/index.js";
import { startCluster } from "../cluster.js";
import { nextEvent, sleep, until } from "../helpers.js";

const options = { WebSocket, reconnect: { initialDelayMs: 50, maxDelayMs: 500 } };
let cluster;
const clients = [];
function client(urls, extra = {}) {
  const c = new Client(urls, { ...options, ...extra });
  clients.push(c);
  return c;
}

before(async () => {
  cluster = await startCluster(3);
});
after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await cluster?.stop();
});

/** Publishes to each topic in turn, one at a time per topic, until stopped; records what was acknowledged. */
function steadyPublisher(publisher, topics) {
  const acked = [];
  const refused = [];
  let stopped = false;
  const loops = topics.map(async (topic) => {
    for (let n = 0; !stopped; n++) {
      try {
        const { epoch, seq } = await publisher.publish(topic, { n });
        acked.push({ topic, epoch, seq });
      } catch (err) {
        refused.push(err.code);
      }
      await sleep(5);
    }
  });
  return {
    acked,
    refused,
    async stop() {
      stopped = true;
      await Promise.all(loops);
    },
  };
}

/** Checks the stream a subscription saw: per topic, each event follows the last one or a gap. */
function checkOncePerTopicInOrder(received, gaps) {
  const last = new Map();
  const covered = (topic, epoch, from, to) =>
    gaps.some((g) => g.topic === topic && g.epoch === epoch && g.from <= from && (g.to === null || g.to >= to));
  for (const e of received) {
    const prev = last.get(e.topic);
    if (prev && prev.epoch === e.epoch) {
      assert.ok(e.seq > prev.seq, `${e.topic}: ${e.seq} after ${prev.seq} (a duplicate or out of order)`);
      if (e.seq !== prev.seq + 1) {
        assert.ok(covered(e.topic, e.epoch, prev.seq + 1, e.seq - 1), `${e.topic}: ${prev.seq + 1}..${e.seq - 1} missing without a gap`);
      }
    } else if (prev) {
      assert.ok(
        gaps.some((g) => g.topic === e.topic && g.epoch === prev.epoch && g.reason === "epoch_changed"),
        `${e.topic}: a new epoch without an epoch_changed gap`,
      );
    }
    last.set(e.topic, e);
  }
}

describe("a 3-node cluster", () => {
  it("a subscriber with compact batches gets every event of a burst, with its topic, epoch and seq", async () => {
    const subscriber = client(cluster.urls.slice(0, 1), { batch: { compact: true } });
    const received = [];
    const sub = subscriber.subscribe("compact.*", (e) => received.push(e));
    await nextEvent(sub, "subscribed", 10_000);
    await sleep(300);
    const publisher = client(cluster.urls.slice(1, 2));
    const topics = ["compact.a", "compact.b"];
    // A burst: every publish in flight at once, so events queue up and go out in runs.
    const acked = await Promise.all(
      Array.from({ length: 400 }, (_, n) => publisher.publish(topics[n % 2], { n }).then((p) => ({ ...p, topic: topics[n % 2], n }))),
    );
    await until("every event", () => received.length === acked.length, 10_000);
    const key = (e) => `${e.topic}/${e.epoch}/${e.seq}`;
    const byKey = new Map(received.map((e) => [key(e), e]));
    for (const a of acked) {
      const got = byKey.get(key(a));
      assert.ok(got, `${key(a)} not received`);
      assert.deepEqual(got.data, { n: a.n }, `${key(a)} carries its own data`);
    }
    checkOncePerTopicInOrder(received, []);
  });

  it("kill -9 the subscriber's node mid-stream: every event once, in order, or a gap", async () => {
    const subscriber = client(cluster.urls);
    const received = [];
    const gaps = [];
    const sub = subscriber.subscribe("kill.>", (e) => received.push(e));
    sub.on("gap", (g) => gaps.push(g));
    const connections = [];
    subscriber.on("connected", (c) => connections.push(c.node));
    await nextEvent(sub, "subscribed", 10_000);
    const victim = cluster.byName(subscriber.node);
    const others = cluster.nodes.filter((n) => n !== victim);
    // Lets the subscription's interest reach every topic's owner before the first publish.
    await sleep(300);
    const publisher = client(others.map((n) => n.url));
    const topics = ["kill.a", "kill.b", "kill.c", "kill.d", "kill.e", "kill.f"];
    const load = steadyPublisher(publisher, topics);
    await until("some events before the kill", () => received.length >= 60, 10_000);
    await victim.kill();
    const resumed = nextEvent(sub, "subscribed", 20_000);
    await sleep(2500);
    await load.stop();
    assert.deepEqual(await resumed, { recovered: true });
    assert.notEqual(subscriber.node, victim.name, "resumed on another node");

    const key = (e) => `${e.topic}/${e.epoch}/${e.seq}`;
    const seen = new Set();
    const missing = () => load.acked.filter((a) => !seen.has(key(a)) && !gaps.some((g) => g.topic === a.topic && g.epoch === a.epoch && a.seq >= g.from && (g.to === null || a.seq <= g.to)));
    await until(
      "every acknowledged event received or named by a gap",
      () => {
        for (const e of received) seen.add(key(e));
        return missing().length === 0;
      },
      20_000,
    ).catch((err) => {
      throw new Error(`${err.message}: ${missing().length} of ${load.acked.length} missing, e.g. ${JSON.stringify(missing().slice(0, 3))}`);
    });
    assert.ok(load.acked.length > 100, `published ${load.acked.length}`);
    assert.equal(new Set(received.map(key)).size, received.length, "no event twice");
    checkOncePerTopicInOrder(received, gaps);
    // Reconnected to a survivor. A survivor that notices the lost peer only after the
    // client reconnected there tells its plain subscribers to resync (its link to the peer
    // may have been dead before anyone knew, so what came over it could be missing): the
    // client then resumes once more, again from its cursors. Either way nothing is lost or
    // repeated (checked above), and it never goes back to the dead node.
    assert.ok(connections.length >= 2 && connections.length <= 3, `connected to ${connections}`);
    assert.ok(connections.slice(1).every((n) => n !== victim.name), `connected to ${connections}`);
    // The victim held its share of the topics' replicas, which live on: no gap is expected.
    assert.deepEqual(gaps, []);
  });

  it("a new client with the persisted cursors resumes where the last one stopped", async () => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "murmur-js-cursors-")), "cursors.json");
    // Cursors in a file, read again by a fresh storage object: as a restarted process would.
    const fileStorage = () => {
      const map = new Map(fs.existsSync(file) ? Object.entries(JSON.parse(fs.readFileSync(file, "utf8"))) : []);
      const save = () => fs.writeFileSync(file, JSON.stringify(Object.fromEntries(map)));
      return {
        getItem: (k) => map.get(k) ?? null,
        setItem: (k, v) => { map.set(k, v); save(); },
        removeItem: (k) => { map.delete(k); save(); },
      };
    };
    const live = cluster.nodes.filter((n) => n.child.exitCode === null && n.child.signalCode === null);
    assert.ok(live.length >= 2);
    const publisher = client(live.map((n) => n.url));
    const topics = ["resume.a", "resume.b"];

    const first = client([live[0].url], { storage: fileStorage() });
    const before = [];
    const sub1 = first.subscribe("resume.>", (e) => before.push(e));
    await nextEvent(sub1, "subscribed", 10_000);
    await sleep(300);
    for (let i = 1; i <= 5; i++) for (const t of topics) await publisher.publish(t, { i });
    await until("the first client got 10", () => before.length === 10, 10_000);
    await first.close();

    const missed = [];
    for (let i = 6; i <= 9; i++) for (const t of topics) missed.push(await publisher.publish(t, { i }));

    const second = client([live[1].url], { storage: fileStorage() });
    const after = [];
    const sub2 = second.subscribe("resume.>", (e) => after.push(e));
    const gaps = [];
    sub2.on("gap", (g) => gaps.push(g));
    assert.deepEqual(await nextEvent(sub2, "subscribed", 10_000), { recovered: true });
    await until("the missed 8 replayed", () => after.length >= 8, 10_000);
    await publisher.publish("resume.a", { i: 10 });
    await until("the live one", () => after.length >= 9, 10_000);
    await sleep(100);
    assert.deepEqual(
      after.map((e) => `${e.topic}#${e.seq}`).sort(),
      [...topics.flatMap((t) => [6, 7, 8, 9].map((s) => `${t}#${s}`)), "resume.a#10"].sort(),
    );
    assert.deepEqual(gaps, []);
    checkOncePerTopicInOrder([...before, ...after], []);
    await second.close();
    fs.rmSync(path.dirname(file), { recursive: true, force: true });
  });
});
