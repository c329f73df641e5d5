// A real OpenID Connect provider (the `oidc-provider` npm package) for devicegate's tests and
// demo. It plays the organisation's existing IdP: it has no device flow of its own enabled, and
// devicegate sits in front of it at the issuer's public origin.
//
// Environment:
//   IDP_ISSUER   issuer URL (the gateway's public URL), e.g. http://localhost:8080, or with a
//                path (http://localhost:8080/oidc: served under that path only)
//   IDP_PORT     port to listen on at 127.0.0.1 (0 = any free port)
//   IDP_CLIENTS  JSON list of {client_id, client_secret?, redirect_uris}
//   IDP_ENDPOINTS_PORT  a second port: AWS Cognito's layout. The issuer's origin keeps
//                discovery and the JWKS; the authorization, token, userinfo, revocation and
//                end-session endpoints are served on http://127.0.0.1:<this port> only (404 on
//                the issuer's origin), and discovery names them there.
//   IDP_DISCOVERY_PATH  Azure AD B2C's layout: the discovery document is served at this path
//                (e.g. /tenant.onmicrosoft.com/B2C_1_signin/v2.0/.well-known/openid-configuration)
//                and not at the issuer's well-known path (404 there). Give IDP_ISSUER a trailing
//                slash, as B2C's issuers have.
//   IDP_DEVICE_FLOW  "1" turns on oidc-provider's own device flow (features.deviceFlow, endpoint
//                /device/auth) and lets every client use the device_code grant, with a larger
//                in-memory store (the default one keeps only 1000 entries, ~500 pending device
//                codes). Only the benchmarks use it (benches/, as the peer devicegate is compared
//                with); unset, the IdP behaves as the tests and the demo expect: no device flow.
//
// Prints one line `IDP_READY <port>` when it listens. Any user name and password log in
// (oidc-provider's development login pages). Test accounts, for devicegate's policies:
//   groups   every account is in `staff`; one whose name starts with `admin` is also in
//            `tv-admins` (a claim of the openid scope, served by userinfo)
//   acr      a login whose name starts with `mfa` authenticates with ACR_MFA, any other with
//            ACR_PWD (the ID token's `acr`, also when `acr_values` asks for another)
import http from 'node:http';
import Provider from 'oidc-provider';

const issuer = process.env.IDP_ISSUER;
if (!issuer) {
  console.error('IDP_ISSUER is required');
  process.exit(2);
}
const port = Number(process.env.IDP_PORT || 0);
const deviceFlow = process.env.IDP_DEVICE_FLOW === '1';
// oidc-provider's own memory adapter over a store with room for 2M entries instead of 1000 (a
// pending device code takes two: the code and its user-code index). Loaded only with
// IDP_DEVICE_FLOW=1, so the tests never depend on these internal module paths.
async function bigMemoryAdapter() {
  const { default: MemoryAdapter } = await import('oidc-provider/lib/adapters/memory_adapter.js');
  const { default: LRU } = await import('oidc-provider/lib/helpers/lru.js');
  const store = new LRU({ maxSize: 2_000_000 });
  return (model) => new MemoryAdapter(model, store);
}
const ACR_PWD = 'urn:devicegate:test:pwd';
const ACR_MFA = 'urn:devicegate:test:mfa';
const clients = JSON.parse(process.env.IDP_CLIENTS || '[]').map((c) => ({
  client_id: c.client_id,
  ...(c.client_secret
    ? { client_secret: c.client_secret, token_endpoint_auth_method: 'client_secret_basic' }
    : { token_endpoint_auth_method: 'none' }),
  redirect_uris: c.redirect_uris,
  grant_types: ['authorization_code', 'refresh_token',
    ...(deviceFlow ? ['urn:ietf:params:oauth:grant-type:device_code'] : [])],
  response_types: ['code'],
}));

const provider = new Provider(issuer, {
  clients,
  cookies: { keys: ['devicegate-test-cookie-key'] },
  claims: {
    openid: ['sub', 'groups'],
    profile: ['name'],
    email: ['email', 'email_verified'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  acrValues: [ACR_PWD, ACR_MFA],
  features: { devInteractions: { enabled: true }, deviceFlow: { enabled: deviceFlow } },
  ...(deviceFlow ? { adapter: await bigMemoryAdapter() } : {}),
  pkce: { required: () => true },
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        const groups = sub.startsWith('admin') ? ['staff', 'tv-admins'] : ['staff'];
        return {
          sub, name: `User ${sub}`, email: `${sub}@example.test`, email_verified: true, groups,
        };
      },
    };
  },
  // The gateway already asked the user for consent on its own page: grant what the client
  // asked for, so the IdP only asks for the password (and for consent when offline_access
  // makes OIDC require it).
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      return ctx.oidc.provider.Grant.find(grantId);
    }
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(ctx.oidc.requestParamScopes ? [...ctx.oidc.requestParamScopes].join(' ') : 'openid');
    await grant.save();
    return grant;
  },
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 86400,
    Grant: 86400,
    Interaction: 600,
    Session: 86400,
  },
  async issueRefreshToken(ctx, client, code) {
    return client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access');
  },
});
// The gateway in front sets X-Forwarded-Proto.
provider.proxy = true;
// The development login page's submission, finished here with an `acr` (the built-in handler
// records none): how strongly the account authenticated depends on its name (see above).
provider.use(async (ctx, next) => {
  if (ctx.method !== 'POST' || !/^\/interaction\/[^/]+$/.test(ctx.path)) {
    return next();
  }
  const chunks = [];
  for await (const chunk of ctx.req) chunks.push(chunk);
  const body = Buffer.concat(chunks).toString();
  const form = new URLSearchParams(body);
  if (form.get('prompt') !== 'login') {
    // Hand the body on to oidc-provider's own handler.
    ctx.req.body = body;
    return next();
  }
  const accountId = form.get('login') || 'alice';
  const acr = accountId.startsWith('mfa') ? ACR_MFA : ACR_PWD;
  await provider.interactionFinished(ctx.req, ctx.res, { login: { accountId, acr } }, {
    mergeWithLastSubmission: false,
  });
  ctx.respond = false;
  return undefined;
});
provider.on('server_error', (ctx, err) => console.error('IdP server_error', err));

// Azure AD B2C's layout (IDP_DISCOVERY_PATH): discovery only under the user flow's path.
const discoveryPath = process.env.IDP_DISCOVERY_PATH;
if (discoveryPath) {
  provider.use(async (ctx, next) => {
    if (ctx.path === '/.well-known/openid-configuration') {
      ctx.status = 404;
      ctx.body = { error: 'not_found', error_description: 'discovery is under the user flow path' };
      return undefined;
    }
    if (ctx.path === discoveryPath) {
      ctx.path = '/.well-known/openid-configuration';
    }
    return next();
  });
}

// AWS Cognito's layout (IDP_ENDPOINTS_PORT): endpoints on a second origin.
const endpointsPort = Number(process.env.IDP_ENDPOINTS_PORT || 0);
if (endpointsPort) {
  const endpointsOrigin = `http://127.0.0.1:${endpointsPort}`;
  const moved = ['authorization_endpoint', 'token_endpoint', 'userinfo_endpoint',
    'revocation_endpoint', 'end_session_endpoint', 'introspection_endpoint'];
  const movedPaths = ['/auth', '/token', '/me', '/token/revocation', '/session/end', '/token/introspection'];
  provider.use(async (ctx, next) => {
    const onIssuer = ctx.request.socket.localPort !== endpointsPort;
    if (onIssuer && movedPaths.some((p) => ctx.path === p || ctx.path.startsWith(`${p}/`))) {
      ctx.status = 404;
      ctx.body = { error: 'not_found', error_description: 'this IdP serves its endpoints on another origin' };
      return;
    }
    await next();
    if (ctx.path === '/.well-known/openid-configuration' && ctx.body && typeof ctx.body === 'object') {
      for (const key of moved) {
        if (typeof ctx.body[key] === 'string') {
          const u = new URL(ctx.body[key]);
          ctx.body[key] = `${endpointsOrigin}${u.pathname}`;
        }
      }
    }
  });
  http.createServer(handler()).listen(endpointsPort, '127.0.0.1');
}

// The request handler. An issuer with a path (http://host/oidc) is served under that path only,
// as when the provider is mounted in an application: requests elsewhere get 404, and the
// provider, told the full URL (req.originalUrl), builds every URL under the path.
function handler() {
  const callback = provider.callback();
  const mount = new URL(issuer).pathname.replace(/\/$/, '');
  if (!mount) return callback;
  return (req, res) => {
    const { url } = req;
    if (url === mount || url.startsWith(`${mount}/`) || url.startsWith(`${mount}?`)) {
      req.originalUrl = url;
      req.url = url.slice(mount.length) || '/';
      callback(req, res);
    } else {
      res.writeHead(404, { 'content-type': 'text/plain', 'content-length': 10 });
      res.end('not found\n');
    }
  };
}

const server = http.createServer(handler()).listen(port, '127.0.0.1', () => {
  console.log(`IDP_READY ${server.address().port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { server.close(); process.exit(0); });
}
