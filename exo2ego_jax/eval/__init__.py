"""Evaluation harness shared by both methods: benchmark loaders, prompts, answer parsing,
metrics, the runner (job "eval") and result reports. Users: docs/evaluation.md; interfaces:
docs/ARCHITECTURE.md "Evaluation"."""
from exo2ego_jax.eval.adapter import MCQModel, VideoTextModel
from exo2ego_jax.eval.benchmarks import BENCHMARKS, SUITES
from exo2ego_jax.eval.parsing import parse_answer
from exo2ego_jax.eval.records import (ClassificationRecord, ClassificationSet, MCQRecord, MultiInstanceRetrievalSet,
                                      OpenQARecord, RetrievalRecord, VideoRef)
from exo2ego_jax.eval.report import compare_runs, render_markdown
from exo2ego_jax.eval.runner import (evaluate, evaluate_classification, evaluate_mcq,
                                     evaluate_multi_instance_retrieval, evaluate_open_qa, evaluate_retrieval)

__all__ = [
    "BENCHMARKS", "ClassificationRecord", "ClassificationSet", "MCQModel", "MCQRecord", "MultiInstanceRetrievalSet",
    "OpenQARecord", "RetrievalRecord", "SUITES", "VideoRef", "VideoTextModel", "compare_runs", "evaluate",
    "evaluate_classification", "evaluate_mcq", "evaluate_multi_instance_retrieval", "evaluate_open_qa",
    "evaluate_retrieval", "parse_answer", "render_markdown",
]
