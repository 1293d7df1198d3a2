"""The Exo2Ego demo's job plan (shared demonstrator) and its dependency-aware executor."""
import os
import time

import pytest

from exo2ego_jax.methods.exo2ego import demo
from tests.test_demo import demo_config

PATHS = {"tokenizer": "/tok", "clips": "/clips.npz", "world": "/world", "vocab": 100}


def _by_name(jobs):
    return {j.name: j for j in jobs}


def test_plan_trains_one_shared_demonstrator_for_every_seed():
    c = demo_config("seeds=2,variants=a_exo2ego+b_ego_only+c_no_kl")
    jobs = _by_name(demo.plan(c, PATHS))
    prefix = "a_exo2ego/seed0/first-stage"
    assert set(jobs) == {prefix, *(f"{v}/seed{s}" for s in (0, 1) for v in ("a_exo2ego", "b_ego_only", "c_no_kl"))}
    assert jobs[prefix].prefix and not jobs[prefix].after
    # Every Exo2Ego-style run waits for the one stage-1 job and reuses its directory ...
    for name in ("a_exo2ego/seed0", "a_exo2ego/seed1", "c_no_kl/seed0", "c_no_kl/seed1"):
        assert jobs[name].after == (prefix,)
    assert jobs["a_exo2ego/seed0"].link == ""  # ... which is its own
    for name in ("a_exo2ego/seed1", "c_no_kl/seed0", "c_no_kl/seed1"):
        assert jobs[name].link == os.path.join("seed0", "a_exo2ego")
    # ... while ego-only runs share nothing: their first stage depends on their seed.
    for s in (0, 1):
        assert jobs[f"b_ego_only/seed{s}"].after == () and jobs[f"b_ego_only/seed{s}"].link == ""
    # The rest of a run costs less than the whole of it.
    assert 0 < jobs["a_exo2ego/seed1"].cost < jobs[prefix].cost + jobs["a_exo2ego/seed1"].cost


def test_plan_per_seed_demonstrators():
    c = demo_config("seeds=2,teacher_seed=-1,variants=a_exo2ego+c_no_kl")
    jobs = _by_name(demo.plan(c, PATHS))
    # (a) and (c) of one seed still share stage 1; seeds do not.
    assert {n for n, j in jobs.items() if j.prefix} == {"a_exo2ego/seed0/first-stage", "a_exo2ego/seed1/first-stage"}
    assert jobs["c_no_kl/seed1"].after == ("a_exo2ego/seed1/first-stage",)
    assert jobs["c_no_kl/seed1"].link == os.path.join("seed1", "a_exo2ego")
    # One variant alone shares nothing.
    jobs = demo.plan(demo_config("seeds=1,variants=b_ego_only"), PATHS)
    assert [(j.name, j.after, j.link) for j in jobs] == [("b_ego_only/seed0", (), "")]


def test_worker_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert demo.worker_cores(-1, 10) == [[0], [1], [2], [3]]
    # One core per worker, always (one XLA thread: the same numbers whichever worker runs a job);
    # spare cores stay idle.
    assert demo.worker_cores(2, 10) == [[0], [1]]
    assert demo.worker_cores(-1, 3) == [[0], [1], [2]]
    assert demo.worker_cores(0, 10) == demo.worker_cores(1, 10) == demo.worker_cores(-1, 1) == [[0]]
    # An accelerator belongs to one process: every job runs in it.
    assert demo.worker_cores(-1, 10, "gpu") == demo.worker_cores(2, 10, "tpu") == []


def _jobs():
    J = demo.Job
    return [J(0, "b", cost=5.0), J(0, "a", prefix=True, cost=1.0), J(0, "a", after=("a/seed0/first-stage",), cost=3.0),
            J(1, "a", after=("a/seed0/first-stage",), cost=2.0)]


def test_execute_in_process_runs_prerequisites_first_then_the_largest():
    order = []
    out = demo.execute(_jobs(), lambda j: (order.append(j.name), {j.name: j.seed})[1], cores=[])
    assert order == ["a/seed0/first-stage", "b/seed0", "a/seed0", "a/seed1"]
    assert out == {"a/seed0/first-stage": 0, "b/seed0": 0, "a/seed0": 0, "a/seed1": 1}
    with pytest.raises(ValueError, match="wait for jobs that do not exist"):
        demo.execute([demo.Job(0, "a", after=("nope",))], lambda j: {}, cores=[])


def test_next_keeps_a_variants_second_run_until_its_first_compiled():
    J = demo.Job
    a0, a1, b1 = J(0, "a", cost=3.0), J(1, "a", cost=3.0), J(1, "b", cost=1.0)
    # a/seed0 is running and no run of "a" has finished: its programs are not cached yet, so the
    # cheaper b/seed1 goes first ...
    assert demo._next([a1, b1], set(), (a0,)) is b1
    # ... unless nothing else is ready, and not once a run of "a" has finished.
    assert demo._next([a1], set(), (a0,)) is a1
    assert demo._next([a1, b1], {"a/seed0"}, ()) is a1
    # A running prefix job (the shared stage 1) compiles only its own stage: it delays nobody.
    assert demo._next([a1, b1], set(), (J(0, "a", prefix=True),)) is a1


def _timed(job):
    t = time.time()
    time.sleep(0.3)
    return {job.name: (t, time.time(), os.getpid(), sorted(os.sched_getaffinity(0)))}


def _fails(job):
    if job.seed == 1:
        raise OSError("disk full")
    return {job.name: 1}


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs sched_getaffinity (Linux)")
def test_execute_on_worker_processes():
    core = sorted(os.sched_getaffinity(0))[0]
    out = demo.execute(_jobs(), _timed, cores=[[core], [core]])
    assert set(out) == {j.name for j in _jobs()}
    first_end = out["a/seed0/first-stage"][1]
    assert out["a/seed0"][0] >= first_end and out["a/seed1"][0] >= first_end  # waited for the prefix
    assert {r[3][0] for r in out.values()} == {core}  # pinned to the given cores
    assert os.getpid() not in {r[2] for r in out.values()}  # ran in worker processes
    with pytest.raises(RuntimeError, match=r"job a/seed1 failed in its worker process: OSError\('disk full'\)"):
        demo.execute([demo.Job(0, "a"), demo.Job(1, "a")], _fails, cores=[[core], [core]])


def _xla_threads(job):
    import jax.numpy as jnp
    (jnp.ones((64, 64)) @ jnp.ones((64, 64))).block_until_ready()
    task = f"/proc/{os.getpid()}/task"
    n = sum(open(f"{task}/{t}/comm").read().strip() == "tf_XLAEigen" for t in os.listdir(task))
    return {job.name: (sorted(os.sched_getaffinity(0)), n)}


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts XLA threads in /proc")
def test_workers_run_xla_on_one_thread_even_when_the_environment_says_otherwise(monkeypatch):
    """XLA sizes its CPU thread pool from $PJRT_NPROC / $NPROC before the affinity; a worker pins
    both, so an inherited NPROC cannot give a job more threads (and other numbers)."""
    monkeypatch.setenv("NPROC", "3")
    jobs = [demo.Job(s, "b") for s in range(2)]
    out = demo.execute(jobs, _xla_threads, cores=demo.worker_cores(-1, 2))
    assert {n for _, n in out.values()} == {1} and all(len(c) == 1 for c, _ in out.values())
