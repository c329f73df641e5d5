// A second, independent OpenID Connect provider for devicegate's tests: `oauth2-mock-server`
// (npm, axa-group) dressed as a Keycloak realm, so the device flow is also proven against an IdP
// that differs from oidc-provider (tests/idp/) in every place a gateway might have assumed:
//
//   - the issuer has a path (IDP_ISSUER=http://localhost:8080/realms/demo): discovery is at
//     <issuer>/.well-known/openid-configuration (also .../oauth-authorization-server, as Keycloak
//     has; nothing at the RFC 8414 root-inserted path) and every endpoint lives under the issuer's
//     path, on Keycloak's paths: <issuer>/protocol/openid-connect/{auth,token,certs,userinfo,
//     logout,revoke,token/introspect} (IDP_LAYOUT=flat: the mock's own /authorize, /token, /jwks,
//     /userinfo, /revoke, /endsession, /introspect, still under the issuer's path);
//   - ID tokens are signed with IDP_ALG (RS256, ES256, EdDSA, ...; the JWKS also carries a
//     Keycloak-style `use: enc` RSA-OAEP key that must be ignored);
//   - access tokens are JWTs (`typ: at+jwt`), refresh tokens are UUIDs and rotate on use, token
//     responses carry Keycloak's extra fields (refresh_expires_in, session_state,
//     not-before-policy), the authorization response carries `iss` (RFC 9207) and session_state;
//   - there is no login page: the authorization endpoint signs IDP_SUBJECT in at once and
//     redirects back (IDP_LOGIN=deny: it answers error=access_denied instead).
//
// oauth2-mock-server accepts almost anything by itself (any code, any refresh token, any client,
// PKCE optional, no nonce binding beyond the code), so this wrapper makes it behave like a real
// IdP: registered clients and redirect URIs only, client secrets checked (client_secret_basic or
// client_secret_post), PKCE S256 required, codes single-use, bound to client and redirect URI and
// valid 60 s, refresh tokens bound to their client, ID tokens with aud = azp = client_id, the
// authorization request's nonce, iss = IDP_ISSUER exactly, and the user's claims for the scopes.
// OAuth errors are the RFC 6749 JSON shape (invalid_client 401, invalid_grant 400, ...).
//
// Environment (as tests/idp/idp.js, plus the last five):
//   IDP_ISSUER   issuer URL, e.g. http://localhost:8080/realms/demo (required; used verbatim as iss)
//   IDP_PORT     port to listen on at 127.0.0.1 (0 = any free port)
//   IDP_CLIENTS  JSON list of {client_id, client_secret?, redirect_uris}
//   IDP_ALG      ID token (and access token) algorithm: RS256 (default) | ES256 | EdDSA, or any of
//                RS384 RS512 PS256 PS384 PS512 ES384 ES512 Ed25519
//   IDP_SUBJECT  `sub` of the user the authorization endpoint signs in (default demo-user)
//   IDP_LAYOUT   keycloak (default) | flat
//   IDP_OMIT     comma-separated discovery keys to leave out, e.g. end_session_endpoint
//   IDP_LOGIN    approve (default) | deny
//   IDP_SESSION_AGE  seconds since the user's single sign-on session began (default 0): the
//                authorization endpoint reuses that session whatever `max_age` asks, as an IdP
//                that does not implement max_age does, so ID tokens state that old auth_time
//
// Prints one line `IDP_READY <port>` when it listens; logs one line per request on stderr.
//
//   npm ci --prefix tests/idp2
//   IDP_ISSUER=http://localhost:8280/realms/demo IDP_PORT=3200 IDP_ALG=ES256 \
//   IDP_CLIENTS='[{"client_id":"tv-app","redirect_uris":["http://localhost:8280/device/callback"]}]' \
//     node tests/idp2/idp.js
import http from 'node:http';
import { createHash, generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { OAuth2Issuer, OAuth2Service } from 'oauth2-mock-server';

const fail = (msg) => {
  console.error(msg);
  process.exit(2);
};

const issuerId = process.env.IDP_ISSUER;
if (!issuerId) fail('IDP_ISSUER is required');
let issuerUrl;
try {
  issuerUrl = new URL(issuerId);
} catch {
  fail(`IDP_ISSUER is not a URL: ${issuerId}`);
}
const prefix = issuerUrl.pathname.replace(/\/+$/, '');
const port = Number(process.env.IDP_PORT || 0);
const alg = process.env.IDP_ALG || 'RS256';
const ALGS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'];
if (!ALGS.includes(alg)) fail(`IDP_ALG must be one of ${ALGS.join(', ')}`);
const subject = process.env.IDP_SUBJECT || 'demo-user';
const layout = process.env.IDP_LAYOUT || 'keycloak';
if (!['keycloak', 'flat'].includes(layout)) fail('IDP_LAYOUT must be keycloak or flat');
const omit = (process.env.IDP_OMIT || '').split(',').map((s) => s.trim()).filter(Boolean);
const login = process.env.IDP_LOGIN || 'approve';
const sessionAge = Number(process.env.IDP_SESSION_AGE || 0);
if (!Number.isInteger(sessionAge) || sessionAge < 0) fail('IDP_SESSION_AGE must be a number of seconds');
if (!['approve', 'deny'].includes(login)) fail('IDP_LOGIN must be approve or deny');
const clients = new Map(JSON.parse(process.env.IDP_CLIENTS || '[]').map((c) => [c.client_id, c]));

const CODE_TTL = 60;
const REFRESH_TTL = 1800;
const SCOPES = ['openid', 'profile', 'email', 'offline_access'];

// Endpoint paths relative to the issuer (the mock joins them to the issuer URL in discovery; the
// server below strips the issuer's path before the mock routes a request).
const endpoints = layout === 'keycloak'
  ? {
    wellKnownDocument: '/.well-known/openid-configuration',
    authorize: '/protocol/openid-connect/auth',
    token: '/protocol/openid-connect/token',
    jwks: '/protocol/openid-connect/certs',
    userinfo: '/protocol/openid-connect/userinfo',
    revoke: '/protocol/openid-connect/revoke',
    endSession: '/protocol/openid-connect/logout',
    introspect: '/protocol/openid-connect/token/introspect',
  }
  : {
    wellKnownDocument: '/.well-known/openid-configuration',
    authorize: '/authorize',
    token: '/token',
    jwks: '/jwks',
    userinfo: '/userinfo',
    revoke: '/revoke',
    endSession: '/endsession',
    introspect: '/introspect',
  };

const issuer = new OAuth2Issuer();
issuer.url = issuerId;
const signingKey = await issuer.keys.generate(alg);
// Keycloak's realm JWKS also lists an encryption key; a client must pick the signing key by kid.
const encKey = {
  ...generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ format: 'jwk' }),
  kid: randomBytes(16).toString('base64url'),
  use: 'enc',
  alg: 'RSA-OAEP',
};
const service = new OAuth2Service(issuer, endpoints);

const codes = new Map(); // code -> authorization record
const refreshTokens = new Map(); // refresh token -> session record
const accessTokens = new Map(); // access token -> session record
const now = () => Math.floor(Date.now() / 1000);

const userClaims = (scope) => {
  const s = scope.split(' ');
  return {
    ...(s.includes('profile') ? { name: `User ${subject}`, preferred_username: subject } : {}),
    ...(s.includes('email') ? { email: `${subject}@example.test`, email_verified: true } : {}),
  };
};

function send(res, status, body, headers = {}) {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': typeof body === 'string' ? 'text/html; charset=utf-8' : 'application/json',
    'Cache-Control': 'no-store',
    ...headers,
  });
  res.end(text);
}

const oauthError = (status, error, description, headers) => ({ status, error, description, headers });

function redirectError(res, redirectUri, error, description, state) {
  const url = new URL(redirectUri);
  url.searchParams.set('error', error);
  url.searchParams.set('error_description', description);
  if (state) url.searchParams.set('state', state);
  url.searchParams.set('iss', issuerId);
  res.writeHead(302, { Location: url.href });
  res.end();
}

const s256 = (verifier) => createHash('sha256').update(verifier).digest('base64url');

// --- Authorization endpoint: checks before the mock issues a code. ---------------------------
function authorize(req, res, q) {
  const client = clients.get(q.get('client_id'));
  if (!client) return send(res, 400, '<h1>Invalid client</h1><p>Unknown client_id.</p>'), true;
  const redirectUri = q.get('redirect_uri');
  if (!client.redirect_uris?.includes(redirectUri)) {
    return send(res, 400, '<h1>Invalid parameter: redirect_uri</h1>'), true;
  }
  const state = q.get('state') || undefined;
  if (q.get('response_type') !== 'code') {
    return redirectError(res, redirectUri, 'unsupported_response_type', 'only code is supported', state), true;
  }
  const scope = (q.get('scope') || '').split(' ').filter(Boolean);
  if (!scope.includes('openid')) {
    return redirectError(res, redirectUri, 'invalid_scope', 'openid is required', state), true;
  }
  const unknown = scope.filter((s) => !SCOPES.includes(s));
  if (unknown.length) {
    return redirectError(res, redirectUri, 'invalid_scope', `unknown scope: ${unknown.join(' ')}`, state), true;
  }
  const challenge = q.get('code_challenge');
  if (q.get('code_challenge_method') !== 'S256' || !/^[A-Za-z0-9_-]{43}$/.test(challenge || '')) {
    return redirectError(res, redirectUri, 'invalid_request', 'PKCE with code_challenge_method=S256 is required', state), true;
  }
  if (login === 'deny') {
    return redirectError(res, redirectUri, 'access_denied', 'the user refused', state), true;
  }
  req.idp2 = {
    client_id: client.client_id,
    redirect_uri: redirectUri,
    scope: scope.join(' '),
    nonce: q.get('nonce') || undefined,
    challenge,
    sid: randomUUID(),
    auth_time: now() - sessionAge,
  };
  return false;
}

service.on('beforeAuthorizeRedirect', (redirect, req) => {
  const code = redirect.url.searchParams.get('code');
  if (code && req.idp2) {
    codes.set(code, { ...req.idp2, expires: now() + CODE_TTL });
    redirect.url.searchParams.set('session_state', req.idp2.sid);
  }
  redirect.url.searchParams.set('iss', issuerId);
});

// --- Token endpoint: client authentication and grant checks before the mock builds tokens. -----
function basicCredentials(header) {
  const m = /^Basic\s+(\S+)$/i.exec(header || '');
  if (!m) return undefined;
  const text = Buffer.from(m[1], 'base64').toString('utf8');
  const i = text.indexOf(':');
  if (i < 0) return undefined;
  const dec = (s) => {
    try {
      return decodeURIComponent(s.replace(/\+/g, ' '));
    } catch {
      return s;
    }
  };
  return { id: dec(text.slice(0, i)), secret: dec(text.slice(i + 1)) };
}

function checkTokenRequest(req, body) {
  const one = (k) => (Array.isArray(body[k]) ? null : body[k]);
  for (const k of Object.keys(body)) {
    if (Array.isArray(body[k])) return oauthError(400, 'invalid_request', `${k} repeated`);
  }
  const basic = basicCredentials(req.headers.authorization);
  if (basic && body.client_secret !== undefined) {
    return oauthError(400, 'invalid_request', 'more than one client authentication method');
  }
  const clientId = basic ? basic.id : one('client_id');
  const secret = basic ? basic.secret : one('client_secret');
  const client = clients.get(clientId);
  const unauthorized = oauthError(401, 'invalid_client', 'client authentication failed',
    basic ? { 'WWW-Authenticate': 'Basic realm="idp2"' } : {});
  if (!client) return unauthorized;
  if (client.client_secret && secret !== client.client_secret) return unauthorized;
  if (basic && body.client_id !== undefined && body.client_id !== clientId) {
    return oauthError(400, 'invalid_request', 'client_id does not match the credentials');
  }
  switch (body.grant_type) {
    case 'authorization_code': {
      const rec = codes.get(body.code);
      codes.delete(body.code); // single use, whatever happens next
      if (!rec || rec.expires < now() || rec.client_id !== clientId) {
        return oauthError(400, 'invalid_grant', 'code not valid');
      }
      if (body.redirect_uri !== rec.redirect_uri) {
        return oauthError(400, 'invalid_grant', 'incorrect redirect_uri');
      }
      if (typeof body.code_verifier !== 'string' || s256(body.code_verifier) !== rec.challenge) {
        return oauthError(400, 'invalid_grant', 'PKCE verification failed');
      }
      return { grant: 'authorization_code', client_id: clientId, sub: subject, scope: rec.scope, nonce: rec.nonce, sid: rec.sid, auth_time: rec.auth_time };
    }
    case 'refresh_token': {
      const rec = refreshTokens.get(body.refresh_token);
      if (!rec || rec.expires < now() || rec.client_id !== clientId) {
        return oauthError(400, 'invalid_grant', 'refresh token not valid');
      }
      refreshTokens.delete(body.refresh_token); // rotation: the old one is spent
      let { scope } = rec;
      if (body.scope !== undefined) {
        const asked = body.scope.split(' ').filter(Boolean);
        if (asked.some((s) => !rec.scope.split(' ').includes(s))) {
          return oauthError(400, 'invalid_scope', 'scope exceeds the original grant');
        }
        scope = asked.join(' ');
      }
      return { grant: 'refresh_token', client_id: clientId, sub: rec.sub, scope, sid: rec.sid, auth_time: rec.auth_time };
    }
    default:
      return oauthError(400, 'unsupported_grant_type', `grant_type ${body.grant_type} is not supported`);
  }
}

service.on('beforeTokenSigning', (token, req) => {
  const ctx = req.idp2;
  if (!ctx) return;
  const common = { sub: ctx.sub, azp: ctx.client_id, sid: ctx.sid, jti: randomUUID() };
  if ('scope' in token.payload) {
    // The access token (RFC 9068 shape).
    token.header.typ = 'at+jwt';
    Object.assign(token.payload, common, { aud: ctx.client_id, client_id: ctx.client_id, scope: ctx.scope, typ: 'Bearer' });
    delete token.payload.nonce;
  } else {
    // The ID token: iss is the issuer verbatim (set by the mock), aud = azp = client_id, the
    // authorization request's nonce (code grant only), auth_time, and the scopes' claims.
    Object.assign(token.payload, common, { aud: ctx.client_id, auth_time: ctx.auth_time, typ: 'ID', ...userClaims(ctx.scope) });
    if (ctx.grant === 'authorization_code' && ctx.nonce !== undefined) token.payload.nonce = ctx.nonce;
    else delete token.payload.nonce;
  }
});

service.on('beforeResponse', (response, req) => {
  const ctx = req.idp2;
  if (!ctx || response.statusCode !== 200) return;
  const b = response.body;
  b.scope = ctx.scope;
  const session = { client_id: ctx.client_id, sub: ctx.sub, scope: ctx.scope, sid: ctx.sid, auth_time: ctx.auth_time };
  refreshTokens.set(b.refresh_token, { ...session, expires: now() + REFRESH_TTL });
  accessTokens.set(b.access_token, { ...session, expires: now() + b.expires_in });
  Object.assign(b, { refresh_expires_in: REFRESH_TTL, 'not-before-policy': 0, session_state: ctx.sid });
});

service.on('beforeUserinfo', (response, req) => {
  if (req.idp2) response.body = { sub: req.idp2.sub, ...userClaims(req.idp2.scope) };
});

// --- Discovery: the mock's document, corrected to what this server really does. --------------
function discoveryDocument(req) {
  let doc;
  service.openidConfigurationHandler(req, { json: (d) => { doc = d; } });
  Object.assign(doc, {
    grant_types_supported: ['authorization_code', 'refresh_token'],
    token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post', 'none'],
    id_token_signing_alg_values_supported: [alg],
    code_challenge_methods_supported: ['S256'],
    scopes_supported: SCOPES,
    claims_supported: ['sub', 'iss', 'aud', 'exp', 'iat', 'auth_time', 'nonce', 'azp', 'sid', 'name', 'preferred_username', 'email', 'email_verified'],
    authorization_response_iss_parameter_supported: true,
  });
  delete doc.token_endpoint_auth_signing_alg_values_supported;
  for (const k of omit) delete doc[k];
  return doc;
}

async function readForm(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const out = {};
  for (const [k, v] of new URLSearchParams(Buffer.concat(chunks).toString('utf8'))) {
    if (k in out) out[k] = [].concat(out[k], v);
    else out[k] = v;
  }
  return out;
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://idp.invalid');
  res.on('finish', () => console.error(`idp2 ${req.method} ${url.pathname} -> ${res.statusCode}`));
  let path = url.pathname;
  if (prefix) {
    if (path !== prefix && !path.startsWith(`${prefix}/`)) return send(res, 404, { error: 'not_found' });
    path = path.slice(prefix.length) || '/';
  }
  // Only the exact endpoint paths reach the mock (its router ignores case and trailing slashes,
  // and would skip the checks below for `/token/`).
  const known = [...Object.values(endpoints), '/.well-known/oauth-authorization-server'];
  if (!known.includes(path)) return send(res, 404, { error: 'not_found' });
  req.url = path + url.search;
  const { method } = req;
  if (method === 'GET' && (path === endpoints.wellKnownDocument || path === '/.well-known/oauth-authorization-server')) {
    return send(res, 200, discoveryDocument(req), { 'Cache-Control': 'public, max-age=60', 'Access-Control-Allow-Origin': '*' });
  }
  if (method === 'GET' && path === endpoints.jwks) {
    const keys = issuer.keys.toJSON().map((k) => ({ ...k, use: 'sig' }));
    return send(res, 200, { keys: [...keys, encKey] }, { 'Cache-Control': 'no-cache' });
  }
  if (method === 'GET' && path === endpoints.authorize && authorize(req, res, url.searchParams)) return undefined;
  if (method === 'POST' && path === endpoints.token) {
    if (!/^application\/x-www-form-urlencoded\b/i.test(req.headers['content-type'] || '')) {
      return send(res, 400, { error: 'invalid_request', error_description: 'form body required' });
    }
    const body = await readForm(req);
    req.body = body; // the mock's body parsers see a consumed stream and keep this
    const ctx = checkTokenRequest(req, body);
    if (ctx.error) {
      return send(res, ctx.status, { error: ctx.error, error_description: ctx.description }, { Pragma: 'no-cache', ...ctx.headers });
    }
    req.idp2 = ctx;
  }
  if ((method === 'GET' || method === 'POST') && path === endpoints.userinfo) {
    const bearer = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization || '')?.[1];
    const rec = bearer && accessTokens.get(bearer);
    if (!rec || rec.expires < now()) {
      return send(res, 401, { error: 'invalid_token' }, { 'WWW-Authenticate': 'Bearer error="invalid_token"' });
    }
    req.idp2 = rec;
    req.method = 'GET'; // the mock routes GET only
  }
  return service.requestHandler(req, res);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    console.error('idp2 error', err);
    if (!res.headersSent) send(res, 500, { error: 'server_error' });
  });
});
server.listen(port, '127.0.0.1', () => {
  console.log(`IDP_READY ${server.address().port}`);
});
console.error(`idp2 issuer ${issuerId} alg ${alg} kid ${signingKey.kid} layout ${layout}`);
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { server.close(); process.exit(0); });
}
