// The node embeds this client's build for its dashboard (node/src/frontdoor/dashboard/assets/
// murmur-client/, written by scripts/embed.mjs). This fails when that copy is stale: a change
// to src/ that was not embedded would ship the dashboard an older client.
import assert from "node:assert/strict";
import { it } from "node:test";
import { staleFiles } from "../../scripts/embed.mjs";

it("the node's embedded copy of the client matches dist/", () => {
  assert.deepEqual(staleFiles(), [], "run `cd clients/js && npm run embed` and commit the result");
});
