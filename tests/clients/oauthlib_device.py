#!/usr/bin/env python3
"""RFC 8628 device flow with oauthlib's DeviceClient and requests-oauthlib's OAuth2Session.

A non-interactive driver for devicegate's client-compatibility tests: a real third-party client
library, used the way its documentation shows, against the gateway.

Usage:
    tests/clients/.venv/bin/python tests/clients/oauthlib_device.py [ISSUER [CLIENT_ID [SCOPE]]]

Arguments win over the environment:
    DG_ISSUER         the gateway's public URL = the issuer (e.g. http://localhost:8080)
    DG_CLIENT_ID      the device client's client_id
    DG_CLIENT_SECRET  optional; when set the client authenticates with HTTP Basic
                      (client_secret_basic, requests-oauthlib's default); unset = public client
                      (client_id in the body, include_client_id=True)
    DG_SCOPE          default "openid profile offline_access" (offline_access: refresh token)
    DG_TIMEOUT        give up after this many seconds overall (default 300)
    DG_POLL_TOO_FAST  set to 1 to send the second poll 0.5 s after the first instead of one
                      interval later, to exercise the library's slow_down handling (§3.5)
An http:// issuer needs OAUTHLIB_INSECURE_TRANSPORT=1 in oauthlib; this script sets it itself
when the issuer is http://localhost or http://127.0.0.1 (test setups), and refuses other http://
issuers as oauthlib would.

Install: python3 -m venv tests/clients/.venv &&
         tests/clients/.venv/bin/pip install --require-hashes -r tests/clients/requirements.txt

Output on stdout, one line each:
    USER_CODE <user_code> <verification_uri> [<verification_uri_complete>]
        as soon as the device authorization response arrives (the last field is absent when
        the server sent no verification_uri_complete);
    then a JSON object: {"ok": true, "client": "oauthlib <v> / requests-oauthlib <v>",
        "access_token_len": N, "id_token": true, "sub": "...", "refresh_token": true,
        "refresh_ok": true, ...}
        or {"ok": false, "stage": "...", "error": "...", ...} with exit status 1.

What the libraries do and what this script adds: the device-code poll is
OAuth2Session(client=DeviceClient(...)).fetch_token(token_url, device_code=...), which builds
the body with DeviceClient.prepare_request_body (grant_type URN, device_code, scope, client_id);
the refresh is OAuth2Session.refresh_token(). oauthlib's DeviceClient.prepare_request_uri puts
the §3.1 parameters (and grant_type, and client_secret when set) in the URL query string rather
than in a form body as RFC 8628 §3.1 requires, so the device authorization request is sent as a
form-encoded POST through the same OAuth2Session (with the same client authentication the token
requests use). The ID token's claims are decoded but not verified here (oauthlib has no JOSE
support); the authlib driver verifies them. The steps that do not depend on the library
(arguments, discovery, the device authorization request, the polling loop, the refresh checks
and the output) are in device_common.py, shared with authlib_device.py.
"""

import base64
import json
import os
from importlib.metadata import version
from urllib.parse import urlsplit

from oauthlib.oauth2 import DeviceClient, OAuth2Error
from requests.auth import HTTPBasicAuth
from requests_oauthlib import OAuth2Session

from device_common import TIMEOUT, RequestFailed, Run, TokenError


def versions():
    return f"oauthlib {version('oauthlib')} / requests-oauthlib {version('requests-oauthlib')}"


def token_request(request, *args, **kwargs):
    """One token request with requests-oauthlib: request(*args, **kwargs), with oauthlib's
    OAuth2Error (an OAuth error response) raised as TokenError and the Warning oauthlib raises
    when the granted scope differs from the requested one as RequestFailed."""
    try:
        return request(*args, **kwargs)
    except OAuth2Error as e:
        raise TokenError(e.error, e.description) from e
    except Warning as e:
        raise RequestFailed(f"oauthlib scope warning: {e}") from e


def jwt_claims(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def main():
    run = Run("oauthlib_device", versions())
    u = urlsplit(run.issuer)
    if u.scheme == "http" and u.hostname in ("localhost", "127.0.0.1", "::1"):
        os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"  # oauthlib reads it on every call

    # 1. Discovery.
    meta = run.discover()

    client = DeviceClient(run.client_id, scope=run.scope)
    session = OAuth2Session(client=client, scope=run.scope)
    # Confidential: HTTP Basic (RFC 6749 §2.3.1). Public: client_id in the body, no Authorization.
    auth = HTTPBasicAuth(run.client_id, run.secret) if run.secret else None
    token_kwargs = {"auth": auth} if run.secret else {"include_client_id": True}

    # 2. Device authorization request (RFC 8628 §3.1): form-encoded POST.
    data = {"scope": run.scope}
    if not run.secret:
        data["client_id"] = run.client_id
    da = run.device_authorization(session, meta["device_authorization_endpoint"], data, auth)

    # 3. Poll (RFC 8628 §3.4, §3.5) with OAuth2Session.fetch_token + DeviceClient.
    token, result = run.poll(da, lambda: token_request(
        session.fetch_token, meta["token_endpoint"], device_code=da["device_code"],
        timeout=TIMEOUT, **token_kwargs))

    # 4. ID token: iss and aud, unverified (oauthlib has no JOSE support).
    if token.get("id_token"):
        try:
            claims = jwt_claims(token["id_token"])
        except (ValueError, IndexError) as e:
            run.fail("id_token", f"not a JWT: {e}", **result)
        if claims.get("iss") != run.issuer or run.client_id not in (
                claims.get("aud") if isinstance(claims.get("aud"), list) else [claims.get("aud")]):
            run.fail("id_token", f"iss/aud mismatch: iss={claims.get('iss')!r} aud={claims.get('aud')!r}",
                     **result)
        result["sub"] = claims.get("sub")

    # 5. refresh_token grant with OAuth2Session.refresh_token (passes through to the IdP).
    refresh_kwargs = {"auth": auth} if run.secret else {"client_id": run.client_id}
    run.refresh(token, result, lambda refresh_token: token_request(
        session.refresh_token, meta["token_endpoint"], refresh_token=refresh_token,
        timeout=TIMEOUT, **refresh_kwargs))

    run.succeed(result)


if __name__ == "__main__":
    main()
