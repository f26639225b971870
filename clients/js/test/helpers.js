// Shared test helpers: a fake Murmur node (a `ws` server speaking the protocol's JSON frames as
// each test scripts it) and bounded waits.
import { afterEach } from "node:test";
import { WebSocket, WebSocketServer } from "ws";
import { Client } from "../dist/index.js";

/** Resolves with the next `name` event of `emitter` (a Client or Subscription); fails after `ms`. */
export function nextEvent(emitter, name, ms = 3000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(name, handler);
      reject(new Error(`no '${name}' event within ${ms} ms`));
    }, ms);
    const handler = (payload) => {
      clearTimeout(timer);
      emitter.off(name, handler);
      resolve(payload);
    };
    emitter.on(name, handler);
  });
}

/** Records every event of the given names, in order, as [name, payload]. */
export function record(emitter, names) {
  const seen = [];
  for (const name of names) emitter.on(name, (payload) => seen.push([name, payload]));
  return seen;
}

/** Polls `condition` every 10 ms until it holds; fails after `ms`. */
export async function until(what, condition, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting until ${what}`);
    await sleep(10);
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** One client connection to a {@link FakeNode}. */
export class FakeConnection {
  constructor(ws, node) {
    this.ws = ws;
    this.node = node;
    this.received = [];
    this.waiters = [];
    this.closed = new Promise((resolve) => ws.on("close", (code, reason) => resolve({ code, reason: String(reason) })));
    ws.on("message", (data) => {
      const frame = JSON.parse(String(data));
      if (frame.op === "hello" && node.answerHello) {
        this.hello = frame;
        this.send(node.welcome(frame));
      }
      this.received.push(frame);
      this.#wake();
    });
  }

  /** The next frame from the client whose op is `op` (any op when omitted), after those already taken. */
  next(op, ms = 3000) {
    return new Promise((resolve, reject) => {
      const waiter = { op, resolve };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`the client sent no '${op ?? "frame"}' within ${ms} ms (got ${JSON.stringify(this.received)})`));
      }, ms);
      waiter.resolve = (frame) => {
        clearTimeout(timer);
        resolve(frame);
      };
      this.waiters.push(waiter);
      this.#wake();
    });
  }

  #wake() {
    for (const waiter of [...this.waiters]) {
      const at = this.received.findIndex((f) => waiter.op === undefined || f.op === waiter.op);
      if (at < 0) continue;
      const [frame] = this.received.splice(at, 1);
      this.waiters = this.waiters.filter((w) => w !== waiter);
      waiter.resolve(frame);
    }
  }

  send(frame) {
    this.ws.send(JSON.stringify(frame));
  }

  /** Answers the client's next `sub` with `ok` and returns it. */
  async acceptSub() {
    const sub = await this.next("sub");
    this.send({ op: "ok", ref: sub.id });
    return sub;
  }

  close(code, reason) {
    this.ws.close(code, reason);
  }

  /** Drops the TCP connection without a close frame (as a killed node would). */
  kill() {
    this.ws.terminate();
  }
}

/** A fake node on 127.0.0.1: greets each connection with `welcome` and answers `hello`. */
export class FakeNode {
  static async start(name = "fake", options = {}) {
    const node = new FakeNode(name, options);
    await new Promise((resolve) => node.wss.on("listening", resolve));
    node.url = `ws://127.0.0.1:${node.wss.address().port}/ws`;
    return node;
  }

  constructor(name, { answerHello = true, greet = true } = {}) {
    this.name = name;
    this.answerHello = answerHello;
    this.connections = [];
    this.waiters = [];
    this.wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    this.wss.on("connection", (ws) => {
      const conn = new FakeConnection(ws, this);
      if (greet) conn.send(this.welcome({}));
      this.connections.push(conn);
      const waiters = this.waiters;
      this.waiters = [];
      for (const resolve of waiters) resolve();
    });
  }

  welcome(hello) {
    const frame = { op: "welcome", node: this.name, session: "0123456789abcdef", limits: {} };
    if (hello.batch) frame.batch = { max_events: 256, max_bytes: 65536 };
    return frame;
  }

  /** The `n`-th connection (0-based) once it exists. */
  async connection(n = 0, ms = 3000) {
    const deadline = Date.now() + ms;
    while (this.connections.length <= n) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no connection #${n} to ${this.name} within ${ms} ms`);
      await Promise.race([new Promise((resolve) => this.waiters.push(resolve)), sleep(left)]);
    }
    return this.connections[n];
  }

  /** Stops the node; again is a no-op (a test may stop it before its cleanup does). */
  async stop() {
    if (this.stopped) return;
    this.stopped = true;
    for (const client of this.wss.clients) client.terminate();
    await new Promise((resolve) => this.wss.close(resolve));
  }
}

/** An in-memory CursorStorage (the shape of localStorage). */
export class MemoryStorage {
  constructor() {
    this.map = new Map();
  }
  getItem(key) {
    return this.map.has(key) ? this.map.get(key) : null;
  }
  setItem(key, value) {
    this.map.set(key, String(value));
  }
  removeItem(key) {
    this.map.delete(key);
  }
}

export const event = (sub, topic, seq, extra = {}) => ({
  op: "event",
  sub,
  topic,
  epoch: "e1",
  seq,
  data: { n: seq },
  ts: 1000 + seq,
  ...extra,
});

/**
 * Fake nodes and clients for the tests of one file, reconnecting fast; each is stopped or
 * closed after every test.
 */
export function fakeNodesAndClients() {
  const fast = { WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 30 } };
  let cleanup = [];
  afterEach(async () => {
    for (const fn of cleanup.reverse()) await fn();
    cleanup = [];
  });
  return {
    async node(name = "n1") {
      const n = await FakeNode.start(name);
      cleanup.push(() => n.stop());
      return n;
    },
    client(urls, options = {}) {
      const c = new Client(urls, { ...fast, ...options });
      cleanup.push(() => c.close());
      return c;
    },
  };
}
