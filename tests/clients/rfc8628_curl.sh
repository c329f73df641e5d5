#!/usr/bin/env bash
# RFC 8628 device flow, followed literally with curl and jq: the reference client the library
# drivers are compared with.
#
# Usage:
#   tests/clients/rfc8628_curl.sh [ISSUER [CLIENT_ID [SCOPE]]]
# Arguments win over the environment:
#   DG_ISSUER         the gateway's public URL = the issuer (e.g. http://localhost:8080)
#   DG_CLIENT_ID      the device client's client_id
#   DG_CLIENT_SECRET  optional; when set the client authenticates with HTTP Basic
#                     (client_secret_basic, RFC 6749 §2.3.1: id and secret form-urlencoded, then
#                     base64) and sends no client_id in the body; unset = public client
#                     (client_id in the body, RFC 8628 §3.1 / §3.4)
#   DG_SCOPE          default "openid profile offline_access" (offline_access: refresh token)
#   DG_TIMEOUT        give up after this many seconds overall (default 300)
#   DG_POLL_TOO_FAST  set to 1 to send the second poll 0.5 s after the first instead of one
#                     interval later, to exercise slow_down handling (§3.5)
#
# Needs: curl, jq.
#
# Steps:
#   1. GET ISSUER/.well-known/openid-configuration (OpenID Connect Discovery §4); the document's
#      issuer must equal ISSUER (§4.3); device_authorization_endpoint (RFC 8628 §4) and
#      token_endpoint must be there.
#   2. POST the device authorization request (§3.1), form-encoded: client_id (public clients),
#      scope. The response (§3.2) must be 200 JSON with device_code, user_code,
#      verification_uri, expires_in; interval defaults to 5.
#   3. Poll the token endpoint (§3.4) every `interval` seconds, the first poll one interval after
#      the response: grant_type=urn:ietf:params:oauth:grant-type:device_code, device_code,
#      client_id (public clients). authorization_pending: go on; slow_down: interval += 5 for
#      this and every later poll (§3.5); access_denied, expired_token or any other error: stop.
#      Give up after the first poll past expires_in (or DG_TIMEOUT) that is still pending.
#   4. refresh_token grant (RFC 6749 §6) at the token endpoint with the refresh token received.
#   Token responses are also checked for Cache-Control: no-store (RFC 6749 §5.1) and a JSON
#   content type.
#
# Output on stdout, one line each:
#   USER_CODE <user_code> <verification_uri> [<verification_uri_complete>]
#       as soon as the device authorization response arrives (the last field is absent when the
#       server sent no verification_uri_complete);
#   then a JSON object: {"ok":true,"client":"rfc8628_curl (curl X)","access_token_len":N,
#       "id_token":true,"refresh_token":true,"refresh_ok":true,...}
#       or {"ok":false,"stage":"...","error":"...",...} with exit status 1.
set -euo pipefail

issuer=${1:-${DG_ISSUER:-}}
client_id=${2:-${DG_CLIENT_ID:-}}
scope=${3:-${DG_SCOPE:-openid profile offline_access}}
secret=${DG_CLIENT_SECRET:-}
timeout_s=${DG_TIMEOUT:-300}
issuer=${issuer%/}
DEVICE_GRANT=urn:ietf:params:oauth:grant-type:device_code

for tool in curl jq; do
  command -v "$tool" >/dev/null || { echo "{\"ok\":false,\"stage\":\"setup\",\"error\":\"$tool not found (apt-get install curl jq)\"}"; exit 1; }
done
client="rfc8628_curl (curl $(curl --version | awk 'NR==1{print $2}'))"

work=$(mktemp -d "${TMPDIR:-/tmp}/dg-rfc8628.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Counters reported in the final line (and in failures).
polls=0 pending=0 slow_downs=0

fail() { # stage error [extra JSON object]
  local extra=${3:-}
  [ -n "$extra" ] || extra='{}'
  jq -cn --arg client "$client" --arg stage "$1" --arg error "$2" --argjson extra "$extra" \
    --argjson polls "$polls" \
    '{ok:false, client:$client, stage:$stage, error:$error, polls:$polls} + $extra'
  echo "rfc8628_curl.sh: $1: $2" >&2
  exit 1
}
[ -n "$issuer" ] && [ -n "$client_id" ] || fail args "usage: rfc8628_curl.sh ISSUER CLIENT_ID [SCOPE] (or DG_ISSUER, DG_CLIENT_ID)"

# RFC 6749 §2.3.1: client_id and secret are application/x-www-form-urlencoded before Basic.
form_encode() { jq -rn --arg v "$1" '$v | @uri'; }
auth_args=()
if [ -n "$secret" ]; then
  basic=$(printf '%s:%s' "$(form_encode "$client_id")" "$(form_encode "$secret")" | base64 -w0)
  auth_args=(-H "Authorization: Basic $basic")
fi

# post URL field=value...: form-encoded POST; sets $status, body in $work/body, headers in $work/headers.
post() {
  local url=$1; shift
  local args=()
  for kv in "$@"; do args+=(--data-urlencode "$kv"); done
  status=$(curl -sS --max-time 15 -o "$work/body" -D "$work/headers" -w '%{http_code}' \
    -H 'Accept: application/json' "${auth_args[@]}" "${args[@]}" "$url") || status=000
}
body_json() { jq -ce 'if type == "object" then . else error("not an object") end' "$work/body" 2>/dev/null; }
header() { grep -i "^$1:" "$work/headers" | tail -n1 | cut -d: -f2- | tr -d '\r' | sed 's/^ *//'; }
client_id_param=()
[ -n "$secret" ] || client_id_param=("client_id=$client_id")

deadline=$(( $(date +%s) + timeout_s ))

# 1. Discovery.
status=$(curl -sS --max-time 15 -o "$work/body" -w '%{http_code}' "$issuer/.well-known/openid-configuration") || status=000
[ "$status" = 200 ] || fail discovery "HTTP $status" "{\"body\":$(jq -Rs . "$work/body")}"
meta=$(body_json) || fail discovery "the discovery document is not a JSON object"
[ "$(jq -r '.issuer // ""' <<<"$meta")" = "$issuer" ] || fail discovery "issuer mismatch: document says $(jq -c .issuer <<<"$meta"), expected \"$issuer\""
dae=$(jq -r '.device_authorization_endpoint // ""' <<<"$meta")
token_endpoint=$(jq -r '.token_endpoint // ""' <<<"$meta")
[ -n "$dae" ] || fail discovery "no device_authorization_endpoint in the discovery document"
[ -n "$token_endpoint" ] || fail discovery "no token_endpoint in the discovery document"

# 2. Device authorization request (§3.1) and response (§3.2).
post "$dae" "${client_id_param[@]}" "scope=$scope"
da=$(body_json) || fail device_authorization "HTTP $status, not a JSON object" "{\"body\":$(jq -Rs . "$work/body")}"
[ "$status" = 200 ] || fail device_authorization "HTTP $status" "{\"body\":$da}"
for key in device_code user_code verification_uri expires_in; do
  jq -e --arg k "$key" 'has($k)' >/dev/null <<<"$da" || fail device_authorization "response lacks $key (RFC 8628 §3.2)" "{\"body\":$da}"
done
device_code=$(jq -r .device_code <<<"$da")
user_code=$(jq -r .user_code <<<"$da")
verification_uri=$(jq -r .verification_uri <<<"$da")
verification_uri_complete=$(jq -r '.verification_uri_complete // ""' <<<"$da")
expires_in=$(jq -r '.expires_in' <<<"$da")
interval=$(jq -r '.interval // 5' <<<"$da")
line="USER_CODE $user_code $verification_uri $verification_uri_complete"
echo "${line% }"

code_deadline=$(( $(date +%s) + expires_in ))
[ "$code_deadline" -lt "$deadline" ] && deadline=$code_deadline

# 3. Poll (§3.4, §3.5).
token=
too_fast=${DG_POLL_TOO_FAST:-0}
while [ -z "$token" ]; do
  if [ "$too_fast" = 1 ] && [ "$polls" = 1 ]; then
    too_fast=0
    sleep 0.5  # deliberately early (DG_POLL_TOO_FAST): expect slow_down
  else
    sleep "$interval"
  fi
  polls=$((polls + 1))
  post "$token_endpoint" "grant_type=$DEVICE_GRANT" "device_code=$device_code" "${client_id_param[@]}"
  resp=$(body_json) || fail poll "HTTP $status, not a JSON object" "{\"body\":$(jq -Rs . "$work/body")}"
  if [ "$status" = 200 ] && jq -e '.access_token | type == "string" and length > 0' >/dev/null <<<"$resp"; then
    token=$resp
    token_cache_control=$(header Cache-Control)
    token_content_type=$(header Content-Type)
    break
  fi
  error=$(jq -r '.error // ""' <<<"$resp")
  case "$error" in
    authorization_pending) pending=$((pending + 1)) ;;
    slow_down) slow_downs=$((slow_downs + 1)); interval=$((interval + 5)) ;;
    *) fail poll "${error:-HTTP $status without an error code}" \
         "$(jq -c --arg s "$status" '{status: ($s | tonumber), description: .error_description}' <<<"$resp")" ;;
  esac
  # Checked after the poll, so the server's own expired_token is seen when it sends one.
  [ "$(date +%s)" -le "$deadline" ] || fail poll "gave up: expires_in or DG_TIMEOUT passed" "{\"interval\":$interval}"
done

result=$(jq -c --arg client "$client" --argjson polls "$polls" --argjson pending "$pending" \
  --argjson slow_downs "$slow_downs" --argjson interval "$interval" \
  --arg cc "$token_cache_control" --arg ct "$token_content_type" '{
    ok: true, client: $client, polls: $polls, pending: $pending, slow_downs: $slow_downs,
    final_interval: $interval,
    token_type: .token_type, access_token_len: (.access_token | length), expires_in: .expires_in,
    scope: .scope, id_token: ((.id_token // "") != ""), refresh_token: ((.refresh_token // "") != ""),
    no_store: ($cc | test("no-store"; "i")), json_content_type: ($ct | test("^application/json"; "i"))
  }' <<<"$token")
jq -e '.token_type | ascii_downcase == "bearer"' >/dev/null <<<"$token" || fail token "token_type is not Bearer" "$result"
jq -e '.no_store and .json_content_type' >/dev/null <<<"$result" || fail token "token response lacks Cache-Control: no-store or a JSON content type (RFC 6749 §5.1)" "$result"

# The ID token's claims (not verified here: the authlib driver checks the signature).
id_token=$(jq -r '.id_token // ""' <<<"$token")
if [ -n "$id_token" ]; then
  payload=$(printf '%s' "$id_token" | cut -d. -f2 | tr '_-' '/+')
  while [ $(( ${#payload} % 4 )) -ne 0 ]; do payload="$payload="; done
  claims=$(printf '%s' "$payload" | base64 -d 2>/dev/null | jq -ce .) || fail id_token "the ID token is not a JWT" "$result"
  jq -e --arg iss "$issuer" --arg aud "$client_id" \
    '.iss == $iss and ((.aud | if type == "array" then . else [.] end) | index($aud) != null)' \
    >/dev/null <<<"$claims" || fail id_token "iss/aud mismatch: $(jq -c '{iss,aud}' <<<"$claims")" "$result"
  result=$(jq -c --argjson c "$claims" '. + {sub: $c.sub}' <<<"$result")
fi

# 4. refresh_token grant (RFC 6749 §6).
refresh_token=$(jq -r '.refresh_token // ""' <<<"$token")
if [ -n "$refresh_token" ]; then
  post "$token_endpoint" "grant_type=refresh_token" "refresh_token=$refresh_token" "${client_id_param[@]}"
  refreshed=$(body_json) || fail refresh "HTTP $status, not a JSON object" "$(jq -c --arg b "$(cat "$work/body")" '. + {body: $b}' <<<"$result")"
  [ "$status" = 200 ] && jq -e '.access_token | type == "string" and length > 0' >/dev/null <<<"$refreshed" \
    || fail refresh "HTTP $status: $(jq -r '.error // "no access_token"' <<<"$refreshed")" \
         "$(jq -c --argjson r "$refreshed" '. + {response: $r}' <<<"$result")"
  result=$(jq -c --argjson r "$refreshed" --arg old "$(jq -r .access_token <<<"$token")" \
    '. + {refresh_ok: true, refreshed_access_token_len: ($r.access_token | length),
          refreshed_differs: ($r.access_token != $old)}' <<<"$result")
else
  result=$(jq -c '. + {refresh_ok: false}' <<<"$result")
  case " $scope " in
    *" offline_access "*) fail token "offline_access was asked for but no refresh_token came" "$result" ;;
  esac
fi
echo "$result"
