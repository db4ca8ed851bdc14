/** What the benchmarks read from one `wrk --latency` run's report. */
export interface WrkOutput {
  requests: number;
  rps: number;
  p50ms: number;
  p99ms: number;
  non2xx: number;
  /** connect + read + write + timeout socket errors. */
  errors: number;
}

/** A wrk duration (`812.00us`, `1.20ms`, `2.01s`) in milliseconds; NaN when absent. */
function ms(text: string | undefined): number {
  const match = /([\d.]+)(us|ms|s)/.exec(text ?? '');
  if (!match) return Number.NaN;
  const value = Number(match[1]);
  return match[2] === 'us' ? value / 1000 : match[2] === 's' ? value * 1000 : value;
}

export function parseWrkOutput(stdout: string): WrkOutput {
  const errors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(stdout);
  return {
    requests: Number(/(\d+) requests in/.exec(stdout)?.[1]),
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(stdout)?.[1]),
    p50ms: ms(/^\s*50(?:\.0+)?%\s+(\S+)/m.exec(stdout)?.[1]),
    p99ms: ms(/^\s*99(?:\.0+)?%\s+(\S+)/m.exec(stdout)?.[1]),
    non2xx: Number(/Non-2xx or 3xx responses: (\d+)/.exec(stdout)?.[1] ?? 0),
    errors: errors ? errors.slice(1).reduce((a, b) => a + Number(b), 0) : 0,
  };
}
