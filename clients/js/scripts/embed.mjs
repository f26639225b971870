#!/usr/bin/env node
// Copies the client's ES module build (dist/*.js) into the node's embedded assets, so that
// the dashboard the node serves (/dashboard/murmur-client/index.js) runs this very client,
// and `cargo build` needs no npm. Source-map comments are dropped (the maps are not served).
//
//   node scripts/embed.mjs          write node/src/frontdoor/dashboard/assets/murmur-client/
//   node scripts/embed.mjs --check  exit 1 if those files differ from what dist/ would give
//
// `npm run embed` builds first, then writes; `npm test` runs the check (test/unit/embed.test.js).
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const distDir = path.resolve(here, "..", "dist");
export const embedDir = path.resolve(here, "..", "..", "..", "node", "src", "frontdoor", "dashboard", "assets", "murmur-client");

const HEADER =
  "// Generated from clients/js/src (murmur-client) by clients/js/scripts/embed.mjs: do not edit.\n" +
  "// Rebuild with `cd clients/js && npm run embed`.\n";

/** The embedded form of each dist module: file name -> contents. */
export function expectedFiles() {
  if (!fs.existsSync(distDir)) throw new Error(`no ${distDir}: run \`npm run build\` first`);
  const files = new Map();
  for (const name of fs.readdirSync(distDir).filter((n) => n.endsWith(".js")).sort()) {
    const source = fs.readFileSync(path.join(distDir, name), "utf8");
    const body = source.replace(/^\/\/# sourceMappingURL=.*\n?/m, "");
    files.set(name, HEADER + body);
  }
  return files;
}

/** What differs between the embedded files and dist/: names of stale, missing or extra files. */
export function staleFiles() {
  const expected = expectedFiles();
  const present = fs.existsSync(embedDir) ? fs.readdirSync(embedDir).sort() : [];
  const stale = [];
  for (const [name, contents] of expected) {
    const file = path.join(embedDir, name);
    if (!fs.existsSync(file) || fs.readFileSync(file, "utf8") !== contents) stale.push(name);
  }
  for (const name of present) if (!expected.has(name)) stale.push(name);
  return stale;
}

function write() {
  const expected = expectedFiles();
  fs.mkdirSync(embedDir, { recursive: true });
  for (const name of fs.readdirSync(embedDir)) {
    if (!expected.has(name)) fs.rmSync(path.join(embedDir, name));
  }
  for (const [name, contents] of expected) fs.writeFileSync(path.join(embedDir, name), contents);
  console.log(`wrote ${expected.size} modules to ${path.relative(process.cwd(), embedDir)}`);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  if (process.argv.includes("--check")) {
    const stale = staleFiles();
    if (stale.length > 0) {
      console.error(`the node's embedded client is stale (${stale.join(", ")}): run \`cd clients/js && npm run embed\``);
      process.exit(1);
    }
    console.log("the node's embedded client matches dist/");
  } else {
    write();
  }
}
