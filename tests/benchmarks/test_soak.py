"""``benchmarks/soak.py``: a real orchestrator runs tiny tasks back to back and its resources are compared."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_soak():
    spec = importlib.util.spec_from_file_location("soak", REPO / "benchmarks" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("soak", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def samples(soak, count: int, **changes) -> list:
    """``count`` flat samples; ``changes`` maps a field to its values for the last tenth."""
    rows = [soak.Sample(task=i, seconds=5.0, rss_mb=130.0, fds=6, threads=2, children=0, zombies=0, pg_conns=3, tmp_files=5)
            for i in range(count)]
    for name, value in changes.items():
        for row in rows[-max(1, count // 10):]:
            setattr(row, name, value)
    return rows


def test_the_verdict_fails_a_growth_above_the_limit_a_count_leaving_zero_and_a_zombie_left() -> None:
    soak = load_soak()
    assert soak.verdict(samples(soak, 20), 0.10) == []
    assert soak.verdict(samples(soak, 20, rss_mb=143.0), 0.10) == []  # +10.0 %: at the limit
    assert soak.verdict(samples(soak, 20, rss_mb=143.2, fds=7), 0.10) == ["rss_mb grew from 130.00 to 143.20", "fds grew from 6.00 to 7.00"]
    assert soak.verdict(samples(soak, 20, children=1), 0.10) == ["children grew from 0.00 to 1.00"]
    assert soak.verdict(samples(soak, 20, zombies=1), 0.10) == ["1 zombie child(ren) remain"]


@pytest.mark.slow
def test_the_soak_runs_a_real_orchestrator_through_tasks_and_passes(tmp_path: Path) -> None:
    # Tracking off: with it on, MLflow's SQLAlchemy pool opens its connections lazily over the
    # first few tasks (5 -> 7, then flat for good), which two sampled tasks would read as growth.
    # The 200-task soak in docs/performance.md runs with tracking on, as users do.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTRAIN_")}
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--tasks", "2", "--warmup", "1", "--tracking", "off", "--work-dir", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [row for row in map(str.split, result.stdout.splitlines()) if len(row) >= 9 and row[0].isdigit()]
    assert [row[0] for row in rows] == ["1", "2", "3"] and rows[0][-1] == "(warm-up)"
    assert all(row[5:7] == ["0", "0"] for row in rows)  # no child and no zombie after a task
    assert result.stdout.rstrip().endswith("PASS")
    assert "worker " in (tmp_path / "w" / "orchestrator.log").read_text()  # it stopped cleanly on SIGTERM
    assert len(list((tmp_path / "w" / "model_repo" / "soak").glob("[0-9]*"))) >= 1
