#!/usr/bin/env bash
# RFC 8628 device flow with oidc-agent (Debian package oidc-agent-cli: oidc-agent, oidc-gen,
# oidc-token), run non-interactively against devicegate.
#
# Usage:
#   tests/clients/oidc_agent.sh [ISSUER [CLIENT_ID [SCOPE]]]
# Arguments win over the environment:
#   DG_ISSUER         the gateway's public URL = the issuer (e.g. http://localhost:8080)
#   DG_CLIENT_ID      the device client's client_id
#   DG_CLIENT_SECRET  the client secret; oidc-gen requires one, so a public client runs with an
#                     empty secret (oidc-agent then sends "Authorization: Basic base64(id:)")
#   DG_SCOPE          default "openid profile offline_access" (offline_access: refresh token)
#   DG_ID_TOKEN_ON_REFRESH  0: the IdP returns no ID token on refresh; do not ask for one
#   DG_TIMEOUT        give up after this many seconds overall (default 300)
#   DG_POLL_TOO_FAST  set to 1 to send one extra poll with the agent's device code 1 s after the
#                     agent's first poll (a second poller), so the agent gets slow_down (§3.5)
#   DG_KEEP           set to 1 to keep the temporary directory (agent debug log, oidc-gen output)
#
# Needs: oidc-agent-cli (apt-get install oidc-agent-cli; tested with 4.2.6), jq, setsid.
#
# What it does: starts a private oidc-agent (throwaway HOME and OIDC_CONFIG_DIR in a temporary
# directory, its own socket, --debug log kept there), then
#   oidc-gen dg --iss=ISSUER --client-id=ID --client-secret=SECRET --scope=SCOPE --flow=device
#            --pw-env --confirm-default --no-url-call --prompt=none
# which discovers the endpoints from ISSUER/.well-known/openid-configuration (it needs
# token_endpoint and device_authorization_endpoint there), POSTs the device authorization
# request, prints the user code, and has the agent poll the token endpoint every `interval`
# seconds. After approval:
#   oidc-token dg            the access token from the device-code response (cached by the agent)
#   oidc-token --id-token dg the ID token (the agent runs with --always-allow-idtoken)
#   oidc-token -f dg         forces a new access token: the agent sends a refresh_token grant
#                            (oidc-agent always mints access tokens from its refresh token; it
#                            keeps no other credential)
#
# Output on stdout, one line each:
#   USER_CODE <user_code> <verification_uri>
#       as soon as oidc-gen shows the code (oidc-gen prints only verification_uri and the code as
#       text; verification_uri_complete only goes into a QR code, so the fourth field is absent:
#       type the code on the page);
#   then a JSON object: {"ok":true,"client":"oidc-agent 4.2.6","access_token_len":N,
#       "id_token":true,"sub":"...","refresh_ok":true,...}
#       or {"ok":false,"stage":"...","error":"..."} with exit status 1 (the agent's debug log and
#       oidc-gen's messages go to stderr then).
set -euo pipefail

issuer=${1:-${DG_ISSUER:-}}
client_id=${2:-${DG_CLIENT_ID:-}}
scope=${3:-${DG_SCOPE:-openid profile offline_access}}
secret=${DG_CLIENT_SECRET:-}
timeout_s=${DG_TIMEOUT:-300}
issuer=${issuer%/}

version="oidc-agent $(oidc-gen --version 2>/dev/null | awk '{print $2}' || true)"

# Device-code polls the agent sent, and slow_down answers it got, from its debug log.
count_polls() { grep -c 'Data to send: grant_type=urn:ietf:params:oauth:grant-type:device_code' "$work/agent.log" 2>/dev/null || true; }
count_slow_downs() { grep -c 'Response: {"error":"slow_down"' "$work/agent.log" 2>/dev/null || true; }

fail() { # stage error
  local polls=0 slow_downs=0
  if [ -n "${work:-}" ]; then polls=$(count_polls); slow_downs=$(count_slow_downs); fi
  jq -cn --arg client "$version" --arg stage "$1" --arg error "$2" \
    --argjson polls "${polls:-0}" --argjson slow_downs "${slow_downs:-0}" \
    '{ok:false, client:$client, stage:$stage, error:$error, polls:$polls, slow_downs:$slow_downs}'
  echo "oidc_agent.sh: $1: $2" >&2
  if [ -n "${work:-}" ]; then
    [ -f "$work/gen.err" ] && { echo "--- oidc-gen stderr" >&2; grep -av $'\e' "$work/gen.err" >&2 || true; }
    [ -f "$work/gen.out" ] && { echo "--- oidc-gen stdout" >&2; cat "$work/gen.out" >&2; }
    [ -f "$work/agent.log" ] && { echo "--- oidc-agent log (last 60 lines)" >&2; tail -n 60 "$work/agent.log" | cut -c1-400 >&2; }
  fi
  exit 1
}

for tool in oidc-agent oidc-gen oidc-token jq setsid; do
  command -v "$tool" >/dev/null || { echo "{\"ok\":false,\"stage\":\"setup\",\"error\":\"$tool not found (apt-get install oidc-agent-cli jq)\"}"; exit 1; }
done
[ -n "$issuer" ] && [ -n "$client_id" ] || fail args "usage: oidc_agent.sh ISSUER CLIENT_ID [SCOPE] (or DG_ISSUER, DG_CLIENT_ID)"

work=$(mktemp -d "${TMPDIR:-/tmp}/dg-oidc-agent.XXXXXX")
agent_pid=
gen_pid=
cleanup() {
  [ -n "$gen_pid" ] && kill "$gen_pid" 2>/dev/null || true
  # The agent forks once; both processes are in the group setsid made for it.
  [ -n "$agent_pid" ] && kill -- "-$agent_pid" 2>/dev/null || true
  if [ "${DG_KEEP:-0}" = 1 ]; then echo "oidc_agent.sh: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# A private agent: nothing of the caller's oidc-agent setup is read or touched.
export HOME="$work/home"
export OIDC_CONFIG_DIR="$work/home/.config/oidc-agent"
mkdir -p "$OIDC_CONFIG_DIR"
unset OIDC_SOCK OIDCD_PID OIDC_REMOTE_SOCK OIDC_ENCRYPTION_PW
setsid oidc-agent --console --debug --log-stderr --always-allow-idtoken --no-autoreauthenticate \
  -a "$work/agent.sock" >"$work/agent.out" 2>"$work/agent.log" </dev/null &
agent_pid=$!
for _ in $(seq 1 100); do [ -S "$work/agent.sock" ] && break; sleep 0.1; done
[ -S "$work/agent.sock" ] || fail agent "oidc-agent did not create its socket"
export OIDC_SOCK="$work/agent.sock"

# oidc-gen: device flow, no prompts (--prompt=none fails instead of asking), no browser. The
# account is saved in the throwaway OIDC_CONFIG_DIR, encrypted with a throwaway password
# (--pw-env): oidc-token --id-token in 4.2.6 asks a *remote* agent (OIDC_REMOTE_SOCK) for any
# short name without an account file, so --no-save would break the ID token request.
OIDC_ENCRYPTION_PW=$(head -c 18 /dev/urandom | base64)
export OIDC_ENCRYPTION_PW
timeout "$timeout_s" oidc-gen dg --iss="$issuer" --client-id="$client_id" --client-secret="$secret" \
  --scope="$scope" --flow=device --pw-env --confirm-default --no-url-call --prompt=none \
  >"$work/gen.out" 2>"$work/gen.err" </dev/null &
gen_pid=$!

# oidc-gen prints (to stderr): "Using a browser on any device, visit:\n<uri>\n\nAnd enter the code: <code>"
user_code= uri=
for _ in $(seq 1 600); do
  if grep -aq 'enter the code:' "$work/gen.err" 2>/dev/null; then
    user_code=$(grep -ao 'enter the code: [^[:space:]]*' "$work/gen.err" | head -n1 | awk '{print $4}')
    uri=$(grep -a -A1 'visit:' "$work/gen.err" | sed -n 2p | tr -d '\r')
    break
  fi
  kill -0 "$gen_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$user_code" ]; then
  gen_rc=0; wait "$gen_pid" || gen_rc=$?; gen_pid=
  fail device_authorization "oidc-gen showed no user code (exit $gen_rc): $(grep -av $'\e' "$work/gen.err" | grep -a . | tail -n 3 | tr '\n' ' ')"
fi
echo "USER_CODE $user_code $uri"

# DG_POLL_TOO_FAST=1: one extra poll with the agent's device code, 1 s after the agent's first
# poll, as a second poller (or a clock-skewed instance) would cause: the gateway answers it
# slow_down and raises the grant's interval by 5 s; oidc-agent itself adds only 1 s per slow_down.
if [ "${DG_POLL_TOO_FAST:-0}" = 1 ]; then
  (
    for _ in $(seq 1 600); do grep -aq 'Response: {"error":"authorization_pending"' "$work/agent.log" && break; sleep 0.1; done
    sleep 1
    dc=$(grep -ao '"device_code":"[^"]*"' "$work/agent.log" | head -n1 | cut -d'"' -f4)
    te=$(curl -sS --max-time 15 "$issuer/.well-known/openid-configuration" | jq -r .token_endpoint)
    echo "extra poll at $(date +%T):"
    curl -sS --max-time 15 -u "$client_id:$secret" --data-urlencode "grant_type=urn:ietf:params:oauth:grant-type:device_code" \
      --data-urlencode "device_code=$dc" "$te"
  ) >"$work/extra_poll.out" 2>&1 &
fi

gen_rc=0; wait "$gen_pid" || gen_rc=$?; gen_pid=
if [ "$gen_rc" -eq 124 ]; then
  fail poll "oidc-gen got no tokens within DG_TIMEOUT=${timeout_s}s (it was still polling)"
elif [ "$gen_rc" -ne 0 ] || ! grep -q 'Everything setup correctly' "$work/gen.out"; then
  fail poll "oidc-gen exited $gen_rc: $(grep -av $'\e' "$work/gen.err" | grep -a . | grep -v 'QR code\|visit:\|enter the code\|^http' | tail -n 3 | tr '\n' ' ')"
fi
polls=$(count_polls)
slow_downs=$(count_slow_downs)

# The access token from the device-code response (the agent caches it).
at1=$(oidc-token dg 2>"$work/token1.err") || fail token "oidc-token dg: $(cat "$work/token1.err")"
[ -n "$at1" ] || fail token "oidc-token dg printed no access token"
exp=$(oidc-token -e dg 2>/dev/null || true)
iss_agent=$(oidc-token -i dg 2>/dev/null || true)

# The ID token.
# (oidc-agent gets a fresh ID token with a refresh_token grant, so with DG_ID_TOKEN_ON_REFRESH=0,
# for an IdP whose refresh answers carry none, which OpenID Connect Core §12.2 allows, it is
# not asked for.)
idt=
if [ "${DG_ID_TOKEN_ON_REFRESH:-1}" != 0 ]; then
  idt=$(oidc-token --id-token dg 2>"$work/idt.err") || fail id_token "oidc-token --id-token dg (a refresh_token grant): $(cat "$work/idt.err")"
fi
claims='{}'
if [ -n "$idt" ]; then
  payload=$(printf '%s' "$idt" | cut -d. -f2 | tr '_-' '/+')
  while [ $(( ${#payload} % 4 )) -ne 0 ]; do payload="$payload="; done
  claims=$(printf '%s' "$payload" | base64 -d 2>/dev/null) || fail id_token "the ID token is not a JWT"
  jq -e --arg iss "$issuer" --arg aud "$client_id" \
    '.iss == $iss and ((.aud | if type == "array" then . else [.] end) | index($aud) != null)' \
    >/dev/null <<<"$claims" || fail id_token "iss/aud mismatch: $(jq -c '{iss,aud}' <<<"$claims")"
fi

# A forced new access token: the agent's refresh_token grant through the gateway.
refreshes_before=$(grep -c 'Data to send: grant_type=refresh_token' "$work/agent.log" || true)
at2=$(oidc-token -f dg 2>"$work/token2.err") || fail refresh "oidc-token -f dg: $(cat "$work/token2.err")"
refreshes_after=$(grep -c 'Data to send: grant_type=refresh_token' "$work/agent.log" || true)
[ -n "$at2" ] || fail refresh "oidc-token -f dg printed no access token: $(cat "$work/token2.err")"
[ "$refreshes_after" -gt "$refreshes_before" ] || fail refresh "oidc-token -f dg sent no refresh_token grant (see the agent log)"
[ "$at2" != "$at1" ] || fail refresh "the forced new access token equals the first one"

jq -cn --arg client "$version" --argjson polls "${polls:-0}" --argjson slow_downs "${slow_downs:-0}" \
  --argjson at1 "${#at1}" --argjson at2 "${#at2}" --arg idt "$idt" --argjson claims "$claims" \
  --arg exp "$exp" --arg iss "$iss_agent" --argjson refreshes "$((refreshes_after))" '{
    ok: true, client: $client, polls: $polls, slow_downs: $slow_downs,
    access_token_len: $at1, expires_at: ($exp | tonumber? // null), agent_issuer: $iss,
    id_token: ($idt != ""), sub: $claims.sub,
    refresh_token: true, refresh_ok: true, refresh_grants: $refreshes,
    refreshed_access_token_len: $at2, refreshed_differs: true
  }'
