/**
 * Resident memory of the token cache: 100k validated identities held by the real engine (the cache the proxy
 * uses), without and with a service catalog, measured as RSS and heap growth after a full GC. The validator is
 * an in-memory stand-in that answers like Keystone, so only the cache is measured.
 *   node --expose-gc --import tsx bench/memory.ts [--entries 100000]
 */
import { parseArgs } from 'node:util';
import { createAuthenticator } from '../src/http/authenticate.js';
import type { TokenValidator } from '../src/keystone/client.js';
import { fixtureTokenBody } from '../src/testing.js';

const { values } = parseArgs({ options: { entries: { type: 'string', default: '100000' } } });
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

async function measure(withCatalog: boolean): Promise<Record<string, number>> {
  const auth = createAuthenticator(
    {
      www_authenticate_uri: 'http://keystone',
      include_service_catalog: withCatalog,
      token_cache_max_entries: ENTRIES,
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
  const result = {
    entries: auth.cache.size,
    rssGrowthMb: rssMb() - rss0,
    heapGrowthMb: heapMb() - heap0,
    bytesPerEntry: ((heapMb() - heap0) * 2 ** 20) / auth.cache.size,
    estimatedCacheMb: auth.cache.bytes / 2 ** 20,
  };
  await auth.close();
  gc?.();
  return result;
}

gc();
const baseline = rssMb();
const without = await measure(false);
const withCatalog = await measure(true);
const fmt = (r: Record<string, number>) =>
  `${r.entries} entries: RSS +${r.rssGrowthMb?.toFixed(1)} MB, heap +${r.heapGrowthMb?.toFixed(1)} MB, ` +
  `${Math.round(r.bytesPerEntry ?? 0)} B/entry (the cache's own size estimate: ${r.estimatedCacheMb?.toFixed(1)} MB)`;
console.log(`without catalog: ${fmt(without)}`);
console.log(`with an 8-service catalog: ${fmt(withCatalog)}`);
console.log(`process RSS now: ${rssMb().toFixed(1)} MB (Node ${process.version})`);
console.log(
  `RSS of a process holding ${ENTRIES} identities without catalog: ${(baseline + without.rssGrowthMb).toFixed(1)} MB`,
);
