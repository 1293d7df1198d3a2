"""Results files (`results.json`, `results.md`) and markdown tables comparing runs."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence


def _finite(x: Any) -> Any:
    """NaN / inf -> None, so the files are standard JSON (a metric with no data is null)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write_json(path: str, data: Any) -> None:
    """Write atomically (temp file + rename) so a preempted job never leaves half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(_finite(data), f, indent=1, allow_nan=False)
    os.replace(tmp, path)


def headline(result: Mapping[str, Any]) -> dict[str, float]:
    """The numbers a paper table shows for one benchmark result (percentages)."""
    m = result["metrics"]
    if not m:  # reused from another process's cache (see runner.evaluate)
        return {}
    if result["kind"] == "classification":
        return {"mAP": m["mAP"]}
    out = {"accuracy": m["accuracy"]}
    if result["kind"] == "retrieval":
        out.update({k: v for k, v in m.items() if k.endswith("_accuracy")})
    for view, res in m.get("per_view", {}).items():
        out[f"{view}_accuracy"] = res["accuracy"]
    return out


def _headline_num(metrics: Mapping[str, Any], metric: str) -> Any:
    """How many questions a headline number is computed over."""
    if metric.endswith("_accuracy"):
        group = metric[: -len("_accuracy")]
        if group in metrics.get("per_view", {}):
            return metrics["per_view"][group]["num"]
        return metrics.get(f"{group}_num")
    return metrics.get("num")


def fmt(x: Any) -> str:
    """A table cell: floats with 2 decimals, NaN / None as "-"."""
    if isinstance(x, float):
        return "-" if math.isnan(x) else f"{x:.2f}"
    return "-" if x is None else str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(results: Mapping[str, Any]) -> str:
    """One run: a headline table, then per-category / per-view breakdowns where present."""
    lines = [f"# Evaluation: {results.get('run', '')}", ""]
    rows = []
    for name, res in results["benchmarks"].items():
        m = res["metrics"]
        for metric, value in headline(res).items():
            rows.append([name, metric, value, _headline_num(m, metric), m.get("unparsed")])
    lines += _table(["benchmark", "metric", "value", "num", "unparsed"], rows)
    for name, res in results["benchmarks"].items():
        for key in ("per_view", "per_category", "per_view_category"):
            groups = res["metrics"].get(key)
            if groups:
                lines += ["", f"## {name}: {key.replace('_', ' ')}", ""]
                lines += _table(["group", "accuracy", "num"], [[g, r["accuracy"], r["num"]] for g, r in groups.items()])
    return "\n".join(lines) + "\n"


def write_results(workdir: str, results: Mapping[str, Any]) -> tuple[str, str]:
    """`results.json` (metrics + per-question predictions) and `results.md` in `workdir`."""
    os.makedirs(workdir, exist_ok=True)
    json_path, md_path = os.path.join(workdir, "results.json"), os.path.join(workdir, "results.md")
    write_json(json_path, results)
    with open(md_path, "w") as f:
        f.write(render_markdown(results))
    return json_path, md_path


def load_results(path: str) -> dict[str, Any]:
    """A results.json, or the one inside a workdir."""
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    with open(path) as f:
        return json.load(f)


def compare_runs(runs: Mapping[str, Mapping[str, Any]] | Sequence[str]) -> str:
    """Markdown table: one row per (benchmark, headline metric), one column per run.

    `runs` is {name: results} or a list of results.json paths / workdirs (named by their `run`).
    """
    if not isinstance(runs, Mapping):
        loaded = [load_results(p) for p in runs]
        runs = {r.get("run") or str(i): r for i, r in enumerate(loaded)}
    keys: list[tuple[str, str]] = []
    values: dict[str, dict[tuple[str, str], float]] = {}
    for run_name, results in runs.items():
        values[run_name] = {}
        for bench, res in results["benchmarks"].items():
            for metric, v in headline(res).items():
                if (bench, metric) not in keys:
                    keys.append((bench, metric))
                values[run_name][(bench, metric)] = v
    rows = [[b, m, *(values[r].get((b, m)) for r in runs)] for b, m in keys]
    return "\n".join(_table(["benchmark", "metric", *runs], rows)) + "\n"


def main(argv: Sequence[str]) -> None:
    """`python -m exo2ego_jax.eval.report WORKDIR_OR_JSON [...]`: print the comparison table."""
    if not argv:
        raise SystemExit("usage: python -m exo2ego_jax.eval.report RUN_DIR_OR_results.json [...]")
    print(compare_runs(list(argv)), end="")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
