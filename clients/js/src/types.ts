/** A position in one topic's sequence: "I have seen up to `seq` of `epoch`". */
export interface Cursor {
  epoch: string;
  seq: number;
}

/**
 * Where a new subscription starts (the protocol's `from`).
 *
 * - `'latest'` (the default): events published from now on.
 * - `'earliest'`: everything the cluster still retains, then live.
 * - a {@link Cursor}: the events after it (exact topics only, not wildcards).
 * - `{ since }`: for every matching topic, the retained events with `ts` > `since` (ms).
 * - `{ topics, since }`: one cursor per topic already seen, `since` for the others.
 *
 * A cursor persisted in `storage` for the same pattern takes precedence: a reload resumes.
 */
export type From =
  | "latest"
  | "earliest"
  | Cursor
  | { since: number }
  | { topics: Record<string, Cursor>; since?: number };

/** One event, as `onEvent` and the `event` handlers receive it. */
export interface MurmurEvent {
  topic: string;
  /** The epoch of the topic's sequence; compare epochs only for equality. */
  epoch: string;
  /** Position in the topic's sequence within `epoch`, from 1. */
  seq: number;
  /** The published JSON value (a base64 string when `encoding` is `"base64"`). */
  data: unknown;
  /** When the topic's owner sequenced it, ms since the Unix epoch. */
  ts: number;
  /** `"base64"` when a protobuf client published binary data. */
  encoding?: "base64";
  /** Queue groups: this event was delivered before and not acked. */
  redelivered?: boolean;
  /**
   * Queue groups: acknowledges this delivery (idempotent). With `ack: 'auto'` it is called
   * for you once `onEvent` returns (or its promise resolves). Returns false when the
   * connection that received it is gone (the node then hands the event on by itself).
   */
  ack?: () => boolean;
}

/** Events that will not come: `from`..`to` of `topic` in `epoch`. */
export interface Gap {
  topic: string;
  epoch: string;
  /** First lost `seq`. */
  from: number;
  /** Last lost `seq`, inclusive; `null` when the end is unknown (`epoch_changed`). */
  to: number | null;
  /** `retention` (trimmed from history) or `epoch_changed` (the topic's state was lost). */
  reason: string;
}

/** Where a publish was stored. */
export interface Published {
  epoch: string;
  seq: number;
}

/**
 * Where cursors are persisted: `localStorage`, `sessionStorage`, or anything with the same
 * three synchronous methods.
 */
export interface CursorStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** The part of the standard `WebSocket` this client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** A `WebSocket` constructor: the browser's, Node ≥ 22's, or the `ws` package's. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** The client's state; each is also an event of the same name. */
export type ClientState = "disconnected" | "connecting" | "connected" | "closed";

export interface ClientOptions {
  /** The WebSocket implementation; defaults to `globalThis.WebSocket` (Node 20: pass `ws`'s). */
  WebSocket?: WebSocketConstructor;
  /** Returns a token (JWT) for nodes with `auth = token`; called before every connection and when the node says the token is `expiring`. */
  getToken?: () => string | Promise<string>;
  /** A fixed token, when there is no `getToken`. */
  token?: string;
  /** The name sent in `hello` (only logged by the node). */
  clientName?: string;
  /**
   * Ask for batch frames (default `true`); or their bounds, and `compact: true` for the
   * compact layout (runs of one topic's events, topic and epoch once per run: fewer bytes
   * per event; needs a node that knows it, which answers a `hello` asking for it with
   * `invalid_request` otherwise).
   */
  batch?: boolean | { maxEvents?: number; maxBytes?: number; compact?: boolean };
  /** Reconnect delays: full jitter, uniform in [0, min(maxDelayMs, initialDelayMs × 2^failures)]. Defaults 100 ms and 10 s. */
  reconnect?: { initialDelayMs?: number; maxDelayMs?: number };
  /** How long to wait for the node's answer to `hello` before trying the next URL (default 10 s). */
  connectTimeoutMs?: number;
  /** Send a `ping` after this long without a frame from the node (default 15 s). */
  pingIntervalMs?: number;
  /** Drop the connection (and reconnect) if the node sends nothing for this long after a `ping` (default 10 s). */
  pongTimeoutMs?: number;
  /** Reject a `publish` that got no answer in this time (default 15 s; the node itself answers `unavailable` after about 5 s). */
  publishTimeoutMs?: number;
  /** Most publishes kept while there is no connection (default 1000); beyond, `queue_full`. */
  maxQueuedPublishes?: number;
  /** Where to persist subscription cursors, so that a new client (a reloaded page) resumes. */
  storage?: CursorStorage;
  /** Prefix of the storage keys; the pattern follows it (default `"murmur-cursor:"`). */
  storageKey?: string;
  /** Write cursors to `storage` at most this often (default 200 ms; 0: after every event). They are always written on close, disconnect and unsubscribe. */
  persistIntervalMs?: number;
}

export interface SubscribeOptions {
  /** Join this queue group: each event goes to one member. Groups don't resume. */
  group?: string;
  /** Where to start; see {@link From}. */
  from?: From;
  /** Queue groups: `'auto'` (the default) acks when `onEvent` returns or its promise resolves; `'manual'` leaves it to `event.ack()`. */
  ack?: "auto" | "manual";
}

/** Payloads of the {@link Client}'s events. */
export interface ClientEvents {
  /** Waiting for the next attempt (after a drop, or before the first one). */
  disconnected: { url: string | null; code: number | null; reason: string; reconnectInMs: number | null };
  /** Opening a connection to `url`. */
  connecting: { url: string; attempt: number };
  /** The node answered `hello`; subscriptions are being resumed. */
  connected: { url: string; node: string; session: string; user?: string; expiresAt?: number };
  /** For good: `close()` was called, or the node refused the token. */
  closed: { code: number; reason: string };
  /** Something went wrong that belongs to no single request or subscription. */
  error: import("./errors.js").MurmurError;
  /** The token was replaced without reconnecting. */
  refreshed: { expiresAt: number | null };
}

/** Payloads of a {@link Subscription}'s events. */
export interface SubscriptionEvents {
  /** The node accepted the `sub`; `recovered` is true when it resumed from a cursor (after a reconnect, or one persisted by an earlier client). */
  subscribed: { recovered: boolean };
  event: MurmurEvent;
  gap: Gap;
  error: import("./errors.js").MurmurError;
  /** The subscription ended: `reason` is `'unsubscribed'`, `'closed'` or the node's error code. */
  unsubscribed: { reason: string };
}
