// Generated from clients/js/src (murmur-client) by clients/js/scripts/embed.mjs: do not edit.
// Rebuild with `cd clients/js && npm run embed`.
/**
 * "Full jitter" exponential backoff: a delay drawn uniformly from
 * [0, min(maxMs, initialMs × 2^failures)], so that many clients dropped at once by the same
 * node spread their reconnections instead of arriving together.
 */
export function fullJitterDelay(failures, initialMs, maxMs, random = Math.random) {
    const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(failures, 30));
    return Math.floor(random() * ceiling);
}
