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
support); the authlib driver verifies them.
"""

import base64
import json
import os
import sys
import time
from urllib.parse import urlsplit

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def versions():
    from importlib.metadata import version
    return f"oauthlib {version('oauthlib')} / requests-oauthlib {version('requests-oauthlib')}"


def fail(stage, error, **extra):
    print(json.dumps({"ok": False, "client": versions(), "stage": stage, "error": error, **extra}),
          flush=True)
    print(f"oauthlib_device: {stage}: {error}", file=sys.stderr, flush=True)
    sys.exit(1)


def jwt_claims(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def main():
    args = sys.argv[1:]
    issuer = (args[0] if len(args) > 0 else os.environ.get("DG_ISSUER", "")).rstrip("/")
    client_id = args[1] if len(args) > 1 else os.environ.get("DG_CLIENT_ID", "")
    scope = args[2] if len(args) > 2 else os.environ.get("DG_SCOPE", "openid profile offline_access")
    secret = os.environ.get("DG_CLIENT_SECRET") or None
    deadline = time.monotonic() + float(os.environ.get("DG_TIMEOUT", "300"))
    if not issuer or not client_id:
        fail("args", "usage: oauthlib_device.py ISSUER CLIENT_ID [SCOPE] (or DG_ISSUER, DG_CLIENT_ID)")
    u = urlsplit(issuer)
    if u.scheme == "http" and u.hostname in ("localhost", "127.0.0.1", "::1"):
        os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"

    # Imported after OAUTHLIB_INSECURE_TRANSPORT is settled (oauthlib reads it per call anyway).
    import requests
    from oauthlib.oauth2 import DeviceClient, OAuth2Error
    from requests.auth import HTTPBasicAuth
    from requests_oauthlib import OAuth2Session

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
    for key in ("device_authorization_endpoint", "token_endpoint"):
        if not meta.get(key):
            fail("discovery", f"no {key} in the discovery document")

    client = DeviceClient(client_id, scope=scope)
    session = OAuth2Session(client=client, scope=scope)
    # Confidential: HTTP Basic (RFC 6749 §2.3.1). Public: client_id in the body, no Authorization.
    auth = HTTPBasicAuth(client_id, secret) if secret else None
    token_kwargs = {"auth": auth} if secret else {"include_client_id": True}

    # 2. Device authorization request (RFC 8628 §3.1): form-encoded POST.
    data = {"scope": scope}
    if not secret:
        data["client_id"] = client_id
    try:
        r = session.post(meta["device_authorization_endpoint"], data=data, auth=auth,
                         headers={"Accept": "application/json"}, timeout=15)
        da = r.json()
    except (requests.RequestException, ValueError) as e:
        fail("device_authorization", f"{type(e).__name__}: {e}")
    if r.status_code != 200 or not isinstance(da, dict) or "device_code" not in da:
        fail("device_authorization", f"HTTP {r.status_code}", body=da)
    for key in ("device_code", "user_code", "verification_uri", "expires_in"):
        if key not in da:
            fail("device_authorization", f"response lacks {key} (RFC 8628 §3.2)", body=da)
    line = f"USER_CODE {da['user_code']} {da['verification_uri']} {da.get('verification_uri_complete', '')}"
    print(line.rstrip(), flush=True)

    # 3. Poll (RFC 8628 §3.4, §3.5) with OAuth2Session.fetch_token + DeviceClient.
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
            token = session.fetch_token(meta["token_endpoint"], device_code=da["device_code"],
                                        timeout=15, **token_kwargs)
        except OAuth2Error as e:
            if e.error == "authorization_pending":
                pending += 1
            elif e.error == "slow_down":
                slow_downs += 1
                interval += 5  # RFC 8628 §3.5
            else:  # access_denied, expired_token, invalid_grant, ...: stop
                fail("poll", e.error, description=e.description, polls=polls)
        except Warning as e:  # oauthlib raises a Warning when the granted scope differs
            fail("poll", f"oauthlib scope warning: {e}", polls=polls)
        except (requests.RequestException, ValueError) as e:
            fail("poll", f"{type(e).__name__}: {e}", polls=polls)
        # Checked after the poll, so the server's own expired_token is seen when it sends one.
        if token is None and time.monotonic() > deadline:
            fail("poll", "gave up: expires_in or DG_TIMEOUT passed", polls=polls)

    result = {
        "ok": True,
        "client": versions(),
        "polls": polls,
        "pending": pending,
        "slow_downs": slow_downs,
        "token_type": token.get("token_type"),
        "access_token_len": len(token.get("access_token") or ""),
        "expires_in": token.get("expires_in"),
        "scope": " ".join(token["scope"]) if isinstance(token.get("scope"), list) else token.get("scope"),
        "id_token": bool(token.get("id_token")),
        "refresh_token": bool(token.get("refresh_token")),
    }
    if not token.get("access_token"):
        fail("token", "no access_token in the token response", **result)
    if token.get("id_token"):
        try:
            claims = jwt_claims(token["id_token"])
        except (ValueError, IndexError) as e:
            fail("id_token", f"not a JWT: {e}", **result)
        if claims.get("iss") != issuer or client_id not in (
                claims.get("aud") if isinstance(claims.get("aud"), list) else [claims.get("aud")]):
            fail("id_token", f"iss/aud mismatch: iss={claims.get('iss')!r} aud={claims.get('aud')!r}", **result)
        result["sub"] = claims.get("sub")

    # 4. refresh_token grant with OAuth2Session.refresh_token (passes through to the IdP).
    if token.get("refresh_token"):
        old_access = token["access_token"]
        refresh_kwargs = {"auth": auth} if secret else {"client_id": client_id}
        try:
            refreshed = session.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"],
                                              timeout=15, **refresh_kwargs)
        except OAuth2Error as e:
            fail("refresh", e.error, description=e.description, **result)
        except Warning as e:
            fail("refresh", f"oauthlib scope warning: {e}", **result)
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
