/**
 * "Full jitter" exponential backoff: a delay drawn uniformly from
 * [0, min(maxMs, initialMs × 2^failures)], so that many clients dropped at once by the same
 * node spread their reconnections instead of arriving together.
 */
export function fullJitterDelay(
  failures: number,
  initialMs: number,
  maxMs: number,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(failures, 30));
  return Math.floor(random() * ceiling);
}
