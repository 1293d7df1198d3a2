"""The `config.eval` block shared by the "eval" job and by method configs that evaluate."""
from __future__ import annotations

import ml_collections

from exo2ego_jax.eval.benchmarks import BENCHMARKS
from exo2ego_jax.eval.prompts import FIRST_PERSON_TEXT

# Extra files some benchmarks need besides `annotation` and `video_dir`.
_EXTRA_PATHS = {
    "egoschema": {"answers": ""},  # subset_answers.json ({q_uid: 0..4}); empty: no accuracy
    "charades_ego": {"classes": ""},  # Charades_v1_classes.txt (157 'cNNN name' lines)
    # retrieval_annotations/: annotation = EPIC_100_retrieval_test.csv, plus these two; videos are
    # <video_dir>/<participant_id>/<video_subdir>/<video_id>.<video_ext>.
    "epic_mir": {"sentences": "", "relevance": "", "video_ext": "MP4", "video_subdir": "videos"},
}
_ANNOTATION_HINT = {
    "egoschema": "questions.json", "egoplan": "EgoPlan_validation.json", "egoplan2": "egoplan2.json",
    "qaego4d_closed": "annotations.QaEgo4D_test_close.json", "egotaskqa": "egotaskqa.json (MCQ)",
    "vlnqa": "vlnqa.json", "ego_in_exo": "egoinexoperception.json", "adlx_charades_ar": "Charades-AR.json",
    "adlx_smarthome_ar": "Smarthome-AR.json", "adlx_lemma_tc": "LEMMA-TC.json", "adlx_tsu_tc": "TSU-TC.json",
    "egomcq": "egomcq.json", "charades_ego": "CharadesEgo_v1_test_only1st.csv",
    "qaego4d_open": "annotations.test.json", "epic_mir": "EPIC_100_retrieval_test.csv",
    "mcq_json": "(eval.mcq_json)",
}


def eval_config(benchmarks: str = "") -> ml_collections.ConfigDict:
    """Defaults for every evaluation field; `benchmarks` is a comma-separated list of names."""
    e = ml_collections.ConfigDict()
    e.benchmarks = benchmarks  # comma-separated names from exo2ego_jax/eval/benchmarks.py:BENCHMARKS
    e.adapter = ""  # "module:function"(config, workdir) -> model adapter; "": methods/<method>.py:eval_model
    e.run_name = ""  # column name in results tables ("": the workdir's base name)
    e.batch_size = 8  # prompts (or videos) per adapter call; the last batch is padded to this size
    e.max_examples = 0  # evaluate only the first N records of each benchmark (0: all)
    e.resume = True  # reuse workdir/eval/<name>.json of a finished benchmark with the same settings
    e.save_scores = False  # keep the [videos, classes] score matrix of classification benchmarks
    # generate (greedy + letter parsing; the papers' protocol) | loglik (argmax option log-likelihood:
    # no parsing, for small / barely instruction-tuned models; docs/evaluation.md says when)
    e.mcq_mode = "generate"
    e.mcq_json = ""  # an extra MCQ file in QaEgo4D-closed format (e.g. the synthetic EgoBench), run as "mcq_json"
    e.mcq_json_video_dir = ""  # its videos ("": the file's folder)
    e.unparsed_warn_fraction = 0.2  # results.md flags a generate-mode benchmark with more unparsed answers
    # Charades-Ego / EgoMCQ / EPIC MIR text-video scores: embedding (adapter's text_video_scores) |
    # likelihood (caption log-likelihood by option_loglik) | auto (embedding if the adapter has it)
    e.retrieval_scoring = "auto"
    e.text_batch_size = 256  # sentences per adapter call in EPIC MIR scoring
    e.judge = ml_collections.ConfigDict()
    e.judge.checkpoint = ""  # QaEgo4D open judge LLM (HF dir / .safetensors / .gguf); "": judge-free EM / F1
    e.judge.tokenizer = ""  # its tokenizer ("": the checkpoint's)
    e.judge.prompt_file = ""  # judge template ("": exo2ego_jax/eval/judge_prompt.txt)
    e.judge.batch_size = 8  # judge prompts per decode
    e.judge.max_new_tokens = 24  # a one-line JSON verdict
    e.prompt_style = "auto"  # auto (ego2exo for Ego-in-Exo/ADL-X, else egobench) | egobench | ego2exo | raw
    e.suite = ""  # egobench | ego2exo: run the suite's benchmarks whose files are set, list the others
    # Exo2Ego: the first-person cue in EgoBench prompts (paper: +1.1 avg). Ego-in-Exo / ADL-X test
    # exocentric videos, where "your own point of view" would be false: their own switch, off.
    e.first_person_cue = True
    e.exo_first_person_cue = False
    e.first_person_text = FIRST_PERSON_TEXT  # the cue's wording (paper's exact sentence not published)
    e.task_details = True  # Exo2Ego: start the prompt with the benchmark's task description
    e.parse_overlap_threshold = 0.5  # min token F1 for the last-resort option-text match
    e.loglik_target = "text"  # loglik continuation: text (option) | letter_text ("(A) option")
    e.loglik_normalize = "none"  # none | per_char (divide each option's log-likelihood by its length)
    e.qaego4d_shuffle_seed = 0  # fixed seed that shuffles QaEgo4D-closed answer + wrong answers
    e.egoschema_labelled_only = True  # drop EgoSchema questions without a public answer
    e.ego_in_exo_views = "exo,ego"  # Ego2ExoVLM: each Ego-in-Exo question on the exo and the ego view
    e.egomcq_strip_tags = True  # remove Ego4D narration tags ('#C') from EgoMCQ queries
    e.charades_only_egocentric = False  # filter a full Charades-Ego v1 CSV on its `egocentric` column
    e.charades_class_template = "{}"  # text for each class name in zero-shot Charades-Ego
    e.paths = ml_collections.ConfigDict()
    for name in BENCHMARKS:
        p = e.paths[name] = ml_collections.ConfigDict()
        p.annotation = ""  # the benchmark's file, e.g. <root>/<_ANNOTATION_HINT[name]>
        p.video_dir = ""  # folder the benchmark's videos were extracted to
        for key, default in _EXTRA_PATHS.get(name, {}).items():
            p[key] = default
    return e


def with_defaults(block: ml_collections.ConfigDict | dict | None) -> ml_collections.ConfigDict:
    """`eval_config()` overlaid (recursively) with the fields a config's `eval` block sets.

    Lets a method's own config run the "eval" job (`--config.job=eval`) even if its `eval` block
    holds only its own fields; extra method fields are kept.
    """
    merged = eval_config()

    def overlay(dst: ml_collections.ConfigDict, src) -> None:
        for key, value in src.items():
            nested = isinstance(value, (ml_collections.ConfigDict, dict))
            if nested and isinstance(dst.get(key), ml_collections.ConfigDict):
                overlay(dst[key], value)
            else:
                dst[key] = value

    overlay(merged, block or {})
    return merged
