// A real OpenID Connect provider (the `oidc-provider` npm package) for devicegate's tests and
// demo. It plays the organisation's existing IdP: it has no device flow of its own enabled, and
// devicegate sits in front of it at the issuer's public origin.
//
// Environment:
//   IDP_ISSUER   issuer URL (the gateway's public URL), e.g. http://localhost:8080
//   IDP_PORT     port to listen on at 127.0.0.1 (0 = any free port)
//   IDP_CLIENTS  JSON list of {client_id, client_secret?, redirect_uris}
//
// Prints one line `IDP_READY <port>` when it listens. Any user name and password log in
// (oidc-provider's development login pages).
import Provider from 'oidc-provider';

const issuer = process.env.IDP_ISSUER;
if (!issuer) {
  console.error('IDP_ISSUER is required');
  process.exit(2);
}
const port = Number(process.env.IDP_PORT || 0);
const clients = JSON.parse(process.env.IDP_CLIENTS || '[]').map((c) => ({
  client_id: c.client_id,
  ...(c.client_secret
    ? { client_secret: c.client_secret, token_endpoint_auth_method: 'client_secret_basic' }
    : { token_endpoint_auth_method: 'none' }),
  redirect_uris: c.redirect_uris,
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
}));

const provider = new Provider(issuer, {
  clients,
  cookies: { keys: ['devicegate-test-cookie-key'] },
  claims: {
    openid: ['sub'],
    profile: ['name'],
    email: ['email', 'email_verified'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  features: { devInteractions: { enabled: true } },
  pkce: { required: () => true },
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub, name: `User ${sub}`, email: `${sub}@example.test`, email_verified: true };
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
provider.on('server_error', (ctx, err) => console.error('IdP server_error', err));

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`IDP_READY ${server.address().port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { server.close(); process.exit(0); });
}
