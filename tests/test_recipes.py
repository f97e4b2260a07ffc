"""Every shipped recipe validates (recipes that read ../shared/assets skip where it is absent)."""
import os
from pathlib import Path

import pytest

from distill.config import load_config
from distill.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.relative_to(ROOT) for p in (ROOT / "recipes").rglob("*.yaml"))
ASSETS = Path(os.environ.get("DISTILL_ASSETS", ROOT.parent / "shared" / "assets"))


@pytest.mark.parametrize("path", RECIPES, ids=str)
def test_recipe_validates(path):
    try:
        load_config(ROOT / path)
    except ConfigError as e:
        if not ASSETS.is_dir() and ("exist" in str(e) or "not found" in str(e)):
            pytest.skip(f"needs {ASSETS}")
        raise
    except ImportError as e:  # a family whose optional extra is not installed
        pytest.skip(str(e))
