/**
 * Resident memory of the token cache: N validated identities held by the real engine (the cache the proxy uses),
 * without and with a service catalog. Each case runs in a fresh process (so one case's heap growth is not the next
 * one's starting point), next to a baseline process doing the same N validations with the cache disabled: the
 * difference is what holding the identities costs, apart from what the work itself makes V8 reserve (its young
 * generation grows to 32 MB under any load). The validator is an in-memory stand-in that answers like Keystone.
 *   node --expose-gc --import tsx bench/memory.ts [--entries 100000]
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { getHeapSpaceStatistics } from 'node:v8';
import { createAuthenticator } from '../src/http/authenticate.js';
import type { TokenValidator } from '../src/keystone/client.js';
import { fixtureTokenBody } from '../src/testing.js';

const { values } = parseArgs({
  options: {
    entries: { type: 'string', default: '100000' },
    // Internal: one measurement in this process.
    case: { type: 'string' },
  },
});
const ENTRIES = Number(values.entries);
const gc = (globalThis as { gc?: () => void }).gc;
if (gc === undefined) {
  console.error('run with node --expose-gc --import tsx bench/memory.ts');
  process.exit(2);
}

// A catalog like a small cloud's: 8 services, 3 interfaces each.
const catalog = [
  'identity',
  'compute',
  'image',
  'volumev3',
  'network',
  'placement',
  'object-store',
  'orchestration',
].map((type, i) => ({
  type,
  name: `${type}-svc`,
  id: `service-id-${i}`,
  endpoints: ['public', 'internal', 'admin'].map((iface) => ({
    id: `endpoint-${i}-${iface}`,
    interface: iface,
    region: 'RegionOne',
    region_id: 'RegionOne',
    url: `https://${iface}.${type}.cloud.example.com:8774/v2.1`,
  })),
}));

function validator(withCatalog: boolean): TokenValidator {
  return {
    async validate(token) {
      const n = Number(token.slice(6));
      // Through JSON text, as a body read from Keystone would be (flat strings, not the builder's cons strings).
      return {
        kind: 'valid',
        body: JSON.parse(
          JSON.stringify(
            fixtureTokenBody({
              userId: `user-${n.toString(16).padStart(32, '0')}`,
              userName: `user-${n}`,
              projectId: `proj-${(n % 5000).toString(16).padStart(32, '0')}`,
              projectName: `project-${n % 5000}`,
              roles: ['member', 'reader'],
              ...(withCatalog ? { catalog } : {}),
            }),
          ),
        ),
      };
    },
  };
}

const rssMb = (): number => process.memoryUsage().rss / 2 ** 20;
const heapMb = (): number => process.memoryUsage().heapUsed / 2 ** 20;

interface Measurement {
  entries: number;
  rssGrowthMb: number;
  heapGrowthMb: number;
  oldSpaceMb: number;
  oldSpaceUsedMb: number;
  estimatedCacheMb: number;
  rssMb: number;
}

async function measure(withCatalog: boolean, holding: boolean): Promise<Measurement> {
  const auth = createAuthenticator(
    {
      www_authenticate_uri: 'http://keystone',
      include_service_catalog: withCatalog,
      token_cache_max_entries: holding ? ENTRIES : 0,
      token_cache_max_bytes: 4 * 2 ** 30,
    },
    { validator: validator(withCatalog) },
  );
  gc?.();
  const rss0 = rssMb();
  const heap0 = heapMb();
  for (let i = 0; i < ENTRIES; i++) {
    const token = `token-${String(i).padStart(10, '0')}`;
    const outcome = await auth.authenticate({ method: 'GET', path: '/', headers: { 'x-auth-token': token } });
    if (outcome.action !== 'forward') throw new Error('validation failed');
  }
  // Let V8 settle: full collections with pauses give its memory reducer a chance to return freed pages.
  for (let i = 0; i < 3; i++) {
    gc?.();
    await new Promise((r) => setTimeout(r, 1_000));
  }
  const old = getHeapSpaceStatistics().find((space) => space.space_name === 'old_space');
  const result = {
    entries: auth.state.stats().entries,
    rssGrowthMb: rssMb() - rss0,
    heapGrowthMb: heapMb() - heap0,
    oldSpaceMb: (old?.space_size ?? 0) / 2 ** 20,
    oldSpaceUsedMb: (old?.space_used_size ?? 0) / 2 ** 20,
    estimatedCacheMb: auth.state.stats().bytes / 2 ** 20,
    rssMb: rssMb(),
  };
  await auth.close();
  return result;
}

if (values.case !== undefined) {
  const [catalog, kind] = values.case.split(',');
  console.log(JSON.stringify(await measure(catalog === 'catalog', kind === 'holding')));
} else {
  const run = (which: string): Measurement =>
    JSON.parse(
      execFileSync(
        process.execPath,
        [...process.execArgv, fileURLToPath(import.meta.url), '--entries', String(ENTRIES), '--case', which],
        { encoding: 'utf8' },
      ),
    ) as Measurement;
  const mb = (n: number): string => n.toFixed(1);
  const rows: string[] = [];
  let withoutHolding: Measurement | undefined;
  for (const catalog of ['no catalog', 'catalog']) {
    const holding = run(`${catalog},holding`);
    const baseline = run(`${catalog},baseline`);
    if (catalog === 'no catalog') withoutHolding = holding;
    const held = holding.rssGrowthMb - baseline.rssGrowthMb;
    rows.push(
      `| ${catalog === 'catalog' ? 'with an 8-service catalog' : 'without catalog'} | ${holding.entries} | ` +
        `${mb(holding.heapGrowthMb)} | ${Math.round((holding.heapGrowthMb * 2 ** 20) / holding.entries)} | ` +
        `${mb(holding.oldSpaceUsedMb)} / ${mb(holding.oldSpaceMb)} | ${mb(holding.rssGrowthMb)} | ` +
        `${mb(baseline.rssGrowthMb)} | ${mb(held)} | ${mb(holding.estimatedCacheMb)} |`,
    );
  }
  console.log(`${ENTRIES} identities, Node ${process.version}; each row: two fresh processes`);
  console.log(
    '| case | entries | heap growth MB | heap B/entry | old space used / reserved MB | RSS growth MB | ' +
      'RSS growth, same work, nothing cached MB | RSS held by the cache MB | cache size estimate MB |',
  );
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const row of rows) console.log(row);
  if (withoutHolding !== undefined)
    console.log(
      `RSS of a process holding ${ENTRIES} identities without catalog: ${mb(withoutHolding.rssMb)} MB`,
    );
}
