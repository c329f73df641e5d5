"""A third, independent OpenID Connect provider for devicegate's tests: django-oauth-toolkit
(PyPI), a real server used in production Django sites, run as one small Django project.

It plays an IdP without a device flow (its own device endpoints are not mounted), with an
issuer that has a path (`<IDP_ISSUER>` must end in `/o`, where the toolkit is mounted):
authorization code with PKCE S256 required, refresh tokens (rotated), userinfo, ID tokens
signed RS256 with a key made at start-up, confidential and public clients.

Environment (as tests/idp/idp.js):
  IDP_ISSUER   issuer URL ending in /o, e.g. http://127.0.0.1:8080/o (used verbatim as iss)
  IDP_PORT     port to listen on at 127.0.0.1 (0 = any free port)
  IDP_CLIENTS  JSON list of {client_id, client_secret?, redirect_uris}

Any user name and password log in (a development login page, fields `login` and `password`,
like oidc-provider's); the user is created at first login. No consent page: the gateway asked.
Prints one line `IDP_READY <port>` when it listens.

  python3 -m venv tests/idp3/.venv
  tests/idp3/.venv/bin/pip install --require-hashes -r tests/idp3/requirements.txt
  IDP_ISSUER=http://127.0.0.1:8080/o IDP_CLIENTS='[...]' tests/idp3/.venv/bin/python tests/idp3/idp.py
"""

import json
import os
import socketserver
import sys
import tempfile
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

issuer = os.environ.get("IDP_ISSUER", "")
if not issuer.endswith("/o"):
    sys.exit("IDP_ISSUER must end in /o, where the toolkit is mounted")
port = int(os.environ.get("IDP_PORT", "0"))
clients = json.loads(os.environ.get("IDP_CLIENTS", "[]"))

key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
pem = key.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
).decode()
db = os.path.join(tempfile.mkdtemp(prefix="idp3-"), "db.sqlite3")

import django  # noqa: E402
from django.conf import settings  # noqa: E402

settings.configure(
    DEBUG=False,
    SECRET_KEY="devicegate-test-idp3",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    # The gateway in front sets X-Forwarded-Proto and -Host.
    USE_X_FORWARDED_HOST=True,
    SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"),
    INSTALLED_APPS=[
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "oauth2_provider",
    ],
    MIDDLEWARE=[
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": db}},
    TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}],
    LOGIN_URL="/login/",
    CSRF_TRUSTED_ORIGINS=["http://127.0.0.1", "http://localhost"],
    DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    OAUTH2_PROVIDER={
        "OIDC_ENABLED": True,
        "OIDC_ISS_ENDPOINT": issuer,
        "OIDC_RSA_PRIVATE_KEY": pem,
        "PKCE_REQUIRED": True,
        "ROTATE_REFRESH_TOKEN": True,
        "SCOPES": {
            "openid": "OpenID Connect",
            "profile": "Profile",
            "email": "Email",
            "offline_access": "Offline access",
        },
        "OAUTH2_VALIDATOR_CLASS": "__main__.Validator",
    },
)
django.setup()

from django.contrib.auth import login as auth_login  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.http import HttpResponse, HttpResponseRedirect  # noqa: E402
from django.middleware.csrf import get_token  # noqa: E402
from django.urls import include, path  # noqa: E402
from django.utils.html import escape  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from oauth2_provider import urls as dot_urls  # noqa: E402
from oauth2_provider.models import get_application_model  # noqa: E402
from oauth2_provider.oauth2_validators import OAuth2Validator  # noqa: E402


class Validator(OAuth2Validator):
    """The user's claims: `sub` is the user name (as the other test IdPs do)."""

    oidc_claim_scope = None  # every claim for every scope: the tests read them all

    def get_additional_claims(self, request):
        user = request.user
        return {
            "name": f"User {user.username}",
            "email": f"{user.username}@example.test",
            "email_verified": True,
        }

    def get_oidc_claims(self, token, token_handler, request):
        claims = super().get_oidc_claims(token, token_handler, request)
        claims["sub"] = request.user.username
        return claims

    def get_userinfo_claims(self, request):
        claims = super().get_userinfo_claims(request)
        claims["sub"] = request.user.username
        return claims


def login(request):
    """A development login page: any user name and password."""
    if request.method == "POST":
        name = request.POST.get("login", "").strip() or "alice"
        user, _ = User.objects.get_or_create(username=name)
        auth_login(request, user)
        return HttpResponseRedirect(request.POST.get("next") or "/")
    nxt = escape(request.GET.get("next", "/"))
    token = get_token(request)
    html = (
        '<!doctype html><html lang="en"><title>Sign-in</title><main><h1>Sign in</h1>'
        '<form method="post"><input type="hidden" name="csrfmiddlewaretoken" value="'
        + token
        + '"><input type="hidden" name="next" value="'
        + nxt
        + '"><label>User <input name="login"></label>'
        + '<label>Password <input type="password" name="password"></label>'
        + '<button type="submit">Sign in</button></form></main></html>'
    )
    return HttpResponse(html)


# The toolkit without its own device-flow endpoints: this IdP has none.
toolkit = [
    p
    for p in dot_urls.urlpatterns
    if getattr(p, "name", "") not in ("device-authorization", "device", "device-confirm", "device-done")
    and "device" not in str(getattr(p, "pattern", ""))
]
urlpatterns = [
    path("login/", login),
    path("o/", include((toolkit, "oauth2_provider"), namespace="oauth2_provider")),
]

call_command("migrate", verbosity=0, interactive=False)
Application = get_application_model()
for c in clients:
    secret = c.get("client_secret")
    Application.objects.create(
        client_id=c["client_id"],
        client_secret=secret or "",
        hash_client_secret=False,
        client_type=Application.CLIENT_CONFIDENTIAL if secret else Application.CLIENT_PUBLIC,
        authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        redirect_uris=" ".join(c["redirect_uris"]),
        algorithm=Application.RS256_ALGORITHM,
        skip_authorization=True,
        name=c["client_id"],
    )


class Quiet(WSGIRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("idp3 " + (fmt % args) + "\n")


class Threaded(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


server = make_server("127.0.0.1", port, get_wsgi_application(), server_class=Threaded, handler_class=Quiet)
print(f"IDP_READY {server.server_port}", flush=True)
server.serve_forever()
