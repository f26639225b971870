#!/usr/bin/env node
// The demo (`make demo`): three Murmur nodes, a ticker published into them, and a page that
// shows it live through the JS client — each event's seq and the node the page is connected
// to — with a button that kills that node. The page carries on on another node and says
// "resumed on nX, recovered N events", with no seq missing.
//
//   node demo/server.mjs [--bin target/release/murmur] [--port 7480] [--free-ports] [--logs DIR]
//
// Nodes: ports as deploy/local-cluster.sh (n1 ws://127.0.0.1:7400/ws, n2 :7410, n3 :7420),
// or free ones with --free-ports (the browser tests). The page: http://127.0.0.1:7480/.
// POST /api/kill kills the node the page is on (`make demo-kill`); Ctrl-C stops everything.
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { parseArgs } from "node:util";
import { repoRoot, startCluster } from "./nodes.mjs";

const { values: options } = parseArgs({
  options: {
    bin: { type: "string" },
    port: { type: "string", default: "7480" },
    "free-ports": { type: "boolean", default: false },
    logs: { type: "string", default: path.join(repoRoot, ".cluster", "demo") },
    "publish-every-ms": { type: "string", default: "250" },
  },
});

const TOPIC = "demo.ticker";
const pageDir = path.join(repoRoot, "demo", "page");
const assetsDir = path.join(repoRoot, "node", "src", "frontdoor", "dashboard", "assets");
const clientDir = path.join(assetsDir, "murmur-client");
const files = {
  "/": ["index.html", "text/html; charset=utf-8", pageDir],
  "/demo.js": ["demo.js", "text/javascript; charset=utf-8", pageDir],
  "/demo.css": ["demo.css", "text/css; charset=utf-8", pageDir],
  "/favicon.svg": ["favicon.svg", "image/svg+xml", assetsDir],
};

let cluster = null;
/** The node the page last said it is connected to. */
let attached = null;
/** The last event the ticker got stored, and how many publishes failed (and were not retried). */
const ticker = { published: 0, failed: 0, last: null, via: null };

function send(res, status, body, type = "application/json") {
  res.writeHead(status, { "Content-Type": type, "Cache-Control": "no-store" });
  res.end(type === "application/json" ? JSON.stringify(body) : body);
}

async function readJson(req) {
  let text = "";
  for await (const chunk of req) {
    text += chunk;
    if (text.length > 10_000) throw new Error("body too large");
  }
  return text ? JSON.parse(text) : {};
}

function nodeList() {
  return cluster.nodes.map((n) => ({ name: n.name, url: n.url, http: n.http, running: n.running }));
}

async function handle(req, res) {
  const url = new URL(req.url, "http://demo");
  if (req.method === "GET" && files[url.pathname]) {
    const [file, type, dir] = files[url.pathname];
    return send(res, 200, fs.readFileSync(path.join(dir, file)), type);
  }
  if (req.method === "GET" && /^\/murmur-client\/[a-z]+\.js$/.test(url.pathname)) {
    const file = path.join(clientDir, path.basename(url.pathname));
    if (fs.existsSync(file)) return send(res, 200, fs.readFileSync(file), "text/javascript; charset=utf-8");
  }
  if (req.method === "GET" && url.pathname === "/api/nodes") {
    return send(res, 200, { topic: TOPIC, nodes: nodeList(), attached, ticker });
  }
  if (req.method === "POST" && url.pathname === "/api/attached") {
    const { node } = await readJson(req);
    if (!cluster.byName(node)) return send(res, 400, { error: `no node ${node}` });
    attached = node;
    return send(res, 200, { attached });
  }
  if (req.method === "POST" && url.pathname === "/api/kill") {
    const { node: asked } = await readJson(req);
    const name = asked ?? attached;
    const node = name && cluster.byName(name);
    if (!node) return send(res, 409, { error: "no node to kill: open the page first, or name one" });
    if (!node.running) return send(res, 409, { error: `${name} is not running` });
    await node.kill("SIGKILL");
    console.log(`killed ${name} (SIGKILL)`);
    return send(res, 200, { killed: name });
  }
  if (req.method === "POST" && url.pathname === "/api/restart") {
    const { node: name } = await readJson(req);
    const node = cluster.byName(name);
    if (!node) return send(res, 400, { error: `no node ${name}` });
    node.start();
    console.log(`started ${name} again`);
    return send(res, 200, { started: name });
  }
  send(res, 404, { error: "not found" });
}

/** One ticker event per interval through the HTTP API, on the next running node when one fails. */
async function publishLoop(everyMs) {
  let price = 100;
  let next = 0;
  for (let tick = 1; cluster; tick++) {
    const started = Date.now();
    price = Math.max(1, price + (Math.random() - 0.5) * 2);
    const up = cluster.nodes.filter((n) => n.running);
    const node = up[next % Math.max(1, up.length)];
    if (node) {
      try {
        const res = await fetch(`${node.http}/v1/publish`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ topic: TOPIC, data: { tick, price: Number(price.toFixed(2)) } }),
          signal: AbortSignal.timeout(3000),
        });
        const body = await res.json();
        if (!res.ok) throw new Error(body?.error?.code ?? res.status);
        ticker.published++;
        ticker.last = body;
        ticker.via = node.name;
      } catch {
        // Not stored (or not known to be): the page never sees a seq for it. Try another node.
        ticker.failed++;
        next++;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, everyMs - (Date.now() - started))));
  }
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => send(res, 500, { error: String(err.message ?? err) }));
});
await new Promise((resolve, reject) => {
  server.once("error", reject);
  server.listen(Number(options.port), "127.0.0.1", resolve);
});
const port = server.address().port;
const origins = [`http://127.0.0.1:${port}`, `http://localhost:${port}`];
try {
  cluster = await startCluster({
    bin: options.bin,
    fixedPorts: !options["free-ports"],
    logDir: options.logs,
    extraArgs: ["--allowed-origins", origins.join(",")],
  });
} catch (err) {
  console.error(`the cluster did not start: ${err.message}`);
  process.exit(1);
}

async function stop() {
  const running = cluster;
  cluster = null;
  server.close();
  await running.stop("SIGTERM");
  process.exit(0);
}
process.on("SIGINT", stop);
process.on("SIGTERM", stop);

publishLoop(Number(options["publish-every-ms"]));
for (const n of cluster.nodes) console.log(`${n.name}: ${n.url} (log ${n.logFile})`);
console.log(`demo: http://127.0.0.1:${port}/  (make demo-kill kills the node the page is on; Ctrl-C stops)`);
