#!/usr/bin/env python3
"""RFC 8628 device flow with Authlib (authlib.integrations.requests_client.OAuth2Session).

A non-interactive driver for devicegate's client-compatibility tests: a real third-party client
library, used the way its documentation shows, against the gateway.

Usage:
    tests/clients/.venv/bin/python tests/clients/authlib_device.py [ISSUER [CLIENT_ID [SCOPE]]]

Arguments win over the environment:
    DG_ISSUER         the gateway's public URL = the issuer (e.g. http://localhost:8080)
    DG_CLIENT_ID      the device client's client_id
    DG_CLIENT_SECRET  optional; when set the client authenticates with client_secret_basic
                      (Authlib's default for a client with a secret); unset = public client
                      (token_endpoint_auth_method "none": client_id in the body)
    DG_SCOPE          default "openid profile offline_access" (offline_access: refresh token)
    DG_TIMEOUT        give up after this many seconds overall (default 300)
    DG_POLL_TOO_FAST  set to 1 to send the second poll 0.5 s after the first instead of one
                      interval later, to exercise the library's slow_down handling (§3.5)

Install: python3 -m venv tests/clients/.venv &&
         tests/clients/.venv/bin/pip install --require-hashes -r tests/clients/requirements.txt

Output on stdout, one line each:
    USER_CODE <user_code> <verification_uri> [<verification_uri_complete>]
        as soon as the device authorization response arrives (the last field is absent when
        the server sent no verification_uri_complete);
    then a JSON object: {"ok": true, "client": "authlib <version>", "access_token_len": N,
        "id_token": true, "id_token_verified": true, "sub": "...", "refresh_token": true,
        "refresh_ok": true, ...}
        or {"ok": false, "stage": "...", "error": "...", ...} with exit status 1.

What Authlib does and what this script adds: Authlib has no client-side device-flow helper
(authlib.oauth2.rfc8628 is server-side only), so, as its docs suggest for other grants, the
device-code poll is OAuth2Session.fetch_token(grant_type=<device_code URN>, device_code=...),
the refresh is OAuth2Session.refresh_token(), and client authentication on the device
authorization request is Authlib's own ClientAuth. Discovery and the ID token check (joserfc,
Authlib's JOSE library, plus authlib.oidc.core.CodeIDToken) are done as a real client would.
The steps that do not depend on the library (arguments, discovery, the device authorization
request, the polling loop, the refresh checks and the output) are in device_common.py, shared
with oauthlib_device.py.
"""

import authlib
import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.jwk import KeySet

from device_common import DEVICE_GRANT, TIMEOUT, RequestFailed, Run, TokenError


def token_request(request, *args, **kwargs):
    """One token request with Authlib: request(*args, **kwargs), with Authlib's OAuthError (an
    OAuth error response) raised as TokenError and requests' HTTPError (another HTTP error
    status) as RequestFailed."""
    try:
        return request(*args, **kwargs)
    except OAuthError as e:
        raise TokenError(e.error, e.description) from e
    except requests.HTTPError as e:
        raise RequestFailed(f"HTTP {e.response.status_code}", body=e.response.text[:500]) from e


def main():
    run = Run("authlib_device", f"authlib {authlib.__version__}")

    # 1. Discovery; the JWKS is needed for the ID token check.
    meta = run.discover(required=("device_authorization_endpoint", "token_endpoint", "jwks_uri"),
                        check_grant_types=True)

    session = OAuth2Session(
        run.client_id, run.secret, scope=run.scope,
        token_endpoint=meta["token_endpoint"],
        default_timeout=TIMEOUT,
    )

    # 2. Device authorization request (RFC 8628 §3.1), authenticated like the token endpoint.
    auth = session.client_auth(session.token_endpoint_auth_method)
    data = {"scope": run.scope}  # Authlib's "none" auth method adds client_id to the body itself
    da = run.device_authorization(session, meta["device_authorization_endpoint"], data, auth)

    # 3. Poll the token endpoint (RFC 8628 §3.4, §3.5) with Authlib's fetch_token.
    token, result = run.poll(da, lambda: token_request(
        session.fetch_token, grant_type=DEVICE_GRANT, device_code=da["device_code"]))

    # 4. ID token: signature against the discovered JWKS, then iss/aud/exp/iat (OIDC Core §3.1.3.7).
    if token.get("id_token"):
        try:
            jwks = requests.get(meta["jwks_uri"], timeout=TIMEOUT).json()
            decoded = jwt.decode(token["id_token"], KeySet.import_key_set(jwks),
                                 algorithms=meta.get("id_token_signing_alg_values_supported", ["RS256"]))
            claims = CodeIDToken(decoded.claims, decoded.header, options={
                "iss": {"essential": True, "value": run.issuer},
                "aud": {"essential": True, "value": run.client_id},
            }, params={"access_token": token["access_token"]})
            claims.validate(leeway=60)
        except Exception as e:  # noqa: BLE001 - any failure is a failed check, report it
            run.fail("id_token", f"{type(e).__name__}: {e}", **result)
        result["id_token_verified"] = True
        result["sub"] = claims.get("sub")

    # 5. refresh_token grant with Authlib's refresh_token() (passes through to the IdP).
    run.refresh(token, result, lambda refresh_token: token_request(
        session.refresh_token, meta["token_endpoint"], refresh_token=refresh_token))

    run.succeed(result)


if __name__ == "__main__":
    main()
