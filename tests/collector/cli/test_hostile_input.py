"""``runwatch runs`` with hostile user strings and run ids, through the real CLI entry point."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.cli import main
from collector.config import load_settings
from collector.store import Store

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31m"
EXPERIMENT = f"exp{ESCAPES}\nFAKE-RUN  completed\r\u202eevil\ud800"


@pytest.fixture
def store(runwatch_env: Path) -> Iterator[Store]:
    store = Store.from_settings(load_settings())
    yield store
    store.dispose()


def _hostile_run(store: Store) -> str:
    run_id = store.create_run(
        EXPERIMENT, host="node\n1", source_path="/data/\x1b[2J", hyperparams={"k\x1b": "v\n"}
    )
    store.persist_epoch_metrics(
        run_id, [{"epoch": 0, "train_loss": 0.5, "lone\ud800x": 1.5, "esc\x1b[31m": 2.5}]
    )
    store.add_artifact(run_id, "/ckpt/\x1b[2J\n.ckpt", metric_name="val\nloss", metric_value=0.1)
    store.complete_run(run_id)
    return run_id


def _no_control_characters(text: str) -> None:
    lines = text.splitlines()
    assert all(line.isprintable() for line in lines), [
        line for line in lines if not line.isprintable()
    ]


def test_list_escapes_control_characters_and_keeps_one_line_per_run(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = _hostile_run(store)

    assert main(["runs", "list"]) == 0
    out = capsys.readouterr().out
    _no_control_characters(out)
    _header, *rows = out.splitlines()
    assert len(rows) == 1 and rows[0].startswith(run_id)
    assert "\\x1b[2J" in rows[0] and "\\n" in rows[0] and "\\u202e" in rows[0]


def test_show_escapes_every_user_string(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = _hostile_run(store)

    assert main(["runs", "show", run_id]) == 0
    out = capsys.readouterr().out
    _no_control_characters(out)
    assert "exp\\x1b]0;pwned\\x07" in out and "node\\n1" in out
    # metric names are canonical (lone_x, esc_31m) in every backend; other strings escaped
    assert re.search(r"lone_x +1.5", out) and re.search(r"esc_31m +2.5", out) and "k\\x1b" in out
    assert "/ckpt/\\x1b[2J\\n.ckpt" in out and "val\\nloss=0.1" in out


def test_json_output_stays_exact(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = _hostile_run(store)

    assert main(["runs", "show", run_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["experiment"] == EXPERIMENT.replace("\ud800", "\ufffd")
    assert shown["host"] == "node\n1"
    assert shown["latest_metrics"] == {"train_loss": 0.5, "lone_x": 1.5, "esc_31m": 2.5}


def test_export_keeps_every_metric_of_a_run_with_a_lone_surrogate_name(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = _hostile_run(store)

    assert main(["runs", "export", run_id, "--format", "csv", "--out", str(tmp_path / "out")]) == 0
    target = Path(capsys.readouterr().out.strip())
    with target.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["metric_name"]: float(r["value"]) for r in rows if r["context"] == "epoch_end"} == {
        "train_loss": 0.5,
        "lone_x": 1.5,
        "esc_31m": 2.5,
    }
    assert target.parent == (tmp_path / "out").resolve()


@pytest.mark.parametrize("command", ["show", "export"])
@pytest.mark.parametrize("run_id", ["../../../x", "/etc/passwd", "a/b", ".hidden", "x\n", ""])
def test_an_invalid_run_id_is_a_usage_error_in_one_line(
    runwatch_env: Path, command: str, run_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["runs", command, run_id] + (["--format", "csv"] if command == "export" else [])
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "invalid run id" in err and "Traceback" not in err
    assert err.splitlines()[-1].startswith("runwatch runs")
