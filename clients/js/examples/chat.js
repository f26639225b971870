// A chat that survives a node going away: subscribes to chat.*, publishes a line a second,
// prints each event with the node it came through. Against `make cluster` by default:
//   node examples/chat.js [ws://host:port/ws ...]
import { Client } from "../dist/index.js";

// Node ≥ 22 and browsers have a WebSocket; Node 20 takes the ws package's.
const WebSocket = globalThis.WebSocket ?? (await import("ws")).WebSocket;
const urls = process.argv.slice(2);
const client = new Client(
  urls.length > 0 ? urls : ["ws://127.0.0.1:7400/ws", "ws://127.0.0.1:7410/ws", "ws://127.0.0.1:7420/ws"],
  { WebSocket, clientName: "chat-example" },
);

client.on("connected", ({ node, url }) => console.log(`-- connected to ${node} (${url})`));
client.on("disconnected", ({ code, reason, reconnectInMs }) =>
  console.log(`-- disconnected (${code ?? "-"} ${reason}); next try in ${reconnectInMs} ms`),
);
client.on("error", (err) => console.log(`-- error ${err.code}: ${err.message}`));

const sub = client.subscribe("chat.*", (event) => {
  console.log(`${event.topic} #${event.seq} via ${client.node}: ${JSON.stringify(event.data)}`);
});
sub.on("subscribed", ({ recovered }) => console.log(recovered ? "-- resumed" : "-- subscribed"));
sub.on("gap", (gap) => console.log(`-- gap in ${gap.topic}: ${gap.from}..${gap.to ?? "?"} (${gap.reason})`));

let n = 0;
const timer = setInterval(async () => {
  const line = `hello ${++n}`;
  try {
    const { seq } = await client.publish("chat.lobby", { text: line });
    console.log(`   published ${line} as #${seq}`);
  } catch (err) {
    console.log(`   ${line} not published: ${err.code}`);
  }
}, 1000);

process.on("SIGINT", async () => {
  clearInterval(timer);
  await client.close();
  process.exit(0);
});
