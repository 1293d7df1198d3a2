"""LLaVA/VideoLLaMA2 conversation JSON reader and the EgoIT-style generator."""
import json

from exo2ego_jax.data import instructions
from exo2ego_jax.data.skips import SkipCounter
from test_pipeline_fixtures import make_world

# The literal example of docs/formats.md section 3.
FORMATS_EXAMPLE = """
[{"id": "synth_000001", "video": "videos/synth_cooking_01_2_aria01_214-1.mp4",
  "conversations": [{"from": "human", "value": "<video>\\nDescribe what the camera wearer is doing."},
                    {"from": "gpt", "value": "C picks up the kettle and pours water into a cup."}]},
 {"id": "synth_000002", "image": "images/synth_0001.jpg",
  "conversations": [{"from": "human", "value": "<image>\\nWhat object is on the table?"},
                    {"from": "gpt", "value": "A kettle."}]}]
"""


def test_reads_the_formats_example(tmp_path):
    path = tmp_path / "sft.json"
    path.write_text(FORMATS_EXAMPLE)
    skips = SkipCounter()
    samples = instructions.read_llava_json(str(path), skips=skips)
    assert skips.num_skipped == 0 and skips.num_seen == 2
    video, image = samples
    assert video.id == "synth_000001" and video.media == "video"
    assert video.path == str(tmp_path / "videos/synth_cooking_01_2_aria01_214-1.mp4")
    assert video.conversations[0] == {"from": "human", "value": "<video>\nDescribe what the camera wearer is doing."}
    assert video.conversations[1]["value"] == "C picks up the kettle and pours water into a cup."
    assert image.media == "image" and image.conversations[0]["value"] == "<video>\nWhat object is on the table?"


def test_placeholder_moved_to_start_and_leading_gpt_dropped(tmp_path):
    item = {"id": 7, "video": "a.mp4", "conversations": [
        {"from": "gpt", "value": "hello"}, {"from": "human", "value": "What is this? <video>"},
        {"from": "gpt", "value": "A cup."}]}
    s = instructions.parse_sample(item, "/data")
    assert s.conversations[0]["value"] == "<video>\nWhat is this?" and len(s.conversations) == 2
    assert s.path == "/data/a.mp4" and s.id == "7"


def test_bad_files_and_samples_are_skipped_and_counted(tmp_path):
    skips = SkipCounter()
    (tmp_path / "broken.json").write_text('[{"id": 1, "conversations": [')
    (tmp_path / "latin1.json").write_bytes('[{"id": "caf\xe9"}]'.encode("latin-1"))
    good = {"id": "ok", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    bad = [good, {"id": "odd", "conversations": [{"from": "human", "value": "hi"}]},
           {"id": "nolist", "conversations": "hi"}, "not a dict",
           {"id": "stray", "conversations": [{"from": "human", "value": "<video> hi"}, {"from": "gpt", "value": "x"}]}]
    (tmp_path / "mixed.json").write_text(json.dumps(bad))
    out = []
    for name in ("broken.json", "latin1.json", "mixed.json", "missing.json"):
        out += instructions.read_llava_json(str(tmp_path / name), skips=skips)
    assert [s.id for s in out] == ["ok"]
    assert skips.counts == {"malformed_json": 5, "non_utf8_text": 1, "missing_file": 1}
    assert skips.num_seen == 8
    assert str(tmp_path / "broken.json") in skips.examples["malformed_json"]
    assert skips.examples["non_utf8_text"] == [str(tmp_path / "latin1.json")]


def test_egoit_generator_on_a_world(tmp_path):
    root = make_world(str(tmp_path / "world"))
    out = tmp_path / "egoit.json"
    samples = instructions.generate_egoit(root, "train", str(out), seed=3)
    again = instructions.generate_egoit(root, "train", str(tmp_path / "again.json"), seed=3)
    assert samples == again
    questions = {s["conversations"][0]["value"].split("\n", 1)[1] for s in samples}
    assert questions <= set(instructions.all_template_texts()) and len(questions) >= 3
    answers = [s["conversations"][1]["value"] for s in samples]
    assert "C picks up the kettle." in answers and "Boil water" in answers
    assert "The camera wearer is doing Making Tea." in answers
    parsed = instructions.read_llava_json(str(out), data_folder=root)
    assert len(parsed) == len(samples) and all(p.path.endswith(".mp4") for p in parsed)
    assert parsed[0].start is not None and parsed[0].end > parsed[0].start


def test_egoit_attribute_questions_from_synthetic_meta(tmp_path):
    from test_pipeline_fixtures import UID

    root = make_world(str(tmp_path / "world"))
    objects = [{"shape": "box", "colour": "red"}, {"shape": "cup", "colour": "blue"},
               {"shape": "cup", "colour": "green"}]
    with open(f"{root}/synthetic_meta.json", "w") as f:
        json.dump({"takes": {UID(1): {"actor_side": "east", "objects": objects}}}, f)
    samples = instructions.generate_egoit(root, "train", str(tmp_path / "egoit.json"))
    qa = {(s["conversations"][0]["value"].split("\n", 1)[1], s["conversations"][1]["value"]) for s in samples}
    assert any(a == "east" and "actor side" in q for q, a in qa)
    assert any(a == "red" and "box" in q for q, a in qa)
    assert not any(a in ("blue", "green") for _, a in qa)  # two cups: an ambiguous question is not asked
