import { describe, expect, it } from 'vitest';
import { CircuitBreaker, type CircuitState } from '../../../src/keystone/breaker.js';

function setup(failureThreshold = 3, openMs = 1_000) {
  let t = 0;
  const changes: CircuitState[] = [];
  const breaker = new CircuitBreaker({
    failureThreshold,
    openMs,
    now: () => t,
    onChange: (s) => changes.push(s),
  });
  return { breaker, changes, advance: (ms: number) => (t += ms) };
}

describe('CircuitBreaker', () => {
  it('opens after the threshold of consecutive failures, and fails fast while open', () => {
    const { breaker, changes, advance } = setup();
    for (let i = 0; i < 2; i++) breaker.failure(false);
    expect(breaker.admit()).toEqual({ allowed: true, probe: false });
    breaker.failure(false);
    expect(breaker.state).toBe('open');
    advance(400);
    expect(breaker.admit()).toEqual({ allowed: false, retryAfterMs: 600 });
    expect(changes).toEqual(['open']);
  });

  it('a success in between resets the count', () => {
    const { breaker } = setup();
    breaker.failure(false);
    breaker.failure(false);
    breaker.success(false);
    breaker.failure(false);
    breaker.failure(false);
    expect(breaker.state).toBe('closed');
  });

  it('half-open after the open period: one probe; success closes', () => {
    const { breaker, changes, advance } = setup();
    for (let i = 0; i < 3; i++) breaker.failure(false);
    advance(1_000);
    expect(breaker.admit()).toEqual({ allowed: true, probe: true });
    expect(breaker.admit().allowed).toBe(false);
    breaker.success(true);
    expect(breaker.state).toBe('closed');
    expect(breaker.admit()).toEqual({ allowed: true, probe: false });
    expect(changes).toEqual(['open', 'half_open', 'closed']);
  });

  it('a failed probe opens it again for a full period', () => {
    const { breaker, advance } = setup();
    for (let i = 0; i < 3; i++) breaker.failure(false);
    advance(1_000);
    expect(breaker.admit()).toMatchObject({ allowed: true, probe: true });
    breaker.failure(true);
    expect(breaker.state).toBe('open');
    advance(999);
    expect(breaker.admit().allowed).toBe(false);
    advance(1);
    expect(breaker.admit()).toMatchObject({ allowed: true, probe: true });
  });

  it('threshold 0 disables it', () => {
    const { breaker } = setup(0);
    for (let i = 0; i < 100; i++) breaker.failure(false);
    expect(breaker.state).toBe('closed');
    expect(breaker.admit().allowed).toBe(true);
  });
});
