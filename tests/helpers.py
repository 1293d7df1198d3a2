"""Set-up shared by several test files: config files loaded by path, a word-level tokenizer folder, the small
synthetic world the labelling tests run on. Test files import it as `helpers` (pytest puts tests/ on sys.path,
as for conftest.py)."""
import importlib.util
import os

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from exo2ego_jax.methods.ego2exo import prompts
from exo2ego_jax.synthetic import tokenizer as synthetic_tokenizer
from exo2ego_jax.synthetic import world as synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_module(path: str):
    """The config file at `path` (relative to the repository root) as a module, as main.py's --config reads it."""
    spec = importlib.util.spec_from_file_location("cfg_" + path.replace("/", "_")[:-3], os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(path: str, arg: str | None = None):
    """`get_config(arg)` of the config file at `path` (relative to the repository root)."""
    return config_module(path).get_config(arg)


# "user: ...\nassistant:" turns: the chat template of the word-level test tokenizers
ROLE_COLON_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                       "{% if add_generation_prompt %}assistant:{% endif %}")


def save_word_level_tokenizer(directory: str, words: list[str], chat_template: str = ROLE_COLON_TEMPLATE) -> str:
    """A transformers tokenizer folder: one id per word of `words` (in order; `<unk>`, `<s>`, `</s>` among
    them), whitespace pre-tokenizer, `chat_template`. Returns `directory`."""
    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = chat_template
    fast.save_pretrained(directory)
    return str(directory)


def write_label_world(root: str, tokenizer_dir: str, **world_fields) -> None:
    """The labelling tests' synthetic world under `root` (2 short takes, all train, seed 3; `world_fields`
    override synthetic.world_config() fields) and its word tokenizer, with the teacher's system prompt, in
    `tokenizer_dir`."""
    cfg = synthetic.world_config()
    cfg.num_takes, cfg.num_workers, cfg.seed = 2, 0, 3
    cfg.action_seconds, cfg.pause_seconds, cfg.lead_seconds = (0.4, 0.5), (0.0, 0.1), 0.2
    cfg.val_fraction = 0.0
    for name, value in world_fields.items():
        setattr(cfg, name, value)
    synthetic.write_world(cfg, root)
    synthetic_tokenizer.build_tokenizer(synthetic_tokenizer.world_texts(root) + [prompts.SYSTEM_PROMPT],
                                        tokenizer_dir)
