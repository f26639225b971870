// Generated from clients/js/src (murmur-client) by clients/js/scripts/embed.mjs: do not edit.
// Rebuild with `cd clients/js && npm run embed`.
/**
 * A small typed event emitter (no dependency on Node's `events` or the DOM's `EventTarget`,
 * so it runs the same in browsers and Node).
 */
export class Emitter {
    #handlers = new Map();
    /** Calls `handler` each time `name` happens. Returns this, for chaining. */
    on(name, handler) {
        let set = this.#handlers.get(name);
        if (!set) {
            set = new Set();
            this.#handlers.set(name, set);
        }
        set.add(handler);
        return this;
    }
    /** Stops calling `handler` for `name`. */
    off(name, handler) {
        this.#handlers.get(name)?.delete(handler);
        return this;
    }
    /** @internal */
    emit(name, payload) {
        const set = this.#handlers.get(name);
        if (!set || set.size === 0) {
            // An error nobody listens to must still be seen somewhere.
            if (name === "error")
                reportUncaught(payload);
            return;
        }
        for (const handler of [...set]) {
            try {
                handler(payload);
            }
            catch (err) {
                // One faulty handler must not stop the client reading its connection.
                reportUncaught(err);
            }
        }
    }
}
/** Reports an error the application did not handle: the browser's `reportError`, else the console. */
export function reportUncaught(err) {
    const report = globalThis.reportError;
    if (typeof report === "function")
        report(err);
    else
        console.error("murmur-client:", err);
}
