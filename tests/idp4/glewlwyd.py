"""A fourth, independent OpenID Connect provider for devicegate's tests: Glewlwyd, Debian's
`glewlwyd` package (a single-sign-on server in C), run with its own login web app.

It plays an IdP whose own device flow has been switched off (`auth-type-device-enabled`
false): the case of an organisation that turned its IdP's flow off after a phishing wave and
puts devicegate's guarded one in front. Its issuer has a path, `/api/oidc` (Glewlwyd serves each
protocol plugin under `<external_url>/api/<plugin name>`): authorization code with PKCE S256
required, one-time refresh tokens (each refresh returns the next), userinfo, ID tokens signed
with a key made at start-up (RS256, ES256, ES512 or EdDSA), confidential
(client_secret_basic or _post) and public clients, and a consent screen.

Environment (as tests/idp/idp.js):
  IDP_ISSUER   issuer URL ending in /api/oidc, e.g. http://127.0.0.1:8080/api/oidc; its origin
               is Glewlwyd's external_url (the gateway's, when the gateway fronts it)
  IDP_PORT     port to listen on at 127.0.0.1 (0 = any free port)
  IDP_CLIENTS  JSON list of {client_id, client_secret?, redirect_uris}
  IDP_USERS    user names to create (default alice,bob); every password is `password`
  IDP_ALG      the ID tokens' signature: RS256 (default), ES256, ES512 or EdDSA
  IDP_WORKDIR  where to make its working folder (default: the system's temporary folder)

Set-up: a sqlite database made from the package's own schema, a configuration file, then the
admin API (as Glewlwyd's own tests do) adds the OIDC plugin, the scopes, the users and the
clients. Prints one line `IDP_READY <port>` when all of that answered.

  apt-get install glewlwyd openssl
  IDP_ISSUER=http://127.0.0.1:8080/api/oidc IDP_PORT=8080 IDP_CLIENTS='[...]' python3 tests/idp4/glewlwyd.py
"""

import ctypes
import http.cookiejar
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

GLEWLWYD = "/usr/bin/glewlwyd"
SCHEMA = "/usr/share/dbconfig-common/data/glewlwyd/install/sqlite3"
WEBAPP = "/usr/share/glewlwyd/webapp"
# The web app's settings (the package links webapp/config.json to a path under /etc that
# dpkg unpacks as a directory, so the template is read instead).
APP_CONFIG = "/usr/share/glewlwyd/templates/config.json"
MODULES = "/usr/lib/glewlwyd"

for path, what in [(GLEWLWYD, "glewlwyd"), (SCHEMA, "glewlwyd"), (shutil.which("openssl") or "/usr/bin/openssl", "openssl")]:
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: apt-get install {what}")

issuer = os.environ.get("IDP_ISSUER", "")
if not issuer.endswith("/api/oidc"):
    sys.exit("IDP_ISSUER must end in /api/oidc, where Glewlwyd serves its OIDC plugin")
external = issuer[: -len("/api/oidc")]
port = int(os.environ.get("IDP_PORT", "0"))
if port == 0:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
clients = json.loads(os.environ.get("IDP_CLIENTS", "[]"))
users = [u for u in os.environ.get("IDP_USERS", "alice,bob").split(",") if u]

# IDP_WORKDIR: a folder for the database and configuration that the caller removes (the tests
# give theirs, since a killed fixture cleans nothing up).
work = tempfile.mkdtemp(prefix="idp4-", dir=os.environ.get("IDP_WORKDIR") or None)
db = os.path.join(work, "glewlwyd.db")

import sqlite3  # noqa: E402

with open(SCHEMA) as f:
    conn = sqlite3.connect(db)
    conn.executescript(f.read())
    conn.commit()
    conn.close()

# The login web app reads its settings from config.json beside it: a copy of the package's
# web app (its login part), English only. Its addresses are relative, so it works behind the
# gateway.
webapp = os.path.join(work, "webapp")


def link_or_copy(src, dst):
    # Glewlwyd serves no symbolic links, and the package's web app links to other packages'
    # files (bootstrap, jquery, fonts): link to what they point to, or copy it.
    try:
        os.link(os.path.realpath(src), dst)
    except OSError:
        shutil.copy(src, dst)


for top, dirs, files in os.walk(WEBAPP, followlinks=True):
    into = os.path.join(webapp, os.path.relpath(top, WEBAPP))
    os.makedirs(into, exist_ok=True)
    dirs[:] = [d for d in dirs if d != "config.json"]
    for name in files:
        if name not in ("config.json", "admin.js", "profile.js") and os.path.exists(os.path.join(top, name)):
            link_or_copy(os.path.join(top, name), os.path.join(into, name))
with open(APP_CONFIG) as f:
    app_config = json.load(f)
app_config["lang"] = ["en"]
with open(os.path.join(webapp, "config.json"), "w") as f:
    json.dump(app_config, f)

mime = "".join(
    f'  {{ extension = "{ext}"\n    mime_type = "{kind}" }},\n'
    for ext, kind in [
        (".html", "text/html"),
        (".css", "text/css"),
        (".js", "application/javascript"),
        (".json", "application/json"),
        (".png", "image/png"),
        (".ico", "image/x-icon"),
        (".svg", "image/svg+xml"),
        (".woff", "font/woff"),
        (".woff2", "font/woff2"),
        (".ttf", "font/ttf"),
    ]
).rstrip(",\n")
# No user middleware modules (the package has none): an empty folder. No TLS: the key
# use_secure_connection is left out, as 2.7.5 reads `false` there as on.
os.mkdir(os.path.join(work, "none"))
conf = os.path.join(work, "glewlwyd.conf")
with open(conf, "w") as f:
    f.write(
        f"""port={port}
bind_address="127.0.0.1"
external_url="{external}"
login_url="login.html"
static_files_path="{webapp}/"
api_prefix="api"
allow_origin="*"
log_mode="console"
log_level="WARNING"
cookie_secure=0
cookie_same_site="lax"
session_expiration=3600
session_key="GLEWLWYD2_SESSION_ID"
admin_session_authentication="cookie"
profile_session_authentication="cookie"
allow_multiple_user_per_session=false
login_api_enabled=true
admin_scope="g_admin"
profile_scope="g_profile"
user_module_path="{MODULES}/user"
client_module_path="{MODULES}/client"
user_middleware_module_path="{work}/none"
user_auth_scheme_module_path="{MODULES}/scheme"
plugin_module_path="{MODULES}/plugin"
hash_algorithm="SHA512"
database = {{ type = "sqlite3"; path = "{db}"; }};
static_files_mime_types = (
{mime}
)
"""
    )

# IDP_ALG: the ID tokens' signature algorithm, and the key made for it.
alg = os.environ.get("IDP_ALG") or "RS256"
keys = {
    "RS256": ("rsa", "256", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
    "ES256": ("ecdsa", "256", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
    # Not ES384: Glewlwyd 2.7.5 publishes a P-384 key as `"alg": "ES512"`.
    "ES512": ("ecdsa", "512", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"]),
    "EdDSA": ("eddsa", "256", ["-algorithm", "ED25519"]),
}
if alg not in keys:
    sys.exit(f"IDP_ALG {alg!r}: expected one of {', '.join(keys)}")
jwt_type, key_size, keygen = keys[alg]
key = subprocess.run(["openssl", "genpkey", *keygen], check=True, capture_output=True, text=True).stdout
cert = subprocess.run(
    ["openssl", "pkey", "-pubout"], input=key, check=True, capture_output=True, text=True
).stdout



def die_with_parent():
    # PR_SET_PDEATHSIG: Glewlwyd gets SIGTERM when this fixture ends, even by SIGKILL.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


server = subprocess.Popen(
    [GLEWLWYD, f"--config-file={conf}"], stdout=sys.stderr, stderr=sys.stderr, preexec_fn=die_with_parent
)


def stop(*_):
    server.terminate()
    try:
        server.wait(5)
    except subprocess.TimeoutExpired:
        server.kill()
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)

base = f"http://127.0.0.1:{port}/api"
jar = http.cookiejar.CookieJar()
opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))


def api(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def must(method, path, body=None):
    status, text = api(method, path, body)
    if status != 200:
        stop_quietly()
        sys.exit(f"glewlwyd {method} {path}: {status} {text[:500]!r}")


def stop_quietly():
    server.terminate()
    shutil.rmtree(work, ignore_errors=True)


deadline = time.monotonic() + 20
while True:
    if server.poll() is not None:
        sys.exit(f"glewlwyd exited with {server.returncode} (see its log above)")
    try:
        if api("POST", "/auth/", {"username": "admin", "password": "password"})[0] == 200:
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        stop_quietly()
        sys.exit("glewlwyd did not answer within 20 s")
    time.sleep(0.1)

must("POST", "/scope/", {"name": "email", "display_name": "E-mail", "description": "Your e-mail address", "password_required": False, "scheme": {}})
must("POST", "/scope/", {"name": "profile", "display_name": "Profile", "description": "Your name", "password_required": False, "scheme": {}})
must("PUT", "/scope/openid", {"display_name": "Sign you in", "description": "Who you are", "password_required": True, "password_max_age": 0, "scheme": {}})
must(
    "POST",
    "/mod/plugin/",
    {
        "module": "oidc",
        "name": "oidc",
        "display_name": "OpenID Connect",
        "enabled": True,
        "parameters": {
            "iss": issuer,
            "jwt-type": jwt_type,
            "jwt-key-size": key_size,
            "key": key,
            "cert": cert,
            "access-token-duration": 3600,
            "refresh-token-duration": 1209600,
            "code-duration": 600,
            "refresh-token-rolling": True,
            "allow-non-oidc": False,
            "auth-type-code-enabled": True,
            "auth-type-token-enabled": False,
            "auth-type-id-token-enabled": True,
            "auth-type-none-enabled": False,
            "auth-type-password-enabled": False,
            "auth-type-client-enabled": False,
            # The IdP's own device flow, switched off: devicegate's takes its place.
            "auth-type-device-enabled": False,
            "auth-type-refresh-enabled": True,
            "scope": [],
            "additional-parameters": [],
            "claims": [],
            "jwks-show": True,
            "secret-type": "pairwise",
            "subject-type": "public",
            # One-time refresh tokens: each refresh returns a new one, as most IdPs do now.
            "refresh-token-one-use": "always",
            "name-claim": "on-demand",
            "name-claim-scope": ["profile"],
            "email-claim": "on-demand",
            "email-claim-scope": ["email"],
            "allowed-scope": ["openid", "email", "profile"],
            "pkce-allowed": True,
            "pkce-method-plain-allowed": False,
            "pkce-required": True,
            "pkce-required-public-client": True,
            "introspection-revocation-allowed": False,
            "register-client-allowed": False,
            "session-management-allowed": False,
        },
    },
)
for name in users:
    must(
        "POST",
        "/user/",
        {"username": name, "name": name.capitalize(), "email": f"{name}@example.test", "password": "password", "scope": ["openid", "email", "profile"], "enabled": True},
    )
for c in clients:
    secret = c.get("client_secret")
    must(
        "POST",
        "/client/",
        {
            "client_id": c["client_id"],
            "name": c["client_id"],
            "confidential": bool(secret),
            **({"client_secret": secret, "token_endpoint_auth_method": ["client_secret_basic", "client_secret_post"]} if secret else {}),
            "redirect_uri": c["redirect_uris"],
            "authorization_type": ["code", "refresh_token"],
            "scope": ["openid", "email", "profile"],
            "enabled": True,
        },
    )

print(f"IDP_READY {port}", flush=True)
try:
    server.wait()
finally:
    stop_quietly()
