/** Resident memory of a process (Linux /proc), for tests that check the proxy streams instead of buffering. */
import { readFileSync } from 'node:fs';

export function rssKb(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
}

/**
 * The highest RSS (MB) of `pid` while `work` runs, sampled every 10 ms. RSS swings by ±15 MB with garbage
 * collection, so tests compare peaks, not single samples.
 */
export async function peakRssMb(pid: number, work: () => Promise<void>): Promise<number> {
  let max = rssKb(pid);
  const sampler = setInterval(() => {
    max = Math.max(max, rssKb(pid));
  }, 10);
  try {
    await work();
  } finally {
    clearInterval(sampler);
  }
  return Math.max(max, rssKb(pid)) / 1024;
}
