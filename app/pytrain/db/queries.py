"""Every SQL statement of the task queue, in one place, with bound parameters only.

Times come from the database clock (``now()``), never from a worker's clock, so workers on hosts
with skewed clocks agree on whether a lease expired. A run of a task is identified by
``(id, worker_id, started_at)``: ``started_at`` is set at each claim, so a worker whose lease
expired (and whose task was claimed again, even by a worker with the same id) can no longer renew
or finish it.
"""

from __future__ import annotations

from sqlalchemy import text

_LEASE = "now() + CAST(:lease_seconds AS double precision) * interval '1 second'"
_RUN = "id = :task_id AND worker_id = :worker_id AND started_at = :started_at"

#: Claim the next queued task (highest priority, then oldest) for ``:worker_id``.
#: ``SKIP LOCKED`` lets concurrent workers claim different tasks without waiting on each other.
CLAIM = text(f"""
UPDATE training_tasks AS t
SET status = 'running',
    worker_id = :worker_id,
    started_at = now(),
    finished_at = NULL,
    heartbeat_at = now(),
    lease_expires_at = {_LEASE},
    error = NULL
FROM (
    SELECT id FROM training_tasks
    WHERE status = 'queued'
    ORDER BY priority DESC, created_at, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
) AS next
WHERE t.id = next.id
RETURNING t.*
""")

#: Renew the lease of a run and copy its latest progress; no row back means the run is no longer ours.
HEARTBEAT = text(f"""
UPDATE training_tasks
SET lease_expires_at = {_LEASE},
    heartbeat_at = now(),
    progress = COALESCE(CAST(:progress AS jsonb), progress)
WHERE {_RUN} AND status = 'running'
RETURNING id
""")

#: What happened to a run whose heartbeat failed: cancelled by a user, or lost (re-queued, taken).
RUN_STATE = text("SELECT status, worker_id, started_at FROM training_tasks WHERE id = :task_id")

#: Record the end of a run. A cancelled task stays cancelled: only ``cancelled`` may overwrite it.
FINISH = text(f"""
UPDATE training_tasks
SET status = :status,
    finished_at = now(),
    error = :error,
    metrics = COALESCE(CAST(:metrics AS jsonb), metrics),
    version = COALESCE(:version, version),
    progress = COALESCE(CAST(:progress AS jsonb), progress),
    lease_expires_at = NULL
WHERE {_RUN} AND (status = 'running' OR (status = 'cancelled' AND :status = 'cancelled'))
RETURNING id
""")

#: Give a run back to the queue without counting a lost attempt (the worker shuts down cleanly).
REQUEUE = text(f"""
UPDATE training_tasks
SET status = 'queued', worker_id = NULL, lease_expires_at = NULL, error = :reason
WHERE {_RUN} AND status = 'running'
RETURNING id
""")

#: Re-queue runs whose worker is gone: leases that expired, and (at a worker's start) runs still
#: marked as its own. Each counts as a lost attempt; at ``:max_attempts`` the task fails instead.
REQUEUE_LOST = text("""
UPDATE training_tasks
SET attempts = attempts + 1,
    status = CASE WHEN attempts + 1 >= :max_attempts THEN 'failed' ELSE 'queued' END,
    finished_at = CASE WHEN attempts + 1 >= :max_attempts THEN now() END,
    worker_id = CASE WHEN attempts + 1 >= :max_attempts THEN worker_id END,
    error = format(
        '%s (run %s of %s lost)%s',
        CASE WHEN lease_expires_at < now()
             THEN format('worker %s stopped renewing its lease (expired %s UTC)', worker_id,
                         to_char(lease_expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'))
             ELSE format('worker %s restarted while running this task', worker_id)
        END,
        attempts + 1,
        CAST(:max_attempts AS integer),
        CASE WHEN attempts + 1 >= :max_attempts
             THEN '; giving up (PYTRAIN_MAX_ATTEMPTS reached)'
             ELSE '; re-queued' END),
    lease_expires_at = NULL
WHERE status = 'running'
  AND (lease_expires_at < now() OR worker_id = CAST(:own_worker_id AS text))
RETURNING id, status, attempts, error
""")

CANCEL = text("""
UPDATE training_tasks
SET status = 'cancelled',
    finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END,
    error = CASE WHEN status = 'queued' THEN 'cancelled before it started' ELSE 'cancelled while running' END
WHERE id = :task_id AND status IN ('queued', 'running')
RETURNING id
""")

SET_TASK_DIR = text("UPDATE training_tasks SET task_dir = :task_dir WHERE id = :task_id")

GET_TASK = text("SELECT * FROM training_tasks WHERE id = :task_id")

LIST_TASKS = text("""
SELECT * FROM training_tasks
WHERE CAST(:status AS text) IS NULL OR status = :status
ORDER BY id DESC
LIMIT :limit
""")

COUNT_BY_STATUS = text("SELECT status, count(*) AS n FROM training_tasks GROUP BY status")

#: Tasks running under other workers (whose runs must not be treated as orphans of this host).
RUNNING_ELSEWHERE = text("""
SELECT id FROM training_tasks WHERE status = 'running' AND worker_id IS DISTINCT FROM :worker_id
""")

# The tasks a worker id still holds: at its start, those a crashed predecessor was running.
RUNNING_HERE = text("SELECT id FROM training_tasks WHERE status = 'running' AND worker_id = :worker_id")

REGISTER_SOURCE = text("""
INSERT INTO sources (name, folder) VALUES (:name, :name)
ON CONFLICT (name) DO NOTHING
RETURNING name
""")

LIST_SOURCES = text("SELECT name FROM sources ORDER BY name")

# -- the video catalog (table videos) ------------------------------------------------------------

#: The stamp of every catalogued file of a dataset: sync probes only files whose stamp changed.
VIDEO_STAMPS = text("SELECT path, size_bytes, mtime_ns FROM videos WHERE dataset = :dataset")

#: One probe result; a changed file's row is replaced in place (its id stays).
UPSERT_VIDEO = text("""
INSERT INTO videos (dataset, path, size_bytes, mtime_ns, content_hash, duration_s, frame_count, fps,
                    width, height, codec, pixel_format, status, reason, probed_at)
VALUES (:dataset, :path, :size_bytes, :mtime_ns, :content_hash, :duration_s, :frame_count, :fps,
        :width, :height, :codec, :pixel_format, :status, :reason, now())
ON CONFLICT (dataset, path) DO UPDATE SET
    size_bytes = EXCLUDED.size_bytes, mtime_ns = EXCLUDED.mtime_ns, content_hash = EXCLUDED.content_hash,
    duration_s = EXCLUDED.duration_s, frame_count = EXCLUDED.frame_count, fps = EXCLUDED.fps,
    width = EXCLUDED.width, height = EXCLUDED.height, codec = EXCLUDED.codec,
    pixel_format = EXCLUDED.pixel_format, status = EXCLUDED.status, reason = EXCLUDED.reason, probed_at = now()
""")

#: Files gone from the disk.
DELETE_VIDEOS = text("DELETE FROM videos WHERE dataset = :dataset AND path = ANY(:paths)")

#: Every catalogued file of some datasets, for ``sources inspect``.
LIST_VIDEOS = text("SELECT * FROM videos WHERE dataset = ANY(:datasets) ORDER BY dataset, path")

#: The probe verdicts of some datasets, for the orchestrator's seed of a task's pre-scan (only the
#: columns it needs: a task may list tens of thousands of files).
VIDEO_VERDICTS = text("SELECT dataset, path, size_bytes, mtime_ns, reason FROM videos WHERE dataset = ANY(:datasets)")
