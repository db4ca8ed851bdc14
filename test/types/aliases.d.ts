// The adapters are tested against both majors; the older ones are installed under alias names.
declare module 'express4' {
  import express from 'express';
  export default express;
}
declare module 'koa2' {
  import Koa from 'koa';
  export default Koa;
}
// oidc-provider ships no types; the tests use a small part of it (test/helpers/oauth2-server.ts).
declare module 'oidc-provider' {
  // biome-ignore lint/suspicious/noExplicitAny: untyped package, used by one test helper
  const Provider: any;
  export default Provider;
}
