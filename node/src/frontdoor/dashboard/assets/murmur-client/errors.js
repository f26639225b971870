// Generated from clients/js/src (murmur-client) by clients/js/scripts/embed.mjs: do not edit.
// Rebuild with `cd clients/js && npm run embed`.
/**
 * Why a request failed or a connection ended.
 *
 * `code` is stable, match on it: the node's own error codes (`unavailable`, `invalid_topic`,
 * `forbidden`, `rate_limited`, `unauthorized`, `token_expired`, … see the protocol's
 * "Error codes") or one of the client's:
 *
 * | code | meaning |
 * |---|---|
 * | `connection_lost` | the connection dropped before the node answered; a publish may or may not have been stored |
 * | `timeout` | no answer within the configured time |
 * | `closed` | the client was closed (by `close()` or for good by the node) |
 * | `queue_full` | too many publishes waiting for a connection (`maxQueuedPublishes`) |
 * | `handler_failed` | your event handler threw or its promise rejected (the queue-group delivery was not acked) |
 * | `token_unavailable` | `getToken()` threw or rejected |
 * | `bad_frame` | the node sent something this client could not read |
 */
export class MurmurError extends Error {
    /** The snake_case code. */
    code;
    constructor(code, message, options) {
        super(message, options);
        this.name = "MurmurError";
        this.code = code;
    }
}
