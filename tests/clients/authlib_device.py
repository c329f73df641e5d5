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
"""

import json
import os
import sys
import time

import authlib
import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.jwk import KeySet

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def fail(stage, error, **extra):
    print(json.dumps({"ok": False, "client": f"authlib {authlib.__version__}", "stage": stage,
                      "error": error, **extra}), flush=True)
    print(f"authlib_device: {stage}: {error}", file=sys.stderr, flush=True)
    sys.exit(1)


def main():
    args = sys.argv[1:]
    issuer = (args[0] if len(args) > 0 else os.environ.get("DG_ISSUER", "")).rstrip("/")
    client_id = args[1] if len(args) > 1 else os.environ.get("DG_CLIENT_ID", "")
    scope = args[2] if len(args) > 2 else os.environ.get("DG_SCOPE", "openid profile offline_access")
    secret = os.environ.get("DG_CLIENT_SECRET") or None
    deadline = time.monotonic() + float(os.environ.get("DG_TIMEOUT", "300"))
    if not issuer or not client_id:
        fail("args", "usage: authlib_device.py ISSUER CLIENT_ID [SCOPE] (or DG_ISSUER, DG_CLIENT_ID)")

    # 1. Discovery (OpenID Connect Discovery 1.0 §4; RFC 8628 §4 adds device_authorization_endpoint).
    try:
        r = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=15)
        meta = r.json()
    except (requests.RequestException, ValueError) as e:
        fail("discovery", f"{type(e).__name__}: {e}")
    if r.status_code != 200 or not isinstance(meta, dict):
        fail("discovery", f"HTTP {r.status_code}", body=r.text[:500])
    if meta.get("issuer") != issuer:
        fail("discovery", f"issuer mismatch: document says {meta.get('issuer')!r}, expected {issuer!r}")
    for key in ("device_authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not meta.get(key):
            fail("discovery", f"no {key} in the discovery document")
    if DEVICE_GRANT not in meta.get("grant_types_supported", [DEVICE_GRANT]):
        fail("discovery", "grant_types_supported lacks the device_code grant")

    session = OAuth2Session(
        client_id, secret, scope=scope,
        token_endpoint=meta["token_endpoint"],
        default_timeout=15,
    )

    # 2. Device authorization request (RFC 8628 §3.1), authenticated like the token endpoint.
    auth = session.client_auth(session.token_endpoint_auth_method)
    data = {"scope": scope}  # Authlib's "none" auth method adds client_id to the body itself
    try:
        r = session.post(meta["device_authorization_endpoint"], data=data, auth=auth,
                         headers={"Accept": "application/json"}, timeout=15)
        da = r.json()
    except (requests.RequestException, ValueError) as e:
        fail("device_authorization", f"{type(e).__name__}: {e}")
    if r.status_code != 200 or "device_code" not in da:
        fail("device_authorization", f"HTTP {r.status_code}", body=da)
    for key in ("device_code", "user_code", "verification_uri", "expires_in"):
        if key not in da:
            fail("device_authorization", f"response lacks {key} (RFC 8628 §3.2)", body=da)
    line = f"USER_CODE {da['user_code']} {da['verification_uri']} {da.get('verification_uri_complete', '')}"
    print(line.rstrip(), flush=True)

    # 3. Poll the token endpoint (RFC 8628 §3.4, §3.5) with Authlib's fetch_token.
    interval = int(da.get("interval", 5))
    deadline = min(deadline, time.monotonic() + int(da["expires_in"]))
    polls = slow_downs = pending = 0
    token = None
    too_fast = os.environ.get("DG_POLL_TOO_FAST") == "1"
    while token is None:
        if too_fast and polls == 1:
            too_fast = False
            time.sleep(0.5)  # deliberately early (DG_POLL_TOO_FAST): expect slow_down
        else:
            time.sleep(interval)
        polls += 1
        try:
            token = session.fetch_token(grant_type=DEVICE_GRANT, device_code=da["device_code"])
        except OAuthError as e:
            if e.error == "authorization_pending":
                pending += 1
            elif e.error == "slow_down":
                slow_downs += 1
                interval += 5  # RFC 8628 §3.5
            else:  # access_denied, expired_token, or anything else: stop
                fail("poll", e.error, description=e.description, polls=polls)
        except requests.HTTPError as e:
            fail("poll", f"HTTP {e.response.status_code}", body=e.response.text[:500], polls=polls)
        except (requests.RequestException, ValueError) as e:
            fail("poll", f"{type(e).__name__}: {e}", polls=polls)
        # Checked after the poll, so the server's own expired_token is seen when it sends one.
        if token is None and time.monotonic() > deadline:
            fail("poll", "gave up: expires_in or DG_TIMEOUT passed", polls=polls)

    result = {
        "ok": True,
        "client": f"authlib {authlib.__version__}",
        "polls": polls,
        "pending": pending,
        "slow_downs": slow_downs,
        "token_type": token.get("token_type"),
        "access_token_len": len(token.get("access_token") or ""),
        "expires_in": token.get("expires_in"),
        "scope": token.get("scope"),
        "id_token": bool(token.get("id_token")),
        "refresh_token": bool(token.get("refresh_token")),
    }
    if not token.get("access_token"):
        fail("token", "no access_token in the token response", **result)

    # 4. ID token: signature against the discovered JWKS, then iss/aud/exp/iat (OIDC Core §3.1.3.7).
    if token.get("id_token"):
        try:
            jwks = requests.get(meta["jwks_uri"], timeout=15).json()
            decoded = jwt.decode(token["id_token"], KeySet.import_key_set(jwks),
                                 algorithms=meta.get("id_token_signing_alg_values_supported", ["RS256"]))
            claims = CodeIDToken(decoded.claims, decoded.header, options={
                "iss": {"essential": True, "value": issuer},
                "aud": {"essential": True, "value": client_id},
            }, params={"access_token": token["access_token"]})
            claims.validate(leeway=60)
        except Exception as e:  # noqa: BLE001 - any failure is a failed check, report it
            fail("id_token", f"{type(e).__name__}: {e}", **result)
        result["id_token_verified"] = True
        result["sub"] = claims.get("sub")

    # 5. refresh_token grant with Authlib's refresh_token() (passes through to the IdP).
    if token.get("refresh_token"):
        old_access = token["access_token"]
        try:
            refreshed = session.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
        except OAuthError as e:
            fail("refresh", e.error, description=e.description, **result)
        except requests.HTTPError as e:
            fail("refresh", f"HTTP {e.response.status_code}", body=e.response.text[:500], **result)
        except (requests.RequestException, ValueError) as e:
            fail("refresh", f"{type(e).__name__}: {e}", **result)
        result["refresh_ok"] = bool(refreshed.get("access_token"))
        result["refreshed_access_token_len"] = len(refreshed.get("access_token") or "")
        result["refreshed_differs"] = refreshed.get("access_token") != old_access
        if not result["refresh_ok"]:
            fail("refresh", "no access_token in the refresh response", **result)
    else:
        result["refresh_ok"] = False
        if "offline_access" in scope.split():
            fail("token", "offline_access was asked for but no refresh_token came", **result)

    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
