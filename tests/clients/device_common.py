"""What the Python device-flow drivers (authlib_device.py, oauthlib_device.py) share.

Both drivers take the same arguments and environment and print the same output (see their
docstrings and README.md). This module holds the steps that do not depend on the client
library; each driver keeps its library's session, client authentication, token requests and ID
token check.

A driver's main() reads:

    run = Run("authlib_device", "authlib 1.9.10")   # ISSUER CLIENT_ID [SCOPE], DG_* settings
    meta = run.discover()                            # 1. OpenID Connect discovery
    session, auth, data = ...                        #    the library's session and client auth
    da = run.device_authorization(session, meta["device_authorization_endpoint"], data, auth)
                                                     # 2. RFC 8628 §3.1; prints USER_CODE
    token, result = run.poll(da, fetch_token)        # 3. §3.4/§3.5 polling until approved
    ...                                              # 4. the driver's own ID token check
    run.refresh(token, result, refresh_token)        # 5. refresh_token grant
    run.succeed(result)                              # the JSON result line

fetch_token() and refresh_token(refresh_token) make one token request with the driver's library
and return the token response. They raise TokenError for an OAuth error response (RFC 6749
§5.2: authorization_pending, slow_down, access_denied, ...) and RequestFailed for another
failure the library reports its own way; requests' exceptions and ValueError may pass through.
Any failure ends the run through Run.fail: the failure JSON line on stdout, a line on stderr,
exit status 1.
"""

import json
import os
import sys
import time

import requests

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_SCOPE = "openid profile offline_access"
TIMEOUT = 15  # seconds, for each HTTP request


class TokenError(Exception):
    """An OAuth error response from the token endpoint (RFC 6749 §5.2)."""

    def __init__(self, error, description=None):
        super().__init__(error)
        self.error = error
        self.description = description


class RequestFailed(Exception):
    """Another failed token request: `error` for the result's "error", `details` for more fields."""

    def __init__(self, error, **details):
        super().__init__(error)
        self.error = error
        self.details = details


class Run:
    """One run of a driver: its settings, and the steps of the flow that are library-neutral."""

    def __init__(self, name, client):
        """name: the script's name without .py, for messages; client: the result's "client".

        Reads ISSUER CLIENT_ID [SCOPE] from the command line, else DG_ISSUER, DG_CLIENT_ID,
        DG_SCOPE; DG_CLIENT_SECRET (None when unset or empty) and DG_TIMEOUT (default 300 s)
        from the environment. Fails (stage "args") without an issuer or a client id.
        """
        self.name = name
        self.client = client
        args = sys.argv[1:]
        self.issuer = (args[0] if len(args) > 0 else os.environ.get("DG_ISSUER", "")).rstrip("/")
        self.client_id = args[1] if len(args) > 1 else os.environ.get("DG_CLIENT_ID", "")
        self.scope = args[2] if len(args) > 2 else os.environ.get("DG_SCOPE", DEFAULT_SCOPE)
        self.secret = os.environ.get("DG_CLIENT_SECRET") or None
        self.deadline = time.monotonic() + float(os.environ.get("DG_TIMEOUT", "300"))
        if not self.issuer or not self.client_id:
            self.fail("args", f"usage: {name}.py ISSUER CLIENT_ID [SCOPE] (or DG_ISSUER, DG_CLIENT_ID)")

    def fail(self, stage, error, **extra):
        """Print the failure JSON line (and a line on stderr) and exit with status 1."""
        # `extra` may be a partial result carrying "ok": true; the failure wins.
        print(json.dumps({**extra, "ok": False, "client": self.client, "stage": stage,
                          "error": error}), flush=True)
        print(f"{self.name}: {stage}: {error}", file=sys.stderr, flush=True)
        sys.exit(1)

    def discover(self, required=("device_authorization_endpoint", "token_endpoint"),
                 check_grant_types=False):
        """1. Discovery (OpenID Connect Discovery 1.0 §4; RFC 8628 §4 adds
        device_authorization_endpoint). Returns the document; fails unless it names this issuer
        and has every `required` entry, and with check_grant_types unless its
        grant_types_supported (when present) lists the device_code grant."""
        try:
            r = requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=TIMEOUT)
            meta = r.json()
        except (requests.RequestException, ValueError) as e:
            self.fail("discovery", f"{type(e).__name__}: {e}")
        if r.status_code != 200 or not isinstance(meta, dict):
            self.fail("discovery", f"HTTP {r.status_code}", body=r.text[:500])
        if meta.get("issuer") != self.issuer:
            self.fail("discovery", f"issuer mismatch: document says {meta.get('issuer')!r}, "
                                   f"expected {self.issuer!r}")
        for key in required:
            if not meta.get(key):
                self.fail("discovery", f"no {key} in the discovery document")
        if check_grant_types and DEVICE_GRANT not in meta.get("grant_types_supported", [DEVICE_GRANT]):
            self.fail("discovery", "grant_types_supported lacks the device_code grant")
        return meta

    def device_authorization(self, session, endpoint, data, auth):
        """2. Device authorization request (RFC 8628 §3.1): posts the form `data` with the
        requests `auth` through `session` (a requests.Session) to `endpoint`, checks the
        response (§3.2), prints the USER_CODE line and returns the response."""
        try:
            r = session.post(endpoint, data=data, auth=auth,
                             headers={"Accept": "application/json"}, timeout=TIMEOUT)
            da = r.json()
        except (requests.RequestException, ValueError) as e:
            self.fail("device_authorization", f"{type(e).__name__}: {e}")
        if r.status_code != 200 or not isinstance(da, dict) or "device_code" not in da:
            self.fail("device_authorization", f"HTTP {r.status_code}", body=da)
        for key in ("device_code", "user_code", "verification_uri", "expires_in"):
            if key not in da:
                self.fail("device_authorization", f"response lacks {key} (RFC 8628 §3.2)", body=da)
        line = f"USER_CODE {da['user_code']} {da['verification_uri']} {da.get('verification_uri_complete', '')}"
        print(line.rstrip(), flush=True)
        return da

    def poll(self, da, fetch_token):
        """3. Poll the token endpoint (RFC 8628 §3.4, §3.5) with fetch_token() every interval
        (5 s more after each slow_down; with DG_POLL_TOO_FAST=1 the second poll comes 0.5 s
        after the first) until it returns the token response, or until expires_in or DG_TIMEOUT
        has passed. Returns the token response and the result so far; fails on any other error
        and when the token response has no access_token."""
        interval = int(da.get("interval", 5))
        deadline = min(self.deadline, time.monotonic() + int(da["expires_in"]))
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
                token = fetch_token()
            except TokenError as e:
                if e.error == "authorization_pending":
                    pending += 1
                elif e.error == "slow_down":
                    slow_downs += 1
                    interval += 5  # RFC 8628 §3.5
                else:  # access_denied, expired_token, invalid_grant, ...: stop
                    self.fail("poll", e.error, description=e.description, polls=polls)
            except RequestFailed as e:
                self.fail("poll", e.error, **e.details, polls=polls)
            except (requests.RequestException, ValueError) as e:
                self.fail("poll", f"{type(e).__name__}: {e}", polls=polls)
            # Checked after the poll, so the server's own expired_token is seen when it sends one.
            if token is None and time.monotonic() > deadline:
                self.fail("poll", "gave up: expires_in or DG_TIMEOUT passed", polls=polls)

        scope = token.get("scope")
        result = {
            "ok": True,
            "client": self.client,
            "polls": polls,
            "pending": pending,
            "slow_downs": slow_downs,
            "token_type": token.get("token_type"),
            "access_token_len": len(token.get("access_token") or ""),
            "expires_in": token.get("expires_in"),
            "scope": " ".join(scope) if isinstance(scope, list) else scope,  # oauthlib: a list
            "id_token": bool(token.get("id_token")),
            "refresh_token": bool(token.get("refresh_token")),
        }
        if not token.get("access_token"):
            self.fail("token", "no access_token in the token response", **result)
        return token, result

    def refresh(self, token, result, refresh_token):
        """5. refresh_token grant with refresh_token(<the refresh token>), when the token
        response had a refresh token; records the outcome in `result`. Fails when the refresh
        fails or brings no access_token, and when offline_access was asked for but no refresh
        token came."""
        if not token.get("refresh_token"):
            result["refresh_ok"] = False
            if "offline_access" in self.scope.split():
                self.fail("token", "offline_access was asked for but no refresh_token came", **result)
            return
        old_access = token["access_token"]
        try:
            refreshed = refresh_token(token["refresh_token"])
        except TokenError as e:
            self.fail("refresh", e.error, description=e.description, **result)
        except RequestFailed as e:
            self.fail("refresh", e.error, **e.details, **result)
        except (requests.RequestException, ValueError) as e:
            self.fail("refresh", f"{type(e).__name__}: {e}", **result)
        result["refresh_ok"] = bool(refreshed.get("access_token"))
        result["refreshed_access_token_len"] = len(refreshed.get("access_token") or "")
        result["refreshed_differs"] = refreshed.get("access_token") != old_access
        if not result["refresh_ok"]:
            self.fail("refresh", "no access_token in the refresh response", **result)

    def succeed(self, result):
        """Print the success JSON line (exit status 0 follows)."""
        print(json.dumps(result), flush=True)
