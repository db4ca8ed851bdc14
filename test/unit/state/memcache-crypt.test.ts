import { execFileSync } from 'node:child_process';
import { createCipheriv, createHmac } from 'node:crypto';
import { existsSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  type MemcacheSecurityStrategy,
  memcacheEntryKeys,
  protectEntry,
  unprotectEntry,
} from '../../../src/state/memcache-crypt.js';

const TOKEN_A = 'gAAAAABmemcache-token-a';
const TOKEN_B = 'gAAAAABmemcache-token-b';
const SECRET = Buffer.from('shared memcache secret', 'utf8');
const PLAIN = Buffer.from('{"token": {"methods": ["password"], "version": "v3"}}', 'utf8');
const BINARY = Buffer.from([0, 1, 2, 255, 254, 10, 13, 0x80]);

function flipByte(buf: Buffer, index: number): Buffer {
  const copy = Buffer.from(buf);
  copy[index] = (copy[index] ?? 0) ^ 0x01;
  return copy;
}

describe('memcacheEntryKeys', () => {
  it('None: tokens/ + sha256 hex of the token, no derived keys', () => {
    const keys = memcacheEntryKeys('abc', 'None', undefined);
    expect(keys).toEqual({
      strategy: 'None',
      cacheKey: 'tokens/ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
    });
  });

  it("MAC and ENCRYPT: tokens/b'<base64 of 16 bytes>' (Python 3's bytes repr), 16-byte keys, strategy mixed in", () => {
    const mac = memcacheEntryKeys(TOKEN_A, 'MAC', SECRET);
    const enc = memcacheEntryKeys(TOKEN_A, 'ENCRYPT', SECRET);
    for (const keys of [mac, enc]) {
      expect(keys.cacheKey).toMatch(/^tokens\/b'[A-Za-z0-9+/]{22}=='$/);
      if (keys.strategy === 'None') throw new Error('unreachable');
      expect(keys.macKey).toHaveLength(16);
      expect(keys.encryptionKey).toHaveLength(16);
    }
    expect(mac.cacheKey).not.toBe(enc.cacheKey);
    expect(memcacheEntryKeys(TOKEN_A, 'MAC', SECRET, 'mac').cacheKey).not.toBe(mac.cacheKey);
    expect(memcacheEntryKeys(TOKEN_A, 'MAC', SECRET).cacheKey).toBe(mac.cacheKey);
    expect(memcacheEntryKeys(TOKEN_B, 'MAC', SECRET).cacheKey).not.toBe(mac.cacheKey);
  });

  it('a secret is required unless None', () => {
    expect(() => memcacheEntryKeys(TOKEN_A, 'MAC', undefined)).toThrow(TypeError);
    expect(() => memcacheEntryKeys(TOKEN_A, 'ENCRYPT', Buffer.alloc(0))).toThrow(TypeError);
  });
});

describe('protectEntry / unprotectEntry', () => {
  const strategies: MemcacheSecurityStrategy[] = ['None', 'MAC', 'ENCRYPT'];

  it.each(strategies)('%s: round trips text and binary values', (strategy) => {
    const keys = memcacheEntryKeys(TOKEN_A, strategy, SECRET);
    for (const plain of [PLAIN, BINARY, Buffer.alloc(0), Buffer.alloc(4096, 'x')]) {
      expect(unprotectEntry(keys, protectEntry(keys, plain))).toEqual(plain);
    }
  });

  it('None stores the value as is', () => {
    const keys = memcacheEntryKeys(TOKEN_A, 'None', undefined);
    expect(protectEntry(keys, PLAIN)).toEqual(PLAIN);
  });

  it('MAC stores a 64-character signature then the base64 value', () => {
    const keys = memcacheEntryKeys(TOKEN_A, 'MAC', SECRET);
    const stored = protectEntry(keys, PLAIN).toString('latin1');
    expect(stored).toMatch(/^[A-Za-z0-9+/]{64}/);
    expect(Buffer.from(stored.slice(64), 'base64')).toEqual(PLAIN);
  });

  it('ENCRYPT uses a random iv: two protections differ, both unprotect', () => {
    const keys = memcacheEntryKeys(TOKEN_A, 'ENCRYPT', SECRET);
    const one = protectEntry(keys, PLAIN);
    const two = protectEntry(keys, PLAIN);
    expect(one).not.toEqual(two);
    expect(unprotectEntry(keys, one)).toEqual(PLAIN);
    expect(unprotectEntry(keys, two)).toEqual(PLAIN);
    expect(one.toString('latin1')).not.toContain('password');
    expect(Buffer.from(one.toString('latin1').slice(64), 'base64').toString('latin1')).not.toContain(
      'password',
    );
  });

  it.each(['MAC', 'ENCRYPT'] as const)(
    '%s: any tampered byte, in signature or data, is rejected',
    (strategy) => {
      const keys = memcacheEntryKeys(TOKEN_A, strategy, SECRET);
      const stored = protectEntry(keys, PLAIN);
      for (const index of [0, 10, 63, 64, 70, stored.length - 1]) {
        expect(unprotectEntry(keys, flipByte(stored, index)), `byte ${index}`).toBeUndefined();
      }
    },
  );

  it.each(['MAC', 'ENCRYPT'] as const)(
    '%s: another token, secret or strategy does not verify',
    (strategy) => {
      const stored = protectEntry(memcacheEntryKeys(TOKEN_A, strategy, SECRET), PLAIN);
      expect(unprotectEntry(memcacheEntryKeys(TOKEN_B, strategy, SECRET), stored)).toBeUndefined();
      expect(
        unprotectEntry(memcacheEntryKeys(TOKEN_A, strategy, Buffer.from('other')), stored),
      ).toBeUndefined();
      const other = strategy === 'MAC' ? 'ENCRYPT' : 'MAC';
      expect(unprotectEntry(memcacheEntryKeys(TOKEN_A, other, SECRET), stored)).toBeUndefined();
    },
  );

  it.each(['MAC', 'ENCRYPT'] as const)(
    '%s: short, empty or garbage input is a miss, not a throw',
    (strategy) => {
      const keys = memcacheEntryKeys(TOKEN_A, strategy, SECRET);
      expect(unprotectEntry(keys, Buffer.alloc(0))).toBeUndefined();
      expect(unprotectEntry(keys, Buffer.alloc(63, 'A'))).toBeUndefined();
      expect(unprotectEntry(keys, Buffer.alloc(200, 0xff))).toBeUndefined();
      expect(unprotectEntry(keys, PLAIN)).toBeUndefined();
    },
  );

  it('a correctly signed value that is not base64, or not valid ciphertext, is a miss', () => {
    const keys = memcacheEntryKeys(TOKEN_A, 'ENCRYPT', SECRET);
    if (keys.strategy === 'None') throw new Error('unreachable');
    // What a writer holding the MAC key (but buggy, or without the AES key) could store.
    const signed = (data: Buffer): Buffer =>
      Buffer.concat([Buffer.from(createHmac('sha384', keys.macKey).update(data).digest('base64')), data]);
    const b64 = (bytes: Buffer): Buffer => Buffer.from(bytes.toString('base64'));
    const iv = Buffer.alloc(16, 1);
    const rawCbc = (plain: Buffer): Buffer => {
      const cipher = createCipheriv('aes-128-cbc', keys.encryptionKey, iv).setAutoPadding(false);
      return Buffer.concat([iv, cipher.update(plain), cipher.final()]);
    };
    expect(unprotectEntry(keys, signed(Buffer.alloc(0)))).toBeUndefined();
    expect(unprotectEntry(keys, signed(Buffer.from('not base64!!')))).toBeUndefined();
    expect(unprotectEntry(keys, signed(Buffer.from('QUJD=')))).toBeUndefined();
    expect(unprotectEntry(keys, signed(b64(Buffer.alloc(15))))).toBeUndefined();
    expect(unprotectEntry(keys, signed(b64(Buffer.alloc(16 + 17))))).toBeUndefined();
    // Whole blocks, but the last plaintext byte is 0: not PKCS#7 padding.
    expect(unprotectEntry(keys, signed(b64(rawCbc(Buffer.alloc(16, 0)))))).toBeUndefined();
    // The same construction with valid padding does decrypt, so the rejections above are about the data.
    expect(unprotectEntry(keys, signed(b64(rawCbc(Buffer.alloc(16, 16)))))).toEqual(Buffer.alloc(0));
  });
});

const KSM_DIR = '/usr/lib/python3/dist-packages/keystonemiddleware';
/** Debian's python, which has keystonemiddleware; the python3 on PATH may be another one. */
const DEBIAN_PYTHON = '/usr/bin/python3';

/**
 * For each case: the key keystonemiddleware's cache computes for the token (with the strategy spelled as
 * configured), its protection of `plain`, its unprotection of `ours`, and what its whole cache path
 * (`TokenCache.set`/`get` over a dict standing in for memcached) stores for a validation body and reads back
 * from `oursEntry`. Bytes travel as base64.
 */
const INTEROP_SCRIPT = `
import base64, json, logging, sys
from keystoneclient import access
from keystonemiddleware.auth_token import _cache
from keystonemiddleware.auth_token import _memcache_crypt as crypt

class DictClient:
    def __init__(self):
        self.data = {}
    def get(self, key):
        return self.data.get(key)
    def set(self, key, value, time=0):
        self.data[key] = value
        return True

log = logging.getLogger('interop')
results = []
for case in json.load(sys.stdin):
    token, configured = case['token'], case['configured']
    if configured.lower() == 'none':
        cache = _cache.TokenCache(log, cache_time=300, env_cache_name='memcache')
    else:
        cache = _cache.SecureTokenCache(log, configured, case['secret'], cache_time=300, env_cache_name='memcache')
    client = DictClient()
    cache.initialize({'memcache': client})
    key, context = cache._get_cache_key(token)
    result = {'key': key}
    if context is not None:
        result['protected'] = base64.b64encode(crypt.protect_data(context, base64.b64decode(case['plain']))).decode()
        try:
            result['unprotected'] = base64.b64encode(crypt.unprotect_data(context, base64.b64decode(case['ours']))).decode()
        except Exception as e:
            result['unprotected_error'] = type(e).__name__
    cache.set(token, {'token': access.AccessInfo.factory(body=case['body'], auth_token=token)})
    result['stored'] = base64.b64encode(client.data[key]).decode()
    client.data[key] = base64.b64decode(case['oursEntry'])
    result['readBack'] = cache.get(token)
    results.append(result)
print(json.dumps(results))
`;

interface InteropCase {
  /** memcache_security_strategy as written in keystonemiddleware's configuration. */
  readonly configured: string;
  /** What we pass: the canonical strategy and, where it differs, the label ksm derives keys from. */
  readonly strategy: MemcacheSecurityStrategy;
  readonly kdfLabel?: string;
  readonly token: string;
  readonly secret: string;
}

interface InteropResult {
  readonly key: string;
  readonly protected?: string;
  readonly unprotected?: string;
  readonly unprotected_error?: string;
  readonly stored: string;
  readonly readBack: unknown;
}

const validationBody = {
  token: {
    methods: ['password'],
    expires_at: '2099-01-01T00:00:00.000000Z',
    issued_at: '2025-01-01T00:00:00.000000Z',
    user: { id: 'u1', name: 'alice', domain: { id: 'default', name: 'Default' } },
    project: { id: 'p1', name: 'demo', domain: { id: 'default', name: 'Default' } },
    roles: [{ id: 'r1', name: 'member' }],
    catalog: [],
  },
};

describe.skipIf(!existsSync(KSM_DIR))('interoperability with keystonemiddleware (Debian python3)', () => {
  const cases: InteropCase[] = [
    { configured: 'None', strategy: 'None', token: TOKEN_A, secret: '' },
    { configured: 'MAC', strategy: 'MAC', token: TOKEN_A, secret: 'shared memcache secret' },
    { configured: 'ENCRYPT', strategy: 'ENCRYPT', token: TOKEN_B, secret: 'sécret-ключ ✓' },
    // oslo.config accepts any case but passes the value on as written: keys derive from 'mac'.
    { configured: 'mac', strategy: 'MAC', kdfLabel: 'mac', token: TOKEN_A, secret: 'shared memcache secret' },
    // ... and ksm encrypts only for the exact spelling 'ENCRYPT': 'encrypt' means MAC-only under 'encrypt'.
    { configured: 'encrypt', strategy: 'MAC', kdfLabel: 'encrypt', token: TOKEN_B, secret: 's' },
  ];
  const ourEntryBody = {
    token: { ...validationBody.token, user: { ...validationBody.token.user, id: 'u2' } },
  };
  const ourEntry = Buffer.from(JSON.stringify(ourEntryBody), 'utf8');
  const keysFor = (c: InteropCase) =>
    memcacheEntryKeys(c.token, c.strategy, c.secret ? Buffer.from(c.secret, 'utf8') : undefined, c.kdfLabel);
  let results: InteropResult[] = [];

  beforeAll(() => {
    const input = cases.map((c) => ({
      configured: c.configured,
      token: c.token,
      secret: c.secret,
      plain: BINARY.toString('base64'),
      ours: protectEntry(keysFor(c), PLAIN).toString('base64'),
      body: validationBody,
      oursEntry: protectEntry(keysFor(c), ourEntry).toString('base64'),
    }));
    const output = execFileSync(DEBIAN_PYTHON, ['-c', INTEROP_SCRIPT], {
      input: JSON.stringify(input),
      env: { PATH: '/usr/bin:/bin' },
      encoding: 'utf8',
      timeout: 30_000,
    });
    results = JSON.parse(output) as InteropResult[];
    expect(results).toHaveLength(cases.length);
  });

  it.each(cases.map((c, i) => [c.configured, i] as const))('%s: same memcached key', (_name, i) => {
    expect(keysFor(cases[i]!).cacheKey).toBe(results[i]!.key);
  });

  it.each(cases.map((c, i) => [c.configured, i] as const).filter(([, i]) => cases[i]!.strategy !== 'None'))(
    '%s: we unprotect what they protect, they unprotect what we protect',
    (_name, i) => {
      const result = results[i]!;
      expect(result.unprotected_error).toBeUndefined();
      expect(Buffer.from(result.unprotected!, 'base64')).toEqual(PLAIN);
      expect(unprotectEntry(keysFor(cases[i]!), Buffer.from(result.protected!, 'base64'))).toEqual(BINARY);
    },
  );

  it('lower-case encrypt in keystonemiddleware stores MAC-only (readable) data', () => {
    const i = cases.findIndex((c) => c.configured === 'encrypt');
    const stored = Buffer.from(results[i]!.stored, 'base64').toString('latin1');
    expect(Buffer.from(stored.slice(64), 'base64').toString('utf8')).toContain('"token"');
    // Read as ENCRYPT under the same label, the entry does not verify as ciphertext: a miss, not garbage.
    const asEncrypt = memcacheEntryKeys(cases[i]!.token, 'ENCRYPT', Buffer.from('s'), 'encrypt');
    expect(unprotectEntry(asEncrypt, Buffer.from(results[i]!.stored, 'base64'))).toBeUndefined();
  });

  it.each(cases.map((c, i) => [c.configured, i] as const))(
    '%s: their cache entry is {"token": {...body, version, auth_token}} JSON, and they read ours',
    (_name, i) => {
      const c = cases[i]!;
      const plain = unprotectEntry(keysFor(c), Buffer.from(results[i]!.stored, 'base64'));
      expect(plain).toBeDefined();
      const entry = JSON.parse(plain!.toString('utf8')) as { token: Record<string, unknown> };
      expect(Object.keys(entry)).toEqual(['token']);
      expect(entry.token).toEqual({ ...validationBody.token, version: 'v3', auth_token: c.token });
      expect(results[i]!.readBack).toEqual(ourEntryBody);
    },
  );
});
