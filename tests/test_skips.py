"""SkipCounter: counting, reports, the max-fraction check, merging and checkpointable state."""
import json
import pickle

import pytest

from exo2ego_jax.data.skips import SkipCounter, TooManySkipped


def _counter():
    c = SkipCounter(max_examples=2)
    c.seen(10)
    c.skip("corrupt_video", "/d/a.mp4", "cannot open")
    c.skip("corrupt_video", "/d/b.mp4")
    c.skip("corrupt_video", "/d/c.mp4")
    c.skip("malformed_json", "/d/takes.json[3]")
    return c


def test_counts_examples_metrics_report():
    c = _counter()
    assert c.counts == {"corrupt_video": 3, "malformed_json": 1}
    assert c.examples["corrupt_video"] == ["/d/a.mp4", "/d/b.mp4"]  # first max_examples only
    m = c.metrics()
    assert m["skipped/corrupt_video"] == 3 and m["skipped/malformed_json"] == 1
    assert m["skipped/fraction"] == pytest.approx(0.4) and m["skipped/seen"] == 10
    report = c.report()
    assert "corrupt_video: 3" in report and "/d/a.mp4 (cannot open)" in report and "4 of 10" in report


def test_check_raises_with_reasons_paths_and_field():
    c = _counter()
    c.check(0.5)  # 0.4 <= 0.5: fine
    with pytest.raises(TooManySkipped) as e:
        c.check(0.1)
    msg = str(e.value)
    assert "corrupt_video: 3" in msg and "/d/takes.json[3]" in msg and "config.data.max_skip_fraction" in msg
    SkipCounter().check(0.0)  # nothing seen, nothing skipped


def test_merge_and_state_roundtrip():
    a, b = _counter(), SkipCounter(max_examples=2)
    b.seen(5)
    b.skip("missing_video", "/d/x.mp4")
    b.skip("corrupt_video", "/d/z.mp4")
    a.merge(b)
    assert a.num_seen == 15 and a.counts["corrupt_video"] == 4 and a.counts["missing_video"] == 1
    assert a.examples["corrupt_video"] == ["/d/a.mp4", "/d/b.mp4"]
    restored = SkipCounter.from_json(json.dumps(json.loads(a.to_json())))
    assert restored == a and restored.metrics() == a.metrics()
    assert pickle.loads(pickle.dumps(a)) == a
    fresh = SkipCounter()
    fresh.load_state_dict(a.state_dict())
    assert fresh.counts == a.counts and fresh.report() == a.report()
