// Publishes COUNT small events without ref (fire-and-forget) to TOPICS topics on one
// connection, as fast as the socket takes them, then waits for a ping's pong (so the node has
// read them all) and prints what it did as one JSON line. Run by receive.js in its own
// process, so that the receiving process measures the client alone.
import { WebSocket } from "ws";

const [url, countArg, topicsArg, bytesArg] = process.argv.slice(2);
const count = Number(countArg);
const topics = Number(topicsArg);
const pad = "x".repeat(Number(bytesArg));

const ws = new WebSocket(url);
ws.on("error", (err) => {
  console.error(`publisher: ${err.message}`);
  process.exit(1);
});
let welcomed = false;
let started = 0;
ws.on("message", (data) => {
  const frame = JSON.parse(String(data));
  if (frame.op === "welcome" && !welcomed) {
    welcomed = true;
    started = performance.now();
    send(0);
  } else if (frame.op === "pong") {
    const ms = performance.now() - started;
    console.log(JSON.stringify({ published: count, ms, perSecond: Math.round((count / ms) * 1000) }));
    ws.close();
  }
});

function send(from) {
  let i = from;
  while (i < count && ws.bufferedAmount < 1 << 20) {
    ws.send(`{"op":"pub","topic":"bench.t${i % topics}","data":{"n":${i},"pad":"${pad}"}}`);
    i += 1;
  }
  if (i < count) setImmediate(() => send(i));
  else ws.send('{"op":"ping","ref":"done"}');
}
