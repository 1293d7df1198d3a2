"""The Ego2ExoVLM commands of README.md and docs/ego2exo.md parse as written: every --config.<key> they
use exists (config_flags refuses unknown keys) and they select the models the text says."""
import pytest

from test_documented_commands import documented, parse_config_flags

MAIN = "python -m exo2ego_jax.main --config "


def _config(path, start):
    cmd = documented(path, MAIN + start)
    assert cmd[:3] == ["python", "-m", "exo2ego_jax.main"]
    return parse_config_flags(cmd[3:])


@pytest.mark.parametrize("path, start", [
    ("README.md", "configs/ego2exo/label.py:hardware=tpu_v5p_128"),
    ("docs/ego2exo.md", "configs/ego2exo/label.py:hardware=tpu_v5p_128"),
])
def test_videollama3_labelling_commands(path, start):
    c = _config(path, start)
    assert c.job == "label" and c.model.arch == "videollama3" and c.model.checkpoint
    assert c.data.tokenizer == c.model.checkpoint and c.label.root and c.label.split == "train"
    assert (c.label.sample_fps, c.label.max_frames) == (1.0, 180)  # the paper's teacher sampling
    assert c.hardware.preset == "tpu_v5p_128"


@pytest.mark.parametrize("path, start", [
    ("README.md", "configs/ego2exo/student.py:hardware=tpu_v5p_128 "),
    ("docs/ego2exo.md", "configs/ego2exo/student.py:hardware=tpu_v5p_128 "),
])
def test_videollama3_student_commands(path, start):
    c = _config(path, start)
    assert c.job == "train" and c.model.arch == "videollama3"
    assert c.model.checkpoint in ("$VL3_7B_IMAGE", "/ckpt/VideoLLaMA3-7B-Image")  # the image-stage model
    assert len(c.data.instructions) == 1 and c.data.instructions[0].endswith("labels.json")
    assert c.model.num_probes == 16 and c.ego2exo.lora_rank == 64
    assert (c.ego2exo.lr_lora, c.ego2exo.lr_probe) == (1e-5, 2e-6)


def test_llava_video_alternatives_parse():
    t = _config("docs/ego2exo.md", "configs/ego2exo/label.py:hardware=gpu_h100x8")
    assert t.model.arch == "llava_video" and t.model.llm_hf and t.model.vision_hf
    s = _config("docs/ego2exo.md", "configs/ego2exo/student.py:hardware=tpu_v5p_128,arch=llava_video")
    assert s.model.arch == "llava_video" and s.model.vision_hf and s.model.connector_hf
