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


def test_views_are_reported_apart_and_example_paths_are_distinct():
    c = SkipCounter(max_examples=2)
    c.seen(10)
    for _ in range(3):
        c.skip("truncated_video", "/w/t1/aria01.mp4")  # one file, three clips lost
    c.skip("truncated_video", "/w/t2/aria01.mp4")
    c.skip_view("misaligned_video", "/w/t3/cam02.mp4", "25.000 fps")
    c.skip_view("misaligned_video", "/w/t3/cam02.mp4", "25.000 fps")
    assert c.counts == {"truncated_video": 4} and c.fraction == 0.4  # views never count as lost examples
    assert c.examples["truncated_video"] == ["/w/t1/aria01.mp4", "/w/t2/aria01.mp4"]
    assert c.view_counts == {"misaligned_video": 2} and c.view_examples["misaligned_video"] == ["/w/t3/cam02.mp4"]
    text = c.report()
    assert "skipped 4 of 10 examples" in text and "dropped 2 views of examples that were kept" in text
    assert c.metrics()["skipped_views/misaligned_video"] == 2.0 and "skipped/misaligned_video" not in c.metrics()
    back = SkipCounter.from_json(c.to_json())
    assert back == c
    merged = SkipCounter(max_examples=2).merge(c).merge(back)
    assert merged.counts == {"truncated_video": 8} and merged.view_counts == {"misaligned_video": 4}
    assert merged.examples["truncated_video"] == ["/w/t1/aria01.mp4", "/w/t2/aria01.mp4"]
