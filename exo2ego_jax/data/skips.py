"""Skip accounting: bad input is skipped, counted per reason, and kept with example paths.

A data pipeline that silently drops inputs hides broken downloads; one that crashes on the first
corrupt mp4 wastes a TPU reservation. `SkipCounter` sits between: every reader calls `.skip()`
with a reason and the offending path, the pipeline calls `.check(max_fraction)` and fails loudly
only when too much was dropped. Its state is plain JSON so it can ride along in a checkpoint.
"""
from __future__ import annotations

import json
from typing import Any

# Reasons used by the readers of this package. Others are allowed (free-form strings), these are
# listed so callers and reports agree on spelling.
REASONS = (
    "corrupt_video",
    "truncated_video",
    "empty_video",
    "missing_video",
    "no_exo_views",
    "narration_outside_video",
    "malformed_json",
    "non_utf8_text",
    "empty_text",
    "misaligned_video",
    "malformed_take",
)


class TooManySkipped(RuntimeError):
    """More than the allowed fraction of examples was skipped."""


class SkipCounter:
    """Counts examples seen and skipped (per reason), keeping the first few distinct paths per reason.

    Two units: ``skip`` counts lost *examples* (what ``fraction`` and ``check`` are about);
    ``skip_view`` counts views dropped from examples that were kept (e.g. one unreadable exo camera of
    a clip whose other cameras still pair with its ego view). Views are reported separately and
    never count towards the fraction.
    """

    def __init__(self, max_examples: int = 5, config_field: str = "config.data.max_skip_fraction"):
        self.max_examples = int(max_examples)
        self.config_field = config_field  # named in the TooManySkipped message
        self.num_seen = 0
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self.details: dict[str, list[str]] = {}
        self.view_counts: dict[str, int] = {}
        self.view_examples: dict[str, list[str]] = {}
        self.view_details: dict[str, list[str]] = {}

    # --- counting -------------------------------------------------------------------------------
    def seen(self, n: int = 1) -> None:
        """Counts `n` examples considered (skipped or not)."""
        self.num_seen += int(n)

    def skip(self, reason: str, path: str, detail: str = "") -> None:
        """Records one skipped example for `reason` at `path` (detail: a short human hint)."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self._example(self.examples, self.details, reason, path, detail)

    def skip_view(self, reason: str, path: str, detail: str = "") -> None:
        """Records one view dropped from an example that was kept (not an example lost)."""
        self.view_counts[reason] = self.view_counts.get(reason, 0) + 1
        self._example(self.view_examples, self.view_details, reason, path, detail)

    def _example(self, examples, details, reason: str, path: str, detail: str) -> None:
        # Distinct paths: one file failing for many examples is one line, and the other slots
        # stay free for the other files that failed.
        paths = examples.setdefault(reason, [])
        if len(paths) < self.max_examples and str(path) not in paths:
            paths.append(str(path))
            details.setdefault(reason, []).append(str(detail))

    @property
    def num_skipped(self) -> int:
        return sum(self.counts.values())

    @property
    def num_views_skipped(self) -> int:
        return sum(self.view_counts.values())

    @property
    def fraction(self) -> float:
        """Skipped / seen; skips with nothing seen count as all skipped."""
        if self.num_seen <= 0:
            return 1.0 if self.num_skipped else 0.0
        return self.num_skipped / self.num_seen

    # --- reporting ------------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        out = {f"skipped/{r}": float(c) for r, c in sorted(self.counts.items())}
        out["skipped/total"] = float(self.num_skipped)
        out["skipped/seen"] = float(self.num_seen)
        out["skipped/fraction"] = float(self.fraction)
        for r, c in sorted(self.view_counts.items()):
            out[f"skipped_views/{r}"] = float(c)
        if self.view_counts:
            out["skipped_views/total"] = float(self.num_views_skipped)
        return out

    def report(self) -> str:
        if not self.counts:
            lines = [f"skipped 0 of {self.num_seen} examples"]
        else:
            lines = [f"skipped {self.num_skipped} of {self.num_seen} examples ({100 * self.fraction:.2f}%):"]
            lines += self._lines(self.counts, self.examples, self.details)
        if self.view_counts:
            lines.append(f"dropped {self.num_views_skipped} views of examples that were kept (not counted as "
                         "skipped examples):")
            lines += self._lines(self.view_counts, self.view_examples, self.view_details)
        return "\n".join(lines)

    @staticmethod
    def _lines(counts, examples, details) -> list[str]:
        lines = []
        for reason in sorted(counts):
            lines.append(f"  {reason}: {counts[reason]}")
            for path, detail in zip(examples.get(reason, []), details.get(reason, [])):
                lines.append(f"    e.g. {path}" + (f" ({detail})" if detail else ""))
        return lines

    def check(self, max_fraction: float) -> None:
        """Raises TooManySkipped if skipped/seen > max_fraction."""
        if self.num_skipped and self.fraction > max_fraction:
            raise TooManySkipped(
                f"{self.report()}\nThis is more than the allowed fraction {max_fraction} of skipped "
                f"examples. Fix or re-download the inputs listed above, or raise {self.config_field} "
                f"(e.g. --{self.config_field}={min(1.0, round(self.fraction + 0.01, 2))}) to accept them.")

    # --- combining and state --------------------------------------------------------------------
    def merge(self, other: "SkipCounter") -> "SkipCounter":
        """Adds `other`'s counts into self (e.g. from worker processes); returns self."""
        self.num_seen += other.num_seen
        for mine, theirs in (((self.counts, self.examples, self.details), (other.counts, other.examples, other.details)),
                             ((self.view_counts, self.view_examples, self.view_details),
                              (other.view_counts, other.view_examples, other.view_details))):
            counts, examples, details = mine
            for reason, count in theirs[0].items():
                counts[reason] = counts.get(reason, 0) + count
                paths = theirs[1].get(reason, [])
                for path, detail in zip(paths, theirs[2].get(reason, [""] * len(paths))):
                    self._example(examples, details, reason, path, detail)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"max_examples": self.max_examples, "config_field": self.config_field,
                "num_seen": self.num_seen, "counts": dict(self.counts),
                "examples": {k: list(v) for k, v in self.examples.items()},
                "details": {k: list(v) for k, v in self.details.items()},
                "view_counts": dict(self.view_counts),
                "view_examples": {k: list(v) for k, v in self.view_examples.items()},
                "view_details": {k: list(v) for k, v in self.view_details.items()}}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "SkipCounter":
        out = cls(state.get("max_examples", 5), state.get("config_field", "config.data.max_skip_fraction"))
        out.load_state_dict(state)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_seen = int(state.get("num_seen", 0))
        self.counts = {k: int(v) for k, v in state.get("counts", {}).items()}
        self.examples = {k: list(v) for k, v in state.get("examples", {}).items()}
        self.details = {k: list(v) for k, v in state.get("details", {}).items()}
        self.view_counts = {k: int(v) for k, v in state.get("view_counts", {}).items()}
        self.view_examples = {k: list(v) for k, v in state.get("view_examples", {}).items()}
        self.view_details = {k: list(v) for k, v in state.get("view_details", {}).items()}
        for examples, details in ((self.examples, self.details), (self.view_examples, self.view_details)):
            for reason, paths in examples.items():  # older states may lack details
                details.setdefault(reason, [""] * len(paths))

    def to_json(self) -> str:
        return json.dumps(self.state_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SkipCounter":
        return cls.from_state_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SkipCounter) and self.state_dict() == other.state_dict()

    def __repr__(self) -> str:
        views = f", views={self.view_counts}" if self.view_counts else ""
        return f"SkipCounter(seen={self.num_seen}, counts={self.counts}{views})"
