#!/usr/bin/env bash
# Set up everything the course needs, idempotently: a virtual environment (.venv), PyTorch,
# labsupport with its extras (EXTRAS, default test,grading,browser,lab4), the offline datasets, and with
# --test also the smol extra, the SmolLM2 model file and Debian's chromium for the browser test.
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
P="$VENV/bin/python"

if [ ! -x "$P" ]; then
  echo "==> creating $VENV"
  "$PY" -m venv "$VENV"
fi

if ! "$P" -c "import torch, torchvision" 2>/dev/null; then
  # A matching torch/torchvision pair; override with TORCH_SPEC="torch==X torchvision==Y".
  case "$(uname -m)" in
    x86_64)        default_spec="torch==2.14.1 torchvision==0.29.1" ;;
    aarch64|arm64) default_spec="torch==2.9.1 torchvision==0.24.1" ;;
    *)             default_spec="torch torchvision" ;;
  esac
  echo "==> installing ${TORCH_SPEC:-$default_spec} (a few minutes, once)"
  # shellcheck disable=SC2086
  "$P" -m pip install -q ${TORCH_SPEC:-$default_spec} 2>&1 | { grep -v "is ignored: it is neither" || true; }
fi

DEFAULT_EXTRAS=test,grading,browser,lab4
# the test run also checks Lab 3's optional SmolLM2 path on the CPU (its GPU experiment is skipped)
[ "${1:-}" = "--test" ] && DEFAULT_EXTRAS="$DEFAULT_EXTRAS,smol"
EXTRAS=${EXTRAS:-$DEFAULT_EXTRAS}
echo "==> installing labsupport and its dependencies (extras: $EXTRAS)"
"$P" -m pip install -q -e ".[$EXTRAS]" 2>&1 | { grep -v "is ignored: it is neither" || true; }

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo -n"
apt_install() {  # apt_install PACKAGE...: install Debian packages as root or with password-less sudo
  command -v apt-get >/dev/null || return 1
  $SUDO apt-get install -y -q "$@" >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q "$@" >/dev/null 2>&1; }
}

# Fashion-MNIST ships as a Debian package (offline); everything else is bundled or downloaded.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  echo "==> installing Debian's dataset-fashion-mnist"
  apt_install dataset-fashion-mnist \
    || echo "    could not install it (no root?). Run: sudo apt-get install dataset-fashion-mnist"
fi

# The browser test (tests/test_browser.py) drives Debian's chromium; only `make test` asks for it.
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
  echo "==> installing Debian's chromium for the browser test"
  apt_install chromium || echo "    could not install chromium; the browser test will be skipped"
fi

echo "==> preparing datasets"
"$VENV/bin/labsupport" data prepare fashion-mnist digits vader
if [ "${1:-}" = "--test" ] && [[ ",$EXTRAS," == *",smol,"* ]]; then
  "$VENV/bin/labsupport" data prepare smollm2 \
    || echo "    could not fetch SmolLM2 (98 MB, once); its model tests will be skipped"
fi
