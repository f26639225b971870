// Real Murmur nodes for the integration tests: `target/debug/murmur serve` processes on free
// loopback ports, joined into one cluster with the test cluster key (as tests/operations.rs
// starts them). Every node is killed when the test process exits, whatever happens.
import { spawn } from "node:child_process";
import dgram from "node:dgram";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { sleep } from "./helpers.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

/** The murmur binary: $MURMUR_BIN, else the workspace's debug build. */
export function murmurBinary() {
  const bin = process.env.MURMUR_BIN ?? path.join(repoRoot, "target/debug/murmur");
  if (!fs.existsSync(bin)) {
    throw new Error(`${bin} is missing: build it first (cargo build -p murmur, which make test-js does)`);
  }
  return bin;
}

/** The cluster key of test clusters (tests/harness/lib.rs TEST_CLUSTER_KEY). */
export const TEST_CLUSTER_KEY = "rhzr6uV9q-itgxq40nPRrBj37lcLzbdepBsYOaJZ57E";

const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

async function freeTcpPort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function freeUdpPort() {
  const socket = dgram.createSocket("udp4");
  await new Promise((resolve) => socket.bind(0, "127.0.0.1", resolve));
  const { port } = socket.address();
  await new Promise((resolve) => socket.close(resolve));
  return port;
}

export class MurmurNode {
  constructor(name, { listen, admin, gossip, quic }, seed, extraArgs, logDir) {
    this.name = name;
    this.listen = listen;
    this.admin = admin;
    this.gossip = gossip;
    this.quic = quic;
    this.seed = seed;
    this.extraArgs = extraArgs;
    this.log = path.join(logDir, `${name}.log`);
    this.url = `ws://127.0.0.1:${listen}/ws`;
    this.child = null;
  }

  static async create(name, seedGossip, extraArgs, logDir) {
    const ports = {
      listen: await freeTcpPort(),
      admin: await freeTcpPort(),
      gossip: await freeUdpPort(),
      quic: await freeUdpPort(),
    };
    // The first node has no seed: seeded with itself it would wait for an answer first.
    return new MurmurNode(name, ports, seedGossip ?? null, extraArgs, logDir);
  }

  start() {
    const log = fs.openSync(this.log, "a");
    const args = [
      "serve",
      "--name", this.name,
      "--listen", `127.0.0.1:${this.listen}`,
      "--admin-listen", `127.0.0.1:${this.admin}`,
      "--gossip", `127.0.0.1:${this.gossip}`,
      "--quic", `127.0.0.1:${this.quic}`,
      ...(this.seed === null ? [] : ["--seeds", `127.0.0.1:${this.seed}`]),
      "--shutdown-grace", "3s",
      ...this.extraArgs,
    ];
    const env = { ...process.env, MURMUR_CLUSTER_KEY: TEST_CLUSTER_KEY };
    delete env.MURMUR_CONFIG;
    this.child = spawn(murmurBinary(), args, { stdio: ["ignore", log, log], env });
    fs.closeSync(log);
    const child = this.child;
    running.add(child);
    this.exited = new Promise((resolve) => child.on("exit", (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    }));
  }

  /** SIGKILL: the node dies without a word, as in a crash. */
  async kill() {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill("SIGKILL");
    await this.exited;
  }

  /** Waits until GET /readyz answers 200 (joined and linked to every live peer). */
  async ready(ms = 20_000) {
    const deadline = Date.now() + ms;
    for (;;) {
      try {
        const res = await fetch(`http://127.0.0.1:${this.listen}/readyz`);
        if (res.status === 200) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`${this.name} not ready within ${ms} ms; log: ${this.log}`);
      await sleep(50);
    }
  }

  /** The names of the members this node sees alive (admin /v1/cluster). */
  async aliveMembers() {
    const res = await fetch(`http://127.0.0.1:${this.admin}/v1/cluster`);
    const body = await res.json();
    return body.members.filter((m) => m.state === "alive").map((m) => m.name).sort();
  }
}

/** Starts `n` nodes n1..nN that join through n1, and waits until each sees all of them alive. */
export async function startCluster(n = 3, extraArgs = []) {
  const logDir = fs.mkdtempSync(path.join(os.tmpdir(), "murmur-js-"));
  const nodes = [];
  for (let i = 1; i <= n; i++) {
    const node = await MurmurNode.create(`n${i}`, nodes[0]?.gossip, extraArgs, logDir);
    node.start();
    nodes.push(node);
  }
  await Promise.all(nodes.map((node) => node.ready()));
  const names = nodes.map((node) => node.name).sort().join(",");
  const deadline = Date.now() + 20_000;
  for (const node of nodes) {
    while ((await node.aliveMembers()).join(",") !== names) {
      if (Date.now() > deadline) throw new Error(`the cluster did not form; logs in ${logDir}`);
      await sleep(50);
    }
  }
  return {
    nodes,
    logDir,
    urls: nodes.map((node) => node.url),
    byName: (name) => nodes.find((node) => node.name === name),
    async stop() {
      await Promise.all(nodes.map((node) => node.kill()));
      fs.rmSync(logDir, { recursive: true, force: true });
    },
  };
}
