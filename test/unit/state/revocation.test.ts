import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseTokenBody, type TokenInfo } from '../../../src/keystone/token-info.js';
import {
  parseKeystoneTime,
  parseRevocationEvents,
  type RevocationEvent,
  RevocationIndex,
  revocationEventMatches,
} from '../../../src/state/revocation.js';
import { readSample, sampleBody, samplesAvailable } from '../../helpers/samples.js';

// --- helpers -------------------------------------------------------------------------------------------------

const BASE = Date.UTC(2026, 10, 22, 22, 45, 0);
const HOUR = 3_600_000;

interface IdentityInput {
  userId?: string;
  userDomainId?: string | undefined;
  projectId?: string | undefined;
  projectDomainId?: string | undefined;
  domainId?: string | undefined;
  roleIds?: readonly string[];
  issuedAtMs?: number;
  expiresAtMs?: number;
  auditIds?: readonly string[];
  trust?: { id: string; trustorUserId: string; trusteeUserId: string } | undefined;
  oauth?: { consumerId: string; accessTokenId: string } | undefined;
}

/** A TokenInfo through the real parser, from a minimal Keystone-shaped validation body. */
function identity(input: IdentityInput = {}): TokenInfo {
  const issuedAtMs = input.issuedAtMs ?? BASE;
  const token: Record<string, unknown> = {
    methods: ['password'],
    user: {
      id: input.userId ?? 'u0',
      name: 'someone',
      ...(input.userDomainId === undefined
        ? {}
        : { domain: { id: input.userDomainId, name: input.userDomainId } }),
    },
    audit_ids: input.auditIds ?? ['a0'],
    issued_at: new Date(issuedAtMs).toISOString(),
    expires_at: new Date(input.expiresAtMs ?? issuedAtMs + HOUR).toISOString(),
    roles: (input.roleIds ?? []).map((id) => ({ id, name: `name-of-${id}` })),
  };
  if (input.projectId !== undefined) {
    token.project = {
      id: input.projectId,
      name: input.projectId,
      ...(input.projectDomainId === undefined ? {} : { domain: { id: input.projectDomainId, name: 'x' } }),
    };
  }
  if (input.domainId !== undefined) token.domain = { id: input.domainId, name: input.domainId };
  if (input.trust !== undefined) {
    token['OS-TRUST:trust'] = {
      id: input.trust.id,
      trustor_user: { id: input.trust.trustorUserId },
      trustee_user: { id: input.trust.trusteeUserId },
      impersonation: false,
    };
  }
  if (input.oauth !== undefined) {
    token['OS-OAUTH1'] = { consumer_id: input.oauth.consumerId, access_token_id: input.oauth.accessTokenId };
  }
  return parseTokenBody({ token }, { renderCatalog: false });
}

const NO_SELECTORS = {
  revokedAtMs: undefined,
  userId: undefined,
  projectId: undefined,
  domainId: undefined,
  domainScopeId: undefined,
  roleId: undefined,
  auditId: undefined,
  auditChainId: undefined,
  expiresAtMs: undefined,
  trustId: undefined,
  consumerId: undefined,
  accessTokenId: undefined,
  unknownFields: undefined,
} as const;

function event(fields: Partial<RevocationEvent> = {}): RevocationEvent {
  return { issuedBeforeMs: BASE, ...NO_SELECTORS, ...fields };
}

type SelectorField = Exclude<keyof RevocationEvent, 'issuedBeforeMs' | 'revokedAtMs' | 'unknownFields'>;
const SELECTOR_FIELDS: readonly SelectorField[] = [
  'userId',
  'projectId',
  'domainId',
  'domainScopeId',
  'roleId',
  'auditId',
  'auditChainId',
  'expiresAtMs',
  'trustId',
  'consumerId',
  'accessTokenId',
];

/**
 * The token values an event field may equal, written independently of src/state/revocation.ts from Keystone's
 * revoke_model.py / revoke sql backend (plus the documented wider readings of audit_chain_id and domain_id).
 */
function tokenValues(field: SelectorField, t: TokenInfo): readonly (string | number | undefined)[] {
  switch (field) {
    case 'userId':
      return [t.userId, t.trustorUserId, t.trusteeUserId];
    case 'projectId':
      return [t.projectId];
    case 'domainId':
      return [t.userDomainId, t.projectDomainId, t.domainId];
    case 'domainScopeId':
      return [t.domainId];
    case 'roleId':
      return t.roleIds;
    case 'auditId':
      return [t.auditIds[0]];
    case 'auditChainId':
      return [t.auditIds.length > 1 ? t.auditIds[1] : t.auditIds[0]];
    case 'expiresAtMs':
      return [Math.floor(t.expiresAtMs / 1000)];
    case 'trustId':
      return [t.trustId];
    case 'consumerId':
      return [t.oauthConsumerId];
    case 'accessTokenId':
      return [t.oauthAccessTokenId];
  }
}

function oracle(e: RevocationEvent, t: TokenInfo): boolean {
  if (t.issuedAtMs > e.issuedBeforeMs) return false;
  return SELECTOR_FIELDS.every((field) => {
    const wanted = e[field];
    if (wanted === undefined) return true;
    const value = field === 'expiresAtMs' ? Math.floor((wanted as number) / 1000) : wanted;
    return tokenValues(field, t).some((v) => v !== undefined && v === value);
  });
}

const identityOf = (events: readonly RevocationEvent[]): string =>
  JSON.stringify(events.map((e) => Object.fromEntries(Object.entries(e).map(([k, v]) => [k, v ?? null]))));

// --- arbitraries: small pools so that values collide often ---------------------------------------------------

const pick = (prefix: string, n: number) =>
  fc.constantFrom(...Array.from({ length: n }, (_, i) => `${prefix}${i}`));
const maybe = <T>(arb: fc.Arbitrary<T>) => fc.option(arb, { nil: undefined, freq: 3 });
/** Around BASE: whole seconds (as Keystone writes them) and arbitrary milliseconds. */
const time = fc.oneof(
  fc.integer({ min: 0, max: 6 }).map((s) => BASE + s * 1000),
  fc.integer({ min: 0, max: 6000 }).map((ms) => BASE + ms),
);
const expiry = fc.integer({ min: 0, max: 3000 }).map((ms) => BASE + HOUR + ms);

const identityArb: fc.Arbitrary<TokenInfo> = fc
  .record({
    userId: pick('u', 3),
    userDomainId: maybe(pick('d', 2)),
    projectId: maybe(pick('p', 3)),
    projectDomainId: maybe(pick('d', 2)),
    domainId: maybe(pick('d', 2)),
    roleIds: fc.uniqueArray(pick('r', 4), { maxLength: 3 }),
    issuedAtMs: time,
    expiresAtMs: expiry,
    auditIds: fc.oneof(
      pick('a', 4).map((a) => [a]),
      fc.tuple(pick('a', 4), pick('a', 4)),
    ),
    trust: maybe(fc.record({ id: pick('t', 2), trustorUserId: pick('u', 3), trusteeUserId: pick('u', 3) })),
    oauth: maybe(fc.record({ consumerId: pick('c', 2), accessTokenId: pick('k', 2) })),
  })
  .map(identity);

const selectorValue: { [K in SelectorField]: fc.Arbitrary<NonNullable<RevocationEvent[K]>> } = {
  userId: pick('u', 3),
  projectId: pick('p', 3),
  domainId: pick('d', 2),
  domainScopeId: pick('d', 2),
  roleId: pick('r', 4),
  auditId: pick('a', 4),
  auditChainId: pick('a', 4),
  expiresAtMs: expiry,
  trustId: pick('t', 2),
  consumerId: pick('c', 2),
  accessTokenId: pick('k', 2),
};

/** Events with zero to three selectors (Keystone's have one to three). */
const eventArb: fc.Arbitrary<RevocationEvent> = fc
  .record({
    issuedBeforeMs: time,
    revokedAtMs: maybe(time),
    chosen: fc.subarray([...SELECTOR_FIELDS], { maxLength: 3 }),
    values: fc.record(selectorValue),
  })
  .map(({ issuedBeforeMs, revokedAtMs, chosen, values }) =>
    event({
      issuedBeforeMs,
      revokedAtMs,
      ...Object.fromEntries(chosen.map((field) => [field, values[field]])),
    }),
  );

// --- tests -----------------------------------------------------------------------------------------------------

describe('TokenInfo fields revocation needs (parseTokenBody)', () => {
  it('reads the trustor, trustee, OAuth1 consumer and access token; undefined when absent', () => {
    const t = identity({
      trust: { id: 't', trustorUserId: 'alice', trusteeUserId: 'bob' },
      oauth: { consumerId: 'c', accessTokenId: 'k' },
    });
    expect(t).toMatchObject({
      trustId: 't',
      trustorUserId: 'alice',
      trusteeUserId: 'bob',
      oauthConsumerId: 'c',
      oauthAccessTokenId: 'k',
    });
    expect(t.sizeBytes).toBeGreaterThan(identity().sizeBytes + 4 * 16);
    expect(identity()).toMatchObject({
      trustorUserId: undefined,
      trusteeUserId: undefined,
      oauthConsumerId: undefined,
      oauthAccessTokenId: undefined,
    });
  });
});

describe('parseKeystoneTime', () => {
  it.each([
    ['2026-11-22T23:39:39.000000Z', Date.UTC(2026, 10, 22, 23, 39, 39)],
    ['2026-11-22T23:39:39Z', Date.UTC(2026, 10, 22, 23, 39, 39)],
    ['2026-11-22T23:39:39.123999Z', Date.UTC(2026, 10, 22, 23, 39, 39, 123)],
    ['2026-11-22T23:39:39.5Z', Date.UTC(2026, 10, 22, 23, 39, 39, 500)],
    ['2026-11-22T23:39:39', Date.UTC(2026, 10, 22, 23, 39, 39)],
    ['2026-11-22T23:39:39+01:00', Date.UTC(2026, 10, 22, 22, 39, 39)],
    ['2026-11-22T23:39:39-0130', Date.UTC(2026, 10, 23, 1, 9, 39)],
  ])('%s', (text, ms) => {
    expect(parseKeystoneTime(text)).toBe(ms);
  });

  it.each([['2026-02-30T00:00:00Z'], ['2026-11-22'], ['yesterday'], [''], [1_700_000_000], [null]])(
    'refuses %j',
    (value) => {
      expect(parseKeystoneTime(value)).toBeUndefined();
    },
  );
});

describe('parseRevocationEvents', () => {
  it('reads every field Keystone writes', () => {
    const { events, problems } = parseRevocationEvents({
      events: [
        {
          issued_before: '2026-11-22T22:45:01.000000Z',
          revoked_at: '2026-11-22T22:45:02.000000Z',
          user_id: 'u',
          project_id: 'p',
          domain_id: 'd',
          role_id: 'r',
          audit_id: 'a',
          audit_chain_id: 'c',
          'OS-TRUST:trust_id': 't',
          'OS-OAUTH1:consumer_id': 'k',
          'OS-OAUTH1:access_token_id': 'at',
        },
        { issued_before: '2026-11-22T22:45:01Z', domain_scope_id: 'ds', expires_at: '2026-11-22T23:45:01Z' },
      ],
      links: { next: null },
    });
    expect(problems).toEqual([]);
    expect(events).toEqual([
      {
        issuedBeforeMs: BASE + 1000,
        revokedAtMs: BASE + 2000,
        userId: 'u',
        projectId: 'p',
        domainId: 'd',
        domainScopeId: undefined,
        roleId: 'r',
        auditId: 'a',
        auditChainId: 'c',
        expiresAtMs: undefined,
        trustId: 't',
        consumerId: 'k',
        accessTokenId: 'at',
        unknownFields: undefined,
      },
      event({ issuedBeforeMs: BASE + 1000, domainScopeId: 'ds', expiresAtMs: BASE + HOUR + 1000 }),
    ]);
  });

  it('domain_id with expires_at is a domain-scope revocation, as in RevokeEvent.__init__', () => {
    const { events } = parseRevocationEvents({
      events: [{ issued_before: '2026-11-22T22:45:00Z', domain_id: 'd', expires_at: '2026-11-22T23:45:00Z' }],
    });
    expect(events[0]).toMatchObject({ domainId: undefined, domainScopeId: 'd' });
  });

  it('null fields are absent', () => {
    const { events, problems } = parseRevocationEvents({
      events: [{ issued_before: '2026-11-22T22:45:00Z', user_id: null, revoked_at: null, future: null }],
    });
    expect(problems).toEqual([]);
    expect(events).toEqual([event()]);
  });

  it('skips and reports events it cannot use, keeps the others', () => {
    const { events, problems } = parseRevocationEvents({
      events: [
        'nope',
        { user_id: 'u' },
        { user_id: 'u', issued_before: 'soon' },
        { user_id: 'u', issued_before: 1_700_000_000 },
        { user_id: 7, issued_before: '2026-11-22T22:45:00Z' },
        { user_id: 'u', issued_before: '2026-11-22T22:45:00Z', expires_at: 'later' },
        { user_id: 'u', issued_before: '2026-11-22T22:45:00Z', revoked_at: 'then' },
        { audit_id: 'a', issued_before: '2026-11-22T22:45:00Z' },
      ],
    });
    expect(events).toEqual([event({ userId: 'u' }), event({ auditId: 'a' })]);
    expect(problems).toEqual([
      'events[0]: not an object; ignored',
      'events[1] and 2 more: issued_before is missing or not an ISO 8601 time; ignored',
      'events[4]: user_id is not a string; ignored',
      'events[5]: expires_at is not an ISO 8601 time; ignored',
      'events[6]: revoked_at is not an ISO 8601 time; issued_before used',
    ]);
  });

  it('an unknown field beside a known selector is ignored (wider match), and reported once per name', () => {
    const { events, problems } = parseRevocationEvents({
      events: [
        { issued_before: '2026-11-22T22:45:00Z', user_id: 'u', app_cred_id: 'x' },
        { issued_before: '2026-11-22T22:45:00Z', user_id: 'v', app_cred_id: 'y' },
      ],
    });
    expect(events.map((e) => [e.userId, e.unknownFields])).toEqual([
      ['u', '{"app_cred_id":"x"}'],
      ['v', '{"app_cred_id":"y"}'],
    ]);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^events\[0\] and 1 more: unknown field "app_cred_id" ignored/);
    // Wider than the event means: every token of u issued before it, whatever its application credential.
    expect(revocationEventMatches(events[0]!, identity({ userId: 'u' }))).toBe(true);
    expect(revocationEventMatches(events[0]!, identity({ userId: 'w' }))).toBe(false);
  });

  it('an event whose only selectors are unknown is skipped: it would revoke everything before it', () => {
    const { events, problems } = parseRevocationEvents({
      events: [
        { issued_before: '2026-11-22T22:45:00Z', app_cred_id: 'x', revoked_at: '2026-11-22T22:45:00Z' },
      ],
    });
    expect(events).toEqual([]);
    expect(problems).toEqual([
      'events[0]: only unknown selectors (app_cred_id); ignored rather than revoking every token issued before it',
    ]);
  });

  it('a body without an events list', () => {
    for (const body of [null, 'x', {}, { events: {} }]) {
      expect(parseRevocationEvents(body)).toEqual({
        events: [],
        problems: ['the body has no "events" list'],
      });
    }
  });
});

describe.skipIf(!samplesAvailable())('recorded Keystone 22 exchanges (samples/keystone)', () => {
  const info = (name: string): TokenInfo =>
    parseTokenBody(sampleBody(`keystone/${name}`), { renderCatalog: false });
  const events = (name: string): RevocationEvent[] => {
    const parsed = parseRevocationEvents(sampleBody(`keystone/${name}`));
    expect(parsed.problems).toEqual([]);
    return parsed.events;
  };
  const status = (name: string): number => readSample(`keystone/${name}`).response.status;
  const subject = (name: string): string | undefined =>
    readSample(`keystone/${name}`).request.headers['X-Subject-Token'] ??
    readSample(`keystone/${name}`).response.headers['X-Subject-Token'];

  it('parses every recorded events list without problems', () => {
    expect(events('41-revoke-events-before-by-proxy.json')).toEqual([]);
    expect(events('70-revoke-events-after-role-unassign.json')).toEqual([]);
    const all = events('73-revoke-events-all.json');
    expect(all).toHaveLength(5);
    expect(all[0]).toEqual(
      event({
        auditId: 'HOBmiFYWS3SMtHJMgFnaCQ',
        issuedBeforeMs: Date.parse('2026-11-22T22:44:59Z'),
        revokedAtMs: Date.parse('2026-11-22T22:44:59Z'),
      }),
    );
    expect(all.slice(1).every((e) => e.userId === 'fc9964ef580c4bc18b768b91e5afd8bf')).toBe(true);
    expect(events('84-newdefaults-revoke-events-by-service.json')).toEqual(all);
  });

  it('a single-token revoke (audit_id event) revokes that token only, not the same user’s other token', () => {
    // 21 validated the token later revoked in 44 (45: 404); 49 is another token of the same user (200 after).
    expect(subject('21-validate-project-nocatalog.json')).toBe(subject('44-revoke-self.json'));
    expect([
      status('45-validate-after-revoke.json'),
      status('49-validate-other-token-same-user.json'),
    ]).toEqual([404, 200]);
    const revoked = info('21-validate-project-nocatalog.json');
    const other = info('49-validate-other-token-same-user.json');
    expect(other.userId).toBe(revoked.userId);
    expect(other.issuedAtMs).toBeLessThanOrEqual(revoked.issuedAtMs);

    const index = new RevocationIndex();
    expect(index.add(events('50-revoke-events-after-token-revoke.json'))).toHaveLength(1);
    expect(index.isRevoked(revoked)).toBe(true);
    expect(index.isRevoked(info('07-token-project.json'))).toBe(true);
    expect(index.isRevoked(other)).toBe(false);
  });

  it('user_id events (disable, password change, admin reset, delete) revoke the tokens issued up to them', () => {
    // revtest tokens #1..#4 were issued at :01, :03, :05, :06; the user events are at :01, :03, :05, :07.
    const tokens = [
      '53-token-revtest-1.json',
      '59-token-revtest-2.json',
      '63-token-revtest-3.json',
      '67-token-revtest-4.json',
    ];
    const [t1, t2, t3, t4] = tokens.map(info) as [TokenInfo, TokenInfo, TokenInfo, TokenInfo];
    const index = new RevocationIndex();
    const revoked = () => [t1, t2, t3, t4].map((t) => index.isRevoked(t));

    // Disable (56): #1 issued in the event's very second is revoked (55 and, after re-enabling, 58: 404);
    // #2, issued after, is not.
    expect(subject('55-validate-after-user-disabled.json')).toBe(subject(tokens[0]!));
    expect(status('58-validate-old-token-after-reenable.json')).toBe(404);
    index.add(events('56-revoke-events-after-user-disable.json'));
    expect(t1.issuedAtMs).toBe(index.newestRevokedAtMs);
    expect(revoked()).toEqual([true, false, false, false]);

    // Password change (62) at #2's second: 61 refused #2.
    expect(subject('61-validate-after-password-change.json')).toBe(subject(tokens[1]!));
    expect(status('61-validate-after-password-change.json')).toBe(404);
    index.add(events('62-revoke-events-after-password-change.json'));
    expect(revoked()).toEqual([true, true, false, false]);

    // Admin password reset (66): 65 refused #3.
    expect(subject('65-validate-after-admin-password-reset.json')).toBe(subject(tokens[2]!));
    index.add(events('66-revoke-events-after-admin-password-reset.json'));
    expect(revoked()).toEqual([true, true, true, false]);

    // Role unassignment writes no event (70): Keystone refuses #4 (69), revocation polling cannot know.
    expect(index.add(events('70-revoke-events-after-role-unassign.json'))).toHaveLength(0);
    expect(status('69-validate-after-role-unassign.json')).toBe(404);
    expect(revoked()).toEqual([true, true, true, false]);

    // User deleted (72): everything.
    index.add(events('72-revoke-events-after-user-delete.json'));
    expect(revoked()).toEqual([true, true, true, true]);

    // Another user's token issued before all of it stays valid.
    expect(index.isRevoked(info('49-validate-other-token-same-user.json'))).toBe(false);
  });

  it('polling with overlap: the full list re-read after incremental polls adds nothing', () => {
    const index = new RevocationIndex();
    expect(index.add(events('50-revoke-events-after-token-revoke.json'))).toHaveLength(1);
    expect(index.add(events('51-revoke-events-since.json'))).toHaveLength(0);
    expect(index.add(events('52-revoke-events-since-equal.json'))).toHaveLength(0);
    for (const name of [
      '56-revoke-events-after-user-disable.json',
      '62-revoke-events-after-password-change.json',
      '66-revoke-events-after-admin-password-reset.json',
      '72-revoke-events-after-user-delete.json',
    ]) {
      expect(index.add(events(name))).toHaveLength(1);
    }
    expect(index.add(events('73-revoke-events-all.json'))).toHaveLength(0);
    expect(index.size).toBe(5);
    expect(index.newestRevokedAtMs).toBe(Date.parse('2026-11-22T22:45:07Z'));
  });
});

describe('matching details', () => {
  it('a token issued in the same second as the event is revoked; one a second later is not', () => {
    const e = event({ userId: 'u0', issuedBeforeMs: BASE });
    expect(revocationEventMatches(e, identity({ issuedAtMs: BASE }))).toBe(true);
    expect(revocationEventMatches(e, identity({ issuedAtMs: BASE - 1000 }))).toBe(true);
    expect(revocationEventMatches(e, identity({ issuedAtMs: BASE + 1000 }))).toBe(false);
    expect(revocationEventMatches(e, identity({ issuedAtMs: BASE + 1 }))).toBe(false);
  });

  it('user_id matches the user, the trustor and the trustee of a trust token', () => {
    const trust = { id: 't', trustorUserId: 'alice', trusteeUserId: 'bob' };
    const t = identity({ userId: 'bob', trust });
    for (const userId of ['alice', 'bob']) expect(revocationEventMatches(event({ userId }), t)).toBe(true);
    expect(revocationEventMatches(event({ userId: 'carol' }), t)).toBe(false);
    expect(revocationEventMatches(event({ trustId: 't' }), t)).toBe(true);
    expect(revocationEventMatches(event({ trustId: 't2' }), t)).toBe(false);
  });

  it('audit_chain_id: the second audit id, or the first for an original token', () => {
    const original = identity({ auditIds: ['A'] });
    const rescoped = identity({ auditIds: ['B', 'A'] });
    const other = identity({ auditIds: ['A', 'Z'] });
    const chain = event({ auditChainId: 'A' });
    expect([original, rescoped, other].map((t) => revocationEventMatches(chain, t))).toEqual([
      true,
      true,
      false,
    ]);
    expect(revocationEventMatches(event({ auditId: 'A' }), rescoped)).toBe(false);
  });

  it('domain_id: user domain, project domain or domain scope; domain_scope_id: domain scope only', () => {
    const project = identity({ userDomainId: 'du', projectId: 'p', projectDomainId: 'dp' });
    const domain = identity({ userDomainId: 'du', domainId: 'ds' });
    for (const domainId of ['du', 'dp'])
      expect(revocationEventMatches(event({ domainId }), project)).toBe(true);
    expect(revocationEventMatches(event({ domainId: 'ds' }), domain)).toBe(true);
    expect(revocationEventMatches(event({ domainId: 'ds' }), project)).toBe(false);
    expect(revocationEventMatches(event({ domainScopeId: 'ds' }), domain)).toBe(true);
    expect(revocationEventMatches(event({ domainScopeId: 'dp' }), project)).toBe(false);
    expect(revocationEventMatches(event({ domainScopeId: 'du' }), domain)).toBe(false);
  });

  it('expires_at is compared at one-second precision', () => {
    const t = identity({ expiresAtMs: BASE + HOUR + 400 });
    expect(revocationEventMatches(event({ expiresAtMs: BASE + HOUR }), t)).toBe(true);
    expect(revocationEventMatches(event({ expiresAtMs: BASE + HOUR + 999 }), t)).toBe(true);
    expect(revocationEventMatches(event({ expiresAtMs: BASE + HOUR + 1000 }), t)).toBe(false);
  });

  it('OAuth1 consumer and access token; role among the role ids', () => {
    const t = identity({ oauth: { consumerId: 'c', accessTokenId: 'k' }, roleIds: ['r1', 'r2'] });
    expect(revocationEventMatches(event({ consumerId: 'c', accessTokenId: 'k' }), t)).toBe(true);
    expect(revocationEventMatches(event({ accessTokenId: 'k2' }), t)).toBe(false);
    expect(revocationEventMatches(event({ consumerId: 'c', roleId: 'r2' }), t)).toBe(true);
    expect(revocationEventMatches(event({ roleId: 'r3' }), t)).toBe(false);
    expect(revocationEventMatches(event({ consumerId: 'c' }), identity())).toBe(false);
  });

  it('an event with issued_before only revokes every token issued up to it', () => {
    const index = new RevocationIndex();
    index.add([event({ issuedBeforeMs: BASE })]);
    expect(index.isRevoked(identity({ issuedAtMs: BASE }))).toBe(true);
    expect(index.isRevoked(identity({ issuedAtMs: BASE + 1 }))).toBe(false);
  });
});

describe('RevocationIndex bookkeeping', () => {
  it('prune drops by revoked_at, else issued_before; newestRevokedAtMs never goes back', () => {
    const index = new RevocationIndex();
    expect(index.newestRevokedAtMs).toBeUndefined();
    index.add([
      event({ userId: 'a', issuedBeforeMs: BASE, revokedAtMs: BASE + 5000 }),
      event({ userId: 'b', issuedBeforeMs: BASE + 1000 }),
      event({ userId: 'c', issuedBeforeMs: BASE + 2000, revokedAtMs: BASE + 2000 }),
    ]);
    expect(index.newestRevokedAtMs).toBe(BASE + 5000);
    expect(index.prune(BASE + 2000)).toBe(1);
    expect(index.size).toBe(2);
    expect(index.isRevoked(identity({ userId: 'b', issuedAtMs: BASE }))).toBe(false);
    expect(index.isRevoked(identity({ userId: 'c', issuedAtMs: BASE }))).toBe(true);
    expect(index.prune(BASE + 2000)).toBe(0);
    expect(index.prune(BASE + 10_000)).toBe(2);
    expect(index.size).toBe(0);
    expect(index.isRevoked(identity({ userId: 'a', issuedAtMs: 0 }))).toBe(false);
    expect(index.newestRevokedAtMs).toBe(BASE + 5000);
    // Pruned events read again are new again.
    expect(index.add([event({ userId: 'a', issuedBeforeMs: BASE, revokedAtMs: BASE + 5000 })])).toHaveLength(
      1,
    );
  });

  it('answers right with 60k events of mixed kinds (speed is measured in bench/, not asserted here)', () => {
    const index = new RevocationIndex();
    const many: RevocationEvent[] = [];
    for (let i = 0; i < 60_000; i++) {
      const issuedBeforeMs = BASE + HOUR;
      if (i % 3 === 0) many.push(event({ issuedBeforeMs, auditId: `audit-${i}` }));
      else if (i % 3 === 1) many.push(event({ issuedBeforeMs, userId: `user-${i}` }));
      else many.push(event({ issuedBeforeMs, projectId: `project-${i}`, roleId: 'r' }));
    }
    expect(index.add(many)).toHaveLength(60_000);
    const tokens = Array.from({ length: 5000 }, (_, i) =>
      identity({ userId: `someone-${i}`, projectId: 'p', roleIds: ['r'], auditIds: [`x${i}`] }),
    );
    expect(tokens.some((t) => index.isRevoked(t))).toBe(false);
    expect(index.isRevoked(identity({ userId: 'user-4' }))).toBe(true);
    expect(index.isRevoked(identity({ auditIds: ['audit-3'] }))).toBe(true);
  });
});

describe('properties', () => {
  it('add is idempotent and de-duplicates by content', () => {
    fc.assert(
      fc.property(
        fc.array(eventArb, { maxLength: 30 }),
        fc.array(identityArb, { maxLength: 8 }),
        (events, ids) => {
          const index = new RevocationIndex();
          const withCopies = [...events, ...events.map((e) => ({ ...e }))];
          const distinct = new Set(events.map((e) => identityOf([e]))).size;
          expect(index.add(withCopies)).toHaveLength(distinct);
          const answers = ids.map((t) => index.isRevoked(t));
          expect(index.add(events)).toHaveLength(0);
          expect(index.add(structuredClone(events))).toHaveLength(0);
          expect(index.size).toBe(distinct);
          expect(ids.map((t) => index.isRevoked(t))).toEqual(answers);
        },
      ),
    );
  });

  it('an event never matches a token issued after its issued_before', () => {
    fc.assert(
      fc.property(eventArb, identityArb, (e, t) => {
        fc.pre(t.issuedAtMs > e.issuedBeforeMs);
        expect(revocationEventMatches(e, t)).toBe(false);
        const index = new RevocationIndex();
        index.add([e]);
        expect(index.isRevoked(t)).toBe(false);
      }),
    );
  });

  it('an event with one selector matches iff that field matches', () => {
    const oneSelector = fc
      .constantFrom(...SELECTOR_FIELDS)
      .chain((field) =>
        (selectorValue[field] as fc.Arbitrary<string | number>).map((value) => ({ field, value })),
      );
    fc.assert(
      fc.property(oneSelector, identityArb, ({ field, value }, t) => {
        const e = event({ issuedBeforeMs: t.issuedAtMs, [field]: value });
        const key = field === 'expiresAtMs' ? Math.floor((value as number) / 1000) : value;
        const expected = tokenValues(field, t).includes(key);
        expect(revocationEventMatches(e, t)).toBe(expected);
        const index = new RevocationIndex();
        index.add([e]);
        expect(index.isRevoked(t)).toBe(expected);
      }),
      { numRuns: 500 },
    );
  });

  it('the index answers as a linear scan over all events (model-based, with pruning)', () => {
    fc.assert(
      fc.property(
        fc.array(eventArb, { maxLength: 60 }),
        fc.array(identityArb, { minLength: 1, maxLength: 20 }),
        fc.option(time, { nil: undefined }),
        (events, ids, pruneBefore) => {
          const index = new RevocationIndex();
          // Added in two overlapping batches, as an overlapping poller does.
          const half = Math.floor(events.length / 2);
          index.add(events.slice(0, half + 2));
          index.add(events.slice(half));
          let model = events;
          if (pruneBefore !== undefined) {
            index.prune(pruneBefore);
            model = events.filter((e) => (e.revokedAtMs ?? e.issuedBeforeMs) >= pruneBefore);
          }
          for (const t of ids) {
            expect(index.isRevoked(t)).toBe(model.some((e) => oracle(e, t)));
            expect(model.some((e) => revocationEventMatches(e, t))).toBe(model.some((e) => oracle(e, t)));
          }
        },
      ),
      { numRuns: 400 },
    );
  });
});
