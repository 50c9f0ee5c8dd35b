# The orchestrator: a slim Python with only the orchestrator's dependencies. It never trains: it
# drives the host's Docker engine through the mounted /var/run/docker.sock, building the training
# image from the copy of docker/ and app/pytrain/ below and starting one container per task.
#
#   docker-compose build orchestrator        (or: docker build -f docker/orchestrator.Dockerfile .)
#
# The build context is the repository root, filtered by .dockerignore (an allow-list: a file this
# Dockerfile copies must be listed there). When docker/orchestrator-wheels/ holds wheels
# (scripts/build_wheelhouse.sh --orchestrator), PyTrain's dependencies install from it with
# --no-index, so the build works without a package index; BASE_IMAGE names another Python 3.11
# image (the tests use their local base image: no registry is reachable there).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md /app/
# docker/ as .dockerignore lets it through: the training image's build inputs (train.Dockerfile,
# requirements-train.txt, wheelhouse/; the orchestrator builds that image, content-hash tag, on
# demand) and the orchestrator's own wheels for offline builds.
COPY docker/ /app/docker/
COPY app/pytrain /app/app/pytrain
# Editable, so that pytrain finds its checkout root (/app: docker/, app/docker_components/cache/).
# Only the orchestrator's extra (pyproject.toml): no torch, no Triton server (Triton runs in its
# own container).
# The extras: docker-compose's mlflow service builds this file with "orchestrator,tracking".
ARG PYTRAIN_EXTRAS=orchestrator
RUN set -eu; \
    for f in train.Dockerfile requirements-train.txt; do \
        test -f "/app/docker/$f" || { echo "docker/$f is not in the build context: allow it in .dockerignore" >&2; exit 1; }; \
    done; \
    WHEELS=/app/docker/orchestrator-wheels; \
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then SOURCE="--no-index --find-links $WHEELS"; else SOURCE=""; fi; \
    python -m pip install $SOURCE -e "/app[$PYTRAIN_EXTRAS]"; \
    rm -rf "$WHEELS"; \
    mkdir -p /app/app/docker_components/cache /app/sources /app/model_repo /app/model_tasks /app/results

ENV PYTRAIN_RUNNER=docker \
    PYTRAIN_SOURCES_DIR=/app/sources \
    PYTRAIN_MODEL_REPO_DIR=/app/model_repo \
    PYTRAIN_MODEL_TASKS_DIR=/app/model_tasks \
    PYTRAIN_RESULTS_DIR=/app/results \
    PYTRAIN_DATA_DIR=/app/.pytrain

# Root: it needs the Docker socket (root-owned) and hands task folders to the training user.
ENTRYPOINT ["pytrain"]
CMD ["orchestrate"]
