"""The documentation: the README as a short front door, the MkDocs site built with ``--strict``, and
the reference pages generated from the code (task columns, settings, CLI commands)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import typer.main
import yaml

from fixtures.docs import MKDOCS_YML, ROOT, build_site, mkdocs_hooks
from pytrain.cli.main import app
from pytrain.settings import Settings
from pytrain.task_columns import TASK_COLUMNS

README = ROOT / "README.md"
#: The two set-up commands, word for word (scripts/demo.sh and scripts/test.sh are what they say).
SETUP_COMMANDS = (
    "scripts/demo.sh    # the main job end to end on a CPU: no GPU, no Docker, no database server needed\n"
    "scripts/test.sh    # installs everything (apt packages as root, pip packages, dockerd, a 2-node Slurm) and runs the tests\n"
)


def _nav_pages(nav: list) -> list[str]:
    """Every page path in an MkDocs ``nav`` (nested sections flattened), in order."""
    pages: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            pages += _nav_pages(value)
        else:
            pages.append(value)
    return pages


def _config() -> dict:
    return yaml.safe_load(MKDOCS_YML.read_text(encoding="utf-8"))


def _copy_config(tmp_path: Path, nav: list | None = None, docs_dir: Path | None = None) -> Path:
    """``mkdocs.yml`` written into ``tmp_path`` with absolute paths (and another nav or docs folder)."""
    config = _config()
    config["docs_dir"] = str(docs_dir or ROOT / "docs")
    config["hooks"] = [str(ROOT / hook) for hook in config["hooks"]]
    if nav is not None:
        config["nav"] = nav
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _without(nav: list, page: str) -> list:
    """``nav`` with the entry for ``page`` removed (at any depth)."""
    kept = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            kept.append({next(iter(item)): _without(value, page)})
        elif value != page:
            kept.append(item)
    return kept


def _github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading (lower case, punctuation but ``-``/``_`` dropped)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


# --- README ------------------------------------------------------------------------------------

def test_readme_is_a_front_door_of_at_most_250_lines_with_the_two_setup_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert f"```bash\n{SETUP_COMMANDS}```" in text
    for section in ("## How it works", "## A five-minute tour", "## Documentation", "## Getting help"):
        assert section in text


def test_readme_links_resolve_to_files_and_headings():
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "the README links its pages"
    for link in local:
        path, _, anchor = link.partition("#")
        target = (README.parent / path).resolve()
        assert target.exists(), link
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(encoding="utf-8"), re.MULTILINE)
            assert anchor in {_github_slug(h) for h in headings}, link


def test_readme_lists_every_written_page_of_the_site():
    """Every hand-written page in the navigation is in the README's table of contents."""
    links = set(re.findall(r"\]\(docs/([^)#\s]+)", README.read_text(encoding="utf-8")))
    written = [page for page in _nav_pages(_config()["nav"]) if page not in mkdocs_hooks().GENERATED]
    assert [page for page in written if page not in links] == []


# --- the site ----------------------------------------------------------------------------------

def test_every_page_in_docs_is_in_the_navigation_and_every_adr_is_listed(docs_site):
    nav = _nav_pages(_config()["nav"])
    pages = {path.relative_to(ROOT / "docs").as_posix() for path in (ROOT / "docs").rglob("*.md")}
    adrs = {page for page in pages if page.startswith("adr/")}
    assert pages - adrs <= set(nav)
    for adr in adrs:
        assert (docs_site / adr.removesuffix(".md") / "index.html").is_file(), adr


def test_a_page_left_out_of_the_navigation_fails_the_strict_build(tmp_path):
    nav = _config()["nav"]
    (tmp_path / "intact").mkdir()
    (tmp_path / "dropped").mkdir()
    intact = build_site(_copy_config(tmp_path / "intact", nav), tmp_path / "site-intact")
    assert intact.returncode == 0, intact.stderr[-2000:]  # the copy itself builds: only the dropped entry fails
    dropped = build_site(_copy_config(tmp_path / "dropped", _without(nav, "user-guide/evaluation.md")), tmp_path / "site-dropped")
    assert dropped.returncode != 0
    assert "user-guide/evaluation.md" in dropped.stderr and "not included in the \"nav\"" in dropped.stderr


def test_a_broken_link_or_anchor_fails_the_strict_build(tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    page = docs / "user-guide" / "evaluation.md"
    original = page.read_text(encoding="utf-8")
    for broken in ("[gone](no-such-page.md)", "[gone](tasks.md#no-such-heading)"):
        page.write_text(f"{original}\nSee {broken}.\n", encoding="utf-8")
        result = build_site(_copy_config(tmp_path, docs_dir=docs), tmp_path / "site")
        assert result.returncode != 0, broken
        assert "user-guide/evaluation.md" in result.stderr and broken.split("(")[1].rstrip(")").split("#")[-1] in result.stderr


# --- the generated reference -------------------------------------------------------------------

def test_generated_pages_are_not_committed():
    for page in mkdocs_hooks().GENERATED:
        assert not (ROOT / "docs" / page).exists(), page


def test_task_columns_page_lists_every_column(docs_site):
    html = (docs_site / "reference" / "task-columns" / "index.html").read_text(encoding="utf-8")
    assert [c.name for c in TASK_COLUMNS if f"<td><code>{c.name}</code></td>" not in html] == []


def test_task_options_page_lists_every_option_with_its_description(docs_site):
    from dataclasses import fields

    from pytrain.task_options import TrainConfig

    html = (docs_site / "reference" / "task-options" / "index.html").read_text(encoding="utf-8")
    names = [option.name for option in fields(TrainConfig)]
    assert [name for name in names if f"<td><code>{name}</code></td>" not in html] == []
    described = mkdocs_hooks().docstring_attributes(TrainConfig)
    assert [name for name in names if not described.get(name)] == []  # each option says what it does


def test_settings_page_lists_every_setting_with_type_default_and_description(docs_site):
    html = (docs_site / "reference" / "settings" / "index.html").read_text(encoding="utf-8")
    prefix = Settings.model_config["env_prefix"]
    variables = [f"{prefix}{name.upper()}" for name in Settings.model_fields]
    assert [v for v in variables if f"<td><code>{v}</code></td>" not in html] == []
    rows = [line for line in mkdocs_hooks().render_settings().splitlines() if line.startswith(f"| `{prefix}")]
    assert len(rows) == len(variables)
    for row in rows:
        variable, kind, default, description = (cell.strip() for cell in row.strip("|").split(" | "))
        assert kind and default and description, row


def _cli_paths() -> list[tuple[str, ...]]:
    """Every command of the ``pytrain`` CLI, found through click's own listing API."""
    paths: list[tuple[str, ...]] = []

    def walk(command: Any, ctx: Any, path: tuple[str, ...]) -> None:
        paths.append(path)
        if hasattr(command, "list_commands"):  # a group (Typer's own copy of click's Group)
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                walk(sub, sub.context_class(sub, info_name=name, parent=ctx), (*path, name))

    root = typer.main.get_command(app)
    walk(root, root.context_class(root, info_name="pytrain"), ("pytrain",))
    return paths


def test_cli_page_lists_every_command_with_its_help(docs_site):
    html = (docs_site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    paths = _cli_paths()
    assert len(paths) > 20  # every command, not just the groups
    for path in paths:
        assert f'id="{"-".join(path)}"' in html, path
        assert f"Usage: {' '.join(path)} " in html, path
