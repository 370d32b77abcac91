#!/usr/bin/env bash
# Install Debian packages for the tests: `bash scripts/apt-install.sh PACKAGE...` (as root).
#
# Another apt or dpkg process (unattended upgrades, a second install) holds dpkg's locks; apt-get
# would fail at once. Wait for it instead, up to VLMKIT_APT_WAIT seconds (default 600), saying what
# is waited for; apt's own lock timeout covers the moment between the check and apt-get taking it.
set -euo pipefail
WAIT="${VLMKIT_APT_WAIT:-600}"
# dpkg and apt take fcntl (POSIX) locks on these files; flock(1) does not see them, so Python asks.
LOCKS="${VLMKIT_APT_LOCKS:-/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock /var/cache/apt/archives/lock}"
PYTHON="${PYTHON:-python3}"

held() {  # exit 0 when another process holds the lock on $1
  "$PYTHON" - "$1" <<'PY'
import fcntl, sys
try:
    with open(sys.argv[1], "a") as f:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(0)
except OSError:
    pass  # cannot open it: not ours to judge, apt-get will say
sys.exit(1)
PY
}

for lock in $LOCKS; do
  [ -e "$lock" ] || continue
  if held "$lock"; then
    echo "install.sh: another apt or dpkg process holds $lock; waiting for it (up to ${WAIT} s)..." >&2
    waited=0
    while held "$lock"; do
      if [ "$waited" -ge "$WAIT" ]; then
        echo "install.sh: $lock is still held after ${WAIT} s; let that process finish, then run this again" >&2
        exit 1
      fi
      sleep 2
      waited=$((waited + 2))
    done
    echo "install.sh: $lock is free after ${waited} s" >&2
  fi
done
apt-get -o "DPkg::Lock::Timeout=${WAIT}" update -qq
DEBIAN_FRONTEND=noninteractive apt-get -o "DPkg::Lock::Timeout=${WAIT}" install -y -qq "$@" >/dev/null
