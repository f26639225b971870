// Generated from clients/js/src (murmur-client) by clients/js/scripts/embed.mjs: do not edit.
// Rebuild with `cd clients/js && npm run embed`.
import { CursorStore, ResumePoint } from "./cursor.js";
import { Emitter } from "./emitter.js";
import { MurmurError } from "./errors.js";
/**
 * One subscription of a {@link Client}, made by `client.subscribe`. It lives across
 * reconnections: after each one it is resumed from its cursors, and duplicates are dropped.
 *
 * Events: `subscribed` (`{ recovered }`), `event`, `gap`, `error`, `unsubscribed`.
 */
export class Subscription extends Emitter {
    /** The `id` used on the wire, unique within its client. */
    id;
    /** The topic or pattern. */
    pattern;
    /** The queue group, if any. */
    group;
    #host;
    #onEvent;
    #autoAck;
    /** Null for queue groups: they share live events and don't resume. */
    #point;
    #store;
    #state = "waiting";
    /** Whether the next `sub` carries the resume point (after a first `sub`, or a stored cursor). */
    #resumable;
    #recovering = false;
    /** The first `sub` carries an explicit `from` (not a resume). */
    #explicitStart = false;
    /** @internal Made by {@link Client.subscribe}. */
    constructor(host, id, pattern, onEvent, options, store, nowMs) {
        super();
        if (typeof pattern !== "string" || pattern === "")
            throw new TypeError("the pattern is a non-empty string");
        if (typeof onEvent !== "function")
            throw new TypeError("onEvent is a function");
        const from = options.from;
        if (options.group !== undefined && from !== undefined && from !== "latest") {
            throw new TypeError("a queue-group member cannot resume: use no `from` with a `group`");
        }
        this.#host = host;
        this.id = id;
        this.pattern = pattern;
        this.group = options.group;
        this.#onEvent = onEvent;
        this.#autoAck = options.ack !== "manual";
        if (options.group !== undefined) {
            this.#point = null;
            this.#store = null;
            this.#resumable = false;
        }
        else {
            const stored = store?.load() ?? null;
            this.#point = stored ?? ResumePoint.starting(pattern, from, nowMs);
            this.#store = store;
            this.#resumable = stored !== null;
            this.#explicitStart = stored === null && from !== undefined && from !== "latest";
        }
    }
    /** False once unsubscribed, refused by the node, or its client closed. */
    get active() {
        return this.#state !== "ended";
    }
    /** What has been seen: per topic the last cursor, and `since`. Null for queue groups. */
    cursor() {
        if (!this.#point)
            return null;
        const topics = {};
        for (const [topic, cursor] of this.#point.topics)
            topics[topic] = { ...cursor };
        return { topics, since: this.#point.since };
    }
    /** Ends the subscription; resolves once the node confirmed (at once when disconnected). */
    async unsubscribe() {
        if (this.#state === "ended")
            return;
        this.#state = "ended";
        this.#persistNow();
        await this.#host.unsubscribe(this);
        this.emit("unsubscribed", { reason: "unsubscribed" });
    }
    /** @internal The `sub` frame for the current connection. */
    _subscribeFrame() {
        const frame = { op: "sub", id: this.id, topic: this.pattern };
        if (this.group !== undefined)
            frame["group"] = this.group;
        let from = null;
        if (this.#point && (this.#resumable || this.#explicitStart))
            from = this.#point.toFrom(this.pattern);
        if (from !== null)
            frame["from"] = from;
        this.#recovering = this.#resumable && from !== null;
        this.#explicitStart = false;
        // Whatever happens to this `sub`, the next one resumes from what was seen since.
        this.#resumable = this.#point !== null;
        this.#state = "subscribing";
        return frame;
    }
    /** @internal The node's `ok` to the `sub`. */
    _onSubscribed() {
        if (this.#state !== "subscribing")
            return;
        this.#state = "active";
        this.emit("subscribed", { recovered: this.#recovering });
    }
    /** @internal An `error` whose `ref` is this subscription: the `sub` was refused, or a token refresh ended it. */
    _onRefused(code, message) {
        if (this.#state === "ended")
            return;
        this._end(code, new MurmurError(code, message));
    }
    /** @internal The connection dropped: the subscription waits for the next one. */
    _onConnectionLost() {
        if (this.#state === "ended")
            return;
        this.#state = "waiting";
        this.#persistNow();
    }
    /** @internal Ends it without telling the node (the client is closing, or the node refused it). */
    _end(reason, error) {
        if (this.#state === "ended")
            return;
        this.#state = "ended";
        this.#persistNow();
        if (error)
            this.emit("error", error);
        this.emit("unsubscribed", { reason });
    }
    /** @internal An event for this subscription, received on connection `generation`. */
    _deliver(frame, generation) {
        if (this.#state === "ended")
            return;
        if (this.#point) {
            if (!this.#point.observeEvent(frame.topic, frame.epoch, frame.seq))
                return;
            this.#store?.schedule(this.#point);
        }
        const event = {
            topic: frame.topic,
            epoch: frame.epoch,
            seq: frame.seq,
            data: frame.data,
            ts: frame.ts,
        };
        if (frame.encoding === "base64")
            event.encoding = "base64";
        const delivery = frame.delivery;
        if (delivery !== undefined) {
            event.redelivered = frame.redelivered === true;
            let acked = false;
            event.ack = () => {
                if (acked)
                    return true;
                acked = this.#host.ack(delivery, generation);
                return acked;
            };
        }
        let result;
        let threw = false;
        try {
            result = this.#onEvent(event);
        }
        catch (err) {
            threw = true;
            this.#handlerFailed(event, err);
        }
        if (!threw) {
            const autoAck = event.ack && this.#autoAck ? event.ack : null;
            if (isThenable(result)) {
                result.then(() => autoAck?.(), (err) => this.#handlerFailed(event, err));
            }
            else {
                autoAck?.();
            }
        }
        this.emit("event", event);
    }
    /** @internal A `gap` frame for this subscription. */
    _gap(frame) {
        if (this.#state === "ended")
            return;
        this.#point?.observeGap(frame.topic, frame.epoch, frame.to_seq, frame.reason);
        if (this.#point)
            this.#store?.schedule(this.#point);
        this.emit("gap", {
            topic: frame.topic,
            epoch: frame.epoch,
            from: frame.from_seq,
            to: frame.to_seq === 0 ? null : frame.to_seq,
            reason: frame.reason,
        });
    }
    #handlerFailed(event, err) {
        const acked = event.ack ? " (not acked: the group redelivers it after its ack timeout)" : "";
        this.emit("error", new MurmurError("handler_failed", `the handler of ${event.topic} #${event.seq} failed${acked}`, {
            cause: err,
        }));
    }
    #persistNow() {
        if (this.#point && this.#store)
            this.#store.flush(this.#point);
    }
}
function isThenable(value) {
    return (typeof value === "object" &&
        value !== null &&
        typeof value.then === "function");
}
