/**
 * Pure: Keystone OS-REVOKE revocation events (`GET /v3/OS-REVOKE/events`) and the question "is this cached
 * identity revoked?", answered as Keystone itself does when it validates a token.
 *
 * Keystone's rule (keystone/revoke/backends/sql.py `_list_token_events`, then keystone/models/revoke_model.py
 * `matches` on the token values of `build_token_values`): a token is revoked by an event when
 * `token.issued_at <= event.issued_before` and every selector the event carries matches the token:
 * - `user_id` is the token's user, trustor or trustee;
 * - `project_id`, `audit_id` (the first audit id), `OS-TRUST:trust_id`, `OS-OAUTH1:consumer_id` are equal;
 * - `audit_chain_id` is the token's chain: its second audit id (the parent), or its first for an original token;
 * - `domain_id` is the user's domain, the project's domain or the domain scope;
 * - `domain_scope_id` (emitted for `domain_id` + `expires_at` events) is the domain scope;
 * - `role_id` is one of the token's role ids;
 * - `expires_at` is equal at one-second precision (both sides are truncated to the second);
 * - `OS-OAUTH1:access_token_id` is equal.
 * Where Keystone's code and its evident intent differ, we take the wider reading: a match here only drops the
 * cached identity, and the next request re-validates with Keystone, so matching too much costs one validation
 * while matching too little keeps a revoked token alive until its cache entry ends. The deviations are listed at
 * `revocationEventMatches`.
 *
 * Times: Keystone writes `issued_before`/`revoked_at` as `utcnow()` truncated to the second, and a Fernet token's
 * `issued_at` is whole seconds too, so a token issued in the same second as an event is revoked by it, even if it
 * was minted just after (the recorded samples show it). We compare milliseconds with `<=`, which is exactly that
 * for whole seconds and fails closed below a millisecond.
 */

import type { TokenInfo } from '../keystone/token-info.js';

export interface RevocationEvent {
  /** Tokens issued at or before this instant (ms since the epoch) may be revoked. */
  readonly issuedBeforeMs: number;
  /** When Keystone recorded the event; `undefined` when the body had none (then `issuedBeforeMs` stands in). */
  readonly revokedAtMs: number | undefined;
  readonly userId: string | undefined;
  readonly projectId: string | undefined;
  readonly domainId: string | undefined;
  /** Keystone's "virtual" field for revoking domain-scoped tokens: matches the domain scope only. */
  readonly domainScopeId: string | undefined;
  readonly roleId: string | undefined;
  readonly auditId: string | undefined;
  readonly auditChainId: string | undefined;
  /** Compared at one-second precision. */
  readonly expiresAtMs: number | undefined;
  readonly trustId: string | undefined;
  readonly consumerId: string | undefined;
  readonly accessTokenId: string | undefined;
  /**
   * Fields this code does not know, as canonical JSON (sorted keys), or `undefined`. They take no part in
   * matching (see `parseRevocationEvents`) but do in de-duplication, as part of the event's content.
   */
  readonly unknownFields: string | undefined;
}

export interface ParsedRevocationEvents {
  readonly events: RevocationEvent[];
  /** Human-readable, one line per kind of problem (with a count), for a log line; never token material. */
  readonly problems: string[];
}

type Json = Record<string, unknown>;

/** The JSON name of every selector, with the RevocationEvent field it fills. */
const STRING_SELECTORS = [
  ['user_id', 'userId'],
  ['project_id', 'projectId'],
  ['domain_id', 'domainId'],
  ['domain_scope_id', 'domainScopeId'],
  ['role_id', 'roleId'],
  ['audit_id', 'auditId'],
  ['audit_chain_id', 'auditChainId'],
  ['OS-TRUST:trust_id', 'trustId'],
  ['OS-OAUTH1:consumer_id', 'consumerId'],
  ['OS-OAUTH1:access_token_id', 'accessTokenId'],
] as const;

const KNOWN_FIELDS = new Set<string>([
  'issued_before',
  'revoked_at',
  'expires_at',
  ...STRING_SELECTORS.map(([json]) => json),
]);

const ISO_8601 =
  /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?(Z|[+-]\d{2}(?::?\d{2})?)?$/i;

/**
 * ISO 8601 as Keystone writes it (`2026-11-22T23:39:39.000000Z`, or without a fraction), to whole milliseconds
 * (the fraction is truncated). A time without a zone is UTC, as Keystone's `normalize_time` takes it; `Date.parse`
 * would take it as local time, hence this parser.
 */
export function parseKeystoneTime(value: unknown): number | undefined {
  if (typeof value !== 'string') return undefined;
  const m = ISO_8601.exec(value);
  if (m === null) return undefined;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const ms = Number((m[7] ?? '').padEnd(3, '0').slice(0, 3));
  const utc = Date.UTC(year, month - 1, day, hour, minute, second, ms);
  const check = new Date(utc);
  // Date.UTC rolls 2026-02-30 over into March: refuse what does not round-trip.
  if (
    !Number.isFinite(utc) ||
    check.getUTCFullYear() !== year ||
    check.getUTCMonth() !== month - 1 ||
    check.getUTCDate() !== day ||
    check.getUTCHours() !== hour ||
    check.getUTCMinutes() !== minute ||
    check.getUTCSeconds() !== second
  ) {
    return undefined;
  }
  const zone = m[8];
  if (zone === undefined || zone.toUpperCase() === 'Z') return utc;
  const sign = zone.startsWith('-') ? -1 : 1;
  const digits = zone.slice(1).replace(':', '');
  const offsetMinutes = Number(digits.slice(0, 2)) * 60 + Number(digits.slice(2) || '0');
  return utc - sign * offsetMinutes * 60_000;
}

class ProblemLog {
  readonly #seen = new Map<string, { first: number; count: number }>();

  add(index: number, message: string): void {
    const known = this.#seen.get(message);
    if (known === undefined) this.#seen.set(message, { first: index, count: 1 });
    else known.count++;
  }

  lines(): string[] {
    return [...this.#seen].map(([message, { first, count }]) =>
      count === 1 ? `events[${first}]: ${message}` : `events[${first}] and ${count - 1} more: ${message}`,
    );
  }
}

/**
 * `GET /v3/OS-REVOKE/events` → the events it lists. Unusable events are skipped and reported, never thrown.
 *
 * Unknown fields. Every field of a Keystone revocation event is a restriction (an AND): an event revokes the
 * tokens matching all of its fields. A field we do not know is therefore a restriction we cannot evaluate, and
 * we choose, to fail closed without mass eviction:
 * - an event with at least one known selector keeps it and ignores the unknown field: it then matches a superset
 *   of what Keystone matches, bounded by the known selector (a user's, a project's tokens…); the extra matches
 *   only cost re-validations;
 * - an event whose only non-null selectors are unknown is skipped and reported: evaluated without them it would
 *   match every token issued before it, evicting the whole cache (current Keystone never writes such an event,
 *   and skipping it leaves those tokens to the cache TTL, as without revocation polling).
 * A known selector with a value that is not a string (or, for `expires_at`, not a time) makes the event
 * malformed: it is skipped and reported. `null` means absent, as in Keystone.
 */
export function parseRevocationEvents(body: unknown): ParsedRevocationEvents {
  const list = obj(body)?.events;
  if (!Array.isArray(list)) return { events: [], problems: ['the body has no "events" list'] };
  const problems = new ProblemLog();
  const events: RevocationEvent[] = [];
  list.forEach((raw, index) => {
    const event = parseOne(raw, index, problems);
    if (event !== undefined) events.push(event);
  });
  return { events, problems: problems.lines() };
}

function parseOne(raw: unknown, index: number, problems: ProblemLog): RevocationEvent | undefined {
  const fields = obj(raw);
  if (fields === undefined) {
    problems.add(index, 'not an object; ignored');
    return undefined;
  }
  const issuedBeforeMs = parseKeystoneTime(fields.issued_before);
  if (issuedBeforeMs === undefined) {
    problems.add(index, 'issued_before is missing or not an ISO 8601 time; ignored');
    return undefined;
  }
  let revokedAtMs: number | undefined;
  if (fields.revoked_at !== undefined && fields.revoked_at !== null) {
    revokedAtMs = parseKeystoneTime(fields.revoked_at);
    if (revokedAtMs === undefined) {
      problems.add(index, 'revoked_at is not an ISO 8601 time; issued_before used');
    }
  }
  let expiresAtMs: number | undefined;
  if (fields.expires_at !== undefined && fields.expires_at !== null) {
    expiresAtMs = parseKeystoneTime(fields.expires_at);
    if (expiresAtMs === undefined) {
      problems.add(index, 'expires_at is not an ISO 8601 time; ignored');
      return undefined;
    }
  }
  const values: Partial<Record<(typeof STRING_SELECTORS)[number][1], string>> = {};
  for (const [json, field] of STRING_SELECTORS) {
    const value = fields[json];
    if (value === undefined || value === null) continue;
    if (typeof value !== 'string') {
      problems.add(index, `${json} is not a string; ignored`);
      return undefined;
    }
    values[field] = value;
  }
  const unknown = Object.keys(fields)
    .filter((name) => !KNOWN_FIELDS.has(name) && fields[name] !== null && fields[name] !== undefined)
    .sort();
  let { domainId, domainScopeId } = values;
  // Keystone's RevokeEvent turns `domain_id` + `expires_at` into `domain_scope_id` (revoking a domain-scoped
  // token); its API then writes `domain_scope_id`. Mirror the constructor for a body that kept `domain_id`.
  if (domainId !== undefined && expiresAtMs !== undefined && domainScopeId === undefined) {
    domainScopeId = domainId;
    domainId = undefined;
  }
  const event: RevocationEvent = {
    issuedBeforeMs,
    revokedAtMs,
    userId: values.userId,
    projectId: values.projectId,
    domainId,
    domainScopeId,
    roleId: values.roleId,
    auditId: values.auditId,
    auditChainId: values.auditChainId,
    expiresAtMs,
    trustId: values.trustId,
    consumerId: values.consumerId,
    accessTokenId: values.accessTokenId,
    unknownFields:
      unknown.length === 0
        ? undefined
        : JSON.stringify(Object.fromEntries(unknown.map((n) => [n, fields[n]]))),
  };
  if (unknown.length > 0 && selectorOf(event) === undefined) {
    problems.add(
      index,
      `only unknown selectors (${unknown.join(', ')}); ignored rather than revoking every token issued before it`,
    );
    return undefined;
  }
  for (const name of unknown) {
    problems.add(
      index,
      `unknown field ${JSON.stringify(name)} ignored; the event is matched on its known fields only (wider: fails closed)`,
    );
  }
  return event;
}

function obj(value: unknown): Json | undefined {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Json) : undefined;
}

const seconds = (ms: number): number => Math.floor(ms / 1000);

/**
 * The audit chain a token belongs to. Keystone gives a token made from another token
 * `audit_ids = [own, chain]`, the chain being the original token's audit id (auth/plugins/token.py); an original
 * token has `[own]` and is the head of its chain. Keystone's `build_token_values` compares the event to the parent
 * id only (`None` for an original token), so a chain event there spares the original token; we take the chain
 * as meant (wider, fails closed). Keystone writes chain events only from `revoke_token(revoke_chain=True)`.
 */
function auditChainOf(info: TokenInfo): string | undefined {
  return info.auditIds[1] ?? info.auditIds[0];
}

/**
 * One event against one identity, with no index: the reference semantics (see the module comment).
 *
 * Deviations from Keystone's code, all wider: `domain_id` also matches the project's domain (Keystone's
 * `build_token_values` sets `assignment_domain_id` to it and then overwrites it with `None` for project-scoped
 * tokens; its own comments say the project's domain is meant), and `audit_chain_id` also matches an original
 * token (see `auditChainOf`). One narrower: Keystone compares `OS-OAUTH1:access_token_id` nowhere (an event with
 * it would match every access token), we require equality; Keystone writes no such event (consumer deletion
 * writes `consumer_id`).
 */
export function revocationEventMatches(event: RevocationEvent, info: TokenInfo): boolean {
  if (info.issuedAtMs > event.issuedBeforeMs) return false;
  if (event.auditId !== undefined && event.auditId !== info.auditIds[0]) return false;
  if (event.auditChainId !== undefined && event.auditChainId !== auditChainOf(info)) return false;
  if (
    event.userId !== undefined &&
    event.userId !== info.userId &&
    event.userId !== info.trustorUserId &&
    event.userId !== info.trusteeUserId
  ) {
    return false;
  }
  if (event.projectId !== undefined && event.projectId !== info.projectId) return false;
  if (event.trustId !== undefined && event.trustId !== info.trustId) return false;
  if (event.consumerId !== undefined && event.consumerId !== info.oauthConsumerId) return false;
  if (event.accessTokenId !== undefined && event.accessTokenId !== info.oauthAccessTokenId) return false;
  if (
    event.domainId !== undefined &&
    event.domainId !== info.userDomainId &&
    event.domainId !== info.projectDomainId &&
    event.domainId !== info.domainId
  ) {
    return false;
  }
  if (event.domainScopeId !== undefined && event.domainScopeId !== info.domainId) return false;
  if (event.expiresAtMs !== undefined && seconds(event.expiresAtMs) !== seconds(info.expiresAtMs)) {
    return false;
  }
  if (event.roleId !== undefined && !info.roleIds.includes(event.roleId)) return false;
  return true;
}

/** Index keys, most selective first: an event is filed under the first selector it carries. */
const SELECTORS = [
  'auditId',
  'auditChainId',
  'accessTokenId',
  'trustId',
  'consumerId',
  'userId',
  'expiresAtMs',
  'projectId',
  'domainScopeId',
  'roleId',
  'domainId',
] as const;
type Selector = (typeof SELECTORS)[number];
type Key = string | number;

function selectorOf(event: RevocationEvent): Selector | undefined {
  return SELECTORS.find((selector) => event[selector] !== undefined);
}

function keyOf(event: RevocationEvent, selector: Selector): Key {
  const value = event[selector] as Key;
  return selector === 'expiresAtMs' ? seconds(value as number) : value;
}

function contentKey(e: RevocationEvent): string {
  return JSON.stringify([
    e.issuedBeforeMs,
    e.revokedAtMs ?? null,
    e.userId ?? null,
    e.projectId ?? null,
    e.domainId ?? null,
    e.domainScopeId ?? null,
    e.roleId ?? null,
    e.auditId ?? null,
    e.auditChainId ?? null,
    e.expiresAtMs ?? null,
    e.trustId ?? null,
    e.consumerId ?? null,
    e.accessTokenId ?? null,
    e.unknownFields ?? null,
  ]);
}

/**
 * The known revocation events, indexed so that one check costs a few map look-ups whatever their number: each
 * event is filed under its most selective selector and value, and a check only evaluates the events filed under
 * the identity's own values (plus the rare events with no selector at all, which apply to every identity).
 */
export class RevocationIndex {
  readonly #byContent = new Map<string, RevocationEvent>();
  readonly #buckets = Object.fromEntries(SELECTORS.map((selector) => [selector, new Map()])) as Record<
    Selector,
    Map<Key, RevocationEvent[]>
  >;
  /** Events with `issued_before` only: they revoke every token issued before them. */
  #global: RevocationEvent[] = [];
  #maxIssuedBeforeMs = Number.NEGATIVE_INFINITY;
  #newestRevokedAtMs: number | undefined;

  /** Adds events not known yet (events have no id: equal content is the same event). Returns the new ones. */
  add(events: Iterable<RevocationEvent>): RevocationEvent[] {
    const added: RevocationEvent[] = [];
    for (const event of events) {
      const key = contentKey(event);
      if (this.#byContent.has(key)) continue;
      this.#byContent.set(key, event);
      this.#file(event);
      const revokedAtMs = event.revokedAtMs ?? event.issuedBeforeMs;
      if (this.#newestRevokedAtMs === undefined || revokedAtMs > this.#newestRevokedAtMs) {
        this.#newestRevokedAtMs = revokedAtMs;
      }
      added.push(event);
    }
    return added;
  }

  /** Whether Keystone would refuse this identity because of a known event. */
  isRevoked(info: TokenInfo): boolean {
    // Most identities were issued after every known event.
    if (info.issuedAtMs > this.#maxIssuedBeforeMs) return false;
    for (const event of this.#global) if (revocationEventMatches(event, info)) return true;
    const b = this.#buckets;
    return (
      this.#probe(b.auditId, info.auditIds[0], info) ||
      this.#probe(b.auditChainId, auditChainOf(info), info) ||
      this.#probe(b.accessTokenId, info.oauthAccessTokenId, info) ||
      this.#probe(b.trustId, info.trustId, info) ||
      this.#probe(b.consumerId, info.oauthConsumerId, info) ||
      this.#probe(b.userId, info.userId, info) ||
      (info.trustorUserId !== info.userId && this.#probe(b.userId, info.trustorUserId, info)) ||
      (info.trusteeUserId !== info.userId &&
        info.trusteeUserId !== info.trustorUserId &&
        this.#probe(b.userId, info.trusteeUserId, info)) ||
      this.#probe(b.expiresAtMs, seconds(info.expiresAtMs), info) ||
      this.#probe(b.projectId, info.projectId, info) ||
      this.#probe(b.domainScopeId, info.domainId, info) ||
      this.#probeAll(b.roleId, info.roleIds, info) ||
      this.#probe(b.domainId, info.userDomainId, info) ||
      (info.projectDomainId !== info.userDomainId && this.#probe(b.domainId, info.projectDomainId, info)) ||
      (info.domainId !== info.userDomainId &&
        info.domainId !== info.projectDomainId &&
        this.#probe(b.domainId, info.domainId, info))
    );
  }

  /**
   * Drops the events revoked before `revokedBeforeMs` (`revoked_at`, else `issued_before`), as Keystone prunes
   * its own after the token lifetime plus `[revoke] expiration_buffer`. Returns how many were dropped.
   */
  prune(revokedBeforeMs: number): number {
    const kept: RevocationEvent[] = [];
    let dropped = 0;
    for (const event of this.#byContent.values()) {
      if ((event.revokedAtMs ?? event.issuedBeforeMs) < revokedBeforeMs) dropped++;
      else kept.push(event);
    }
    if (dropped === 0) return 0;
    this.#byContent.clear();
    for (const map of Object.values(this.#buckets)) map.clear();
    this.#global = [];
    this.#maxIssuedBeforeMs = Number.NEGATIVE_INFINITY;
    for (const event of kept) {
      this.#byContent.set(contentKey(event), event);
      this.#file(event);
    }
    return dropped;
  }

  get size(): number {
    return this.#byContent.size;
  }

  /**
   * The latest `revoked_at` (else `issued_before`) ever added: a high-water mark that pruning does not lower, so
   * the next poll does not re-read what was pruned. Keystone's `since` is strict (`revoked_at > since`) and its
   * times are whole seconds, so an event revoked later within that same second would be missed with
   * `since` = this value: poll from a second or more before it and let `add` drop the overlap.
   */
  get newestRevokedAtMs(): number | undefined {
    return this.#newestRevokedAtMs;
  }

  #file(event: RevocationEvent): void {
    if (event.issuedBeforeMs > this.#maxIssuedBeforeMs) this.#maxIssuedBeforeMs = event.issuedBeforeMs;
    const selector = selectorOf(event);
    if (selector === undefined) {
      this.#global.push(event);
      return;
    }
    const map = this.#buckets[selector];
    const key = keyOf(event, selector);
    const bucket = map.get(key);
    if (bucket === undefined) map.set(key, [event]);
    else bucket.push(event);
  }

  #probe(map: Map<Key, RevocationEvent[]>, key: Key | undefined, info: TokenInfo): boolean {
    if (key === undefined || map.size === 0) return false;
    const bucket = map.get(key);
    if (bucket === undefined) return false;
    for (const event of bucket) if (revocationEventMatches(event, info)) return true;
    return false;
  }

  #probeAll(map: Map<Key, RevocationEvent[]>, keys: readonly string[], info: TokenInfo): boolean {
    if (map.size === 0) return false;
    for (const key of keys) if (this.#probe(map, key, info)) return true;
    return false;
  }
}
