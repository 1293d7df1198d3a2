"""What a training run writes besides the loss: skip counts, MFU (or why not), the parameter table."""
import json
import logging
import os

import pytest

from exo2ego_jax import config_lib
from exo2ego_jax.data.pipeline_ops import SkipTallyDataset
from exo2ego_jax.data.skips import SkipCounter
from exo2ego_jax.methods import toy
from exo2ego_jax.train import loop
from exo2ego_jax.train import metrics as metrics_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_skip_counts_mfu_and_parameter_table(tmp_path, monkeypatch, caplog):
    """A pipeline that skipped inputs before this run (the tally stage's carried-over counts) shows
    them in every metrics row; hardware.peak_flops gives MFU on a CPU; the per-parameter table goes
    to parameters.txt and the log gets one line."""
    earlier = SkipCounter()
    earlier.seen(10)
    for i in range(3):
        earlier.skip("missing_video", f"/data/take{i}.mp4")
    make = toy.Toy.dataset
    monkeypatch.setattr(toy.Toy, "dataset",
                        lambda self, *a: SkipTallyDataset(make(self, *a), 1.0, 100, earlier))
    c = config_lib.load(os.path.join(ROOT, "configs/toy.py"), "tiny,steps=4")
    c.unlock()
    c.train.log_every, c.train.ckpt_every, c.train.progress = 2, 0, False
    c.hardware.peak_flops = 1e12  # a made-up peak: MFU = model FLOP/s / 1e12 per device
    c.lock()
    with caplog.at_level(logging.INFO):
        loop.train(c, str(tmp_path))
    rows = [r for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if "loss" in r]
    assert len(rows) == 2
    for r in rows:
        assert r["skipped/missing_video"] == 3 and r["skipped/total"] == 3
        assert r["skipped/seen"] >= 10 and 0 < r["skipped/fraction"] <= 0.3
        flops = toy.Toy(c).flops_per_example() * c.train.global_batch
        assert r["mfu"] == pytest.approx(flops * r["steps_per_sec"] / (1e12 * 8), rel=1e-6)  # 8 fake devices
    table = (tmp_path / "parameters.txt").read_text()
    assert "trainable parameters:" in table and "| Name" in table
    summary = [m for m in caplog.messages if m.startswith("parameters: ")]
    assert len(summary) == 1 and "table in" in summary[0] and "\n" not in summary[0]
    assert not any("| Name" in m for m in caplog.messages)  # the table itself stays off the console


def test_mfu_absent_says_why(caplog, monkeypatch):
    monkeypatch.setattr(metrics_lib, "_EXPLAINED_NO_PEAK", set())
    with caplog.at_level(logging.INFO):
        assert metrics_lib.resolve_peak_flops(0.0) is None  # fake CPU devices: no known peak
        assert metrics_lib.resolve_peak_flops(0.0) is None  # a second stage: said once is enough
        assert metrics_lib.resolve_peak_flops(2e12) == 2e12
    said = [m for m in caplog.messages if m.startswith("MFU is not reported")]
    assert len(said) == 1 and "--config.hardware.peak_flops" in said[0] and "'cpu'" in said[0]
