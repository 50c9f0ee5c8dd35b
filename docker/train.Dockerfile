# The training image: an NGC PyTorch image plus decord and PyTrain's training code.
#
#   docker build -f docker/train.Dockerfile -t pytrain-train:dev .          (repository root)
#   pytrain image build                     (what the docker runner does: content-hash tag, SDK)
#
# The base image's own torch (and numpy) are kept: NGC builds are tuned for their CUDA stack, so
# pip is constrained to the versions the base ships and fails rather than replacing them.
# When docker/wheelhouse/ holds wheels (scripts/build_wheelhouse.sh), everything installs from
# it with --no-index, so the build works without a package index.
# The NGC API key is never a build argument: the base image is pulled (with a registry login)
# before the build starts.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:24.10-py3
FROM ${BASE_IMAGE}

ARG PYTRAIN_UID=1000
ARG PYTRAIN_GID=1000

USER root
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Dependencies first (changes rarely), PyTrain's source last (changes often): a source change
# rebuilds only the last layers.
COPY docker/requirements-train.txt docker/wheelhouse* /tmp/pytrain-build/
RUN set -eu; \
    cd /tmp/pytrain-build; \
    python -m pip list --format=freeze 2>/dev/null | grep -iE '^(torch|numpy)==' > base-constraints.txt || true; \
    echo "keeping the base image's: $(tr '\n' ' ' < base-constraints.txt)"; \
    if ls ./*.whl >/dev/null 2>&1; then SOURCE="--no-index --find-links /tmp/pytrain-build"; else SOURCE=""; fi; \
    python -m pip install $SOURCE -c base-constraints.txt -r requirements-train.txt; \
    python -c "import decord, onnx, onnxruntime, matplotlib, tqdm, pydantic_settings, torch; print('torch', torch.__version__)"; \
    cd /; rm -rf /tmp/pytrain-build

# A non-root user; an NGC image may already have one with this uid (e.g. "ubuntu").
RUN (getent group "${PYTRAIN_GID}" >/dev/null || groupadd -g "${PYTRAIN_GID}" pytrain) \
    && (getent passwd "${PYTRAIN_UID}" >/dev/null || useradd -m -u "${PYTRAIN_UID}" -g "${PYTRAIN_GID}" -s /bin/sh pytrain)

COPY app/pytrain /opt/pytrain/pytrain
ENV PYTHONPATH=/opt/pytrain \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    MPLBACKEND=Agg

LABEL org.pytrain.component="train"
WORKDIR /tmp
USER ${PYTRAIN_UID}:${PYTRAIN_GID}
ENTRYPOINT ["python", "-m", "pytrain.training"]
