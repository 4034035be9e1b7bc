// A real OpenID provider for Postern's end-to-end tests: the `oidc-provider` package (a
// certified implementation we did not write) with its in-memory adapter and its built-in
// development login form. Everything test-specific lives in the JSON config the fixture
// writes (issuer, port, clients, accounts, signing key) and in a small control API under
// /__control/ that only answers with the config's control token.
//
// Usage: node idp.mjs CONFIG.json
//
// Control API (header `x-control-token: <controlToken>`, JSON bodies):
//   POST /__control/tamper   {"idToken": "..."}            next token response carries it
//                            {"claims": {...}, "drop": []} next ID token re-signed with these
//                                                          claims changed/removed
//   GET  /__control/last     {"idToken", "claims"} of the last token response (as issued)
//   POST /__control/accounts [{id, email, ...}]            add or replace accounts
//   GET  /__control/stats    {"tokenRequests": n}
import { readFileSync } from 'node:fs';
import https from 'node:https';

import * as jose from 'jose';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = new Map(config.accounts.map((a) => [a.id, a]));
const signingKey = await jose.importJWK(config.jwk, config.jwk.alg || 'RS256');

const state = { tamper: null, last: null, tokenRequests: 0 };

function claimsOf(account) {
  const claims = { sub: account.id };
  for (const k of ['email', 'email_verified', 'groups', 'name']) {
    if (account[k] !== undefined) claims[k] = account[k];
  }
  return claims;
}

const provider = new Provider(config.issuer, {
  clients: config.clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: c.redirect_uris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: c.client_secret
      ? (c.token_endpoint_auth_method || 'client_secret_basic') : 'none',
  })),
  jwks: { keys: [config.jwk] },
  cookies: { keys: [config.cookieKey] },
  // `groups` is always released (as many corporate IdPs do with a groups mapper).
  claims: {
    openid: ['sub', 'groups'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  // Scope claims go into the ID token itself, which is what the relying party reads.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  async findAccount(_ctx, id) {
    const account = accounts.get(id);
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() { return claimsOf(account); },
    };
  },
});

function controlAllowed(ctx) {
  return ctx.get('x-control-token') === config.controlToken;
}

async function readJson(ctx) {
  const chunks = [];
  for await (const c of ctx.req) chunks.push(c);
  return JSON.parse(Buffer.concat(chunks).toString('utf8') || 'null');
}

async function tamperedToken(original, tamper) {
  if (tamper.idToken) return tamper.idToken;
  const header = jose.decodeProtectedHeader(original);
  const claims = { ...jose.decodeJwt(original), ...(tamper.claims || {}) };
  for (const k of tamper.drop || []) delete claims[k];
  return new jose.SignJWT(claims).setProtectedHeader(header).sign(signingKey);
}

provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/__control/')) {
    if (!controlAllowed(ctx)) {
      ctx.status = 403;
      ctx.body = { error: 'bad control token' };
      return;
    }
    const route = `${ctx.method} ${ctx.path}`;
    if (route === 'POST /__control/tamper') {
      state.tamper = await readJson(ctx);
      ctx.body = { ok: true };
    } else if (route === 'GET /__control/last') {
      ctx.body = state.last || {};
    } else if (route === 'POST /__control/accounts') {
      for (const a of await readJson(ctx)) accounts.set(a.id, a);
      ctx.body = { ok: true };
    } else if (route === 'GET /__control/stats') {
      ctx.body = { tokenRequests: state.tokenRequests };
    } else {
      ctx.status = 404;
      ctx.body = { error: 'no such control route' };
    }
    return;
  }

  await next();

  if (ctx.method === 'POST' && ctx.path === '/token') {
    state.tokenRequests += 1;
    if (ctx.status === 200 && ctx.body && ctx.body.id_token) {
      const original = ctx.body.id_token;
      state.last = { idToken: original, claims: jose.decodeJwt(original) };
      if (state.tamper) {
        const tamper = state.tamper;
        state.tamper = null;
        ctx.body = { ...ctx.body, id_token: await tamperedToken(original, tamper) };
      }
    }
  }
});

provider.on('server_error', (_ctx, err) => console.error('idp server_error', err));

// With `tls: {cert, key}` (PEM file paths) the provider serves https, for a provider behind
// a private CA; otherwise plain http on loopback.
const listening = () => console.log(`idp listening on ${config.issuer}`);
const server = config.tls
  ? https
      .createServer(
        { cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) },
        provider.callback(),
      )
      .listen(config.port, '127.0.0.1', listening)
  : provider.listen(config.port, '127.0.0.1', listening);

function stop() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
