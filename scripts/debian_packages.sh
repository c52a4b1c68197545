# Sourced by the setup scripts: how they become root and install Debian packages.
#   use_sudo TAG           sets SUDO: empty as root, `sudo -n` otherwise (never waits for a password on a machine
#                          without a terminal, such as CI: it fails with sudo's message instead)
#   apt_install TAG PKG..  installs the packages (after an index update); TAG prefixes the messages
use_sudo() {
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
      echo "[$1] not root and no sudo: run this script as root once to install the packages" >&2
      exit 1
    fi
    SUDO=(sudo -n)
  fi
}

apt_install() {
  local tag=$1
  shift
  [ $# -gt 0 ] || return 0
  echo "[$tag] installing $# Debian packages: $*"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
