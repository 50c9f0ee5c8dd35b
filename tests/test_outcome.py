"""The one vocabulary of how a run stands or ended (``pytrain.outcome.Outcome``)."""

from __future__ import annotations

from pytrain.db.models import FINAL_STATUSES, RUN_OUTCOMES, STATUSES
from pytrain.outcome import FINISHED, RECORDED, Outcome
from pytrain.runners import Outcome as RunnerOutcome


def test_outcome_values_are_the_strings_the_database_and_logs_hold():
    # task_runs.outcome and the task status hold these values: changing one needs a migration.
    assert {o.name: o.value for o in Outcome} == {
        "OK": "ok", "SUCCEEDED": "succeeded", "FAILED": "failed", "CANCELLED": "cancelled", "TIMED_OUT": "timed_out",
        "OUT_OF_MEMORY": "out_of_memory", "INTERRUPTED": "interrupted", "REQUEUED": "requeued", "LOCKED": "locked",
        "LOST": "lost", "FENCED": "fenced", "PRUNED": "pruned",
    }
    assert Outcome.FAILED == "failed" and str(Outcome.FAILED) == f"{Outcome.FAILED}" == "failed"


def test_the_database_vocabularies_are_derived_from_the_enum():
    assert RUN_OUTCOMES == ("succeeded", "failed", "cancelled", "pruned", "requeued") == tuple(o.value for o in RECORDED)
    assert FINAL_STATUSES == ("succeeded", "failed", "cancelled", "pruned") == tuple(o.value for o in FINISHED)
    assert STATUSES == ("queued", "running", *FINAL_STATUSES)


def test_runners_report_the_same_enum():
    assert RunnerOutcome is Outcome
