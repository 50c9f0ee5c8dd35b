-- PyTrain: queue a training task with one INSERT.
--
-- The row in training_tasks is PyTrain's public API. Only model_name, sources and classes are
-- required; every other column has a database default. CHECK constraints reject impossible
-- values, so a bad INSERT fails with PostgreSQL's error and nothing half-valid enters the queue.
-- An insert trigger sends NOTIFY pytrain_tasks (payload: the task id), which wakes idle
-- orchestrators at once (they also poll every PYTRAIN_POLL_SECONDS).
--
-- Run it with `pytrain db psql -f examples/insert_task.sql` (the embedded server too) or with
-- psql against PYTRAIN_DATABASE_URL, then watch it with `pytrain tasks`.

-- 1. The minimal task: every other column takes its default.
INSERT INTO training_tasks (model_name, sources, classes)
VALUES ('kitchen', '{dataset1}', '{cooking,drinking}');

-- 2. Every user-settable column, with its default and meaning.
INSERT INTO training_tasks (
    model_name,      -- required. Triton model name; CHECK: ^[A-Za-z0-9_-]{1,64}$.
                     --   Each successful task publishes the next version of this model.
    sources,         -- required. text[] of registered dataset names (`pytrain sources sync`),
                     --   folders under the sources root; CHECK: 1..256, no empty name.
    classes,         -- required. text[] of classes to learn. A class is the text before the first
                     --   underscore of a folder name (cooking_cuttingbread -> cooking); its
                     --   subclass folders merge across all datasets. CHECK: 1..1000.
    architecture,    -- default 'r3d_18' (torchvision ResNet3D-18, the GPU choice); 'tiny' is a
                     --   small CNN that trains on a CPU in minutes. CHECK: ^[A-Za-z0-9_.-]{1,64}$.
    pretrained,      -- default false. Start from pretrained weights (must be in the local torch
                     --   cache; nothing is downloaded).
    num_frames,      -- default 20. Frames sampled per clip. CHECK: 1..512.
    height,          -- default 224. Frame height in pixels after resizing. CHECK: 8..4096.
    width,           -- default 224. Frame width in pixels after resizing. CHECK: 8..4096.
    epochs,          -- default 50. Maximum epochs (early stopping may end sooner). CHECK: 1..100000.
    batch_size,      -- default 4. Clips per optimisation step. CHECK: 1..4096.
    shuffle_size,    -- default 300. Shuffle buffer in clips. CHECK: 1..1000000.
    learning_rate,   -- default 0.001. Peak learning rate. CHECK: > 0 and <= 10.
    seed,            -- default 0 (>= 0). Seeds the split, frame sampling, augmentation, initialisation.
    train_fraction,  -- default 0.6. Share of each class's videos for training (> 0).
    val_fraction,    -- default 0.2. Share for validation (>= 0).
    test_fraction,   -- default 0.2. Share for the final test (> 0: it gives the published test accuracy).
                     --   CHECK: the three fractions sum to 1. The split is per video file,
                     --   stratified by class, deterministic for a given seed.
    include_other,   -- default false. true: videos of unselected classes become class 'Other';
                     --   false: they are ignored.
    priority,        -- default 0. Higher runs first; equal priority runs oldest first.
    sampling,        -- default 'uniform' (num_frames spread over the whole video); 'dense': num_frames
                     --   frames frame_interval apart from a window, for long videos.
    frame_interval,  -- default 1. Frames between sampled frames with dense sampling. CHECK: 1..64.
    num_clips,       -- default 1. Clips drawn from each training video per epoch. CHECK: 1..64.
    test_clips,      -- default 1. Clips per video averaged at validation, test and prediction. CHECK: 1..64.
    nodes,           -- default 1. Nodes of a Slurm run (the other runners use one host). CHECK: 1..1024.
    options          -- default '{}'. Further training settings (pytrain.task_options.TrainConfig),
                     --   e.g. '{"cache": true, "class_weights": "balanced"}'; unknown keys fail the task.
                     --   CHECK: a JSON object, at most 1 MiB of text, nested at most 32 levels.
) VALUES (
    'kitchen_r3d', '{dataset1,dataset2}', '{cooking,drinking,eating}',
    'r3d_18', false, 20, 224, 224, 50, 4, 300, 0.001, 0, 0.6, 0.2, 0.2, true, 10,
    'uniform', 1, 1, 1, 1, '{"cache": true}'
);

-- 3. Columns PyTrain fills in (read them, do not set them):
--   id                bigint identity. The task id (`pytrain show ID`, `pytrain cancel ID`).
--   status            'queued' (default) -> 'running' -> 'succeeded' | 'failed' | 'cancelled'.
--                     A running task whose worker died goes back to 'queued'.
--   created_at        default now(). When the row was inserted.
--   started_at        when the current/last run was claimed by a worker.
--   finished_at       when the task ended (succeeded, failed, cancelled or pruned).
--   attempts          default 0. Runs lost because their worker died (lease expired or the
--                     worker restarted); at PYTRAIN_MAX_ATTEMPTS (default 3) the task fails.
--   error             a readable message: why it failed, was re-queued or cancelled.
--   progress          jsonb, default '{}'. Live progress of the run, updated every heartbeat:
--                     {"event": "epoch", "epoch": 3, "epochs": 50, "train_loss": ..,
--                      "train_accuracy": .., "val_loss": .., "val_accuracy": ..,
--                      "clips_per_second": ..}; after the run also "test_accuracy".
--   metrics           jsonb. Final metrics from the task folder's metrics.json.
--   version           the published model version (model_repo/<model_name>/<version>/).
--   worker_id         the worker running (or that last ran) the task, e.g. gpuhost-gpu0.
--   lease_expires_at  a running task's lease; its worker renews it every
--                     PYTRAIN_HEARTBEAT_SECONDS. Expired -> re-queued by any worker.
--   heartbeat_at      the last heartbeat.
--   task_dir          the task folder: model_tasks/task-<id>-<model_name>-<first 8 hex digits of uid>/.

-- 4. Cancel a task (queued or running; a running one stops within seconds).
--    Same as `pytrain cancel ID`.
UPDATE training_tasks SET status = 'cancelled' WHERE id = 1 AND status IN ('queued', 'running');

-- 5. Watch the queue.
SELECT id, model_name, status, attempts, progress->>'epoch' AS epoch,
       progress->>'val_accuracy' AS val_accuracy, version, error
FROM training_tasks ORDER BY id DESC LIMIT 20;
