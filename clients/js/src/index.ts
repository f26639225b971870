/**
 * murmur-client: a Murmur client for browsers and Node ≥ 20 that carries the promise end to
 * end: every event once, in order per topic, or a `gap` that names what was lost, across
 * drops and nodes.
 *
 * @packageDocumentation
 */
export { Client } from "./client.js";
export { Subscription, type EventHandler } from "./subscription.js";
export { MurmurError } from "./errors.js";
export type { Handler } from "./emitter.js";
export type {
  ClientEvents,
  ClientOptions,
  ClientState,
  Cursor,
  CursorStorage,
  From,
  Gap,
  MurmurEvent,
  Published,
  SubscribeOptions,
  SubscriptionEvents,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";
