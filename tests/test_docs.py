"""The README is a user's guide that cannot drift from the code, and docs/configuration.md is generated.

- README.md: at most 150 lines, `make serve` and `make test` in its first 30;
- every command in a shell block of the README and of docs/ exists: make targets in the Makefile, HTTP routes
  of the app (method and path), `python -m` modules, compose services, paths in the repository;
- docs/configuration.md is what ``python -m service.settings_doc`` renders from the Settings model now;
- every relative link resolves, and every ``RESNET_SERVE_*`` name the pages mention is a setting or is read
  somewhere in the code or the deployment files.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT
from starlette.routing import Match

from service import settings_doc
from service.app import create_app
from service.settings import ENV_PREFIX, Settings

README = REPO_ROOT / "README.md"
PAGES = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 150
#: Pages other engineers write in parallel (the README and the docs index already link them).
PENDING_PAGES = {"docs/observability.md", "docs/scaling.md"}
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"\]\(([^)\s]+)\)")
SERVICE_URL = re.compile(r"(?:127\.0\.0\.1|localhost):8000(/[^\s'\"?]*)")
#: Where a RESNET_SERVE_* name may be read, apart from the Settings model.
CODE_FOLDERS = ("servable", "models", "export", "service", "benchmarks", "tests", "docker", "deploy", ".ci")
CODE_SUFFIXES = {".py", ".yml", ".yaml", ".toml", ".sh", ".env", ""}


def relative(page: Path) -> str:
    return str(page.relative_to(REPO_ROOT))


def shell_commands(page: Path) -> list[str]:
    """Every command line of the page's shell blocks (continuations joined, comments dropped)."""
    commands = []
    for block in SHELL_BLOCK.findall(page.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.extend(part.strip() for part in re.split(r"&&|\|", line) if part.strip())
    return commands


# --- the README -----------------------------------------------------------------------------------------


def test_the_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines: move details to docs/"
    first_screen = "\n".join(lines[:30])
    assert re.search(r"^make serve\b", first_screen, re.MULTILINE) and re.search(r"^make test\b", first_screen, re.MULTILINE)


def test_the_readme_has_the_quick_start_a_user_looks_for() -> None:
    text = README.read_text()
    for needed in ("curl ", "tritonclient", "docker compose up", "## Features", "## Performance", "docs/"):
        assert needed in text, needed
    table = text[text.index("## Performance"):]
    assert re.search(r"AMD EPYC.*\d{4}-\d{2}-\d{2}", table, re.DOTALL), "the benchmark table names its machine and date"


# --- commands that exist ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_routes() -> list:
    return list(create_app(Settings(model_dir=REPO_ROOT / "no-models")).routes)


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE))


def compose_services() -> set[str]:
    return set(yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"])


def route_exists(routes: list, method: str, path: str) -> bool:
    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    return any(route.matches(scope)[0] is Match.FULL for route in routes)


def check_command(command: str, routes: list) -> list[str]:
    """What in ``command`` does not exist (empty: it all does)."""
    problems = []
    words = shlex.split(command, posix=True) if command.count("'") % 2 == 0 else command.split()
    if words[:1] == ["make"]:
        targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        problems += [f"make target {t!r}" for t in targets if t not in make_targets()]
    if words[0].endswith(("python", "python3")) and "-m" in words:
        module = words[words.index("-m") + 1]
        if importlib.util.find_spec(module) is None:
            problems.append(f"python module {module!r}")
    if words[0] == "curl":
        method = "POST" if {"-F", "--data-binary", "-d"} & set(words) or "POST" in words else "GET"
        for path in SERVICE_URL.findall(command):
            if not route_exists(routes, method, path):
                problems.append(f"route {method} {path}")
    if words[:2] == ["docker", "compose"] and "up" in words:
        named = [w for w in words[words.index("up") + 1:] if not w.startswith("-")]
        problems += [f"compose service {s!r}" for s in named if s not in compose_services()]
    if words[:1] == ["kubectl"] and "-k" in words:
        target = words[words.index("-k") + 1]
        if not (REPO_ROOT / target).is_dir():
            problems.append(f"kustomization {target!r}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=relative)
def test_every_command_on_the_page_exists(page: Path, app_routes: list) -> None:
    commands = shell_commands(page)
    problems = [f"{command}: no {problem}" for command in commands for problem in check_command(command, app_routes)]
    assert not problems, "\n".join(problems)


def test_the_command_check_finds_what_does_not_exist(app_routes: list) -> None:
    for command in ("make deploy", "python -m service.nothing", "curl http://127.0.0.1:8000/classify",
                    "curl -F file=@a.jpg http://127.0.0.1:8000/models", "docker compose up -d api-tpu",
                    "kubectl apply -k deploy/kubernetes/overlays/tpu"):
        assert check_command(command, app_routes), command
    for command in ("make serve", "python -m service.settings_doc --check", "curl http://127.0.0.1:8000/v2/models/m/ready",
                    "curl -F file=@a.jpg 'http://127.0.0.1:8000/predict?model=m'", "docker compose up -d api-cpu"):
        assert check_command(command, app_routes) == [], command


# --- the configuration page ---------------------------------------------------------------------------------


def test_the_configuration_page_is_generated_from_the_settings_now() -> None:
    page = REPO_ROOT / "docs" / "configuration.md"
    assert settings_doc.main(["--check", "--output", str(page)]) == 0, "run: python -m service.settings_doc"
    rows = [line for line in page.read_text().splitlines() if line.startswith(f"| `{ENV_PREFIX}")]
    assert len(rows) >= len(Settings.model_fields)
    for name in Settings.model_fields:
        matching = [row for row in rows if row.startswith(f"| `{ENV_PREFIX}{name.upper()}` | `--{name.replace('_', '-')}`")]
        assert len(matching) == 1, name


def test_a_stale_configuration_page_is_caught(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(settings_doc.render().replace("`8000`", "`8080`"))
    assert settings_doc.main(["--check", "--output", str(stale)]) == 1
    assert settings_doc.main(["--output", str(stale)]) == 0 and stale.read_text() == settings_doc.render()


# --- links and names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=relative)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists() and str(path.relative_to(REPO_ROOT)) not in PENDING_PAGES:
            broken.append(target)
    assert not broken, broken


def test_every_variable_the_pages_name_is_read_somewhere() -> None:
    named = {name for page in PAGES for name in re.findall(rf"{ENV_PREFIX}[A-Z0-9_]+[A-Z0-9]", page.read_text())}
    settings = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    files = [REPO_ROOT / "Makefile", REPO_ROOT / "docker-compose.yml", REPO_ROOT / "models.toml"]
    files += [path for folder in CODE_FOLDERS for path in (REPO_ROOT / folder).rglob("*")
              if path.is_file() and (path.suffix in CODE_SUFFIXES or path.name.startswith("Dockerfile"))]
    code = "\n".join(path.read_text(errors="replace") for path in files)
    unknown = sorted(name for name in named - settings if name not in code)
    assert not unknown, f"named in the docs, read nowhere: {unknown}"
