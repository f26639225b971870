// Generated from clients/js/src (murmur-client) by clients/js/scripts/embed.mjs: do not edit.
// Rebuild with `cd clients/js && npm run embed`.
/** Whether a subscription pattern has wildcards (`*` or `>` tokens). */
export function isWildcard(pattern) {
    return pattern.split(".").some((token) => token === "*" || token === ">");
}
/**
 * What a subscription has seen, as the `from` of its next `sub`: the last epoch and seq per
 * topic, and `since`, the time from which topics it has not seen yet are wanted.
 *
 * `since` stays at the subscription's start on purpose: a topic without a cursor has
 * delivered nothing here, so everything of it after the start was missed. Moving `since` to
 * the newest `ts` seen would lose events of another topic that were sequenced earlier but
 * had not arrived yet (topics are not ordered among themselves, nor in a replay).
 */
export class ResumePoint {
    topics = new Map();
    since;
    /** Started at `earliest` and nothing seen yet: resume with `earliest` again. */
    earliest;
    constructor(since, earliest = false) {
        this.since = since;
        this.earliest = earliest;
    }
    /** The resume point of a new subscription starting at `from`, at time `nowMs`. */
    static starting(pattern, from, nowMs) {
        if (from === undefined || from === "latest")
            return new ResumePoint(nowMs);
        if (from === "earliest")
            return new ResumePoint(0, true);
        if ("epoch" in from) {
            if (isWildcard(pattern)) {
                throw new TypeError(`a wildcard subscription (${pattern}) resumes from { topics, since }, not one cursor`);
            }
            checkCursor(from);
            const point = new ResumePoint(0);
            point.topics.set(pattern, { epoch: from.epoch, seq: from.seq });
            return point;
        }
        const since = from.since ?? 0;
        if (!Number.isInteger(since) || since < 0) {
            throw new TypeError("`since` is a non-negative integer (ms since the Unix epoch)");
        }
        const point = new ResumePoint(since);
        if ("topics" in from) {
            for (const [topic, cursor] of Object.entries(from.topics)) {
                checkCursor(cursor);
                point.topics.set(topic, { epoch: cursor.epoch, seq: cursor.seq });
            }
        }
        return point;
    }
    /**
     * Takes note of an event. Returns false for one already seen (same epoch, seq not past
     * the cursor): a duplicate to drop.
     */
    observeEvent(topic, epoch, seq) {
        const known = this.topics.get(topic);
        if (known && known.epoch === epoch && seq <= known.seq)
            return false;
        this.topics.set(topic, { epoch, seq });
        this.earliest = false;
        return true;
    }
    /** Takes note of a gap: what it reports lost will not come, so the cursor moves past it. */
    observeGap(topic, epoch, toSeq, reason) {
        const known = this.topics.get(topic);
        if (reason === "epoch_changed" || toSeq === 0) {
            // The old epoch is over: forget it, the current epoch's events follow from its start.
            if (known && known.epoch === epoch)
                this.topics.delete(topic);
            return;
        }
        if (!known || known.epoch !== epoch || known.seq < toSeq) {
            this.topics.set(topic, { epoch, seq: toSeq });
            this.earliest = false;
        }
    }
    /** Whether a resume would ask for anything other than live events. */
    get isEmpty() {
        return this.topics.size === 0 && !this.earliest;
    }
    /** The `from` of a resuming `sub` on `pattern`. */
    toFrom(pattern) {
        const exact = this.topics.get(pattern);
        if (exact && !isWildcard(pattern))
            return { epoch: exact.epoch, seq: exact.seq };
        if (this.earliest && this.topics.size === 0)
            return "earliest";
        const topics = {};
        for (const [topic, cursor] of this.topics)
            topics[topic] = { epoch: cursor.epoch, seq: cursor.seq };
        return { topics, since: this.since };
    }
    /** The JSON kept in storage. */
    serialize() {
        const topics = {};
        for (const [topic, cursor] of this.topics)
            topics[topic] = [cursor.epoch, cursor.seq];
        return JSON.stringify({ v: 1, since: this.since, earliest: this.earliest, topics });
    }
    /** Reads what {@link serialize} wrote; null for anything else (a foreign or damaged entry). */
    static parse(text) {
        if (text === null)
            return null;
        try {
            const stored = JSON.parse(text);
            if (stored.v !== 1 || typeof stored.since !== "number")
                return null;
            const point = new ResumePoint(stored.since, stored.earliest === true);
            for (const [topic, entry] of Object.entries(stored.topics ?? {})) {
                if (!Array.isArray(entry) || typeof entry[0] !== "string" || typeof entry[1] !== "number") {
                    return null;
                }
                point.topics.set(topic, { epoch: entry[0], seq: entry[1] });
            }
            return point;
        }
        catch {
            return null;
        }
    }
}
function checkCursor(cursor) {
    if (typeof cursor.epoch !== "string" || cursor.epoch === "") {
        throw new TypeError("a cursor's epoch is a non-empty string");
    }
    if (!Number.isInteger(cursor.seq) || cursor.seq < 0) {
        throw new TypeError("a cursor's seq is a non-negative integer");
    }
}
/** Reads and writes one subscription's resume point in a {@link CursorStorage}, throttled. */
export class CursorStore {
    storage;
    key;
    intervalMs;
    onError;
    #timer = null;
    constructor(storage, key, intervalMs, onError) {
        this.storage = storage;
        this.key = key;
        this.intervalMs = intervalMs;
        this.onError = onError;
    }
    load() {
        try {
            return ResumePoint.parse(this.storage.getItem(this.key));
        }
        catch {
            // A storage that refuses to be read (a browser's privacy mode) is the same as none.
            return null;
        }
    }
    /** Writes `point` soon (at most once per interval). */
    schedule(point) {
        if (this.intervalMs <= 0) {
            this.write(point);
            return;
        }
        if (this.#timer !== null)
            return;
        this.#timer = setTimeout(() => {
            this.#timer = null;
            this.write(point);
        }, this.intervalMs);
    }
    /** Writes `point` now. */
    flush(point) {
        if (this.#timer !== null) {
            clearTimeout(this.#timer);
            this.#timer = null;
        }
        this.write(point);
    }
    write(point) {
        try {
            this.storage.setItem(this.key, point.serialize());
        }
        catch (err) {
            // A full or refused storage: the subscription goes on, only a reload would replay more.
            this.onError(err);
        }
    }
}
