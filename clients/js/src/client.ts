import { fullJitterDelay } from "./backoff.js";
import { CursorStore } from "./cursor.js";
import { Emitter } from "./emitter.js";
import { MurmurError } from "./errors.js";
import { expandRun, type WireRun } from "./runs.js";
import {
  type EventHandler,
  Subscription,
  type SubscriptionHost,
  type WireEvent,
  type WireGap,
} from "./subscription.js";
import type {
  ClientEvents,
  ClientOptions,
  ClientState,
  Published,
  SubscribeOptions,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";

/** A frame from the node, as parsed JSON. */
type ServerFrame = { op?: unknown; [field: string]: unknown };

/**
 * The error codes the node sends just before closing, and the close code each stands for:
 * a client that missed the close frame (the node gives its goodbye at most a second) still
 * knows why it was dropped.
 */
const CLOSE_CODE_OF_ERROR: Record<string, number> = {
  shutting_down: 1001,
  frame_too_large: 1009,
  slow_consumer: 4001,
  idle_timeout: 4002,
  resync: 4003,
  unauthorized: 4500,
  token_expired: 4501,
};

/** A connection that stayed up this long was a success: the backoff starts again from its floor. */
const STABLE_CONNECTION_MS = 5_000;

/** An answer awaited from the node, matched by `ref`. */
interface PendingReply {
  onReply(frame: ServerFrame): void;
  /** The connection is gone before the answer came; `code` is `connection_lost` or `closed`. */
  onLost(code: string): void;
}

/** A publish waiting for a connection. */
interface QueuedPublish {
  frame: Record<string, unknown>;
  /** For acknowledged publishes: settles the caller's promise. */
  settle: PendingReply | null;
}

interface Connection {
  readonly ws: WebSocketLike;
  readonly url: string;
  readonly generation: number;
  welcomes: number;
  welcomed: boolean;
  node: string | null;
  connectedAt: number;
  lastFrameAt: number;
  pingSentAt: number | null;
  /** The code of an `error` frame without `ref`: what the node said before it closed. */
  closingError: string | null;
  connectTimer: ReturnType<typeof setTimeout> | null;
  watchdog: ReturnType<typeof setInterval> | null;
}

interface Settings {
  WebSocket: WebSocketConstructor;
  initialDelayMs: number;
  maxDelayMs: number;
  connectTimeoutMs: number;
  pingIntervalMs: number;
  pongTimeoutMs: number;
  publishTimeoutMs: number;
  maxQueuedPublishes: number;
  storageKey: string;
  persistIntervalMs: number;
}

/**
 * A connection to a Murmur cluster that survives drops: it reconnects to the next node URL
 * with full-jitter backoff, resumes every subscription from its cursors, and drops
 * duplicates, so each subscription sees every event once, in order per topic, or a `gap`
 * naming what can no longer be replayed.
 *
 * States (each also an event): `disconnected` → `connecting` → `connected`, and `closed`
 * for good. Other events: `error`, `refreshed`.
 *
 * ```ts
 * const client = new Client(["ws://127.0.0.1:7400/ws", "ws://127.0.0.1:7410/ws"]);
 * client.subscribe("chat.*", (e) => console.log(e.topic, e.seq, e.data));
 * const { seq } = await client.publish("chat.lobby", { text: "hi" });
 * ```
 */
export class Client extends Emitter<ClientEvents> {
  /** The node URLs, tried in turn. */
  readonly urls: readonly string[];

  readonly #options: ClientOptions;
  readonly #settings: Settings;
  #state: ClientState = "disconnected";
  #conn: Connection | null = null;
  #generation = 0;
  #urlIndex = 0;
  #attempts = 0;
  /** Drops since the last stable connection: the backoff's exponent. */
  #failures = 0;
  /** `token_expired` closes since the last accepted `hello`: a second one in a row ends the client. */
  #tokenRefusals = 0;
  #reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  readonly #subscriptions = new Map<string, Subscription>();
  #pending = new Map<string, PendingReply[]>();
  readonly #outbox: QueuedPublish[] = [];
  #nextId = 0;
  readonly #host: SubscriptionHost;

  /**
   * Starts connecting (in a microtask, so handlers added right after the constructor see
   * the first `connecting`).
   */
  constructor(urls: string | readonly string[], options: ClientOptions = {}) {
    super();
    const list = typeof urls === "string" ? [urls] : [...urls];
    if (list.length === 0) throw new TypeError("give at least one node URL");
    for (const url of list) {
      let parsed: URL;
      try {
        parsed = new URL(url);
      } catch {
        throw new TypeError(`not a URL: ${url}`);
      }
      if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
        throw new TypeError(`a node URL starts with ws:// or wss:// (${url})`);
      }
    }
    const ctor =
      options.WebSocket ??
      (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (typeof ctor !== "function") {
      throw new TypeError(
        "no WebSocket here: pass one as the `WebSocket` option (on Node 20, `import { WebSocket } from 'ws'`)",
      );
    }
    this.urls = list;
    this.#options = options;
    this.#settings = {
      WebSocket: ctor,
      initialDelayMs: positive(options.reconnect?.initialDelayMs, 100, "reconnect.initialDelayMs"),
      maxDelayMs: positive(options.reconnect?.maxDelayMs, 10_000, "reconnect.maxDelayMs"),
      connectTimeoutMs: positive(options.connectTimeoutMs, 10_000, "connectTimeoutMs"),
      pingIntervalMs: positive(options.pingIntervalMs, 15_000, "pingIntervalMs"),
      pongTimeoutMs: positive(options.pongTimeoutMs, 10_000, "pongTimeoutMs"),
      publishTimeoutMs: positive(options.publishTimeoutMs, 15_000, "publishTimeoutMs"),
      maxQueuedPublishes: positive(options.maxQueuedPublishes, 1000, "maxQueuedPublishes"),
      storageKey: options.storageKey ?? "murmur-cursor:",
      persistIntervalMs: options.persistIntervalMs ?? 200,
    };
    this.#host = {
      unsubscribe: (sub) => this.#unsubscribe(sub),
      ack: (delivery, generation) => this.#ack(delivery, generation),
    };
    queueMicrotask(() => void this.#connect());
  }

  /** The current state. */
  get state(): ClientState {
    return this.#state;
  }

  /** The URL of the current (or last tried) connection. */
  get url(): string {
    return this.#conn?.url ?? this.urls[this.#urlIndex] ?? "";
  }

  /** The name of the node this client is connected to, or null. */
  get node(): string | null {
    return this.#conn?.welcomed ? this.#conn.node : null;
  }

  /**
   * Subscribes to a topic or pattern. `onEvent` is called for each event (the returned
   * promise, for a queue group, delays its ack). The subscription is (re)sent on every
   * connection, resuming from its cursors.
   */
  subscribe(pattern: string, onEvent: EventHandler, options: SubscribeOptions = {}): Subscription {
    if (this.#state === "closed") throw new MurmurError("closed", "the client is closed");
    const id = `s${++this.#nextId}`;
    const store =
      this.#options.storage && options.group === undefined
        ? new CursorStore(
            this.#options.storage,
            this.#settings.storageKey + pattern,
            this.#settings.persistIntervalMs,
            (err) =>
              this.emit(
                "error",
                new MurmurError("storage_failed", `cannot persist the cursor of ${pattern}`, { cause: err }),
              ),
          )
        : null;
    const sub = new Subscription(this.#host, id, pattern, onEvent, options, store, Date.now());
    this.#subscriptions.set(id, sub);
    if (this.#conn?.welcomed) this.#sendSub(this.#conn, sub);
    return sub;
  }

  /**
   * Publishes `data` (any JSON value) to `topic` and resolves with its place once the
   * topic's owner has sequenced it and its replicas stored it. Rejects with a
   * {@link MurmurError} whose `code` is the node's (`unavailable`, `invalid_topic`,
   * `forbidden`, `rate_limited`, …) or `connection_lost`, `timeout`, `queue_full`, `closed`.
   * While disconnected it waits (up to `maxQueuedPublishes`) for the next connection.
   *
   * `id` makes the publish idempotent: the topic's owner and its replicas remember it for
   * the node's `dedupe_window` (2 min by default), and a publish sent again with the same
   * `id` gets the first one's `epoch`/`seq` instead of a second event. This client does not
   * send a publish again by itself: after `unavailable`, `connection_lost` or `timeout`,
   * call `publish` again with the same `id`.
   */
  publish(topic: string, data: unknown, options: { id?: string } = {}): Promise<Published> {
    if (data === undefined) return Promise.reject(new TypeError("data is required (null is allowed)"));
    if (this.#state === "closed") return Promise.reject(new MurmurError("closed", "the client is closed"));
    const ref = `p${++this.#nextId}`;
    const frame: Record<string, unknown> = { op: "pub", topic, data, ref };
    if (options.id !== undefined) frame["id"] = options.id;
    return new Promise<Published>((resolve, reject) => {
      let queued: QueuedPublish | null = null;
      const timer = setTimeout(() => {
        settle.onLost = () => {};
        settle.onReply = () => {};
        const waiting = this.#pending.get(ref);
        const at = waiting?.indexOf(settle) ?? -1;
        if (waiting && at >= 0) {
          waiting.splice(at, 1);
          if (waiting.length === 0) this.#pending.delete(ref);
        }
        if (queued) {
          const at = this.#outbox.indexOf(queued);
          if (at >= 0) this.#outbox.splice(at, 1);
        }
        reject(new MurmurError("timeout", `no answer to the publish on ${topic} within ${this.#settings.publishTimeoutMs} ms`));
      }, this.#settings.publishTimeoutMs);
      const settle: PendingReply = {
        onReply: (reply) => {
          clearTimeout(timer);
          if (reply.op === "ok") resolve({ epoch: String(reply["epoch"]), seq: Number(reply["seq"]) });
          else reject(errorOf(reply));
        },
        onLost: (code) => {
          clearTimeout(timer);
          reject(
            code === "closed"
              ? new MurmurError("closed", "the client closed before the node answered")
              : new MurmurError(
                  "connection_lost",
                  `the connection dropped before the node answered the publish on ${topic}: it may or may not have been stored`,
                ),
          );
        },
      };
      if (this.#conn?.welcomed) {
        this.#sendPublish(this.#conn, frame, settle);
      } else if (this.#outbox.length >= this.#settings.maxQueuedPublishes) {
        clearTimeout(timer);
        reject(new MurmurError("queue_full", `${this.#outbox.length} publishes already wait for a connection`));
      } else {
        queued = { frame, settle };
        this.#outbox.push(queued);
      }
    });
  }

  /**
   * Publishes without waiting for an answer (no `ref`): cheaper, but a publish the node could
   * not store is lost without a word. Returns false if it was not even sent or queued (the
   * client is closed, or `maxQueuedPublishes` publishes already wait for a connection).
   */
  publishNoAck(topic: string, data: unknown): boolean {
    if (data === undefined) throw new TypeError("data is required (null is allowed)");
    if (this.#state === "closed") return false;
    const frame = { op: "pub", topic, data };
    if (this.#conn?.welcomed) {
      this.#send(this.#conn, frame);
      return true;
    }
    if (this.#outbox.length >= this.#settings.maxQueuedPublishes) return false;
    this.#outbox.push({ frame, settle: null });
    return true;
  }

  /**
   * Ends it all: closes the connection, ends every subscription (`unsubscribed` with reason
   * `closed`, cursors written to `storage`), rejects waiting publishes with `closed`.
   * Resolves once the socket is closed (at most a second).
   */
  close(): Promise<void> {
    if (this.#state === "closed") return Promise.resolve();
    const conn = this.#conn;
    this.#shutDown("closed", 1000, "closed by the client");
    if (!conn) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = setTimeout(resolve, 1000);
      conn.ws.onclose = () => {
        clearTimeout(done);
        resolve();
      };
      try {
        conn.ws.close(1000, "bye");
      } catch {
        clearTimeout(done);
        resolve();
      }
    });
  }

  async #connect(): Promise<void> {
    this.#reconnectTimer = null;
    if (this.#state === "closed") return;
    const url = this.urls[this.#urlIndex] as string;
    this.#attempts += 1;
    this.#state = "connecting";
    this.emit("connecting", { url, attempt: this.#attempts });
    let token: string | undefined;
    try {
      token = this.#options.getToken ? await this.#options.getToken() : this.#options.token;
    } catch (err) {
      this.emit("error", new MurmurError("token_unavailable", "getToken() failed", { cause: err }));
      this.#retry(url, null, "token_unavailable", false);
      return;
    }
    if (this.#state !== "connecting") return;
    let ws: WebSocketLike;
    try {
      ws = new this.#settings.WebSocket(url);
    } catch (err) {
      this.emit("error", new MurmurError("connection_lost", `cannot open ${url}`, { cause: err }));
      this.#retry(url, null, "cannot open the WebSocket", false);
      return;
    }
    const conn: Connection = {
      ws,
      url,
      generation: ++this.#generation,
      welcomes: 0,
      welcomed: false,
      node: null,
      connectedAt: 0,
      lastFrameAt: Date.now(),
      pingSentAt: null,
      closingError: null,
      connectTimer: null,
      watchdog: null,
    };
    this.#conn = conn;
    ws.onopen = () => {
      if (conn !== this.#conn) return;
      this.#send(conn, this.#helloFrame(token));
    };
    ws.onmessage = (event) => {
      if (conn !== this.#conn) return;
      this.#onMessage(conn, event.data);
    };
    ws.onclose = (event) => {
      if (conn !== this.#conn) return;
      this.#onDrop(conn, event.code, event.reason);
    };
    // The `close` event that always follows says what happened.
    ws.onerror = () => {};
    conn.connectTimer = setTimeout(
      () => this.#abandon(conn, `no welcome within ${this.#settings.connectTimeoutMs} ms`),
      this.#settings.connectTimeoutMs,
    );
  }

  #helloFrame(token: string | undefined): Record<string, unknown> {
    const hello: Record<string, unknown> = { op: "hello" };
    if (this.#options.clientName !== undefined) hello["client"] = this.#options.clientName;
    if (token !== undefined && token !== "") hello["token"] = token;
    const batch = this.#options.batch ?? true;
    if (batch === true) hello["batch"] = true;
    else if (batch !== false) {
      const bounds: Record<string, number | boolean> = {};
      if (batch.maxEvents !== undefined) bounds["max_events"] = batch.maxEvents;
      if (batch.maxBytes !== undefined) bounds["max_bytes"] = batch.maxBytes;
      if (batch.compact === true) bounds["compact"] = true;
      hello["batch"] = bounds;
    }
    return hello;
  }

  #onMessage(conn: Connection, data: unknown): void {
    conn.lastFrameAt = Date.now();
    if (typeof data !== "string") return; // JSON connections get text frames only
    let frame: ServerFrame;
    try {
      frame = JSON.parse(data) as ServerFrame;
    } catch (err) {
      this.emit("error", new MurmurError("bad_frame", "the node sent a frame that is not JSON", { cause: err }));
      return;
    }
    switch (frame.op) {
      case "batch": {
        const events = frame["events"];
        if (Array.isArray(events)) {
          for (const event of events as WireEvent[]) this.#deliver(conn, event);
        }
        // The compact layout (asked for with `batch: {compact: true}`): runs of events.
        const runs = frame["runs"];
        if (Array.isArray(runs)) {
          for (const run of runs as WireRun[]) {
            const expanded = expandRun(run);
            if (expanded.length === 0) {
              this.emit("error", new MurmurError("bad_frame", "the node sent a batch run this client cannot read"));
            }
            for (const event of expanded) this.#deliver(conn, event);
          }
        }
        return;
      }
      case "event":
        this.#deliver(conn, frame as unknown as WireEvent);
        return;
      case "gap":
        this.#subscriptions.get(String(frame["sub"]))?._gap(frame as unknown as WireGap);
        return;
      case "ok":
        this.#reply(frame);
        return;
      case "error":
        this.#onError(conn, frame);
        return;
      case "welcome":
        // The node greets every connection unasked; the second welcome answers our hello.
        conn.welcomes += 1;
        if (!conn.welcomed && conn.welcomes >= 2) this.#onWelcomed(conn, frame);
        return;
      case "expiring":
        void this.#refreshToken(conn);
        return;
      default:
        return; // pong, or an op this client doesn't know: the frame itself proved liveness
    }
  }

  #deliver(conn: Connection, event: WireEvent): void {
    this.#subscriptions.get(event.sub)?._deliver(event, conn.generation);
  }

  /** Hands an `ok` or `error` with a `ref` to what awaited it; false if nothing did. */
  #reply(frame: ServerFrame): boolean {
    const ref = frame["ref"];
    if (typeof ref !== "string") return false;
    const waiting = this.#pending.get(ref);
    const entry = waiting?.shift();
    if (!entry) return false;
    if (waiting && waiting.length === 0) this.#pending.delete(ref);
    entry.onReply(frame);
    return true;
  }

  #onError(conn: Connection, frame: ServerFrame): void {
    if (this.#reply(frame)) return;
    const ref = frame["ref"];
    const code = String(frame["code"] ?? "unknown");
    if (typeof ref === "string") {
      // A refresh that no longer allows a subscription ends it, named by its id.
      const sub = this.#subscriptions.get(ref);
      if (sub) {
        this.#subscriptions.delete(ref);
        sub._onRefused(code, String(frame["message"] ?? ""));
        return;
      }
    } else if (code in CLOSE_CODE_OF_ERROR) {
      // The node's goodbye: the close that follows is handled by #onDrop.
      conn.closingError = code;
      return;
    }
    this.emit("error", errorOf(frame));
  }

  #onWelcomed(conn: Connection, welcome: ServerFrame): void {
    if (conn.connectTimer !== null) clearTimeout(conn.connectTimer);
    conn.connectTimer = null;
    conn.welcomed = true;
    conn.node = typeof welcome["node"] === "string" ? welcome["node"] : "";
    conn.connectedAt = Date.now();
    this.#tokenRefusals = 0;
    this.#state = "connected";
    for (const sub of this.#subscriptions.values()) this.#sendSub(conn, sub);
    for (const queued of this.#outbox.splice(0)) {
      if (queued.settle) this.#sendPublish(conn, queued.frame, queued.settle);
      else this.#send(conn, queued.frame);
    }
    this.#startWatchdog(conn);
    const connected: ClientEvents["connected"] = {
      url: conn.url,
      node: conn.node,
      session: String(welcome["session"] ?? ""),
    };
    if (typeof welcome["user"] === "string") connected.user = welcome["user"];
    if (typeof welcome["expires_at"] === "number") connected.expiresAt = welcome["expires_at"];
    this.emit("connected", connected);
  }

  #sendSub(conn: Connection, sub: Subscription): void {
    this.#await(sub.id, {
      onReply: (reply) => {
        if (reply.op === "ok") sub._onSubscribed();
        else {
          this.#subscriptions.delete(sub.id);
          sub._onRefused(String(reply["code"]), String(reply["message"] ?? ""));
        }
      },
      // The subscription is sent again on the next connection.
      onLost: () => {},
    });
    this.#send(conn, sub._subscribeFrame());
  }

  #sendPublish(conn: Connection, frame: Record<string, unknown>, settle: PendingReply): void {
    this.#await(String(frame["ref"]), settle);
    this.#send(conn, frame);
  }

  #await(ref: string, entry: PendingReply): void {
    const waiting = this.#pending.get(ref);
    if (waiting) waiting.push(entry);
    else this.#pending.set(ref, [entry]);
  }

  #send(conn: Connection, frame: Record<string, unknown>): void {
    try {
      conn.ws.send(JSON.stringify(frame));
    } catch {
      // The socket is closing: its close event reports the drop, and what was awaited is lost then.
    }
  }

  #unsubscribe(sub: Subscription): Promise<void> {
    this.#subscriptions.delete(sub.id);
    const conn = this.#conn;
    if (!conn?.welcomed) return Promise.resolve();
    return new Promise<void>((resolve) => {
      this.#await(sub.id, { onReply: () => resolve(), onLost: () => resolve() });
      this.#send(conn, { op: "unsub", id: sub.id });
    });
  }

  #ack(delivery: string, generation: number): boolean {
    const conn = this.#conn;
    // A delivery belongs to the connection that received it; the node hands it on when that one ends.
    if (!conn || conn.generation !== generation || !conn.welcomed) return false;
    this.#send(conn, { op: "ack", delivery });
    return true;
  }

  async #refreshToken(conn: Connection): Promise<void> {
    const getToken = this.#options.getToken;
    if (!getToken) return; // the node closes with token_expired; without getToken that is the end
    let token: string;
    try {
      token = await getToken();
    } catch (err) {
      this.emit("error", new MurmurError("token_unavailable", "getToken() failed", { cause: err }));
      return;
    }
    if (conn !== this.#conn) return; // the next connection says hello with a fresh token anyway
    const ref = `r${++this.#nextId}`;
    this.#await(ref, {
      onReply: (reply) => {
        if (reply.op === "ok") {
          const expiresAt = reply["expires_at"];
          this.emit("refreshed", { expiresAt: typeof expiresAt === "number" ? expiresAt : null });
        } else {
          this.emit("error", errorOf(reply));
        }
      },
      onLost: () => {},
    });
    this.#send(conn, { op: "refresh", token, ref });
  }

  /** Sends a `ping` when the node has been silent, and gives up on a connection that stays so. */
  #startWatchdog(conn: Connection): void {
    const { pingIntervalMs, pongTimeoutMs } = this.#settings;
    const tick = Math.max(20, Math.min(pingIntervalMs, pongTimeoutMs) / 4);
    conn.watchdog = setInterval(() => {
      const now = Date.now();
      if (conn.pingSentAt !== null) {
        if (conn.lastFrameAt >= conn.pingSentAt) conn.pingSentAt = null;
        else if (now - conn.pingSentAt >= pongTimeoutMs) {
          this.#abandon(conn, `no answer to a ping within ${pongTimeoutMs} ms`);
        }
      } else if (now - conn.lastFrameAt >= pingIntervalMs) {
        conn.pingSentAt = now;
        this.#send(conn, { op: "ping" });
      }
    }, tick);
  }

  /** Gives up on a connection that does not answer, without waiting for its close. */
  #abandon(conn: Connection, reason: string): void {
    if (conn !== this.#conn) return;
    conn.ws.onclose = null;
    conn.ws.onmessage = null;
    try {
      conn.ws.close();
    } catch {
      // already closing
    }
    this.#onDrop(conn, null, reason);
  }

  #stopConnection(conn: Connection, lostCode: string): void {
    if (conn.connectTimer !== null) clearTimeout(conn.connectTimer);
    if (conn.watchdog !== null) clearInterval(conn.watchdog);
    conn.connectTimer = null;
    conn.watchdog = null;
    this.#conn = null;
    const pending = this.#pending;
    this.#pending = new Map();
    for (const waiting of pending.values()) for (const entry of waiting) entry.onLost(lostCode);
  }

  /** The connection ended (`code` null: the client gave up on it). Decides what comes next. */
  #onDrop(conn: Connection, code: number | null, reason: string): void {
    this.#stopConnection(conn, "connection_lost");
    for (const sub of this.#subscriptions.values()) sub._onConnectionLost();
    if (this.#state === "closed") return;
    let effective = code;
    if ((code === null || code === 1005 || code === 1006) && conn.closingError !== null) {
      effective = CLOSE_CODE_OF_ERROR[conn.closingError] ?? code;
    }
    const why = reason || conn.closingError || (code === 1006 ? "connection lost" : "");
    if (conn.welcomed && Date.now() - conn.connectedAt >= STABLE_CONNECTION_MS) this.#failures = 0;
    if (effective !== null && effective >= 4500 && effective <= 4999) {
      const canRenew = effective === 4501 && this.#options.getToken !== undefined && this.#tokenRefusals === 0;
      if (!canRenew) {
        this.#shutDown(conn.closingError ?? (effective === 4501 ? "token_expired" : "unauthorized"), effective, why);
        return;
      }
      // A new token from getToken() on the next connection, at once.
      this.#tokenRefusals += 1;
      this.#retry(conn.url, effective, why, true);
      return;
    }
    // shutting_down: another node, now; resync: resume now (on another node too: the one
    // that dropped us may be cut off from the majority). Only once in a row, then backoff.
    const atOnce = (effective === 1001 || effective === 4003) && this.#failures === 0;
    this.#retry(conn.url, effective, why, atOnce);
  }

  /** Waits (full-jitter backoff, or not at all) and tries the next URL. */
  #retry(url: string, code: number | null, reason: string, atOnce: boolean): void {
    const { initialDelayMs, maxDelayMs } = this.#settings;
    const delay = atOnce ? 0 : fullJitterDelay(this.#failures, initialDelayMs, maxDelayMs);
    this.#failures += 1;
    this.#urlIndex = (this.#urlIndex + 1) % this.urls.length;
    this.#state = "disconnected";
    this.emit("disconnected", { url, code, reason, reconnectInMs: delay });
    if (this.#state !== "disconnected") return; // a handler closed the client
    this.#reconnectTimer = setTimeout(() => void this.#connect(), delay);
  }

  /** Ends the client for good: `close()`, or the node refused the token. */
  #shutDown(code: string, closeCode: number, reason: string): void {
    if (this.#reconnectTimer !== null) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    const conn = this.#conn;
    if (conn) this.#stopConnection(conn, "closed");
    this.#state = "closed";
    const subs = [...this.#subscriptions.values()];
    this.#subscriptions.clear();
    const error = code === "closed" ? undefined : new MurmurError(code, `the node closed the connection for good: ${reason}`);
    for (const sub of subs) sub._end(code, error);
    for (const queued of this.#outbox.splice(0)) queued.settle?.onLost("closed");
    this.emit("closed", { code: closeCode, reason });
  }
}

function errorOf(frame: ServerFrame): MurmurError {
  return new MurmurError(String(frame["code"] ?? "unknown"), String(frame["message"] ?? ""));
}

function positive(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
    throw new TypeError(`${name} is a positive number of milliseconds (or a count), not ${String(value)}`);
  }
  return value;
}
