// The dashboard: reads GET /v1/stats?scope=cluster (every member's numbers) every second and GET /v1/topics every two, tails a
// topic over /ws with the JS client (murmur-client, embedded next to this file) and pages
// through its history with GET /v1/history. Everything shown is written with textContent.
import { Client } from "/dashboard/murmur-client/index.js";

const STATS_EVERY_MS = 1000;
const TOPICS_EVERY_MS = 2000;
const CHART_POINTS = 120;
const TOP_TOPICS = 10;
const TAIL_KEEP = 200;
const HISTORY_PAGE = 20;
const TOKEN_KEY = "murmur-dashboard-token";

const $ = (selector) => document.querySelector(selector);

/** Elements with text, built without innerHTML. */
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

// ---- the token --------------------------------------------------------------------------

let token = sessionStorage.getItem(TOKEN_KEY) || "";

function authHeaders(extra = {}) {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

function askForToken(reason) {
  $("#token-reason").textContent = reason;
  if (!$("#token-panel").hidden) return;
  $("#token-panel").hidden = false;
  $("#token-input").focus();
}

$("#token-button").addEventListener("click", () => askForToken("A token for this node (kept in this tab)."));
$("#token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("#token-input").value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  $("#token-input").value = "";
  $("#token-panel").hidden = true;
  restartTail();
  refreshStats();
  refreshTopics();
});
$("#token-forget").addEventListener("click", () => {
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  $("#token-panel").hidden = true;
  restartTail();
  refreshStats();
});

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, init = {}) {
  const response = await fetch(path, { ...init, headers: authHeaders(init.headers), cache: "no-store" });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = body?.error ?? {};
    if (response.status === 401) {
      askForToken(token ? `The node refused the token (${error.code}): ${error.message}` : "This node requires a token.");
    } else if (response.status === 403 && path.startsWith("/v1/stats")) {
      askForToken(`This token may not read the node's stats: ${error.message}`);
    }
    throw new ApiError(response.status, error.code ?? String(response.status), error.message ?? response.statusText);
  }
  return body;
}

function setStatus(text, kind) {
  const badge = $("#status");
  badge.textContent = text;
  badge.className = `badge ${kind}`;
}

// ---- stats: members with their numbers, this node, peers, rates ---------------------------

const series = { publish: [], delivery: [] };
// Each node's previous numbers, for its rates: `at_ms` is read by that node's own clock.
let previousByNode = new Map();
let statsInFlight = false;

function perSecond(now, before, pick) {
  if (!before) return null;
  const seconds = (now.at_ms - before.at_ms) / 1000;
  if (seconds <= 0) return null;
  return Math.max(0, (pick(now) - pick(before)) / seconds);
}

function formatRate(value) {
  if (value === null || value === undefined) return "–";
  return value >= 100 ? Math.round(value).toLocaleString("en") : value.toFixed(1);
}

/** The slowest link of a node, "2.31 ms (to n3)", with every link in the tooltip. */
function peerRtt(numbers) {
  if (!numbers.peers.length) return { text: "no peers", title: "" };
  const slowest = numbers.peers.reduce((a, b) => (b.rtt_ms > a.rtt_ms ? b : a));
  return {
    text: `${slowest.rtt_ms.toFixed(2)} ms (to ${slowest.name})`,
    title: numbers.peers.map((p) => `${p.name}: ${p.rtt_ms.toFixed(2)} ms`).join("\n"),
  };
}

function renderMembers(answer) {
  const body = $("#members tbody");
  const order = { alive: 0, suspect: 1, down: 2, left: 3 };
  const members = [...answer.nodes].sort(
    (a, b) => (order[a.state] ?? 9) - (order[b.state] ?? 9) || a.name.localeCompare(b.name),
  );
  body.replaceChildren(
    ...members.map((m) => {
      const self = m.name === answer.node;
      const link = !self && m.state === "alive"
        ? el("a", { href: `${location.protocol}//${m.listen}/dashboard` }, "its dashboard")
        : self ? "this node" : "";
      const numbers = m.stats;
      let cells;
      if (numbers) {
        const before = previousByNode.get(m.name) ?? null;
        const rtt = peerRtt(numbers);
        const queued = numbers.peers.reduce((sum, p) => sum + p.queue_depth, 0);
        cells = [
          el("td", { class: "num", "data-col": "connections" }, numbers.connections),
          el("td", { class: "num", "data-col": "subscriptions" }, numbers.subscriptions),
          el("td", { class: "num", "data-col": "publish_rate" }, formatRate(perSecond(numbers, before, (n) => n.counters.events_received))),
          el("td", { class: "num", "data-col": "delivery_rate" }, formatRate(perSecond(numbers, before, (n) => n.counters.deliveries))),
          el("td", { class: `num ${numbers.counters.slow_consumer_disconnects > 0 ? "warn" : ""}`, "data-col": "slow_consumer_disconnects" }, numbers.counters.slow_consumer_disconnects),
          el("td", { class: `num ${numbers.counters.resync_signals > 0 ? "warn" : ""}`, "data-col": "resync_signals" }, numbers.counters.resync_signals),
          el("td", { "data-col": "peer_rtt", title: rtt.title }, rtt.text),
          el("td", { class: `num ${queued > 0 ? "warn" : ""}`, "data-col": "peer_queues" }, queued),
        ];
      } else {
        const why = m.state === "alive" ? `unreachable: ${m.error ?? "no answer"}` : "–";
        cells = [el("td", { colSpan: 8, class: m.state === "alive" ? "unreachable" : "empty", title: m.error ?? "" }, why)];
      }
      return el(
        "tr",
        { "data-member": m.name, "data-state": m.state, "data-reachable": numbers ? "yes" : "no" },
        el("td", {}, m.name),
        el("td", {}, el("span", { class: `state ${m.state}` }, m.state)),
        ...cells,
        el("td", {}, m.listen),
        el("td", {}, new Date(m.generation).toLocaleString()),
        el("td", {}, link),
      );
    }),
  );
}

function drawChart(name, values) {
  const svg = $(`#chart-${name}`);
  const max = Math.max(1, ...values);
  // The first half minute fills the width; after that the chart scrolls, up to 2 minutes.
  const width = Math.min(CHART_POINTS, Math.max(30, values.length));
  const step = 240 / (width - 1);
  const offset = width - values.length;
  const points = values.map((v, i) => `${((offset + i) * step).toFixed(1)},${(58 - (v / max) * 56).toFixed(1)}`);
  svg.querySelector("polyline").setAttribute("points", points.join(" "));
  document.querySelector(`[data-chart-max="${name}"]`).textContent = `(max ${formatRate(max)})`;
}

function renderNode(me) {
  const before = previousByNode.get(me.name) ?? null;
  const c = (n) => n.counters;
  const publishRate = perSecond(me, before, (n) => c(n).events_received);
  const deliveryRate = perSecond(me, before, (n) => c(n).deliveries);
  const values = {
    connections: me.connections,
    subscriptions: me.subscriptions,
    publish_rate: formatRate(publishRate),
    delivery_rate: formatRate(deliveryRate),
    sequenced_rate: formatRate(perSecond(me, before, (n) => c(n).events_published)),
    gaps_sent: c(me).gaps_sent,
    resync_signals: c(me).resync_signals,
    slow_consumer_disconnects: c(me).slow_consumer_disconnects,
    history_events: me.history.events,
    publish_errors: c(me).publish_errors,
  };
  for (const [stat, value] of Object.entries(values)) {
    document.querySelector(`[data-stat="${stat}"]`).textContent = String(value);
  }
  if (publishRate !== null) {
    series.publish = [...series.publish, publishRate].slice(-CHART_POINTS);
    series.delivery = [...series.delivery, deliveryRate].slice(-CHART_POINTS);
    drawChart("publish", series.publish);
    drawChart("delivery", series.delivery);
  }
  const peersBefore = new Map((before?.peers ?? []).map((p) => [p.name, p]));
  const seconds = before ? (me.at_ms - before.at_ms) / 1000 : 0;
  $("#peers tbody").replaceChildren(
    ...(me.peers.length === 0
      ? [el("tr", {}, el("td", { colSpan: 6, class: "empty" }, "no peers linked"))]
      : me.peers.map((p) => {
          const was = peersBefore.get(p.name);
          const rate = was && seconds > 0 ? Math.max(0, (p.events_forwarded - was.events_forwarded) / seconds) : null;
          return el(
            "tr",
            { "data-peer": p.name },
            el("td", {}, p.name),
            el("td", {}, `${p.rtt_ms.toFixed(2)} ms`),
            el("td", { class: p.queue_depth > 0 ? "warn" : "" }, p.queue_depth),
            el("td", {}, formatRate(rate)),
            el("td", {}, p.events_forwarded),
            el("td", { class: p.events_dropped > 0 ? "bad" : "" }, p.events_dropped),
          );
        })),
  );
}

// The node asks the other members for their numbers (GET /v1/stats?scope=cluster), so one
// request a second shows them all. A poll still under way (a member slow to answer) is not
// doubled.
async function refreshStats() {
  if (statsInFlight) return;
  statsInFlight = true;
  try {
    const answer = await api("/v1/stats?scope=cluster");
    $("#node-name").textContent = answer.node;
    for (const label of document.querySelectorAll(".node-label")) label.textContent = answer.node;
    document.title = `Murmur dashboard: ${answer.node}`;
    renderMembers(answer);
    const me = answer.nodes.find((n) => n.name === answer.node)?.stats;
    if (me) renderNode(me);
    previousByNode = new Map(answer.nodes.filter((n) => n.stats).map((n) => [n.name, n.stats]));
    const alive = answer.nodes.filter((m) => m.state === "alive");
    const unreachable = alive.filter((m) => !m.stats).length;
    const text = `${alive.length} of ${answer.nodes.length} members alive${unreachable ? `, ${unreachable} not answering` : ""}`;
    setStatus(text, alive.length === answer.nodes.length && !unreachable ? "ok" : "warn");
  } catch (err) {
    setStatus(err instanceof ApiError ? `${err.code}` : "node unreachable", "bad");
  } finally {
    statsInFlight = false;
  }
}

// ---- top topics ----------------------------------------------------------------------------

let previousTopics = null;

async function refreshTopics() {
  let page;
  try {
    page = await api("/v1/topics?limit=1000");
  } catch {
    return;
  }
  const now = performance.now();
  const before = previousTopics;
  previousTopics = { at: now, byTopic: new Map(page.topics.map((t) => [t.topic, t])) };
  const seconds = before ? (now - before.at) / 1000 : 0;
  const rated = page.topics.map((t) => {
    const was = before?.byTopic.get(t.topic);
    const rate = was && was.epoch === t.epoch && seconds > 0 ? (t.last_seq - was.last_seq) / seconds : null;
    return { ...t, rate };
  });
  rated.sort((a, b) => (b.rate ?? 0) - (a.rate ?? 0) || b.last_seq - a.last_seq || a.topic.localeCompare(b.topic));
  $("#topics-note").textContent = page.more ? "(of the first 1000 topics)" : `(${page.topics.length} topics)`;
  $("#top-topics tbody").replaceChildren(
    ...(rated.length === 0
      ? [el("tr", {}, el("td", { colSpan: 5, class: "empty" }, "no topics yet"))]
      : rated.slice(0, TOP_TOPICS).map((t) =>
          el(
            "tr",
            { "data-topic": t.topic },
            el("td", {}, t.topic),
            el("td", {}, formatRate(t.rate)),
            el("td", {}, t.last_seq),
            el("td", {}, t.local_subscribers),
            el("td", {}, el("button", { type: "button", onclick: () => inspect(t.topic) }, "inspect")),
          ),
        )),
  );
}

// ---- the topic inspector: live tail (JS client) and history pages (/v1/history) -------------

let client = null;
let tail = null;
let inspected = null;

function wsUrl() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
}

function eventItem(e) {
  const data = typeof e.data === "string" ? e.data : JSON.stringify(e.data);
  return el(
    "li",
    { "data-seq": e.seq },
    el("span", { class: "seq" }, `#${e.seq}`),
    el("span", { class: "time" }, new Date(e.ts).toLocaleTimeString()),
    el("code", {}, data),
  );
}

function gapItem(g) {
  const to = g.to ?? g.to_seq;
  const from = g.from ?? g.from_seq;
  return el("li", { class: "gap" }, `gap: #${from}…${to ? `#${to}` : "?"} lost (${g.reason})`);
}

function ensureClient() {
  if (client) return client;
  client = new Client(wsUrl(), { token: token || undefined, clientName: "dashboard" });
  client.on("connected", ({ node }) => ($("#tail-status").textContent = `live via ${node}`));
  client.on("disconnected", () => ($("#tail-status").textContent = "reconnecting…"));
  client.on("closed", ({ reason }) => {
    $("#tail-status").textContent = `closed: ${reason}`;
    if (/unauthorized|token/.test(reason)) askForToken(`The node closed the live tail: ${reason}`);
  });
  return client;
}

function restartTail() {
  if (client) {
    client.close();
    client = null;
    tail = null;
  }
  if (inspected) startTail(inspected);
}

function startTail(topic) {
  if (tail) tail.unsubscribe().catch(() => {});
  const list = $("#tail");
  list.replaceChildren();
  const sub = ensureClient().subscribe(topic, (e) => {
    list.prepend(eventItem(e));
    while (list.children.length > TAIL_KEEP) list.lastElementChild.remove();
  });
  sub.on("gap", (g) => list.prepend(gapItem(g)));
  sub.on("error", (err) => list.prepend(el("li", { class: "gap" }, `error: ${err.code}: ${err.message}`)));
  sub.on("unsubscribed", ({ reason }) => {
    if (reason !== "unsubscribed" && reason !== "closed") {
      list.prepend(el("li", { class: "gap" }, `the node refused the subscription: ${reason}`));
    }
  });
  tail = sub;
}

// Where the shown history page starts and ends, and what the cluster knows of the topic.
let historyView = null;

async function loadHistory(topic, from, limit) {
  const query = new URLSearchParams({ topic, from: JSON.stringify(from), limit: String(limit) });
  return api(`/v1/history?${query}`);
}

async function showHistory(topic, afterSeq, limit = HISTORY_PAGE) {
  const list = $("#history");
  try {
    // The first question learns the epoch and last seq; a page is then the `limit` events
    // after a cursor, so "older" asks from further back.
    let head = historyView?.topic === topic ? historyView : null;
    if (!head || afterSeq === null) {
      const probe = await loadHistory(topic, "earliest", 1);
      if (probe.epoch === null) {
        list.replaceChildren(el("li", { class: "empty" }, "no node knows this topic (never published, or forgotten)"));
        $("#history-range").textContent = "";
        $("#history-older").disabled = $("#history-newer").disabled = true;
        historyView = null;
        return;
      }
      head = { topic, epoch: probe.epoch, lastSeq: probe.last_seq };
      if (afterSeq === null) afterSeq = Math.max(0, probe.last_seq - HISTORY_PAGE);
    }
    const page = await loadHistory(topic, { epoch: head.epoch, seq: afterSeq }, limit);
    if (page.epoch !== head.epoch) {
      historyView = null;
      return showHistory(topic, null);
    }
    list.replaceChildren(...page.gaps.map(gapItem), ...page.events.map(eventItem));
    if (page.events.length === 0 && page.gaps.length === 0) {
      list.replaceChildren(el("li", { class: "empty" }, "no retained events here"));
    }
    const first = page.events[0]?.seq ?? afterSeq + 1;
    const last = page.events.at(-1)?.seq ?? afterSeq;
    historyView = { topic, epoch: page.epoch, lastSeq: page.last_seq, first, last, after: afterSeq };
    $("#history-range").textContent = page.events.length
      ? `#${first}–#${last} of ${page.last_seq} (epoch ${page.epoch})`
      : `of ${page.last_seq} (epoch ${page.epoch})`;
    $("#history-older").disabled = afterSeq <= 0 || page.gaps.some((g) => g.reason === "retention");
    $("#history-newer").disabled = last >= page.last_seq;
  } catch (err) {
    list.replaceChildren(el("li", { class: "gap" }, `history: ${err.code ?? ""} ${err.message}`));
  }
}

$("#history-older").addEventListener("click", () => {
  if (!historyView) return;
  const after = Math.max(0, historyView.after - HISTORY_PAGE);
  showHistory(historyView.topic, after, Math.max(1, historyView.after - after));
});
$("#history-newer").addEventListener("click", () => {
  if (historyView) showHistory(historyView.topic, historyView.last);
});

function inspect(topic) {
  topic = topic.trim();
  if (!topic) return;
  inspected = topic;
  $("#inspect-topic").value = topic;
  historyView = null;
  startTail(topic);
  showHistory(topic, null);
  $("#inspector").scrollIntoView({ behavior: "smooth", block: "start" });
}

$("#inspect-form").addEventListener("submit", (e) => {
  e.preventDefault();
  inspect($("#inspect-topic").value);
});

$("#publish-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const result = $("#publish-result");
  const topic = inspected ?? $("#inspect-topic").value.trim();
  if (!topic) {
    result.textContent = "choose a topic first";
    return;
  }
  const text = $("#publish-data").value;
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    data = text;
  }
  try {
    const stored = await api("/v1/publish", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ topic, data }),
    });
    result.textContent = `stored as #${stored.seq}`;
    $("#publish-data").value = "";
  } catch (err) {
    result.textContent = `refused: ${err.code}: ${err.message}`;
  }
});

// ---- go -----------------------------------------------------------------------------------

const fromHash = decodeURIComponent(location.hash.replace(/^#topic=/, ""));
if (location.hash.startsWith("#topic=") && fromHash) inspect(fromHash);
refreshStats();
refreshTopics();
setInterval(refreshStats, STATS_EVERY_MS);
setInterval(refreshTopics, TOPICS_EVERY_MS);
