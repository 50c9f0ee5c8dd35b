#!/usr/bin/env bash
# Start a Docker engine in the background when none answers, and wait until it does.
#
# Idempotent: when `docker info` already answers (a system service, a dockerd started earlier),
# it does nothing. Needs root and Debian's docker.io package (`apt-get install -y docker.io`).
# --iptables=false: CI machines may lack iptables; training containers use --network none anyway.
#
# Usage: scripts/start_dockerd.sh            (env: DOCKERD_LOG, default /var/log/pytrain-dockerd.log;
#                                             DOCKERD_WAIT_SECONDS, default 60)
set -euo pipefail

LOG="${DOCKERD_LOG:-/var/log/pytrain-dockerd.log}"
WAIT="${DOCKERD_WAIT_SECONDS:-60}"

if docker info >/dev/null 2>&1; then
    echo "start_dockerd: a Docker engine already answers"
    exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
    echo "start_dockerd: dockerd is not installed (apt-get install -y docker.io)" >&2
    exit 1
fi
if [ "$(id -u)" != "0" ]; then
    echo "start_dockerd: no Docker engine answers and only root can start dockerd" >&2
    exit 1
fi

# A dockerd that is starting (another caller was first) holds the pid file: wait for it instead.
if ! { [ -f /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; }; then
    rm -f /var/run/docker.pid
    echo "start_dockerd: starting dockerd (log: $LOG)"
    nohup dockerd --iptables=false --ip6tables=false --storage-driver=overlay2 >>"$LOG" 2>&1 </dev/null &
    disown || true
fi

for _ in $(seq 1 "$WAIT"); do
    if docker info >/dev/null 2>&1; then
        echo "start_dockerd: Docker engine is up"
        exit 0
    fi
    sleep 1
done
echo "start_dockerd: dockerd did not answer within ${WAIT}s; last log lines:" >&2
tail -n 20 "$LOG" >&2 || true
exit 1
