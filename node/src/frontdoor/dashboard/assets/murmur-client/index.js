// Generated from clients/js/src (murmur-client) by clients/js/scripts/embed.mjs: do not edit.
// Rebuild with `cd clients/js && npm run embed`.
/**
 * murmur-client: a Murmur client for browsers and Node ≥ 20 that carries the promise end to
 * end: every event once, in order per topic, or a `gap` that names what was lost, across
 * drops and nodes.
 *
 * @packageDocumentation
 */
export { Client } from "./client.js";
export { Subscription } from "./subscription.js";
export { MurmurError } from "./errors.js";
