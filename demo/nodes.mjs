// Murmur nodes as child processes, for the demo (demo/server.mjs) and the browser tests
// (tests/browser/): n1..nN on 127.0.0.1, each seeded with the others' gossip addresses so any
// of them can be killed and started again and find the cluster. Ports are fixed (as
// deploy/local-cluster.sh: 7400, 7410, 7420, …) or free ones picked by the OS. Every child is
// killed when this process exits, whatever happens.
import { execFileSync, spawn } from "node:child_process";
import dgram from "node:dgram";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

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
  constructor({ name, bin, ports, logFile, env, extraArgs }) {
    this.name = name;
    this.bin = bin;
    Object.assign(this, ports); // listen, gossip, quic, admin
    this.logFile = logFile;
    this.env = env;
    this.extraArgs = extraArgs;
    this.seeds = [];
    this.child = null;
    this.exited = Promise.resolve(null);
  }

  get url() {
    return `ws://127.0.0.1:${this.listen}/ws`;
  }

  get http() {
    return `http://127.0.0.1:${this.listen}`;
  }

  get running() {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null;
  }

  start() {
    if (this.running) return;
    const log = fs.openSync(this.logFile, "a");
    const args = [
      "serve",
      "--name", this.name,
      "--listen", `127.0.0.1:${this.listen}`,
      "--gossip", `127.0.0.1:${this.gossip}`,
      "--quic", `127.0.0.1:${this.quic}`,
      "--admin-listen", `127.0.0.1:${this.admin}`,
      ...(this.seeds.length > 0 ? ["--seeds", this.seeds.join(",")] : []),
      "--shutdown-grace", "3s",
      ...this.extraArgs,
    ];
    const env = { ...process.env, ...this.env };
    delete env.MURMUR_CONFIG;
    const child = spawn(this.bin, args, { stdio: ["ignore", log, log], env });
    fs.closeSync(log);
    this.child = child;
    running.add(child);
    this.exited = new Promise((resolve) =>
      child.on("exit", (code, signal) => {
        running.delete(child);
        resolve({ code, signal });
      }),
    );
  }

  /** SIGKILL by default: the node dies without a word, as in a crash. */
  async kill(signal = "SIGKILL") {
    if (!this.running) return;
    this.child.kill(signal);
    await this.exited;
  }

  /** Waits until GET /readyz answers 200 (joined, and linked to every live peer). */
  async ready(ms = 30_000) {
    const deadline = Date.now() + ms;
    for (;;) {
      try {
        const res = await fetch(`${this.http}/readyz`);
        if (res.status === 200) return;
      } catch {
        // not listening yet
      }
      if (!this.running) throw new Error(`${this.name} exited; log: ${this.logFile}`);
      if (Date.now() > deadline) throw new Error(`${this.name} not ready within ${ms} ms; log: ${this.logFile}`);
      await sleep(50);
    }
  }

  /** The names of the members this node sees alive (admin port, /v1/cluster). */
  async aliveMembers() {
    const res = await fetch(`http://127.0.0.1:${this.admin}/v1/cluster`);
    const body = await res.json();
    return body.members.filter((m) => m.state === "alive").map((m) => m.name).sort();
  }
}

/** The murmur binary: `bin`, else $MURMUR_BIN, else the workspace's debug build. */
export function murmurBinary(bin) {
  const chosen = bin ?? process.env.MURMUR_BIN ?? path.join(repoRoot, "target/debug/murmur");
  if (!fs.existsSync(chosen)) {
    throw new Error(`${chosen} is missing: build it first (cargo build -p murmur)`);
  }
  return chosen;
}

/**
 * Starts `count` nodes n1..nN and waits until each sees all of them alive.
 * - `fixedPorts`: 7400 + 10·(i−1) for the client port, +1 gossip, +2 QUIC, +3 admin;
 *   otherwise free ports.
 * - `extraArgs`: more `murmur serve` flags for every node; `env`: more environment.
 */
export async function startCluster(options) {
  // Free ports are picked by binding port 0 and letting go: on a busy machine another
  // process can take one before the node binds it. Such a start is tried again with new
  // ports, twice at most; any other failure, or fixed ports, fails at once.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startClusterOnce(options);
    } catch (err) {
      const portTaken = !options.fixedPorts && attempt < 3 && logsSay(options.logDir, "Address already in use");
      if (!portTaken) throw err;
      console.error(`# a picked port was taken before a node bound it; starting again (${err.message})`);
    }
  }
}

function logsSay(logDir, text) {
  try {
    return fs
      .readdirSync(logDir)
      .filter((file) => file.endsWith(".log"))
      .some((file) => fs.readFileSync(path.join(logDir, file), "utf8").includes(text));
  } catch {
    return false;
  }
}

async function startClusterOnce({ bin, count = 3, fixedPorts = false, extraArgs = [], env = {}, logDir }) {
  const binary = murmurBinary(bin);
  // Logs of an earlier attempt would be read as this one's.
  fs.rmSync(logDir, { recursive: true, force: true });
  fs.mkdirSync(logDir, { recursive: true });
  // A real cluster key, so gossip and the mesh are authenticated as in production.
  const clusterKey = execFileSync(binary, ["keygen"], { encoding: "utf8" }).trim();
  const nodes = [];
  for (let i = 1; i <= count; i++) {
    const base = 7400 + (i - 1) * 10;
    const ports = fixedPorts
      ? { listen: base, gossip: base + 1, quic: base + 2, admin: base + 3 }
      : { listen: await freeTcpPort(), gossip: await freeUdpPort(), quic: await freeUdpPort(), admin: await freeTcpPort() };
    nodes.push(
      new MurmurNode({
        name: `n${i}`,
        bin: binary,
        ports,
        logFile: path.join(logDir, `n${i}.log`),
        env: { MURMUR_CLUSTER_KEY: clusterKey, ...env },
        extraArgs,
      }),
    );
  }
  for (const node of nodes) {
    node.seeds = nodes.filter((other) => other !== node).map((other) => `127.0.0.1:${other.gossip}`);
  }
  for (const node of nodes) node.start();
  const cluster = {
    nodes,
    logDir,
    byName: (name) => nodes.find((node) => node.name === name),
    /** Waits until every running node is ready and sees every running node alive. */
    async settled(ms = 30_000) {
      const up = nodes.filter((node) => node.running);
      await Promise.all(up.map((node) => node.ready(ms)));
      const names = up.map((node) => node.name).sort().join(",");
      const deadline = Date.now() + ms;
      for (const node of up) {
        while ((await node.aliveMembers()).join(",") !== names) {
          if (Date.now() > deadline) throw new Error(`the cluster did not form; logs in ${logDir}`);
          await sleep(50);
        }
      }
    },
    async stop(signal = "SIGKILL") {
      await Promise.all(nodes.map((node) => node.kill(signal)));
    },
  };
  try {
    await cluster.settled();
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return cluster;
}
