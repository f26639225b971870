// The dashboard (/dashboard on a node's client port) in Chromium against three real nodes:
// what a person sees — the members with each one's numbers, this node's numbers and peers,
// the top topics, a topic tailed live and paged back through — and a node with
// `auth = token` asking for a token.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { startCluster, murmurBinary, sleep } from "../../demo/nodes.mjs";
import { artifacts, launchBrowser, openPage, publish, screenshotPath } from "./browser.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

describe("the dashboard of a 3-node cluster", () => {
  let cluster;
  before(async () => {
    cluster = await startCluster({ logDir: path.join(artifacts, "dashboard-cluster") });
  });
  after(async () => {
    await cluster?.stop();
  });

  it("shows the members, the node's numbers, top topics, and tails a topic live and back through its history", async () => {
    const [n1, n2, n3] = cluster.nodes;
    for (let i = 1; i <= 30; i++) await publish(n2, "orders.eu", { order: i });
    for (let i = 1; i <= 3; i++) await publish(n3, "chat.lobby", { text: `hello ${i}` });

    // Subscribers held by `murmur sub` processes: two on n2, three on n3, so each member's
    // row has its own connection count.
    const subscribers = [n2, n2, n3, n3, n3].map((node) =>
      spawn(murmurBinary(), ["sub", "orders.>", "--url", node.url], { stdio: "ignore" }),
    );
    // Steady traffic while the page is open, so its rates and charts have something to show.
    let ticks = 0;
    const traffic = setInterval(() => publish(cluster.nodes[ticks++ % 2], "prices.eu", { tick: ticks }).catch(() => {}), 100);
    const { page, problems } = await openPage(browser);
    try {
      // GET / is a landing page that leads to the dashboard.
      await page.goto(`${n1.http}/`);
      await page.getByRole("link", { name: "Dashboard" }).click();
      await page.waitForURL(`${n1.http}/dashboard`);

      // Every member, alive; this node named; its peers with their RTT.
      for (const name of ["n1", "n2", "n3"]) {
        await page.locator(`#members tr[data-member="${name}"][data-state="alive"]`).waitFor();
      }
      assert.equal(await page.locator("#node-name").textContent(), "n1");
      await page.getByText("3 of 3 members alive").waitFor();
      for (const name of ["n2", "n3"]) {
        const rtt = await page.locator(`#peers tr[data-peer="${name}"] td:nth-child(2)`).textContent();
        assert.match(rtt, /^\d+\.\d\d ms$/);
      }

      // Every member's own numbers, in one table: the connections and subscriptions each
      // holds, its rates (n2 takes half the traffic), its slowest link.
      const cell = (name, column) => page.locator(`#members tr[data-member="${name}"] td[data-col="${column}"]`);
      const rowShows = (name, column, text) =>
        page.locator(`#members tr[data-member="${name}"][data-reachable="yes"] td[data-col="${column}"]`, { hasText: new RegExp(`^${text}$`) }).waitFor();
      await rowShows("n1", "connections", "0");
      await rowShows("n2", "connections", "2");
      await rowShows("n3", "connections", "3");
      await rowShows("n2", "subscriptions", "2");
      await rowShows("n3", "subscriptions", "3");
      await page.waitForFunction(() => {
        const rate = document.querySelector('#members tr[data-member="n2"] td[data-col="publish_rate"]');
        return Number(rate?.textContent) > 0;
      });
      for (const name of ["n1", "n2", "n3"]) {
        assert.match(await cell(name, "peer_rtt").textContent(), /^\d+\.\d\d ms \(to n\d\)$/);
        assert.equal(await cell(name, "slow_consumer_disconnects").textContent(), "0");
      }

      // The topics the cluster knows, the busiest first.
      const orders = page.locator('#top-topics tr[data-topic="orders.eu"]');
      await orders.waitFor();
      assert.equal(await orders.locator("td:nth-child(3)").textContent(), "30");
      await page.locator('#top-topics tr[data-topic="chat.lobby"]').waitFor();

      // Inspect: the newest page of history, then the one before it.
      await orders.getByRole("button", { name: "inspect" }).click();
      await page.getByText("live via n1").waitFor();
      await page.locator("#history-range").filter({ hasText: "#11–#30 of 30" }).waitFor();
      assert.equal(await page.locator("#history li").count(), 20);
      await page.getByRole("button", { name: "◀ older" }).click();
      await page.locator("#history-range").filter({ hasText: "#1–#10 of 30" }).waitFor();
      assert.deepEqual(
        await page.locator("#history li").evaluateAll((items) => items.map((li) => Number(li.dataset.seq))),
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
      );
      assert.equal(await page.getByRole("button", { name: "◀ older" }).isDisabled(), true);

      // Live: an event published from the page, and one published on another node.
      await page.locator("#publish-data").fill('{"order":"from the dashboard"}');
      await page.getByRole("button", { name: "Publish" }).click();
      await page.getByText("stored as #31").waitFor();
      await page.locator('#tail li[data-seq="31"]').filter({ hasText: "from the dashboard" }).waitFor();
      await publish(n3, "orders.eu", { order: "from n3" });
      await page.locator('#tail li[data-seq="32"]').filter({ hasText: "from n3" }).waitFor();

      // This node's numbers: the page's own WebSocket and subscription, the publish it made.
      await page.waitForFunction(() => Number(document.querySelector('[data-stat="connections"]').textContent) >= 1);
      await page.waitForFunction(() => Number(document.querySelector('[data-stat="subscriptions"]').textContent) >= 1);
      // A few more on the inspected topic; the busiest topic comes first.
      for (let i = 0; i < 20; i++) {
        await publish(n1, "orders.eu", { order: `burst ${i}` });
        await sleep(50);
      }
      await page.waitForFunction(() => Number(document.querySelector('[data-stat="publish_rate"]').textContent) > 0);
      await page.locator("#top-topics tbody tr").first().and(page.locator('[data-topic="prices.eu"]')).waitFor();
      await page.screenshot({ path: screenshotPath("dashboard"), fullPage: true });
      clearInterval(traffic);

      // A member that dies answers no more at once, then is shown as no longer alive.
      await n3.kill();
      await page.locator('#members tr[data-member="n3"][data-reachable="no"]').waitFor();
      await rowShows("n2", "connections", "2");
      await page.locator('#members tr[data-member="n3"]:not([data-state="alive"])').waitFor({ timeout: 30_000 });
      await page.getByText("2 of 3 members alive").waitFor();
      await page.screenshot({ path: screenshotPath("dashboard-member-down"), fullPage: true });
      assert.deepEqual(problems, []);
    } finally {
      clearInterval(traffic);
      for (const subscriber of subscribers) subscriber.kill();
      await page.context().close();
    }
  });
});

describe("the dashboard of a node with auth = token", () => {
  const secret = "browser-test-secret-0123456789-abcdefghij";
  let cluster;
  before(async () => {
    cluster = await startCluster({
      count: 1,
      logDir: path.join(artifacts, "dashboard-auth"),
      extraArgs: ["--auth", "token"],
      env: { MURMUR_TOKEN_HMAC_SECRET: secret },
    });
  });
  after(async () => {
    await cluster?.stop();
  });

  const mint = (...allows) =>
    execFileSync(murmurBinary(), ["token", "--secret", secret, "--sub", "operator", ...allows], { encoding: "utf8" }).trim();

  it("asks for a token, refuses one that may not see everything, and works with one that may", async () => {
    const [n1] = cluster.nodes;
    const { page } = await openPage(browser);
    try {
      await page.goto(`${n1.http}/dashboard`);
      await page.getByText("This node requires a token.").waitFor();
      assert.equal(await page.locator("#members tbody tr").count(), 0);

      await page.locator("#token-input").fill(mint("--allow-sub", "chat.>"));
      await page.getByRole("button", { name: "Use token" }).click();
      await page.getByText("This token may not read the node's stats").waitFor();

      await page.locator("#token-input").fill(mint("--allow-sub", ">", "--allow-history", ">", "--allow-pub", ">"));
      await page.getByRole("button", { name: "Use token" }).click();
      await page.locator('#members tr[data-member="n1"][data-state="alive"]').waitFor();
      assert.equal(await page.locator("#token-panel").isHidden(), true);

      // The live tail goes through with the same token.
      await page.locator("#inspect-topic").fill("secure.topic");
      await page.getByRole("button", { name: "Inspect" }).click();
      await page.getByText("live via n1").waitFor();
      await page.locator("#publish-data").fill("with a token");
      await page.getByRole("button", { name: "Publish" }).click();
      await page.locator('#tail li[data-seq="1"]').filter({ hasText: "with a token" }).waitFor();
    } finally {
      await page.context().close();
    }
  });
});
