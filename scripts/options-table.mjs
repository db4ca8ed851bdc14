// Prints the README's configuration reference tables from the schemas (run after `npm run build`).
import { describeAuthOptions } from '../dist/config/auth-options.js';
import { describeProxyConfig } from '../dist/config/proxy-config.js';

const code = (value) => (value === '' ? '' : `\`${value}\``);
const which = process.argv[2] ?? 'all';
if (which === 'all' || which === 'file') {
  console.log('| key | default | meaning |');
  console.log('|---|---|---|');
  for (const row of describeProxyConfig())
    console.log(`| \`${row.path}\` | ${code(row.default)} | ${row.description} |`);
  console.log();
}
if (which === 'all' || which === 'keystone_authtoken') {
  console.log('| option | default | meaning |');
  console.log('|---|---|---|');
  for (const row of describeAuthOptions())
    console.log(`| \`${row.name}\` | ${code(row.default)} | ${row.description} |`);
}
