# Sourced by scripts/demo.sh and scripts/test.sh: installs Debian packages that are missing.
#
#   need_packages "./scripts/demo.sh" cmake nodejs npm ...
#
# As root it runs `apt-get update` once and installs what is missing. Otherwise it stops and
# names the one command that installs them.

# Whether a package's program is there. A newer nodejs/npm or pip from elsewhere counts.
package_present() {
  case "$1" in
    nodejs) command -v node >/dev/null ;;
    npm) command -v npm >/dev/null ;;
    cmake) command -v cmake >/dev/null ;;
    build-essential) command -v cc >/dev/null && command -v make >/dev/null ;;
    pkg-config) command -v pkg-config >/dev/null ;;
    curl) command -v curl >/dev/null ;;
    nginx-light) [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null ;;
    python3-pip) python3 -m pip --version >/dev/null 2>&1 ;;
    python3-venv) python3 -m venv --help >/dev/null 2>&1 ;;
    *) dpkg -s "$1" >/dev/null 2>&1 ;;
  esac
}

need_packages() {
  local script=$1
  shift
  local missing=()
  for p in "$@"; do
    package_present "$p" || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ]; then
    echo "==> apt-get update && apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "missing: ${missing[*]}. Install them with this one command, then run $script again:" >&2
    echo "  sudo sh -c 'apt-get update && apt-get install -y --no-install-recommends ${missing[*]}'" >&2
    exit 1
  fi
}
