#!/usr/bin/env bash
# Install vlmkit into the active Python (>= 3.11) environment: `bash scripts/install.sh [EXTRAS]`.
#
# torch goes first and pinned: left to pip's resolver, a plain `torch` requirement pulls a CUDA
# build of several GB onto CPU machines.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${VLMKIT_TORCH:-torch==2.13.0}"

"$PYTHON" -m pip install --disable-pip-version-check -q "$TORCH_SPEC"
if [ -n "${1:-}" ]; then
  "$PYTHON" -m pip install --disable-pip-version-check -q -e ".[$1]"
else
  "$PYTHON" -m pip install --disable-pip-version-check -q -e .
fi
# pyenv only exposes new console scripts (`vlmkit`) after a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
# The browser tests drive Debian's chromium through Playwright (`playwright install` needs a download);
# the captioning tests run the COCO tokenizer and METEOR, which are Java programs.
if [ "${1:-}" = "test" ]; then
  PACKAGES=()
  NEEDED_BY=()
  if ! command -v chromium >/dev/null 2>&1; then
    PACKAGES+=(chromium)
    NEEDED_BY+=("the browser tests need chromium")
  fi
  if ! command -v java >/dev/null 2>&1 && [ ! -x "${JAVA_HOME:-/nonexistent}/bin/java" ]; then
    PACKAGES+=(default-jre-headless)
    NEEDED_BY+=("the captioning tests need Java")
  fi
  if [ "${#PACKAGES[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      PYTHON="$PYTHON" bash scripts/apt-install.sh "${PACKAGES[@]}"  # waits for another apt process's lock
    else
      for reason in "${NEEDED_BY[@]}"; do echo "install.sh: $reason" >&2; done
      echo "install.sh: sudo apt-get install -y ${PACKAGES[*]}" >&2
    fi
  fi
fi
