// The demo page: one Client over the three nodes' URLs, one subscription on the ticker. It
// checks the promise as it goes: every event's seq follows the one before it (or a `gap` says
// why not), and after a drop it reports where it resumed and how many events the resume
// brought back (the events published before the resume, which the page had not seen).
import { Client } from "/murmur-client/index.js";

const KEEP_ROWS = 300;
/** Events that arrive later than this after the resume are live, not recovered, whatever their ts. */
const RECOVERY_WINDOW_MS = 3000;

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (key === "onclick") node.addEventListener("click", value);
    else node[key] = value;
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

async function post(path, body = {}) {
  const res = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  return res.json();
}

function notice(text, kind = "") {
  $("notices").prepend(el("li", { class: kind }, text));
}

const info = await (await fetch("/api/nodes")).json();
$("topic").textContent = info.topic;

const seen = { count: 0, epoch: null, lastSeq: null, missing: 0, gaps: 0 };
let currentNode = null;
let wasConnected = false;
/** Set between a resume and the first live event: what the resume brought back. */
let recovering = null;

function renderNumbers() {
  $("count").textContent = seen.count;
  $("last-seq").textContent = seen.lastSeq ?? "–";
  $("missing").textContent = seen.missing;
  $("gaps").textContent = seen.gaps;
}

async function renderNodes() {
  const { nodes } = await (await fetch("/api/nodes")).json();
  $("nodes").replaceChildren(
    ...nodes.map((n) =>
      el(
        "span",
        { class: `chip ${n.running ? "up" : "down"} ${n.name === currentNode ? "here" : ""}`, "data-node": n.name, "data-running": String(n.running) },
        `${n.name} ${n.running ? "running" : "killed"}`,
        ...(n.running ? [] : [el("button", { type: "button", class: "restart", onclick: () => restart(n.name) }, `restart ${n.name}`)]),
      ),
    ),
  );
}

async function restart(name) {
  await post("/api/restart", { node: name });
  notice(`restarted ${name}`);
  renderNodes();
}

function finishRecovery() {
  if (!recovering) return;
  const r = recovering;
  recovering = null;
  clearTimeout(r.timer);
  const range = r.count > 0 ? ` (#${r.first}–#${r.last})` : "";
  notice(`resumed on ${r.node}, recovered ${r.count} event${r.count === 1 ? "" : "s"}${range}`, "resumed");
}

const client = new Client(info.nodes.map((n) => n.url), {
  clientName: "demo",
  reconnect: { initialDelayMs: 100, maxDelayMs: 2000 },
});

client.on("connecting", () => {
  $("state").textContent = "connecting";
  $("state").className = "state connecting";
});
client.on("connected", ({ node }) => {
  currentNode = node;
  $("node").textContent = node;
  $("state").textContent = "connected";
  $("state").className = "state connected";
  $("kill").disabled = false;
  $("kill").textContent = `Kill ${node}, the node this page is on`;
  post("/api/attached", { node });
  renderNodes();
});
client.on("disconnected", ({ code }) => {
  $("state").textContent = "disconnected";
  $("state").className = "state disconnected";
  $("kill").disabled = true;
  if (wasConnected && currentNode) notice(`lost ${currentNode} (close code ${code ?? "none"}); reconnecting to another node…`);
  renderNodes();
});

const subscription = client.subscribe(info.topic, (event) => {
  const fresh = seen.epoch !== event.epoch;
  if (!fresh && event.seq !== seen.lastSeq + 1) {
    // The client drops duplicates, so anything but the next seq is a hole: it must not happen.
    const lost = event.seq - seen.lastSeq - 1;
    seen.missing += Math.max(0, lost);
    notice(`MISSING: #${seen.lastSeq + 1}–#${event.seq - 1} never arrived`, "bad");
  }
  if (fresh && seen.epoch !== null) notice(`the topic started a new epoch (${event.epoch})`, "bad");
  seen.epoch = event.epoch;
  seen.lastSeq = event.seq;
  seen.count++;
  let recovered = false;
  if (recovering) {
    if (event.ts <= recovering.at && Date.now() - recovering.at < RECOVERY_WINDOW_MS) {
      recovered = true;
      recovering.count++;
      recovering.first ??= event.seq;
      recovering.last = event.seq;
    } else {
      finishRecovery();
    }
  }
  const row = el(
    "tr",
    { class: recovered ? "recovered" : "", "data-seq": event.seq, "data-via": currentNode ?? "" },
    el("td", {}, `#${event.seq}`),
    el("td", {}, currentNode ?? "?"),
    el("td", {}, event.data?.price ?? ""),
    el("td", {}, event.data?.tick ?? ""),
    el("td", {}, new Date(event.ts).toLocaleTimeString()),
  );
  const body = $("events");
  body.prepend(row);
  while (body.children.length > KEEP_ROWS) body.lastElementChild.remove();
  renderNumbers();
});

subscription.on("subscribed", ({ recovered }) => {
  if (recovered && wasConnected) {
    recovering = { node: currentNode, at: Date.now(), count: 0, first: null, last: null };
    recovering.timer = setTimeout(finishRecovery, RECOVERY_WINDOW_MS);
  } else if (!wasConnected) {
    notice(`subscribed on ${currentNode}`);
  }
  wasConnected = true;
});
subscription.on("gap", ({ from, to, reason }) => {
  seen.gaps++;
  notice(`gap: #${from}–#${to ?? "?"} can no longer be replayed (${reason})`, "bad");
  renderNumbers();
});

$("kill").addEventListener("click", async () => {
  $("kill").disabled = true;
  const answer = await post("/api/kill", { node: currentNode });
  notice(answer.killed ? `killed ${answer.killed}` : `could not kill: ${answer.error}`);
  renderNodes();
});

setInterval(renderNodes, 2000);
