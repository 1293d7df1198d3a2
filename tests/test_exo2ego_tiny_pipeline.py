"""The tiny Exo2Ego pipeline exactly as configs/exo2ego/pipeline.py documents it (world -> records
-> every stage), with /tmp/ replaced by the test's directory."""
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def documented_commands() -> list[str]:
    """The `python -m exo2ego_jax.main` lines of the tiny section of the pipeline config's docstring."""
    doc = open(os.path.join(ROOT, "configs", "exo2ego", "pipeline.py")).read()
    tiny = doc[doc.index("Tiny smoke run"):doc.index("Args (")]
    return [line.strip() for line in tiny.splitlines() if line.strip().startswith("python -m exo2ego_jax.main")]


def test_docstring_has_the_three_steps():
    cmds = documented_commands()
    assert [re.search(r"--config (\S+?)[:\s]", c).group(1) for c in cmds] == [
        "configs/data/synthetic.py", "configs/data/records.py", "configs/exo2ego/pipeline.py"]


@pytest.mark.slow  # ~2-3 minutes on 2 cores: a 6-take world, its records, three tiny stages
def test_tiny_pipeline_runs_as_documented(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)  # as a user runs it: the host's one CPU device
    for cmd in documented_commands():
        args = shlex.split(cmd.replace("/tmp/", f"{tmp_path}/"))
        assert args[0] == "python"
        run = subprocess.run([sys.executable, *args[1:]], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=900)
        assert run.returncode == 0, f"{cmd}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert os.path.isfile(tmp_path / "world" / "tokenizer" / "tokenizer.json")
    for stage in ("stage1_demonstrator", "stage2_guidance", "stage3_practice"):
        assert os.path.isfile(tmp_path / "pipeline" / stage / "stage_done.json"), stage
        steps = [line for line in open(tmp_path / "pipeline" / stage / "metrics.jsonl") if '"loss"' in line]
        assert steps, stage  # the stage logged a training loss
