import { describe, expect, it } from 'vitest';
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
