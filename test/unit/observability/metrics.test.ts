import { AggregatorRegistry, register as globalRegister, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import {
  createMetrics,
  type MetricsOptions,
  type MetricsSource,
} from '../../../src/observability/metrics.js';
import type { AuthObserver } from '../../../src/observability/observer.js';

const P = 'keystone_auth_proxy';

function metrics(options: Partial<MetricsOptions> = {}) {
  return createMetrics({ prefix: P, version: '1.2.3', collectProcessMetrics: false, ...options });
}

/** Sample lines only (no HELP/TYPE), keyed by `name{labels}` exactly as exposed. */
async function samples(text: Promise<string>): Promise<Map<string, number>> {
  const result = new Map<string, number>();
  for (const line of (await text).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const split = line.lastIndexOf(' ');
    result.set(line.slice(0, split), Number(line.slice(split + 1)));
  }
  return result;
}

function labelValues(all: Map<string, number>, metric: string, label: string): Set<string> {
  const values = new Set<string>();
  for (const key of all.keys()) {
    if (!key.startsWith(`${metric}{`)) continue;
    const match = new RegExp(`[{,]${label}="([^"]*)"`).exec(key);
    if (match?.[1] !== undefined) values.add(match[1]);
  }
  return values;
}

describe('createMetrics', () => {
  it('counts finished requests by decision, normalised method and status class', async () => {
    const m = metrics();
    m.request('confirmed', 'GET', 200, 0.002);
    m.request('confirmed', 'GET', 204, 0.004);
    m.request('rejected', 'POST', 401, 0.001);
    m.request('unavailable', 'PUT', 503, 2);
    const text = await m.scrape();
    expect(text).toContain(
      `${P}_http_requests_total{decision="confirmed",method="GET",code_class="2xx"} 2\n`,
    );
    expect(text).toContain(
      `${P}_http_requests_total{decision="rejected",method="POST",code_class="4xx"} 1\n`,
    );
    expect(text).toContain(
      `${P}_http_requests_total{decision="unavailable",method="PUT",code_class="5xx"} 1\n`,
    );

    const all = await samples(m.scrape());
    const duration = `${P}_http_request_duration_seconds`;
    expect(all.get(`${duration}_count{decision="confirmed",code_class="2xx"}`)).toBe(2);
    expect(all.get(`${duration}_sum{decision="confirmed",code_class="2xx"}`)).toBeCloseTo(0.006, 10);
    expect(all.get(`${duration}_bucket{le="0.0025",decision="confirmed",code_class="2xx"}`)).toBe(1);
    expect(all.get(`${duration}_bucket{le="0.005",decision="confirmed",code_class="2xx"}`)).toBe(2);
    expect(all.get(`${duration}_bucket{le="+Inf",decision="unavailable",code_class="5xx"}`)).toBe(1);
    expect(all.get(`${duration}_bucket{le="1",decision="unavailable",code_class="5xx"}`)).toBe(0);
    // Buckets span a cache hit to a slow upstream.
    const buckets = [...labelValues(all, `${duration}_bucket`, 'le')];
    expect(buckets[0]).toBe('0.0005');
    expect(buckets.slice(-2)).toEqual(['10', '+Inf']);
  });

  it('keeps label values bounded whatever the caller passes', async () => {
    const m = metrics();
    m.request('confirmed', 'FOO/../x', 200, 0.01);
    m.request('confirmed', 'get', 200, 0.01);
    m.request('confirmed', 'OPTIONS', 99, 0.01);
    m.request('confirmed', 'DELETE', 600, Number.NaN);
    m.request('bogus' as never, 'PATCH', 302, -1);
    m.authDecision('gAAAAABtoken-looking-value');
    m.upstreamError('ECONNREFUSED' as never);
    m.cache('/v3/users/123' as never);
    m.keystoneRequest('users' as never, 'weird' as never, 0.1);
    m.serviceTokenRefresh('maybe' as never);
    const all = await samples(m.scrape());
    const requests = `${P}_http_requests_total`;
    expect(all.get(`${requests}{decision="confirmed",method="other",code_class="2xx"}`)).toBe(2);
    expect(all.get(`${requests}{decision="confirmed",method="OPTIONS",code_class="other"}`)).toBe(1);
    expect(all.get(`${requests}{decision="confirmed",method="DELETE",code_class="other"}`)).toBe(1);
    expect(all.get(`${requests}{decision="other",method="PATCH",code_class="3xx"}`)).toBe(1);
    expect(all.get(`${P}_auth_decisions_total{result="other"}`)).toBe(1);
    expect(all.get(`${P}_upstream_errors_total{reason="other"}`)).toBe(1);
    expect(all.get(`${P}_token_cache_requests_total{result="other"}`)).toBe(1);
    expect(all.get(`${P}_keystone_requests_total{operation="other",outcome="other"}`)).toBe(1);
    expect(all.get(`${P}_service_token_refreshes_total{outcome="other"}`)).toBe(1);
    // A NaN duration is dropped, a negative one clamped to zero: neither throws into the request path.
    const duration = `${P}_http_request_duration_seconds`;
    expect(all.get(`${duration}_count{decision="confirmed",code_class="other"}`)).toBe(1);
    expect(all.get(`${duration}_sum{decision="other",code_class="3xx"}`)).toBe(0);

    const text = await m.scrape();
    for (const unbounded of [
      'FOO',
      'get',
      'gAAAAAB',
      'ECONNREFUSED',
      '/v3/users',
      'users',
      'weird',
      'maybe',
    ]) {
      expect(text).not.toContain(unbounded);
    }
    expect([...labelValues(all, requests, 'method')].sort()).toEqual(['DELETE', 'OPTIONS', 'PATCH', 'other']);
  });

  it('tracks requests in flight; the returned done is idempotent', async () => {
    const m = metrics();
    const inFlight = async () => (await samples(m.scrape())).get(`${P}_http_requests_in_flight`);
    expect(await inFlight()).toBe(0);
    const first = m.requestStarted();
    const second = m.requestStarted();
    expect(await inFlight()).toBe(2);
    first();
    first();
    first();
    expect(await inFlight()).toBe(1);
    second();
    expect(await inFlight()).toBe(0);
  });

  it('counts auth decisions: confirmed or an invalid-token reason, else other', async () => {
    const m = metrics();
    m.authDecision('confirmed');
    m.authDecision('confirmed');
    m.authDecision('expired');
    m.authDecision('keystone_unavailable');
    m.authDecision('no-such-reason');
    m.authDecision('toString');
    const all = await samples(m.scrape());
    const name = `${P}_auth_decisions_total`;
    expect(all.get(`${name}{result="confirmed"}`)).toBe(2);
    expect(all.get(`${name}{result="expired"}`)).toBe(1);
    expect(all.get(`${name}{result="keystone_unavailable"}`)).toBe(1);
    expect(all.get(`${name}{result="other"}`)).toBe(2);
    expect(all.get(`${name}{result="not_found"}`)).toBe(0);
  });

  it('records the AuthObserver hooks', async () => {
    const m = metrics();
    // The engine takes it as an AuthObserver and may call the hooks unbound.
    const observer: AuthObserver = m;
    const { keystoneRequest, cache, serviceTokenRefresh } = m;
    keystoneRequest('validate', 'ok', 0.02);
    observer.keystoneRequest?.('validate', 'ok', 0.03);
    observer.keystoneRequest?.('auth', 'timeout', 5);
    cache('hit');
    cache('hit');
    observer.cache?.('miss');
    serviceTokenRefresh('ok');
    observer.serviceTokenRefresh?.('error');
    m.upstreamError('connect_refused');
    m.upstreamError('response_timeout');
    m.upstreamError('response_timeout');

    const text = await m.scrape();
    expect(text).toContain(`${P}_keystone_requests_total{operation="validate",outcome="ok"} 2\n`);
    expect(text).toContain(`${P}_keystone_requests_total{operation="auth",outcome="timeout"} 1\n`);
    expect(text).toContain(`${P}_token_cache_requests_total{result="hit"} 2\n`);
    expect(text).toContain(`${P}_token_cache_requests_total{result="miss"} 1\n`);
    expect(text).toContain(`${P}_service_token_refreshes_total{outcome="ok"} 1\n`);
    expect(text).toContain(`${P}_service_token_refreshes_total{outcome="error"} 1\n`);
    expect(text).toContain(`${P}_upstream_errors_total{reason="connect_refused"} 1\n`);
    expect(text).toContain(`${P}_upstream_errors_total{reason="response_timeout"} 2\n`);

    const all = await samples(m.scrape());
    const duration = `${P}_keystone_request_duration_seconds`;
    expect(all.get(`${duration}_count{operation="validate"}`)).toBe(2);
    expect(all.get(`${duration}_sum{operation="validate"}`)).toBeCloseTo(0.05, 10);
    expect(all.get(`${duration}_bucket{le="0.025",operation="validate"}`)).toBe(1);
    expect(all.get(`${duration}_count{operation="auth"}`)).toBe(1);
    expect(all.get(`${duration}_bucket{le="2.5",operation="auth"}`)).toBe(0);
    expect(all.get(`${duration}_bucket{le="5",operation="auth"}`)).toBe(1);
  });

  it('exports zero for every series known in advance, before any event', async () => {
    const all = await samples(metrics().scrape());
    const zero = (key: string) => expect(all.get(key), key).toBe(0);
    for (const operation of ['discovery', 'auth', 'validate', 'introspect', 'jwks']) {
      for (const outcome of ['ok', 'invalid', 'unauthorized', 'forbidden', 'http_error', 'timeout']) {
        zero(`${P}_keystone_requests_total{operation="${operation}",outcome="${outcome}"}`);
      }
      for (const outcome of ['connect_error', 'tls_error', 'bad_response']) {
        zero(`${P}_keystone_requests_total{operation="${operation}",outcome="${outcome}"}`);
      }
      zero(`${P}_keystone_request_duration_seconds_count{operation="${operation}"}`);
      zero(`${P}_keystone_request_duration_seconds_bucket{le="+Inf",operation="${operation}"}`);
    }
    for (const result of ['hit', 'miss', 'coalesced', 'expired', 'shared_hit', 'negative_hit', 'revoked'])
      zero(`${P}_token_cache_requests_total{result="${result}"}`);
    for (const reason of ['connect_refused', 'connect_timeout', 'reset', 'response_timeout', 'other']) {
      zero(`${P}_upstream_errors_total{reason="${reason}"}`);
    }
    for (const outcome of ['ok', 'error']) zero(`${P}_service_token_refreshes_total{outcome="${outcome}"}`);
    const reasons = [
      'missing',
      'not_found',
      'expired',
      'revoked',
      'malformed_body',
      'claims_unmapped',
      'access_rule_denied',
      'bind_rejected',
      'certificate_missing',
      'certificate_mismatch',
    ];
    const more = [
      'service_token_invalid',
      'service_token_roles',
      'keystone_unavailable',
      'confirmed',
      'other',
    ];
    for (const result of [...reasons, ...more]) zero(`${P}_auth_decisions_total{result="${result}"}`);
    expect(labelValues(all, `${P}_auth_decisions_total`, 'result').size).toBe(reasons.length + more.length);
    zero(`${P}_http_requests_in_flight`);
    zero(`${P}_token_cache_entries`);
    zero(`${P}_token_cache_bytes`);
    zero(`${P}_keystone_validations_in_flight`);
    for (const outcome of ['ok', 'error', 'unsupported'])
      zero(`${P}_revocation_polls_total{outcome="${outcome}"}`);
    zero(`${P}_revocation_last_success_timestamp_seconds`);
    // Request counters are labelled by decision × method × class: only real traffic creates those series.
    expect([...all.keys()].some((key) => key.startsWith(`${P}_http_requests_total`))).toBe(false);
  });

  it('documents every metric with HELP and TYPE lines', async () => {
    const text = await metrics().scrape();
    const names = [
      ['http_requests_total', 'counter'],
      ['http_request_duration_seconds', 'histogram'],
      ['http_requests_in_flight', 'gauge'],
      ['auth_decisions_total', 'counter'],
      ['keystone_requests_total', 'counter'],
      ['keystone_request_duration_seconds', 'histogram'],
      ['token_cache_requests_total', 'counter'],
      ['token_cache_entries', 'gauge'],
      ['token_cache_bytes', 'gauge'],
      ['keystone_validations_in_flight', 'gauge'],
      ['keystone_circuit_state', 'gauge'],
      ['upstream_errors_total', 'counter'],
      ['service_token_refreshes_total', 'counter'],
      ['memcached_operations_total', 'counter'],
      ['memcached_operation_duration_seconds', 'histogram'],
      ['revocation_polls_total', 'counter'],
      ['revocation_events_total', 'counter'],
      ['revocation_evictions_total', 'counter'],
      ['revocation_last_success_timestamp_seconds', 'gauge'],
      ['worker_cache_entries', 'gauge'],
      ['host_lookup_duration_seconds', 'histogram'],
      ['tls_handshake_failures_total', 'counter'],
      ['tls_reloads_total', 'counter'],
      ['tls_certificate_expiry_timestamp_seconds', 'gauge'],
      ['build_info', 'gauge'],
    ];
    for (const [name, type] of names) {
      expect(text).toMatch(new RegExp(`^# HELP ${P}_${name} \\S.*$`, 'm'));
      expect(text).toContain(`# TYPE ${P}_${name} ${type}\n`);
    }
    expect(text.match(/^# TYPE /gm)).toHaveLength(names.length);
  });

  it('counts memcached operations and revocation polls, bounded labels only', async () => {
    const m = metrics();
    m.memcached('get', 'hit', 0.0004);
    m.memcached('get', 'skipped_down', 0);
    m.memcached('set', 'weird' as never, 0.001);
    m.revocationPoll('ok', 2, 3);
    m.revocationPoll('unsupported', 0, 0);
    const text = await m.scrape();
    expect(text).toContain(`${P}_memcached_operations_total{operation="get",outcome="hit"} 1\n`);
    expect(text).toContain(`${P}_memcached_operations_total{operation="get",outcome="skipped_down"} 1\n`);
    expect(text).toContain(`${P}_memcached_operations_total{operation="set",outcome="other"} 1\n`);
    expect(text).toContain(
      `${P}_memcached_operation_duration_seconds_bucket{le="0.0005",operation="get"} 2\n`,
    );
    expect(text).toContain(`${P}_revocation_polls_total{outcome="ok"} 1\n`);
    expect(text).toContain(`${P}_revocation_polls_total{outcome="unsupported"} 1\n`);
    expect(text).toContain(`${P}_revocation_events_total 2\n`);
    expect(text).toContain(`${P}_revocation_evictions_total 3\n`);
    expect(text).not.toContain(`${P}_revocation_last_success_timestamp_seconds 0\n`);
  });

  it('reports build info as 1 with the version and Node version', async () => {
    const text = await metrics({ version: '9.8.7' }).scrape();
    expect(text).toContain(`${P}_build_info{version="9.8.7",node_version="${process.version}"} 1\n`);
  });

  it('reads tracked sources at scrape time and sums them', async () => {
    const m = metrics();
    const source = (
      entries: number,
      bytes: number,
      inFlight: number,
    ): MetricsSource & { entries: number } => ({
      entries,
      cacheEntries() {
        return this.entries;
      },
      cacheBytes: () => bytes,
      validationsInFlight: () => inFlight,
    });
    const a = source(3, 1000, 1);
    m.track(a);
    m.track(source(4, 24, 2));
    let text = await m.scrape();
    expect(text).toContain(`${P}_token_cache_entries 7\n`);
    expect(text).toContain(`${P}_token_cache_bytes 1024\n`);
    expect(text).toContain(`${P}_keystone_validations_in_flight 3\n`);
    a.entries = 10;
    text = await m.scrape();
    expect(text).toContain(`${P}_token_cache_entries 14\n`);
  });

  it('keeps instances apart and never touches the global registry', async () => {
    const a = createMetrics({ prefix: P, version: '1.0.0' });
    const b = createMetrics({ prefix: P, version: '2.0.0' });
    expect(a.registry).not.toBe(b.registry);
    expect(a.registry).not.toBe(globalRegister);
    a.request('confirmed', 'GET', 200, 0.01);
    a.authDecision('confirmed');
    a.requestStarted();
    a.track({ cacheEntries: () => 5, cacheBytes: () => 5, validationsInFlight: () => 5 });

    const fromB = await samples(b.scrape());
    expect([...fromB.keys()].some((key) => key.startsWith(`${P}_http_requests_total`))).toBe(false);
    expect(fromB.get(`${P}_auth_decisions_total{result="confirmed"}`)).toBe(0);
    expect(fromB.get(`${P}_http_requests_in_flight`)).toBe(0);
    expect(fromB.get(`${P}_token_cache_entries`)).toBe(0);
    expect(fromB.get(`${P}_build_info{version="2.0.0",node_version="${process.version}"}`)).toBe(1);
    expect(fromB.get(`${P}_build_info{version="1.0.0",node_version="${process.version}"}`)).toBeUndefined();

    const global = await globalRegister.getMetricsAsJSON();
    expect(global.filter((metric) => metric.name.startsWith(P))).toEqual([]);
    // Process metrics went to each instance's registry, not the global one.
    expect(global.some((metric) => metric.name === 'process_cpu_user_seconds_total')).toBe(false);
  });

  it('adds the standard, unprefixed Node process metrics unless disabled', async () => {
    const withProcess = await createMetrics({ prefix: P, version: '1' }).scrape();
    expect(withProcess).toContain('# TYPE process_cpu_user_seconds_total counter\n');
    expect(withProcess).toContain('# TYPE nodejs_heap_size_used_bytes gauge\n');
    const without = await metrics().scrape();
    expect(without).not.toContain('process_cpu_user_seconds_total');
    expect(without).not.toContain('nodejs_');
  });

  it('uses a given registry and its content type', async () => {
    const registry = new Registry();
    const m = metrics({ registry, prefix: 'custom' });
    expect(m.registry).toBe(registry);
    expect(m.contentType).toBe(registry.contentType);
    expect(m.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(await registry.metrics()).toContain('custom_build_info{');
    // Two instances cannot silently share one registry: prom-client refuses the duplicate names.
    expect(() => metrics({ registry, prefix: 'custom' })).toThrow(/already been registered/);
  });
});

describe('circuit state gauge', () => {
  it('is one-hot over closed, open and half_open', async () => {
    const m = createMetrics({ prefix: 'kap', version: '1', collectProcessMetrics: false });
    const value = (text: string, state: string) =>
      Number(
        text
          .split('\n')
          .find((l) => l.startsWith(`kap_keystone_circuit_state{state="${state}"}`))
          ?.split(' ')[1],
      );
    let text = await m.scrape();
    expect([value(text, 'closed'), value(text, 'open'), value(text, 'half_open')]).toEqual([1, 0, 0]);
    m.circuitState('open');
    text = await m.scrape();
    expect([value(text, 'closed'), value(text, 'open'), value(text, 'half_open')]).toEqual([0, 1, 0]);
  });

  it('a cluster worker leaves the host state to its primary: its metrics only count what it served', async () => {
    const worker = metrics({ role: 'worker' });
    worker.keystoneRequest('validate', 'ok', 0.01);
    worker.circuitState('open');
    worker.cache('hit');
    worker.hostLookup('valid', 0.0002);
    worker.track({ cacheEntries: () => 7, workerCacheEntries: () => 3 });
    const text = await worker.scrape();
    for (const host of [
      'keystone_requests_total',
      'keystone_request_duration_seconds',
      'token_cache_entries',
      'token_cache_bytes',
      'keystone_validations_in_flight',
      'keystone_circuit_state',
      'service_token_refreshes_total',
      'memcached_operations_total',
      'revocation_polls_total',
      'revocation_last_success_timestamp_seconds',
    ]) {
      expect(text).not.toContain(`${P}_${host}`);
    }
    expect(text).toContain(`${P}_token_cache_requests_total{result="hit"} 1`);
    expect(text).toContain(`${P}_worker_cache_entries 3`);
    expect(text).toContain(`${P}_host_lookup_duration_seconds_count{outcome="valid"} 1`);
    // The default role exports the host state.
    expect(await metrics().scrape()).toContain(`${P}_keystone_circuit_state{state="closed"} 1`);
  });
});

describe('TLS metrics', () => {
  it('a TLS listener gets zero series at its first expiry report; labels stay bounded', async () => {
    const m = metrics({ collectProcessMetrics: false });
    expect(await m.scrape()).not.toContain(`${P}_tls_handshake_failures_total{`);
    m.tlsCertificateExpiry('proxy', 1_800_000_000);
    m.tlsHandshakeFailure('proxy', 'no_certificate');
    m.tlsHandshakeFailure('bogus' as never, 'made_up' as never);
    m.tlsReload('proxy', 'error');
    const text = await m.scrape();
    expect(text).toContain(`${P}_tls_certificate_expiry_timestamp_seconds{listener="proxy"} 1800000000\n`);
    expect(text).toContain(`${P}_tls_handshake_failures_total{listener="proxy",reason="no_certificate"} 1\n`);
    expect(text).toContain(
      `${P}_tls_handshake_failures_total{listener="proxy",reason="untrusted_certificate"} 0\n`,
    );
    expect(text).toContain(`${P}_tls_handshake_failures_total{listener="other",reason="other"} 1\n`);
    expect(text).toContain(`${P}_tls_reloads_total{listener="proxy",result="ok"} 0\n`);
    expect(text).toContain(`${P}_tls_reloads_total{listener="proxy",result="error"} 1\n`);
  });

  it('with workers, the expiry is the soonest of the workers, the counters their sum', async () => {
    const workers = [1_800_000_000, 1_700_000_000].map((notAfter) => {
      const m = metrics({ collectProcessMetrics: false, role: 'worker' });
      m.tlsCertificateExpiry('proxy', notAfter);
      m.tlsHandshakeFailure('proxy', 'no_certificate');
      return m;
    });
    const aggregated = AggregatorRegistry.aggregate(
      await Promise.all(workers.map((m) => m.registry.getMetricsAsJSON())),
    );
    const text = await aggregated.metrics();
    expect(text).toContain(`${P}_tls_certificate_expiry_timestamp_seconds{listener="proxy"} 1700000000\n`);
    expect(text).toContain(`${P}_tls_handshake_failures_total{listener="proxy",reason="no_certificate"} 2\n`);
  });
});
