"""docker/build-base-debian.sh, which builds the base of every deployment image (compose and Kubernetes)
where no registry answers: the Debian mirror comes from the host's apt sources in either format.

Debian 12 installs only deb822 files (/etc/apt/sources.list.d/debian.sources, no sources.list); the script
used to exit 2 without a word there. Each case is a fake /etc/apt (APT_ETC_DIR) and ``--print-mirror``,
which stops before anything needs root, debootstrap or Docker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from server import REPO_ROOT

SCRIPT = REPO_ROOT / "docker" / "build-base-debian.sh"

DEBIAN_12 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""

NODESOURCE = "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n"

#: (case, {file under /etc/apt: content}, the mirror expected, or None when the script must refuse).
CASES = [
    ("deb822 only (Debian 12)", {"sources.list.d/debian.sources": DEBIAN_12}, "http://deb.debian.org/debian"),
    (
        "one-line only",
        {"sources.list": "# local\ndeb http://ftp.example.org/debian/ bookworm main\n"},
        "http://ftp.example.org/debian/",
    ),
    (
        "one-line with options",
        {"sources.list": "deb [ arch=amd64 signed-by=/k.gpg ] https://m.example/debian bookworm main\n"},
        "https://m.example/debian",
    ),
    (
        "sources.list is read first, as apt does",
        {
            "sources.list": "deb http://first.example/debian bookworm main\n",
            "sources.list.d/debian.sources": DEBIAN_12,
        },
        "http://first.example/debian",
    ),
    (
        "security archive and deb-src are skipped",
        {
            "sources.list": "deb http://security.debian.org/debian-security bookworm-security main\n"
            "deb-src http://src.example/debian bookworm main\n",
            "sources.list.d/z.sources": "Types: deb-src\nURIs: http://src2.example/debian\nSuites: bookworm\n"
            "\n"
            "Types: deb deb-src\nURIs: http://both.example/debian\nSuites: bookworm\n",
        },
        "http://both.example/debian",
    ),
    (
        "deb822 Enabled: no, several URIs and a continuation line",
        {
            "sources.list.d/a.sources": "Types: deb\nEnabled: no\nURIs: http://off.example/debian\n"
            "Suites: bookworm\n\n"
            "Types: deb\nURIs: http://security.debian.org/debian-security\n"
            "  http://on.example/debian\nSuites: bookworm\n"
        },
        "http://on.example/debian",
    ),
    (
        "a .list file in sources.list.d; disabled files are ignored",
        {
            "sources.list.d/a.sources.disabled": DEBIAN_12,
            "sources.list.d/nodesource.sources": NODESOURCE,
            "sources.list.d/mirror.list": "deb http://list.example/debian bookworm main\n",
        },
        "http://list.example/debian",
    ),
    (
        "CRLF line ends",
        {"sources.list.d/debian.sources": DEBIAN_12.replace("\n", "\r\n")},
        "http://deb.debian.org/debian",
    ),
    ("no apt sources at all", {}, None),
    (
        "no Debian archive, only other repositories",
        {
            "sources.list": "deb http://archive.ubuntu.com/ubuntu noble main\n",
            "sources.list.d/node.sources": NODESOURCE,
        },
        None,
    ),
]


def run_script(apt_etc: Path, *args: str, mirror: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "DEBIAN_MIRROR"}
    env["APT_ETC_DIR"] = str(apt_etc)
    if mirror is not None:
        env["DEBIAN_MIRROR"] = mirror
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize(("files", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_mirror_comes_from_either_source_format(
    tmp_path: Path, files: dict[str, str], expected: str | None
) -> None:
    apt_etc = tmp_path / "apt"
    (apt_etc / "sources.list.d").mkdir(parents=True)
    for name, content in files.items():
        (apt_etc / name).write_text(content)
    result = run_script(apt_etc, "--print-mirror")
    if expected is None:
        assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
        assert result.stdout == ""
        assert "no Debian archive" in result.stderr and "set DEBIAN_MIRROR" in result.stderr, result.stderr
    else:
        assert (result.returncode, result.stdout.strip(), result.stderr) == (0, expected, "")


def test_missing_apt_directory_is_a_message_not_a_silent_exit(tmp_path: Path) -> None:
    result = run_script(tmp_path / "no-such-dir", "--print-mirror")
    assert result.returncode == 1 and "set DEBIAN_MIRROR" in result.stderr, result


def test_debian_mirror_variable_wins_without_any_sources(tmp_path: Path) -> None:
    result = run_script(tmp_path, "--print-mirror", mirror="http://given.example/debian")
    assert (result.returncode, result.stdout.strip()) == (0, "http://given.example/debian")


def test_unknown_option_is_refused_with_a_message(tmp_path: Path) -> None:
    result = run_script(tmp_path, "--frobnicate")
    assert result.returncode == 2 and "unknown option --frobnicate" in result.stderr


def test_unexpected_failures_are_reported(tmp_path: Path) -> None:
    """Under `set -e` a failing command used to end the script with no output: the ERR trap names it."""
    apt_etc = tmp_path / "apt"
    (apt_etc / "sources.list.d").mkdir(parents=True)
    (apt_etc / "sources.list.d" / "debian.sources").write_text(DEBIAN_12)
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()  # no awk on PATH: the parser itself fails
    result = subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(SCRIPT), "--print-mirror"],
        env={"PATH": str(empty_bin), "APT_ETC_DIR": str(apt_etc)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0 and result.stdout == ""
    assert "build-base-debian.sh: failed (exit 127)" in result.stderr, result.stderr
