"""One target's diagnosis: each role's CPU per request split over categories and functions, as text."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from benchmarks.diagnose.stacks import Row, category, python_function, self_function, state


@dataclass(frozen=True)
class Attribution:
    """Where each thread role's CPU went: the clean window's CPU split by the profiled window's samples."""

    roles: dict[str, dict[str, Any]]
    categories: dict[str, dict[str, float]]
    category_functions: dict[str, dict[str, dict[str, float]]]
    top_self: list[dict[str, Any]]
    thread_states: dict[str, dict[str, float]]


@dataclass(frozen=True)
class Diagnosis:
    """Everything measured about one target, as ``diagnose.json`` stores it."""

    target: str
    config: str
    wrk_clean: dict[str, Any]
    wrk_profiled: dict[str, Any]
    threads: list[dict[str, Any]]
    attribution: Attribution
    native: dict[str, str]
    files: list[str]


def assign_roles(threads: list[dict[str, Any]], roles: dict[int, str], python_pids: list[int]) -> None:
    """Give every thread of the clean window a role; those py-spy never saw get one from their process."""
    for thread in threads:
        role = roles.get(thread["tid"])
        if role is None:  # no Python thread state: py-spy never sees it
            if thread["comm"].startswith("ZMQbg"):
                role = "zmq I/O threads"
            elif thread["pid"] in python_pids:  # onnxruntime's pool threads keep the process's name
                role = "native threads (onnxruntime intra-op pool)"
            else:
                role = f"{thread['process']} (native)"
        thread["role"] = role


def attribute(threads: list[dict[str, Any]], rows: list[Row], roles: dict[int, str]) -> Attribution:
    """Role CPU (clean window, ``threads`` with their roles) split over categories and self functions."""
    role_cpu: Counter[str] = Counter()
    for thread in threads:
        role_cpu[thread["role"]] += thread["cpu_us_per_request"]
    samples_by_role: Counter[str] = Counter()
    by_category: dict[str, Counter[str]] = defaultdict(Counter)
    by_self: dict[str, Counter[str]] = defaultdict(Counter)
    by_function: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    states: dict[str, Counter[str]] = defaultdict(Counter)
    for tid, frames, count in rows:
        role = roles.get(tid, "other")
        kind = state(frames)
        states[role][kind] += count
        if kind != "cpu":
            continue
        samples_by_role[role] += count
        by_category[role][category(frames)] += count
        by_function[role][category(frames)][python_function(frames)] += count
        by_self[role][self_function(frames)] += count
    thread_states = {
        role: {kind: 100 * counts[kind] / sum(counts.values()) for kind in ("cpu", "gil", "wait")}
        for role, counts in states.items()
    }
    by_role: dict[str, dict[str, Any]] = {}
    categories: dict[str, dict[str, float]] = {}
    category_functions: dict[str, dict[str, dict[str, float]]] = {}
    top_self: list[dict[str, Any]] = []
    for role, us in sorted(role_cpu.items(), key=lambda item: -item[1]):
        mine = [t for t in threads if t["role"] == role]
        by_role[role] = {"cpu_us_per_request": us, "cpu_percent": sum(t["cpu_percent"] for t in mine),
                         "threads": sum(1 for t in mine if t["cpu_percent"] > 0.5)}
        total = samples_by_role.get(role, 0)
        if total:
            categories[role] = {name: us * n / total for name, n in by_category[role].most_common()}
            category_functions[role] = {
                name: {fn: us * k / total for fn, k in functions.most_common(4)}
                for name, functions in by_function[role].items()
            }
            top_self.extend({"role": role, "function": name, "share": n / total, "us_per_request": us * n / total}
                            for name, n in by_self[role].most_common(12))
    return Attribution(by_role, categories, category_functions, top_self, thread_states)


def render(result: Diagnosis) -> str:
    """The diagnosis as text: wrk's figures, CPU by role, where each role spends it, the top functions."""
    w, found = result.wrk_clean, result.attribution
    lines = [f"== {result.target}: {result.config}",
             (f"wrk clean: {w['requests_per_s']:.0f} req/s, p50 {w['p50_ms']:.1f} ms, p99 {w['p99_ms']:.1f} ms; "
             f"under py-spy: {result.wrk_profiled.get('requests_per_s', 0):.0f} req/s"),
             "CPU by thread role (clean window): %CPU of one core, CPU us per request, busy threads"]
    for role, figures in found.roles.items():
        if figures["cpu_percent"] >= 0.5:
            lines.append(f"  {role:<40} {figures['cpu_percent']:6.1f}%  {figures['cpu_us_per_request']:8.0f} us/req"
                         f"  threads {figures['threads']}")
    total = sum(f["cpu_us_per_request"] for f in found.roles.values())
    lines.append(f"  {'total':<40} {sum(f['cpu_percent'] for f in found.roles.values()):6.1f}%  {total:8.0f} us/req")
    for role, cats in found.categories.items():
        lines.append(f"where {role} spends it (us CPU per request, from py-spy samples):")
        for name, us in cats.items():
            if us < 1:
                continue
            lines.append(f"    {name:<55} {us:7.0f}")
            functions = found.category_functions.get(role, {}).get(name, {})
            lines.extend(f"        {fus:6.0f}  {fn}" for fn, fus in functions.items() if fus >= max(2.0, 0.1 * us))
    lines.append("top self functions (us CPU per request):")
    for row in sorted(found.top_self, key=lambda r: -r["us_per_request"])[:30]:
        lines.append(f"    {row['us_per_request']:7.0f}  {100 * row['share']:5.1f}% of {row['role']:<18} {row['function']}")
    if found.thread_states:
        lines.append("py-spy samples by thread state (% of each role's samples): running/runnable, GIL wait, blocked")
        lines.extend(f"    {role:<40} cpu {st['cpu']:5.1f}%  gil {st['gil']:5.1f}%  blocked {st['wait']:5.1f}%"
                     for role, st in sorted(found.thread_states.items()))
    for name, text in result.native.items():
        lines.append(f"perf (native) {name}: top symbols")
        lines.append(text)
    lines.append("files: " + ", ".join(result.files))
    return "\n".join(lines)
