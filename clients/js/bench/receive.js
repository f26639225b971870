// The client's receive path, in events per second on one connection:
//   1. against a real node: one `murmur serve` (MURMUR_BIN, else target/release/murmur, else
//      target/debug/murmur), a publisher in another process, this process subscribed with
//      murmur-client (batch frames, the default) counting events;
//   2. in process: the same client fed prepared batch frames by a fake socket, which is the
//      client's own cost alone (JSON parsing, duplicate check, cursor, handler call).
// Usage: npm run bench [-- --events N]
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import dgram from "node:dgram";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { WebSocket } from "ws";
import { Client } from "../dist/index.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "../../..");
const eventsArg = process.argv.indexOf("--events");
const EVENTS = eventsArg > 0 ? Number(process.argv[eventsArg + 1]) : 300_000;
const TOPICS = 8;
const PAD = 64;

function murmurBinary() {
  const candidates = [process.env.MURMUR_BIN, path.join(repoRoot, "target/release/murmur"), path.join(repoRoot, "target/debug/murmur")];
  const found = candidates.find((p) => p && fs.existsSync(p));
  if (!found) throw new Error("no murmur binary: cargo build --release -p murmur (or set MURMUR_BIN)");
  return found;
}

async function freePort(kind) {
  if (kind === "udp") {
    const s = dgram.createSocket("udp4");
    await new Promise((r) => s.bind(0, "127.0.0.1", r));
    const { port } = s.address();
    await new Promise((r) => s.close(r));
    return port;
  }
  const s = net.createServer();
  await new Promise((r) => s.listen(0, "127.0.0.1", r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function againstNode() {
  const bin = murmurBinary();
  const listen = await freePort("tcp");
  const args = [
    "serve", "--name", "bench",
    "--listen", `127.0.0.1:${listen}`,
    "--admin-listen", `127.0.0.1:${await freePort("tcp")}`,
    "--gossip", `127.0.0.1:${await freePort("udp")}`,
    "--quic", `127.0.0.1:${await freePort("udp")}`,
    "--outbound-queue", "65536",
    "--history-max-events", "0",
  ];
  const env = { ...process.env, MURMUR_LOG: "warn" };
  delete env.MURMUR_CONFIG;
  const node = spawn(bin, args, { stdio: "ignore", env });
  try {
    const deadline = Date.now() + 20_000;
    for (;;) {
      try {
        if ((await fetch(`http://127.0.0.1:${listen}/readyz`)).status === 200) break;
      } catch {
        // not up yet
      }
      if (Date.now() > deadline) throw new Error("the node did not become ready");
      await sleep(50);
    }
    const url = `ws://127.0.0.1:${listen}/ws`;
    const client = new Client(url, { WebSocket });
    let received = 0;
    let first = 0;
    let drops = 0;
    let cpuAtFirst = null;
    client.on("disconnected", () => (drops += 1));
    let timer;
    const done = new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out: ${received} of ${EVENTS} received`)), 180_000);
      client.subscribe("bench.*", () => {
        if (received === 0) {
          first = performance.now();
          cpuAtFirst = process.cpuUsage();
        }
        received += 1;
        if (received === EVENTS) resolve();
      });
    });
    await new Promise((resolve) => client.on("connected", resolve));
    await sleep(200);
    const publisher = spawn(process.execPath, [path.join(here, "publisher.js"), url, String(EVENTS), String(TOPICS), String(PAD)], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    const publisherExit = new Promise((resolve) => publisher.on("exit", resolve));
    let published = "";
    publisher.stdout.on("data", (d) => (published += d));
    try {
      await done;
    } catch (err) {
      publisher.kill();
      throw err;
    } finally {
      clearTimeout(timer);
    }
    const ms = performance.now() - first;
    const cpu = process.cpuUsage(cpuAtFirst);
    await publisherExit;
    await client.close();
    return {
      binary: path.relative(repoRoot, bin),
      received,
      ms,
      perSecond: Math.round((received / ms) * 1000),
      clientCpuUsPerEvent: (cpu.user + cpu.system) / received,
      reconnections: drops,
      publisher: JSON.parse(published.trim() || "{}"),
    };
  } finally {
    node.kill("SIGKILL");
  }
}

/** A socket that plays a node: welcomes, answers the sub, then is fed frames by the bench. */
class FeedSocket {
  static last = null;
  constructor() {
    this.readyState = 1;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FeedSocket.last = this;
    setTimeout(() => {
      this.onopen?.({});
      this.onmessage?.({ data: '{"op":"welcome","node":"feed","session":"0"}' });
    }, 0);
  }
  send(text) {
    const frame = JSON.parse(text);
    if (frame.op === "hello") setTimeout(() => this.onmessage?.({ data: '{"op":"welcome","node":"feed","session":"0"}' }), 0);
    if (frame.op === "sub") setTimeout(() => this.onmessage?.({ data: JSON.stringify({ op: "ok", ref: frame.id }) }), 0);
  }
  close() {}
}

async function inProcess() {
  const client = new Client("ws://feed.invalid/ws", { WebSocket: FeedSocket, pingIntervalMs: 3_600_000 });
  let received = 0;
  const sub = client.subscribe("bench.*", () => {
    received += 1;
  });
  await new Promise((resolve) => sub.on("subscribed", resolve));
  const perFrame = 256;
  const frames = [];
  const seqs = new Array(TOPICS).fill(0);
  const pad = "x".repeat(PAD);
  for (let i = 0; i < EVENTS; i += perFrame) {
    const events = [];
    for (let j = i; j < Math.min(EVENTS, i + perFrame); j++) {
      const t = j % TOPICS;
      seqs[t] += 1;
      events.push(`{"op":"event","sub":"${sub.id}","topic":"bench.t${t}","epoch":"1a24e96bc37-0b1524b4","seq":${seqs[t]},"data":{"n":${j},"pad":"${pad}"},"ts":${1795645060597 + j}}`);
    }
    frames.push(`{"op":"batch","events":[${events.join(",")}]}`);
  }
  const socket = FeedSocket.last;
  const start = performance.now();
  for (const data of frames) socket.onmessage({ data });
  const ms = performance.now() - start;
  await client.close();
  if (received !== EVENTS) throw new Error(`received ${received} of ${EVENTS}`);
  return { received, ms, perSecond: Math.round((received / ms) * 1000), eventsPerFrame: perFrame };
}

const machine = `${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? "unknown"}), Node ${process.version}`;
console.log(`murmur-client receive path, ${EVENTS} events of ~${PAD + 40} bytes on ${TOPICS} topics; ${machine}`);
const live = await againstNode();
console.log(
  `against a real node (${live.binary}): ${live.perSecond.toLocaleString("en")} events/s received on one connection ` +
    `(${live.received} in ${live.ms.toFixed(0)} ms; client CPU ${live.clientCpuUsPerEvent.toFixed(2)} µs/event; ` +
    `publisher sent ${live.publisher.perSecond?.toLocaleString("en")}/s; reconnections ${live.reconnections})`,
);
const fed = await inProcess();
console.log(
  `in process (batch frames of ${fed.eventsPerFrame}, no socket): ${fed.perSecond.toLocaleString("en")} events/s ` +
    `(${fed.received} in ${fed.ms.toFixed(0)} ms)`,
);
