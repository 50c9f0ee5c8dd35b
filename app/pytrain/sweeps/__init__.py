"""Sweeps: hyper-parameter searches whose trials are ordinary tasks on the same queue.

The study lives in PyTrain's PostgreSQL (Optuna's RDB storage, schema ``optuna``); each trial is a
``training_tasks`` row, so the queue, every runner, fencing, resume and tracking work for trials
unchanged, and any number of orchestrators on any host serve one sweep. The orchestrator reports
each epoch's validation metric to the trial and stops a run the pruner prunes (status ``pruned``).

- :mod:`pytrain.sweeps.vocabulary` -- samplers, pruners, metrics, publishing modes (imports nothing);
- :mod:`pytrain.sweeps.params`     -- ``--param SPEC`` parsed and checked against the task's rules;
- :mod:`pytrain.sweeps.study`      -- Optuna: storage, study, sampler, pruner, report and tell;
- :mod:`pytrain.sweeps.store`      -- the database side: create, settle (top up, finish), publish.

Guide: docs/user-guide/sweeps.md; decision: docs/adr/0018-sweeps-optuna.md.
"""
