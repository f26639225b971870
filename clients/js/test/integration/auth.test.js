// Tokens against a real node with `auth = token`: getToken() in hello, a refresh on `expiring`
// that keeps the connection past the first token's expiry, and an unauthorized token ending
// the client.
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { after, before, describe, it } from "node:test";
import { WebSocket } from "ws";
import { Client } from "../../dist/index.js";
import { startCluster } from "../cluster.js";
import { nextEvent, sleep, until } from "../helpers.js";

const SECRET = "js-client-test-secret-0123456789abcdef";
const b64url = (value) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

/** An HS256 JWT for `user`, valid `seconds` from now, allowed everything. */
function token(user, seconds, secret = SECRET) {
  const head = b64url({ alg: "HS256", typ: "JWT" });
  const now = Math.floor(Date.now() / 1000);
  const body = b64url({ sub: user, exp: now + seconds, iat: now, murmur: { pub: [">"], sub: [">"], history: [">"] } });
  const signature = crypto.createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${signature}`;
}

let cluster;
let node;
const clients = [];
before(async () => {
  cluster = await startCluster(1, ["--auth", "token", "--token-hmac-secret", SECRET, "--token-leeway", "0s"]);
  node = cluster.nodes[0];
});
after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await cluster?.stop();
});

describe("a node with auth = token", () => {
  it("refreshes a short-lived token on expiring and keeps the connection past its expiry", async () => {
    let issued = 0;
    // 4 s tokens: the node sends `expiring` halfway, at 2 s.
    const client = new Client(node.url, { WebSocket, getToken: () => (issued++, token("alice", 4)) });
    clients.push(client);
    const drops = [];
    client.on("disconnected", (d) => drops.push(d));
    const connected = await nextEvent(client, "connected", 10_000);
    assert.equal(connected.user, "alice");
    assert.equal(typeof connected.expiresAt, "number");
    const got = [];
    const sub = client.subscribe("secure.t", (e) => got.push(e.seq));
    await nextEvent(sub, "subscribed");
    const refreshed = await nextEvent(client, "refreshed", 5_000);
    assert.ok(refreshed.expiresAt > connected.expiresAt, "a later expiry");
    await sleep(Math.max(0, connected.expiresAt - Date.now()) + 500);
    const { seq } = await client.publish("secure.t", "after the first token expired");
    await until("the event", () => got.includes(seq), 5_000);
    assert.deepEqual(drops, [], "never dropped");
    assert.ok(issued >= 2, `one token for hello, one per refresh (${issued})`);
  });

  it("a token the node refuses ends the client: closed with unauthorized (4500)", async () => {
    const client = new Client(node.url, { WebSocket, token: token("mallory", 60, "a-different-secret-0123456789abcdef!") });
    clients.push(client);
    const closed = await nextEvent(client, "closed", 10_000);
    assert.equal(closed.code, 4500);
    assert.equal(client.state, "closed");
  });
});
