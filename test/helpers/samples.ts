/** Reads ../shared/samples (recorded Keystone and keystonemiddleware exchanges) when present beside the repo. */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const SAMPLES_DIR = fileURLToPath(new URL('../../../shared/samples/', import.meta.url));

export function samplesAvailable(): boolean {
  return existsSync(`${SAMPLES_DIR}ksm`) && existsSync(`${SAMPLES_DIR}keystone`);
}

export interface Sample {
  note: string;
  request: { method: string; url: string; headers: Record<string, string>; body: unknown };
  response: { status: number; headers: Record<string, string>; body: unknown };
  analysis?: {
    injected: Record<string, string | null>;
    stripped_client_headers: string[];
    passed_through_unchanged?: string[];
  };
}

export function readSample(relative: string): Sample {
  return JSON.parse(readFileSync(`${SAMPLES_DIR}${relative}`, 'utf8')) as Sample;
}

/** The response body of a recorded Keystone exchange. */
export function sampleBody(relative: string): unknown {
  return readSample(relative).response.body;
}

export function listSamples(dir: 'ksm' | 'keystone'): string[] {
  return readdirSync(`${SAMPLES_DIR}${dir}`)
    .filter((name) => name.endsWith('.json'))
    .sort();
}
