// Generated from clients/js/src (murmur-client) by clients/js/scripts/embed.mjs: do not edit.
// Rebuild with `cd clients/js && npm run embed`.
/** The events of a run, each as its plain `event` frame would be; none if the run is malformed. */
export function expandRun(run) {
    if (!Array.isArray(run.data) || typeof run.seq !== "number" || typeof run.ts !== "number")
        return [];
    const dts = Array.isArray(run.dts) && run.dts.length === run.data.length - 1 ? run.dts : undefined;
    if (run.dts !== undefined && dts === undefined)
        return [];
    const events = [];
    let ts = run.ts;
    for (let i = 0; i < run.data.length; i++) {
        if (i > 0 && dts)
            ts += Number(dts[i - 1]);
        const event = {
            op: "event",
            sub: run.sub,
            topic: run.topic,
            epoch: run.epoch,
            seq: run.seq + i,
            data: run.data[i],
            ts,
        };
        if (run.encoding !== undefined)
            event.encoding = run.encoding;
        if (run.delivery !== undefined)
            event.delivery = run.delivery;
        if (run.redelivered !== undefined)
            event.redelivered = run.redelivered;
        events.push(event);
    }
    return events;
}
