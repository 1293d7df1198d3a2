"""The QaEgo4D-open judge on a real (tiny, random) checkpoint loaded by the stack: batched,
left-padded judging gives the same replies as one prompt at a time, and the replies are scored."""
import pytest
import torch
import transformers

from exo2ego_jax.eval import open_qa
from exo2ego_jax.eval.judge import LLMJudge
from helpers import save_word_level_tokenizer

WORDS = ["<unk>", "<s>", "</s>", "user", "assistant", ":", "yes", "no", "pred", "score", "{", "}", '"', ",",
         "0", "1", "2", "3", "4", "5", "question", "answer", "on", "the", "table", "keys", "where", "milk"]


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("judge")
    save_word_level_tokenizer(d, WORDS)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   eos_token_id=2, bos_token_id=1)
    transformers.AutoModelForCausalLM.from_config(cfg).float().save_pretrained(d)
    return str(d)


@pytest.mark.slow  # ~30 s on 2 loaded cores: two decode compiles of a real checkpoint
def test_llm_judge_batches_like_single_prompts(judge_dir):
    prompts = ["where the keys ?", "milk on the table , yes or no", "score 5"]
    judge = LLMJudge(judge_dir, max_new_tokens=4, batch_size=2)
    batched = judge(prompts)  # [2, 64] twice (the last batch padded with a repeat)
    judge.batch_size = 1
    single = judge(prompts)
    assert len(batched) == 3 and all(isinstance(r, str) for r in batched)
    assert batched == single  # left padding to a 64-token bucket and batching change nothing
    rows = [{"question": "where the keys ?", "answer": "on the table", "response": "on the table"}]
    m = open_qa.score_answers(rows, judge, "{question} {answer} {prediction}")
    verdict, grade = open_qa.parse_judge(rows[0]["judge_reply"])
    assert m["scorer"] == "judge" and m["accuracy"] == (100.0 if verdict else 0.0)
    assert m["judge_unparsed"] == int(verdict is None or grade is None)
