/** A handler of one named event. */
export type Handler<T> = (payload: T) => void;

/**
 * A small typed event emitter (no dependency on Node's `events` or the DOM's `EventTarget`,
 * so it runs the same in browsers and Node).
 */
export class Emitter<Events extends object> {
  #handlers = new Map<keyof Events, Set<Handler<never>>>();

  /** Calls `handler` each time `name` happens. Returns this, for chaining. */
  on<K extends keyof Events>(name: K, handler: Handler<Events[K]>): this {
    let set = this.#handlers.get(name);
    if (!set) {
      set = new Set();
      this.#handlers.set(name, set);
    }
    set.add(handler as Handler<never>);
    return this;
  }

  /** Stops calling `handler` for `name`. */
  off<K extends keyof Events>(name: K, handler: Handler<Events[K]>): this {
    this.#handlers.get(name)?.delete(handler as Handler<never>);
    return this;
  }

  /** @internal */
  protected emit<K extends keyof Events>(name: K, payload: Events[K]): void {
    const set = this.#handlers.get(name);
    if (!set || set.size === 0) {
      // An error nobody listens to must still be seen somewhere.
      if (name === "error") reportUncaught(payload);
      return;
    }
    for (const handler of [...set]) {
      try {
        (handler as Handler<Events[K]>)(payload);
      } catch (err) {
        // One faulty handler must not stop the client reading its connection.
        reportUncaught(err);
      }
    }
  }
}

/** Reports an error the application did not handle: the browser's `reportError`, else the console. */
export function reportUncaught(err: unknown): void {
  const report = (globalThis as { reportError?: (e: unknown) => void }).reportError;
  if (typeof report === "function") report(err);
  else console.error("murmur-client:", err);
}
