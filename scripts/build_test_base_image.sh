#!/usr/bin/env bash
# Build the local stand-in for the NGC PyTorch image that the docker tests use as BASE_IMAGE.
#
# No container registry can be reached in CI, so the base is made from Debian's packages:
#   debootstrap (bookworm, minbase, python3 + python3-venv) -> a venv at /opt/venv holding the
#   CPU torch wheel from /opt/wheels and numpy<2 -> `docker import` as one layer.
# Like an NGC image, `python` on PATH already has torch. Cached: does nothing when the image exists.
#
# Usage: scripts/build_test_base_image.sh [IMAGE]   (default pytrain-test-base:bookworm-torch2.13.0-cpu)
# Env:   TORCH_WHEEL   the torch wheel (default /opt/wheels/torch-2.13.0+cpu-cp311-*.whl)
#        PYTHON        a host Python with pip, used to download torch's dependencies
#        DEBIAN_MIRROR default: the first URI in /etc/apt/sources.list.d/debian.sources
# Needs root, debootstrap and a running Docker engine (scripts/start_dockerd.sh). ~2-3 min, ~1 GB.
set -euo pipefail

IMAGE="${1:-pytrain-test-base:bookworm-torch2.13.0-cpu}"
ROOT_DIR="$(cd "$(dirname "$0")/.." && pwd)"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "build_test_base_image: $IMAGE exists, nothing to do"
    exit 0
fi

TORCH_WHEEL="${TORCH_WHEEL:-$(ls /opt/wheels/torch-2.13.0+cpu-cp311-*.whl 2>/dev/null | head -n 1)}"
if [ -z "$TORCH_WHEEL" ] || [ ! -f "$TORCH_WHEEL" ]; then
    echo "build_test_base_image: no torch wheel (set TORCH_WHEEL; expected /opt/wheels/torch-2.13.0+cpu-cp311-*.whl)" >&2
    exit 1
fi
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT_DIR/.venv/bin/python" ]; then PYTHON="$ROOT_DIR/.venv/bin/python"; else PYTHON=python3; fi
fi
if [ -z "${DEBIAN_MIRROR:-}" ]; then
    DEBIAN_MIRROR="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
fi

WORK="$(mktemp -d /var/tmp/pytrain-base.XXXXXX)"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
ROOTFS="$WORK/rootfs"
start=$(date +%s)
# The host's pip settings (find-links, extra indexes, cert paths) mean nothing inside the rootfs.
CHROOT() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$@"; }

echo "build_test_base_image: debootstrap bookworm from $DEBIAN_MIRROR"
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$ROOTFS" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log" >&2; exit 1; }

echo "build_test_base_image: downloading torch's dependencies (numpy<2)"
mkdir -p "$ROOTFS/tmp/wheels"
cp "$TORCH_WHEEL" "$ROOTFS/tmp/wheels/"
"$PYTHON" -m pip download --quiet --only-binary=:all: --dest "$ROOTFS/tmp/wheels" "$TORCH_WHEEL" "numpy<2"

echo "build_test_base_image: installing torch into /opt/venv"
CHROOT "$ROOTFS" /usr/bin/python3 -m venv /opt/venv
CHROOT "$ROOTFS" /opt/venv/bin/pip install --quiet --no-cache-dir --no-index --find-links /tmp/wheels \
    "/tmp/wheels/$(basename "$TORCH_WHEEL")" "numpy<2"
CHROOT "$ROOTFS" /opt/venv/bin/python -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)"

# Keep the image small: no wheels, apt lists, docs, C++ headers (nothing here compiles extensions).
rm -rf "$ROOTFS/tmp/wheels" "$ROOTFS/var/cache/apt/"* "$ROOTFS/var/lib/apt/lists/"* \
       "$ROOTFS/usr/share/doc" "$ROOTFS/usr/share/man" "$ROOTFS/usr/share/locale" "$ROOTFS/root/.cache" \
       "$ROOTFS"/opt/venv/lib/python3.11/site-packages/torch/include
find "$ROOTFS/opt/venv" -name __pycache__ -type d -prune -exec rm -rf {} +

echo "build_test_base_image: docker import -> $IMAGE"
tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'LABEL org.pytrain.test-base=1' \
    --change 'CMD ["python3"]' \
    - "$IMAGE" >/dev/null
echo "build_test_base_image: $IMAGE built in $(( $(date +%s) - start )) s"
