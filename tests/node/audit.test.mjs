// The graphql-http audit (npm `graphql-http`, auditServer) against a real `verdict
// standalone`. Every MUST and every SHOULD audit must pass (the MAY ones are reported).

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { auditServer } from 'graphql-http';

import { standalone, stop } from './helpers.mjs';

test('graphql-http audit: all MUST and SHOULD pass', { timeout: 120_000 }, async (t) => {
  const proc = await standalone();
  try {
    const results = await auditServer({ url: `${proc.base}/graphql` });
    const summary = {};
    for (const level of ['MUST', 'SHOULD', 'MAY']) {
      const mine = results.filter((r) => r.name.startsWith(level));
      summary[level] = `${mine.filter((r) => r.status === 'ok').length}/${mine.length}`;
    }
    t.diagnostic(`graphql-http audit: MUST ${summary.MUST}, SHOULD ${summary.SHOULD}, MAY ${summary.MAY}`);
    const failed = results
      .filter((r) => r.status !== 'ok' && !r.name.startsWith('MAY'))
      .map((r) => `${r.id} ${r.name}: ${r.reason}`);
    assert.deepEqual(failed, [], `audits failed:\n${failed.join('\n')}\n${proc.log}`);
  } finally {
    await stop(proc);
  }
});
