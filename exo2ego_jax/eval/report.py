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
    """The numbers a paper table shows for one benchmark result (percentages; open QA score 0-5)."""
    m = result["metrics"]
    if not m:  # reused from another process's cache (see runner.evaluate)
        return {}
    if result["kind"] == "classification":
        return {"mAP": m["mAP"]}
    if result["kind"] == "multi_instance_retrieval":
        return {"mAP": m["mAP"], "nDCG": m["nDCG"]}
    if result["kind"] == "open_qa":
        return {"accuracy": m["accuracy"], "score": m["score"], "exact_match": m["exact_match"],
                "token_f1": m["token_f1"]}
    out = {"accuracy": m["accuracy"]}
    if result["kind"] == "retrieval":
        out.update({k: v for k, v in m.items() if k.endswith("_accuracy")})
    for view, res in m.get("per_view", {}).items():
        out[f"{view}_accuracy"] = res["accuracy"]
    return out


# The EgoBench table of the Exo2Ego paper: (column, benchmark, how to read it from the results).
EGOBENCH_COLUMNS = (
    ("EgoSchema Acc", "egoschema", ("accuracy",)),
    ("QAEgo4D Closed Acc", "qaego4d_closed", ("accuracy",)),
    ("QAEgo4D Open Acc", "qaego4d_open", ("accuracy",)),
    ("QAEgo4D Open Score", "qaego4d_open", ("score",)),
    ("EgoTaskQA Direct", "egotaskqa", ("per_category", "direct", "accuracy")),
    ("EgoTaskQA Indirect", "egotaskqa", ("per_category", "indirect", "accuracy")),
    ("Charades-Ego mAP", "charades_ego", ("mAP",)),
    ("EPIC-KITCHENS-100 MIR mAP", "epic_mir", ("mAP",)),
    ("EPIC-KITCHENS-100 MIR nDCG", "epic_mir", ("nDCG",)),
    ("EgoPlan Acc", "egoplan", ("accuracy",)),
    ("VLN-QA Acc", "vlnqa", ("accuracy",)),
    ("EgoMCQ Inter", "egomcq", ("inter_accuracy",)),
    ("EgoMCQ Intra", "egomcq", ("intra_accuracy",)),
)
EGOBENCH_BENCHMARKS = tuple(dict.fromkeys(bench for _, bench, _ in EGOBENCH_COLUMNS))
# Columns that are not percentages (the judge's 0-5 grade) stay out of the average.
_NOT_PERCENT = {"QAEgo4D Open Score"}


def _lookup(metrics: Mapping[str, Any], path: Sequence[str]) -> Any:
    value: Any = metrics
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def egobench_row(results: Mapping[str, Any]) -> list[Any]:
    """One run's EgoBench row: the 13 paper columns (None where not run) and the average."""
    row = []
    for _, bench, path in EGOBENCH_COLUMNS:
        res = results["benchmarks"].get(bench)
        row.append(_lookup(res["metrics"], path) if res else None)
    percent = [v for (col, _, _), v in zip(EGOBENCH_COLUMNS, row)
               if col not in _NOT_PERCENT and isinstance(v, (int, float)) and math.isfinite(v)]
    num_percent = len(EGOBENCH_COLUMNS) - len(_NOT_PERCENT)
    avg = sum(percent) / len(percent) if percent else None
    if percent and len(percent) < num_percent:
        avg = f"{avg:.2f} ({len(percent)}/{num_percent})"  # say how many columns it averages
    row.append(avg)
    return row


def egobench_table(runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown lines: the paper's EgoBench table, one row per run."""
    header = ["run", *(c for c, _, _ in EGOBENCH_COLUMNS), "Avg"]
    lines = _table(header, [[name, *egobench_row(res)] for name, res in runs.items()])
    lines += ["", "Avg: mean of the 12 percentage columns (the 0-5 open score is left out); with fewer columns "
              "it says how many it averages. The paper does not define its average (the mean of its own 12 "
              "percentages is 54.0, it prints 55.6), so compare averages only between rows of this table."]
    notes = []
    for bench, res in (runs[next(iter(runs))]["benchmarks"].items() if len(runs) == 1 else []):
        m = res.get("metrics") or {}
        if res.get("kind") == "open_qa" and m:
            how = ("an LLM judge" if m["scorer"] == "judge"
                   else "exact match (no judge set: Acc = exact match, no Score)")
            notes.append(f"{bench}: scored by {how}; token F1 {fmt(m['token_f1'])}")
        if bench == "egotaskqa" and m and "direct" not in m.get("per_category", {}):
            notes.append("egotaskqa: the file has no direct/indirect `reference` field; "
                         f"overall accuracy {fmt(m['accuracy'])}")
    return lines + [f"- {n}" for n in notes]


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
        return "-" if not math.isfinite(x) else f"{x:.2f}"
    return "-" if x is None else str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return lines


def unparsed_warnings(results: Mapping[str, Any]) -> list[str]:
    """Generate-mode benchmarks where more than `unparsed_warn_fraction` of answers had no option."""
    limit = results.get("unparsed_warn_fraction", 0.2)
    out = []
    for name, res in results["benchmarks"].items():
        m = res.get("metrics") or {}
        if res.get("kind") == "open_qa" and m.get("judge_unparsed", 0) > limit * m.get("num", 0):
            out.append(f"**{name}: the judge's reply could not be read for {m['judge_unparsed']} of {m['num']} "
                       "answers** (counted wrong, grade 0): the judge model does not follow the judge prompt; "
                       "use a larger instruction-tuned judge (--config.eval.judge.checkpoint).")
            continue
        if res.get("kind") != "mcq" or not m.get("num") or res.get("settings", {}).get("mcq_mode") == "loglik":
            continue
        if m["unparsed"] > limit * m["num"]:
            share = 100 * m["unparsed"] / m["num"]
            out.append(f"**{name}: {m['unparsed']} of {m['num']} answers unparsed** ({share:.0f}%, "
                       "counted wrong): the model does not answer with an option. For small or barely "
                       "instruction-tuned models use configs/eval.py:mode=loglik (docs/evaluation.md).")
    return out


def render_markdown(results: Mapping[str, Any]) -> str:
    """One run: the EgoBench table (suite egobench), a headline table, warnings, per-category /
    per-view breakdowns, per-benchmark timing and the suite's skipped benchmarks."""
    lines = [f"# Evaluation: {results.get('run', '')}", ""]
    egobench = set(EGOBENCH_BENCHMARKS)
    if results.get("suite") == "egobench" or egobench & set(results["benchmarks"]) == egobench:
        lines += ["## EgoBench", ""] + egobench_table({results.get("run", "") or "run": results}) + [""]
    rows = []
    for name, res in results["benchmarks"].items():
        m = res["metrics"]
        for metric, value in headline(res).items():
            rows.append([name, metric, value, _headline_num(m, metric), m.get("unparsed")])
    lines += ["## All metrics", ""] + _table(["benchmark", "metric", "value", "num", "unparsed"], rows)
    warnings = unparsed_warnings(results)
    if warnings:
        lines += [""] + warnings
    for name, res in results["benchmarks"].items():
        for key in ("per_view", "per_category", "per_view_category"):
            groups = res["metrics"].get(key)
            if groups:
                lines += ["", f"## {name}: {key.replace('_', ' ')}", ""]
                lines += _table(["group", "accuracy", "num"], [[g, r["accuracy"], r["num"]] for g, r in groups.items()])
    timing = [[name, res.get("seconds"), len(res.get("predictions", []))]
              for name, res in results["benchmarks"].items()]
    lines += ["", "## Timing", ""] + _table(["benchmark", "seconds", "examples"], timing)
    if results.get("skipped"):
        lines += ["", f"Skipped (files not configured): {', '.join(results['skipped'])}"]
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
    lines = _table(["benchmark", "metric", *runs], rows)
    egobench = set(EGOBENCH_BENCHMARKS)
    if any(egobench & set(r["benchmarks"]) for r in runs.values()):
        lines += ["", "EgoBench:", ""] + egobench_table(runs)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> None:
    """`python -m exo2ego_jax.eval.report WORKDIR_OR_JSON [...]`: print the comparison table."""
    if not argv:
        raise SystemExit("usage: python -m exo2ego_jax.eval.report RUN_DIR_OR_results.json [...]")
    print(compare_runs(list(argv)), end="")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
