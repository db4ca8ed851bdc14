/**
 * Keys and value protection for token entries in memcached, byte-compatible with keystonemiddleware's
 * auth_token cache (`_cache.py` and `_memcache_crypt.py`), so this proxy and Python services can share one
 * memcached fleet: both sides compute the same key for a token and can read each other's entries.
 *
 * - `None`: the key is `tokens/` + sha256 hex of the token; the value is stored as given.
 * - `MAC` / `ENCRYPT`: HMAC-SHA384(secret, token ‖ strategy label) is split in three 16-byte parts: the cache
 *   key (stored as `tokens/b'<base64>'`, see below), the MAC key and the AES-128 key. The stored value is
 *   base64(HMAC-SHA384(macKey, b64)) ‖ b64, where b64 is the base64 of the value (`MAC`) or of
 *   iv ‖ AES-128-CBC-PKCS#7(value) with a random iv (`ENCRYPT`).
 *
 * The label mixed into the key derivation is the option string exactly as keystonemiddleware was configured:
 * oslo.config checks `memcache_security_strategy` case-insensitively but hands the value on as written, and
 * keystonemiddleware encrypts only when it is spelled `ENCRYPT`. See `memcacheEntryKeys`.
 */
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  randomBytes,
  timingSafeEqual,
} from 'node:crypto';

/** keystonemiddleware's `memcache_security_strategy`, in its canonical spelling. */
export type MemcacheSecurityStrategy = 'None' | 'MAC' | 'ENCRYPT';

/** Everything needed to address and (un)protect one token's entry; derive once per lookup. */
export type MemcacheEntryKeys =
  | { readonly strategy: 'None'; readonly cacheKey: string }
  | {
      readonly strategy: 'MAC' | 'ENCRYPT';
      readonly cacheKey: string;
      readonly macKey: Buffer;
      readonly encryptionKey: Buffer;
    };

const KEY_PREFIX = 'tokens/';
const DIGEST = 'sha384';
/** SHA-384 is 48 bytes: three 16-byte keys. */
const PART_BYTES = 16;
/** Length of a base64-encoded SHA-384 digest, which prefixes every protected value. */
const SIGNATURE_CHARS = 64;
const IV_BYTES = 16;
const AES_BLOCK_BYTES = 16;
const CIPHER = 'aes-128-cbc';
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/**
 * Derives the memcached key (and, unless `None`, the MAC and encryption keys) for `token`.
 *
 * @param secret keystonemiddleware's `memcache_secret_key` as bytes (it encodes a string as UTF-8); required
 *   unless the strategy is `None`.
 * @param kdfLabel the strategy string mixed into the key derivation, exactly as the keystonemiddleware services
 *   sharing the cache spell their `memcache_security_strategy` (defaults to `strategy`). A service configured
 *   with `mac` derives different keys than one configured with `MAC`, and one configured with `encrypt` derives
 *   keys from `encrypt` but only MACs its entries: to share with it, pass strategy `MAC` and kdfLabel `encrypt`.
 * @throws TypeError when a secret is required and missing (a configuration error, caught at startup).
 */
export function memcacheEntryKeys(
  token: string,
  strategy: MemcacheSecurityStrategy,
  secret: Buffer | undefined,
  kdfLabel: string = strategy,
): MemcacheEntryKeys {
  const tokenBytes = Buffer.from(token, 'utf8');
  if (strategy === 'None') {
    return { strategy, cacheKey: KEY_PREFIX + createHash('sha256').update(tokenBytes).digest('hex') };
  }
  if (secret === undefined || secret.length === 0) {
    throw new TypeError(`memcache security strategy ${strategy} needs a secret key`);
  }
  const digest = createHmac(DIGEST, secret).update(tokenBytes).update(kdfLabel, 'utf8').digest();
  return {
    strategy,
    // keystonemiddleware formats the base64 *bytes* into its key template, so on Python 3 the key carries the
    // bytes repr: tokens/b'…'. Every Python 3 deployment uses that spelling, so we must too.
    cacheKey: `${KEY_PREFIX}b'${digest.subarray(0, PART_BYTES).toString('base64')}'`,
    macKey: digest.subarray(PART_BYTES, 2 * PART_BYTES),
    encryptionKey: digest.subarray(2 * PART_BYTES, 3 * PART_BYTES),
  };
}

function sign(macKey: Buffer, data: Buffer): Buffer {
  return Buffer.from(createHmac(DIGEST, macKey).update(data).digest('base64'), 'ascii');
}

/** The bytes to store for `plain` under `keys`; `ENCRYPT` output differs on every call (random iv). */
export function protectEntry(keys: MemcacheEntryKeys, plain: Buffer): Buffer {
  if (keys.strategy === 'None') {
    return plain;
  }
  let payload = plain;
  if (keys.strategy === 'ENCRYPT') {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv(CIPHER, keys.encryptionKey, iv);
    payload = Buffer.concat([iv, cipher.update(plain), cipher.final()]);
  }
  const encoded = Buffer.from(payload.toString('base64'), 'ascii');
  return Buffer.concat([sign(keys.macKey, encoded), encoded]);
}

/**
 * The plain value from stored bytes, or `undefined` when they do not verify: too short, wrong MAC (tampered,
 * another token's entry, another secret or strategy), malformed base64, or bad ciphertext or padding. Never
 * throws, so a corrupt entry is just a miss.
 */
export function unprotectEntry(keys: MemcacheEntryKeys, stored: Buffer): Buffer | undefined {
  if (keys.strategy === 'None') {
    return stored;
  }
  if (stored.length < SIGNATURE_CHARS) {
    return undefined;
  }
  const provided = stored.subarray(0, SIGNATURE_CHARS);
  const encoded = stored.subarray(SIGNATURE_CHARS);
  if (!timingSafeEqual(provided, sign(keys.macKey, encoded))) {
    return undefined;
  }
  const text = encoded.toString('latin1');
  if (text.length % 4 !== 0 || !BASE64.test(text)) {
    return undefined;
  }
  const payload = Buffer.from(text, 'base64');
  if (keys.strategy === 'MAC') {
    return payload;
  }
  if (payload.length < IV_BYTES + AES_BLOCK_BYTES || (payload.length - IV_BYTES) % AES_BLOCK_BYTES !== 0) {
    return undefined;
  }
  try {
    const decipher = createDecipheriv(CIPHER, keys.encryptionKey, payload.subarray(0, IV_BYTES));
    return Buffer.concat([decipher.update(payload.subarray(IV_BYTES)), decipher.final()]);
  } catch {
    return undefined;
  }
}
