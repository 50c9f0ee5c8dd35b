"""Every SQL statement of the task queue, in one place, with bound parameters only.

Times come from the database clock (``now()``), never from a worker's clock, so workers on hosts
with skewed clocks agree on whether a lease expired.

Runs and fencing: each claim inserts a ``task_runs`` row and stores its id in the task's
``run_id``, in the same statement. Every later write of that run (heartbeat, task folder, finish,
re-queue) names ``run_id = :run_id``: the run id is the fencing token. A worker whose lease expired
and whose task was re-queued or claimed again (even by a worker with the same id) matches no row
any more, so it can neither renew, finish nor publish. The statements that end a run also end its
``task_runs`` row (outcome, finished_at, error, version), in the same statement.
"""

from __future__ import annotations

from sqlalchemy import text

_LEASE = "now() + CAST(:lease_seconds AS double precision) * interval '1 second'"
_RUN = "id = :task_id AND run_id = :run_id"

#: Claim the next queued task (highest priority, then oldest) for ``:worker_id``: a new run.
#: ``SKIP LOCKED`` lets concurrent workers claim different tasks without waiting on each other.
#: The run's ``task_runs`` row and the task's ``run_id`` are written by one statement. Only the
#: keys come back: the worker reads the row with :data:`GET_TASK` after the commit, so a row its
#: driver cannot decode (a JSON value nested too deep) is still claimed, and failed with the
#: reason, instead of the claim rolling back and leaving it first in line for every worker.
#: A queued task with a ``lease_expires_at`` is waiting for a run that still holds its folder
#: (:data:`REQUEUE`'s backoff): it is not claimed before then.
CLAIM = text(f"""
WITH next AS (
    SELECT id FROM training_tasks
    WHERE status = 'queued' AND (lease_expires_at IS NULL OR lease_expires_at <= now())
    ORDER BY priority DESC, created_at, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), run AS (
    INSERT INTO task_runs (task_id, worker_id)
    SELECT id, :worker_id FROM next
    RETURNING id, task_id, started_at
)
UPDATE training_tasks AS t
SET status = 'running',
    worker_id = :worker_id,
    run_id = run.id,
    started_at = run.started_at,
    finished_at = NULL,
    heartbeat_at = now(),
    lease_expires_at = {_LEASE},
    error = NULL
FROM run
WHERE t.id = run.task_id
RETURNING t.id, t.run_id
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
RUN_STATE = text("SELECT status, run_id FROM training_tasks WHERE id = :task_id")

#: The success transaction's first statement: lock the task row (a concurrent re-queue, claim or
#: cancel waits until the transaction ends), then the worker checks ``run_id`` and ``status``,
#: publishes, and records the outcome with :data:`FINISH` before committing.
LOCK_TASK = text("SELECT status, run_id FROM training_tasks WHERE id = :task_id FOR UPDATE")

#: End the run's ``task_runs`` row: a CTE of the statements that end a run (``{task}`` names the
#: CTE returning the task's ``id`` and ``run_id``). ``outcome IS NULL``: a run ends once.
_END_RUN = """
ended AS (
    UPDATE task_runs AS r
    SET finished_at = now(), outcome = {outcome}, error = {error}, version = {version}
    FROM {task} AS x
    WHERE r.id = x.run_id AND r.outcome IS NULL
    RETURNING r.id
)"""

#: Record the end of a run. A cancelled task stays cancelled: only ``cancelled`` may overwrite it.
FINISH = text(f"""
WITH task AS (
    UPDATE training_tasks
    SET status = :status,
        finished_at = now(),
        error = :error,
        metrics = COALESCE(CAST(:metrics AS jsonb), metrics),
        version = COALESCE(:version, version),
        progress = COALESCE(CAST(:progress AS jsonb), progress),
        lease_expires_at = NULL
    WHERE {_RUN} AND (status = 'running' OR (status = 'cancelled' AND :status = 'cancelled'))
    RETURNING id, run_id
), {_END_RUN.format(outcome=":status", error=":error", version="CAST(:version AS integer)", task="task")}
SELECT id FROM task
""")

#: Give a run back to the queue without counting a lost attempt (the worker shuts down cleanly, a
#: cluster lost the run, or another run still holds the task folder). A queued task has no current
#: run (``run_id`` NULL); its runs stay in ``task_runs``. ``:backoff_seconds`` > 0 keeps the task
#: from being claimed for that long: the folder's old run holds it that much longer, so its
#: ``lease_expires_at`` says until when (:data:`CLAIM` skips it until then).
REQUEUE = text(f"""
WITH task AS (
    UPDATE training_tasks
    SET status = 'queued', worker_id = NULL, error = :reason, run_id = NULL,
        lease_expires_at = CASE WHEN CAST(:backoff_seconds AS double precision) > 0
                                THEN now() + CAST(:backoff_seconds AS double precision) * interval '1 second' END
    WHERE {_RUN} AND status = 'running'
    RETURNING id, CAST(:run_id AS bigint) AS run_id
), {_END_RUN.format(outcome="'requeued'", error=":reason", version="NULL", task="task")}
SELECT id FROM task
""")

#: Re-queue runs whose worker is gone: leases that expired, and (at a worker's start) runs still
#: marked as its own. Each counts as a lost attempt; at ``:max_attempts`` the task fails instead.
#: The lost run's ``task_runs`` row ends as ``requeued`` (``failed`` when the task gives up).
REQUEUE_LOST = text(f"""
WITH lost AS (
    SELECT id, run_id FROM training_tasks
    WHERE status = 'running'
      AND (lease_expires_at < now() OR worker_id = CAST(:own_worker_id AS text))
    FOR UPDATE SKIP LOCKED
), task AS (
    UPDATE training_tasks AS t
    SET attempts = t.attempts + 1,
        status = CASE WHEN t.attempts + 1 >= :max_attempts THEN 'failed' ELSE 'queued' END,
        finished_at = CASE WHEN t.attempts + 1 >= :max_attempts THEN now() END,
        worker_id = CASE WHEN t.attempts + 1 >= :max_attempts THEN t.worker_id END,
        run_id = CASE WHEN t.attempts + 1 >= :max_attempts THEN t.run_id END,
        error = format(
            '%s (run %s of %s lost)%s',
            CASE WHEN t.lease_expires_at < now()
                 THEN format('worker %s stopped renewing its lease (expired %s UTC)', t.worker_id,
                             to_char(t.lease_expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'))
                 ELSE format('worker %s restarted while running this task', t.worker_id)
            END,
            t.attempts + 1,
            CAST(:max_attempts AS integer),
            CASE WHEN t.attempts + 1 >= :max_attempts
                 THEN '; giving up (PYTRAIN_MAX_ATTEMPTS reached)'
                 ELSE '; re-queued' END),
        lease_expires_at = NULL
    FROM lost
    WHERE t.id = lost.id
    RETURNING t.id, lost.run_id, t.status, t.attempts, t.error
), {_END_RUN.format(outcome="CASE WHEN x.status = 'failed' THEN 'failed' ELSE 'requeued' END", error="x.error",
                    version="NULL", task="task")}
SELECT id, status, attempts, error FROM task
""")

CANCEL = text("""
UPDATE training_tasks
SET status = 'cancelled',
    finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END,
    error = CASE WHEN status = 'queued' THEN 'cancelled before it started' ELSE 'cancelled while running' END
WHERE id = :task_id AND status IN ('queued', 'running')
RETURNING id
""")

#: End the runs of tasks cancelled while running whose worker never came back to record it (its
#: lease expired): the task keeps ``cancelled`` and gets its ``finished_at``; the run ends.
END_ABANDONED_CANCELS = text(f"""
WITH task AS (
    UPDATE training_tasks
    SET finished_at = now(), lease_expires_at = NULL
    WHERE status = 'cancelled' AND lease_expires_at < now() AND run_id IS NOT NULL
    RETURNING id, run_id, worker_id
), {_END_RUN.format(outcome="'cancelled'", error="format('cancelled while running; worker %s stopped renewing its lease', x.worker_id)",
                    version="NULL", task="task")}
SELECT id FROM task
""")

#: Where the run prepared the task's folder (fenced: a stale run cannot move it).
SET_TASK_DIR = text(f"UPDATE training_tasks SET task_dir = :task_dir WHERE {_RUN} AND status = 'running' RETURNING id")

#: ``pytrain retry``: a failed or cancelled task goes back to the queue for a new run; its earlier
#: runs stay in ``task_runs``. Any other status matches no row (the caller says why), and so does a
#: task whose last run has not ended yet (cancelled, still stopping: its worker records the end
#: within seconds, or :data:`END_ABANDONED_CANCELS` once its lease expired). Retrying it earlier would
#: leave that run without an outcome and let a new run find the old one in the task folder.
RETRY = text("""
UPDATE training_tasks AS t
SET status = 'queued', attempts = 0, error = NULL, finished_at = NULL, worker_id = NULL,
    lease_expires_at = NULL, run_id = NULL
WHERE t.id = :task_id AND t.status IN ('failed', 'cancelled')
  AND NOT EXISTS (SELECT 1 FROM task_runs AS r WHERE r.id = t.run_id AND r.outcome IS NULL)
RETURNING t.id
""")

#: The task's current run, if it has not ended (``retry`` refuses then): its worker and lease.
RUN_STILL_STOPPING = text("""
SELECT r.worker_id, t.lease_expires_at FROM training_tasks AS t JOIN task_runs AS r ON r.id = t.run_id
WHERE t.id = :task_id AND r.outcome IS NULL
""")

#: The runs of a task, oldest first (``pytrain show``).
LIST_RUNS = text("SELECT * FROM task_runs WHERE task_id = :task_id ORDER BY id")

# -- worker identity: one live orchestrator per worker id ---------------------------------------
#: The advisory lock key of a worker id: PostgreSQL's own 64-bit text hash, so every client (any
#: language, any host) derives the same key.
_WORKER_KEY = "hashtextextended(CAST(:worker_id AS text), 0)"

#: Name this session in ``pg_stat_activity`` (the worker lock's connection names its host and pid).
SET_APPLICATION_NAME = text("SELECT set_config('application_name', :name, false)")

#: A round trip: is the connection still alive?
PING = text("SELECT 1")

#: Take the worker id's session-level advisory lock; ``false`` when another session holds it. The
#: lock lives as long as the connection: a crashed orchestrator's lock goes with its connection.
WORKER_LOCK = text(f"SELECT pg_try_advisory_lock({_WORKER_KEY}) AS locked")

#: Who holds the worker id's lock: the other session's ``application_name`` (host and pid,
#: :class:`pytrain.db.queue.WorkerLock`), address and start. A bigint key is stored as
#: ``classid`` (high 32 bits) and ``objid`` (low 32 bits) with ``objsubid = 1``.
WORKER_LOCK_HOLDER = text(f"""
SELECT a.application_name, CAST(a.client_addr AS text) AS client_addr, a.backend_start
FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((CAST(l.classid AS bigint) << 32) | CAST(l.objid AS bigint)) = {_WORKER_KEY}
  AND a.pid <> pg_backend_pid()
""")

#: Record the runner and GPUs of the orchestrator that has just taken the worker id's lock (on the
#: lock's own connection: only the holder writes the row, and ``backend_pid`` ties it to that session).
REGISTER_WORKER = text("""
INSERT INTO workers (worker_id, runner, gpus, backend_pid) VALUES (:worker_id, :runner, :gpus, pg_backend_pid())
ON CONFLICT (worker_id) DO UPDATE
SET runner = EXCLUDED.runner, gpus = EXCLUDED.gpus, backend_pid = EXCLUDED.backend_pid, locked_at = now()
""")

GET_TASK = text("SELECT * FROM training_tasks WHERE id = :task_id")

#: The newest tasks, optionally of one status, model and sweep (the task option ``sweep`` a
#: sweep's trials carry); ``before`` pages by id (a keyset: the console's next page costs the same
#: on page 1 and page 200, which ``OFFSET`` would not).
LIST_TASKS = text("""
SELECT * FROM training_tasks
WHERE (CAST(:status AS text) IS NULL OR status = :status)
  AND (CAST(:model AS text) IS NULL OR model_name = :model)
  AND (CAST(:sweep AS text) IS NULL OR options->>'sweep' = :sweep)
  AND (CAST(:before AS bigint) IS NULL OR id < :before)
ORDER BY id DESC
LIMIT :limit
""")

#: What the console's live view needs of some tasks (not ``metrics``: it may be megabytes).
TASK_STATES = text("""
SELECT id, status, progress, epochs, version, worker_id, error FROM training_tasks WHERE id = ANY(:ids) ORDER BY id DESC
""")

#: The live orchestrators: sessions holding a worker-id lock (:data:`WORKER_LOCK`) whose
#: ``application_name`` is a worker's (:class:`pytrain.db.queue.WorkerLock`), with the lock's key,
#: and the ``workers`` row (:data:`REGISTER_WORKER`) that session wrote: its id, runner and GPUs
#: (``NULL`` for an orchestrator of a PyTrain before migration 0009).
LIVE_WORKERS = text("""
SELECT a.application_name, CAST(a.client_addr AS text) AS client_addr, a.backend_start, k.lock_key,
       w.worker_id, w.runner, w.gpus
FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
CROSS JOIN LATERAL (SELECT (CAST(l.classid AS bigint) << 32) | CAST(l.objid AS bigint) AS lock_key) AS k
LEFT JOIN workers AS w ON w.backend_pid = a.pid AND hashtextextended(w.worker_id, 0) = k.lock_key
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND a.application_name LIKE 'pytrain worker %'
ORDER BY a.backend_start
""")

#: Every worker id that ever ran a task, with its lock key (to name a live orchestrator's id).
WORKER_KEYS = text("""
SELECT worker_id, hashtextextended(worker_id, 0) AS lock_key, max(started_at) AS last_run
FROM task_runs GROUP BY worker_id
""")

#: The running tasks: which worker holds each, its last heartbeat and progress.
RUNNING_TASKS = text("""
SELECT id, model_name, worker_id, heartbeat_at, lease_expires_at, progress, epochs FROM training_tasks
WHERE status = 'running' ORDER BY id
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

#: Proxies made by ``sources sync --proxies``; a proxy made again (new content) replaces its row.
UPSERT_PROXY = text("""
INSERT INTO video_proxies (dataset, path, short_side, source_hash, gop, fps, size_bytes, made_at)
VALUES (:dataset, :path, :short_side, :source_hash, :gop, :fps, :size_bytes, now())
ON CONFLICT (dataset, path, short_side) DO UPDATE SET
    source_hash = EXCLUDED.source_hash, gop = EXCLUDED.gop, fps = EXCLUDED.fps, size_bytes = EXCLUDED.size_bytes, made_at = now()
""")

#: The proxy rows of some datasets, for ``sources inspect``'s coverage.
LIST_PROXIES = text("SELECT dataset, path, short_side, source_hash, size_bytes FROM video_proxies WHERE dataset = ANY(:datasets)")

#: The probe verdicts of some datasets, for the orchestrator's seed of a task's pre-scan (only the
#: columns it needs: a task may list tens of thousands of files).
VIDEO_VERDICTS = text("SELECT dataset, path, size_bytes, mtime_ns, reason, content_hash FROM videos WHERE dataset = ANY(:datasets)")

# -- sweeps (pytrain.sweeps; migration 0008) -----------------------------------------------------

INSERT_SWEEP = text("""
INSERT INTO sweeps (name, base, params, trials, parallel, sampler, pruner, metric, publish, seed)
VALUES (:name, CAST(:base AS jsonb), CAST(:params AS jsonb), :trials, :parallel, :sampler, :pruner, :metric, :publish, :seed)
RETURNING *
""")

GET_SWEEP = text("SELECT * FROM sweeps WHERE name = :name")

#: The top-up's and the end's lock: whoever ends a trial or creates the sweep holds the sweep row
#: while it tells Optuna, counts the live trials and creates new ones, so concurrent orchestrators
#: on any host never create a trial twice nor finish (publish) the sweep twice.
LOCK_SWEEP = text("SELECT * FROM sweeps WHERE id = :sweep_id FOR UPDATE")

LIST_SWEEPS = text("""
SELECT s.*, count(st.task_id) AS created,
       count(st.task_id) FILTER (WHERE st.told IS NULL) AS live,
       count(st.task_id) FILTER (WHERE st.told IS NOT NULL) AS ended
FROM sweeps AS s LEFT JOIN sweep_trials AS st ON st.sweep_id = s.id
GROUP BY s.id ORDER BY s.id DESC
""")

#: A sweep's trials with their tasks' state; ``wall_seconds``: the task's runs together (a re-claimed
#: trial's runs all count), seconds.
SWEEP_TRIALS = text("""
SELECT st.number, st.task_id, st.optuna_trial_id, st.told, t.status, t.error, t.version, t.task_dir, t.progress,
       t.metrics, t.uid, t.run_id, t.attempts,
       (SELECT sum(extract(epoch FROM coalesce(r.finished_at, now()) - r.started_at)) FROM task_runs AS r
        WHERE r.task_id = t.id) AS wall_seconds
FROM sweep_trials AS st JOIN training_tasks AS t ON t.id = st.task_id
WHERE st.sweep_id = :sweep_id
ORDER BY st.number
""")

INSERT_TRIAL = text("""
INSERT INTO sweep_trials (sweep_id, number, task_id, optuna_trial_id) VALUES (:sweep_id, :number, :task_id, :optuna_trial_id)
""")

#: Record the state told to Optuna (once: ``told IS NULL``).
MARK_TOLD = text("UPDATE sweep_trials SET told = :told WHERE sweep_id = :sweep_id AND number = :number AND told IS NULL")

#: The sweep ends once: only the caller that moves it from ``running`` publishes its best trial.
FINISH_SWEEP = text("""
UPDATE sweeps SET status = 'finished', finished_at = now() WHERE id = :sweep_id AND status = 'running' RETURNING id
""")

CANCEL_SWEEP = text("""
UPDATE sweeps SET status = 'cancelled', finished_at = now() WHERE id = :sweep_id AND status = 'running' RETURNING id
""")

SET_SWEEP_PUBLISHED = text("UPDATE sweeps SET published_task_id = :task_id, published_version = :version WHERE id = :sweep_id")

#: A published trial's version in its task row (trials succeed unpublished, see pytrain.sweeps).
SET_TASK_VERSION = text("UPDATE training_tasks SET version = :version WHERE id = :task_id AND status = 'succeeded' RETURNING id")

#: The sweep of a claimed task, if it is a trial (one indexed lookup per claim).
TRIAL_OF_TASK = text("""
SELECT st.sweep_id, st.number, st.optuna_trial_id, s.name, s.publish, s.metric
FROM sweep_trials AS st JOIN sweeps AS s ON s.id = st.sweep_id
WHERE st.task_id = :task_id
""")

#: Sweep name and trial number of some tasks (``pytrain tasks``).
TRIALS_OF_TASKS = text("""
SELECT st.task_id, s.name, st.number FROM sweep_trials AS st JOIN sweeps AS s ON s.id = st.sweep_id
WHERE st.task_id = ANY(:task_ids)
""")

RUNNING_SWEEPS = text("SELECT id FROM sweeps WHERE status = 'running' ORDER BY id")
