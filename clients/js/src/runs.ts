import type { WireEvent } from "./subscription.js";

/**
 * One run of a compact `batch` frame (`hello` with `batch: {compact: true}`): consecutive
 * events of one subscription and topic in one epoch, `seq` counting up from the run's `seq`,
 * one per `data` element. Each event's time is the one before plus its `dts` entry (ms);
 * without `dts`, every event has the run's `ts`. See docs/protocol.md, "Compact batches".
 */
export interface WireRun {
  sub: string;
  topic: string;
  epoch: string;
  seq: number;
  ts: number;
  data: unknown[];
  dts?: number[];
  encoding?: string;
  delivery?: string;
  redelivered?: boolean;
}

/** The events of a run, each as its plain `event` frame would be; none if the run is malformed. */
export function expandRun(run: WireRun): WireEvent[] {
  if (!Array.isArray(run.data) || typeof run.seq !== "number" || typeof run.ts !== "number") return [];
  const dts = Array.isArray(run.dts) && run.dts.length === run.data.length - 1 ? run.dts : undefined;
  if (run.dts !== undefined && dts === undefined) return [];
  const events: WireEvent[] = [];
  let ts = run.ts;
  for (let i = 0; i < run.data.length; i++) {
    if (i > 0 && dts) ts += Number(dts[i - 1]);
    const event: WireEvent = {
      op: "event",
      sub: run.sub,
      topic: run.topic,
      epoch: run.epoch,
      seq: run.seq + i,
      data: run.data[i],
      ts,
    };
    if (run.encoding !== undefined) event.encoding = run.encoding;
    if (run.delivery !== undefined) event.delivery = run.delivery;
    if (run.redelivered !== undefined) event.redelivered = run.redelivered;
    events.push(event);
  }
  return events;
}
