"""Every shipped recipe validates. A recipe that reads files from a system package (absolute paths,
e.g. /usr/share/games/fortunes from the Debian package `fortunes`) or from ../shared/assets
($DISTILL_ASSETS) skips, naming what to install, where those files are absent.

Recipes that name a data set whose files come from a package (`data.name: fashion_mnist`, the
Debian package dataset-fashion-mnist) validate without the files: only a run reads them.
"""
import os
import re
from pathlib import Path

import pytest
import yaml

from distill.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.relative_to(ROOT) for p in (ROOT / "recipes").rglob("*.yaml"))
ASSETS = Path(os.environ.get("DISTILL_ASSETS", ROOT.parent / "shared" / "assets"))
# where a system package puts the files that recipes read, and the package (Debian names)
PACKAGES = {"/usr/share/games/fortunes": "fortunes", "/usr/share/datasets/fashion-mnist": "dataset-fashion-mnist"}
ASSETS_VAR = re.compile(r"\$\{?DISTILL_ASSETS\}?")


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def missing_files(path: Path, assets: Path = ASSETS) -> list[str]:
    """What the recipe at `path` reads from outside the project and is absent here: its absolute
    paths and its $DISTILL_ASSETS paths (expanded with `assets`), each with what provides it."""
    out = []
    for s in _strings(yaml.safe_load(path.read_text())):
        if ASSETS_VAR.search(s):
            f = Path(ASSETS_VAR.sub(str(assets), s))
            if not f.exists():
                out.append(f"{f} (../shared/assets or $DISTILL_ASSETS)")
        elif s.startswith("/") and not Path(s).exists():
            pkg = next((p for prefix, p in PACKAGES.items() if s.startswith(prefix)), None)
            out.append(f"{s} (Debian package `{pkg}`)" if pkg else s)
    return out


@pytest.mark.parametrize("path", RECIPES, ids=str)
def test_recipe_validates(path):
    missing = missing_files(ROOT / path)
    if missing:
        pytest.skip(f"needs {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    try:
        load_config(ROOT / path)
    except ImportError as e:  # a family whose optional extra is not installed
        pytest.skip(str(e))


def test_missing_files_finds_system_and_asset_paths(tmp_path):
    there = tmp_path / "there.txt"
    there.write_text("x")
    (tmp_path / "assets" / "text").mkdir(parents=True)
    (tmp_path / "assets" / "text" / "a.txt").write_text("x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"paths": [str(there), "/usr/share/games/fortunes/no-such-file-here"], "separator": "%"},
        "teacher": {"path": "$DISTILL_ASSETS/text/a.txt", "tokenizer": "${DISTILL_ASSETS}/text/b.model"},
        "name": "relative/path/is/not/read"}))
    missing = missing_files(recipe, tmp_path / "assets")
    assert missing == ["/usr/share/games/fortunes/no-such-file-here (Debian package `fortunes`)",
                       f"{tmp_path / 'assets' / 'text' / 'b.model'} (../shared/assets or $DISTILL_ASSETS)"]


def test_a_recipe_skipped_for_system_files_is_valid_given_them(tmp_path):
    """The skip hides no broken recipe: with its system files replaced by local stand-ins (a few
    '%'-separated texts each), every recipe that reads them validates."""
    for rel in RECIPES:
        text = (ROOT / rel).read_text()
        paths = sorted({s for s in _strings(yaml.safe_load(text)) if any(s.startswith(p) for p in PACKAGES)},
                       key=len, reverse=True)  # longest first: no path is replaced inside another
        if not paths:
            continue
        for i, p in enumerate(paths):
            stand_in = tmp_path / rel.stem / f"f{i}"
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.write_text("\n%\n".join(f"text {k} of file {i}" for k in range(40)) + "\n")
            text = text.replace(p, str(stand_in))
        local = tmp_path / rel.name
        local.write_text(text)
        try:
            load_config(local)
        except ImportError as e:
            pytest.skip(str(e))
