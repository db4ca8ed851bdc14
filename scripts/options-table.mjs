// Prints the README's option reference table from the one schema (run after `npm run build`).
import { describeAuthOptions } from '../dist/config/auth-options.js';

console.log('| option | default | meaning |');
console.log('|---|---|---|');
for (const { name, default: value, description } of describeAuthOptions()) {
  console.log(`| \`${name}\` | ${value === '' ? '' : `\`${value}\``} | ${description} |`);
}
