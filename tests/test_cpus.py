"""Thread sizing follows the CPUs the process may use: affinity and the cgroup quota, from faked cgroup trees.

A ``--cpus=2`` container on a 64-core host must not start 64 onnxruntime or decode threads: cases
are (cgroup files, /proc/self/cgroup, expected quota), for cgroup v2 and v1, nested limits, no limit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from service.engine.model_settings import ModelSettings
from service.engine.repository import ServingConfig
from service.limits.cpus import affinity_count, cgroup_quota, cpu_budget
from service.settings import Settings

V2 = "0::/kubepods/pod1/container\n"
V1 = "12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n"

CASES: list[tuple[str, str, dict[str, str], float | None]] = [
    ("v2 quota of 2 CPUs", V2, {"kubepods/pod1/container/cpu.max": "200000 100000\n"}, 2.0),
    ("v2 fractional quota", V2, {"kubepods/pod1/container/cpu.max": "150000 100000\n"}, 1.5),
    ("v2 unlimited", V2, {"kubepods/pod1/container/cpu.max": "max 100000\n"}, None),
    ("v2 limit on a parent", V2, {"kubepods/pod1/container/cpu.max": "max 100000\n",
                                   "kubepods/pod1/cpu.max": "300000 100000\n"}, 3.0),
    ("v2 tighter child wins", V2, {"kubepods/cpu.max": "800000 100000\n",
                                    "kubepods/pod1/container/cpu.max": "100000 100000\n"}, 1.0),
    ("v2 namespaced root", "0::/\n", {"cpu.max": "400000 100000\n"}, 4.0),
    ("v2 host path not visible", V2, {"cpu.max": "200000 100000\n"}, 2.0),
    ("v2 garbage file", V2, {"kubepods/pod1/container/cpu.max": "nonsense\n"}, None),
    ("v1 quota", V1, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
                      "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"}, 2.5),
    ("v1 unlimited", V1, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1\n",
                          "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"}, None),
    ("no cgroup files", V2, {}, None),
]


def fake_tree(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "sys-fs-cgroup"
    root.mkdir(parents=True)
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    proc_file = tmp_path / "proc-self-cgroup"
    proc_file.write_text(proc)
    return proc_file, root


@pytest.mark.parametrize(("proc", "files", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cgroup_quota_is_read_from_v1_and_v2_trees(tmp_path: Path, proc: str, files: dict[str, str],
                                                   expected: float | None) -> None:
    quota, source = cgroup_quota(*fake_tree(tmp_path, proc, files))
    assert quota == expected
    if expected is not None:
        assert "cgroup" in source


def test_usable_cpus_are_the_smaller_of_affinity_and_the_rounded_down_quota(tmp_path: Path) -> None:
    proc, root = fake_tree(tmp_path, V2, {"kubepods/pod1/container/cpu.max": "150000 100000\n"})
    budget = cpu_budget(proc, root)
    assert budget.quota == 1.5 and budget.usable == 1 and budget.affinity == affinity_count()
    assert "cpu.max" in budget.source
    unlimited = cpu_budget(*fake_tree(tmp_path / "b", V2, {}))
    assert unlimited.usable == affinity_count() and unlimited.quota is None


def test_thread_pools_are_sized_from_the_usable_cpus(tmp_path: Path) -> None:
    settings = Settings(model_dir=tmp_path)
    usable = settings.cpus.usable
    assert settings.decode_threads == usable and settings.inference_threads == usable
    two_instances = ModelSettings.resolve(settings, ServingConfig(instances=2))
    assert two_instances.intra_op_threads == max(1, usable // 2)
    assert ModelSettings.resolve(Settings(model_dir=tmp_path, intra_op_threads=3), ServingConfig()).intra_op_threads == 3
