import { describe, expect, it } from 'vitest';
import { autoWorkers, cgroupCpuLimit } from '../../../src/proxy/cluster.js';
import { removeHopByHop } from '../../../src/proxy/forwarder.js';
import { requestIdOf } from '../../../src/proxy/request-id.js';
import { createRouteMatcher } from '../../../src/proxy/routes.js';

describe('removeHopByHop', () => {
  it('drops the RFC 9110 hop-by-hop set and every name Connection lists', () => {
    const headers: Record<string, unknown> = {
      connection: 'keep-alive, X-Secret',
      'keep-alive': 'timeout=5',
      'x-secret': 'hop',
      te: 'trailers',
      'proxy-authorization': 'Basic x',
      upgrade: 'h2c',
      'x-auth-token': 'kept',
      host: 'h',
    };
    removeHopByHop(headers);
    expect(headers).toEqual({ 'x-auth-token': 'kept', host: 'h' });
  });

  it('keeps Connection and Upgrade for a WebSocket handshake', () => {
    const headers: Record<string, unknown> = { connection: 'Upgrade', upgrade: 'websocket', te: 'x' };
    removeHopByHop(headers, true);
    expect(headers).toEqual({ connection: 'Upgrade', upgrade: 'websocket' });
  });
});

describe('requestIdOf', () => {
  it.each([
    ['req-0a1b2c3d-4e5f-6789-abcd-ef0123456789', true],
    ['req-0A1B2C3D-4E5F-6789-ABCD-EF0123456789', false],
    ['0a1b2c3d-4e5f-6789-abcd-ef0123456789', false],
    ['req-0a1b2c3d-4e5f-6789-abcd-ef0123456789\nX-Evil: 1', false],
    [undefined, false],
  ])('%j kept: %s', (value, kept) => {
    const id = requestIdOf(value);
    expect(id === value).toBe(kept);
    expect(id).toMatch(/^req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  });
});

describe('public routes', () => {
  const isPublic = createRouteMatcher([
    { methods: ['GET', 'HEAD'], path: '/' },
    { methods: ['GET'], path: '/v2.1/{version}' },
    { methods: ['*'], path: '/healthcheck/**' },
  ]);

  it.each([
    ['GET', '/', true],
    ['HEAD', '/', true],
    ['POST', '/', false],
    ['GET', '/v2.1/x', true],
    ['GET', '/v2.1/x/servers', false],
    ['DELETE', '/healthcheck/deep/path', true],
    ['GET', '/servers', false],
    ['GET', '/healthcheck/../servers', false],
    ['GET', '/healthcheck/%2e%2e/servers', false],
  ])('%s %s → %s', (method, path, expected) => {
    expect(isPublic(method, path)).toBe(expected);
  });

  it('no routes: nothing is public', () => {
    expect(createRouteMatcher([])('GET', '/')).toBe(false);
  });
});

describe('workers: auto under a cgroup CPU limit', () => {
  const files =
    (entries: Record<string, string>) =>
    (path: string): string | undefined =>
      entries[path];

  it('cgroup v2 cpu.max: quota / period, rounded up; "max" is no limit', () => {
    expect(cgroupCpuLimit(files({ '/sys/fs/cgroup/cpu.max': '150000 100000\n' }))).toBe(2);
    expect(cgroupCpuLimit(files({ '/sys/fs/cgroup/cpu.max': '50000 100000\n' }))).toBe(1);
    expect(cgroupCpuLimit(files({ '/sys/fs/cgroup/cpu.max': 'max 100000\n' }))).toBeUndefined();
  });

  it('cgroup v1 cfs quota; -1 is no limit; nothing readable is no limit', () => {
    const v1 = (quota: string) =>
      files({
        '/sys/fs/cgroup/cpu/cpu.cfs_quota_us': quota,
        '/sys/fs/cgroup/cpu/cpu.cfs_period_us': '100000\n',
      });
    expect(cgroupCpuLimit(v1('400000\n'))).toBe(4);
    expect(cgroupCpuLimit(v1('-1\n'))).toBeUndefined();
    expect(cgroupCpuLimit(files({}))).toBeUndefined();
  });

  it('auto is the smaller of the usable cores and the limit', () => {
    const limited = files({ '/sys/fs/cgroup/cpu.max': '100000 100000' });
    expect(autoWorkers(64, limited)).toBe(1);
    expect(autoWorkers(2, files({ '/sys/fs/cgroup/cpu.max': '800000 100000' }))).toBe(2);
    expect(autoWorkers(8, files({}))).toBe(8);
  });
});
