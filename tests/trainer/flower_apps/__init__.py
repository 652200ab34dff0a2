"""ClientApps and ServerApps that misbehave on purpose, each copied into a test app."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

from trainer.federated.engines import APP_DIR

FLOWER_APPS = Path(__file__).parent


def app_dir_with(tmp_path: Path, module: str, component: str) -> Path:
    """A copy of the app whose ``component`` comes from this folder's ``module``."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    text = (APP_DIR / "pyproject.toml").read_text(encoding="utf-8")
    original = tomllib.loads(text)["tool"]["flwr"]["app"]["components"][component]
    text = text.replace(f'{component} = "{original}"', f'{component} = "{module}:app"')
    (app_dir / "pyproject.toml").write_text(text, encoding="utf-8")
    shutil.copy(FLOWER_APPS / f"{module}.py", app_dir / f"{module}.py")
    return app_dir
