// Real Murmur nodes for the integration tests: `target/debug/murmur serve` processes on free
// loopback ports, started by the repository's one node starter (demo/nodes.mjs, which the
// demo and the browser tests use too). Every node is killed when the test process exits.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { startCluster as startNodes } from "../../../demo/nodes.mjs";

/** Starts `n` nodes n1..nN and waits until each sees all of them alive; `extraArgs` go to every node. */
export async function startCluster(n = 3, extraArgs = []) {
  const logDir = fs.mkdtempSync(path.join(os.tmpdir(), "murmur-js-"));
  const cluster = await startNodes({ count: n, extraArgs, logDir });
  return {
    ...cluster,
    urls: cluster.nodes.map((node) => node.url),
    async stop() {
      await cluster.stop();
      fs.rmSync(logDir, { recursive: true, force: true });
    },
  };
}
