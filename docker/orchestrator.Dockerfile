# The orchestrator: a slim Python with only the orchestrator's dependencies. It never trains: it
# drives the host's Docker engine through the mounted /var/run/docker.sock, building the training
# image from the copy of docker/ and app/pytrain/ below and starting one container per task.
#
#   docker-compose build orchestrator        (or: docker build -f docker/orchestrator.Dockerfile .)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md /app/
# The training image's build inputs: the orchestrator builds it (content-hash tag) on demand.
COPY docker/train.Dockerfile docker/requirements-train.txt docker/wheelhouse* /app/docker/
RUN mkdir -p /app/docker/wheelhouse && (mv /app/docker/*.whl /app/docker/wheelhouse/ 2>/dev/null || true)
COPY app/pytrain /app/app/pytrain
# Editable, so that pytrain finds its checkout root (/app: docker/, app/docker_components/cache/).
# Only the orchestrator's extras: no torch, no Triton server (Triton runs in its own container).
RUN pip install -e "/app[docker]" "tritonclient[grpc]>=2.40" \
    && mkdir -p /app/app/docker_components/cache /app/sources /app/model_repo /app/model_tasks /app/results

ENV PYTRAIN_RUNNER=docker \
    PYTRAIN_SOURCES_DIR=/app/sources \
    PYTRAIN_MODEL_REPO_DIR=/app/model_repo \
    PYTRAIN_MODEL_TASKS_DIR=/app/model_tasks \
    PYTRAIN_RESULTS_DIR=/app/results \
    PYTRAIN_DATA_DIR=/app/.pytrain

# Root: it needs the Docker socket (root-owned) and hands task folders to the training user.
ENTRYPOINT ["pytrain"]
CMD ["orchestrate"]
