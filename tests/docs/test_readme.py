"""README.md: every ```python block runs as pasted, each in a fresh directory with its own
temporary RUNWATCH_HOME (no InfluxDB, no exporter), and records what the README says. A block
may only be skipped by a `<!-- not-run: reason -->` marker, and only the known fragments are."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.config import load_settings
from collector.store import Store
from tests.docs.code_blocks import (
    REPO,
    CodeBlock,
    code_blocks,
    isolated_environment,
    run_python,
)

README = REPO / "README.md"
# The Flower ServerApp/ClientApp fragments: docs/flower.md holds the whole app, and
# tests/docs/test_flower_guide.py runs it. A new marked block must be added here on purpose.
EXPECTED_NOT_RUN = ("from collector.flower import ClientTelemetry, FederatedRun",)


def blocks() -> list[CodeBlock]:
    return code_blocks(README, "python")


def runnable() -> list[CodeBlock]:
    return [block for block in blocks() if block.not_run is None]


def test_only_the_known_fragments_are_marked_not_run() -> None:
    marked = [block for block in blocks() if block.not_run is not None]
    assert [block.code.splitlines()[0] for block in marked] == list(EXPECTED_NOT_RUN)
    assert all(block.not_run for block in marked)  # each says why
    # the Lightning one-call setup and the plain-loop Run are among the blocks that run
    codes = [block.code for block in runnable()]
    assert any("runwatch_telemetry(" in code for code in codes)
    assert any("with Run(" in code for code in codes)


def run_block(block: CodeBlock, root: Path) -> Store:
    """Run ``block`` as a file in a fresh directory; the run store it wrote to."""
    workdir, home, user_home = root / "work", root / "runwatch-home", root / "user"
    workdir.mkdir()
    user_home.mkdir()
    script = workdir / "readme_block.py"
    script.write_text(block.code, encoding="utf-8")
    run_python(script, workdir, isolated_environment(home, user_home))
    assert not (user_home / ".runwatch").exists()  # RUNWATCH_HOME was honoured
    assert not list(workdir.rglob("*.ckpt"))
    return Store.from_settings(load_settings({"RUNWATCH_HOME": str(home)}, dotenv=None))


@pytest.mark.slow
@pytest.mark.parametrize("block", runnable(), ids=lambda block: f"line-{block.line}")
def test_every_unmarked_block_runs_and_records_a_completed_run(
    block: CodeBlock, tmp_path: Path
) -> None:
    store = run_block(block, tmp_path)
    try:
        (listed,) = store.list_runs()
        summary = store.get_run(listed.run_id, with_metrics=True)
    finally:
        store.dispose()
    assert (summary.experiment, summary.status) == ("baseline", "completed")
    if "with Run(" in block.code:  # the plain loop: its hyperparameters and epoch rows
        assert summary.hyperparams == {"lr": 1e-3}
        epochs = {m.step for m in summary.metrics if m.name == "val_acc"}
        assert epochs == {0, 1, 2}
