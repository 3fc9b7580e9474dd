"""Sharded and data-parallel training on two CPU ranks (gloo), against one process.

The launched runs (``tests/distributed_worker.py``: one process, ``accelerate launch`` with
``configs/accelerate/ddp.yaml`` and with ``configs/accelerate/fsdp.yaml``; and
``smore-gnn finetune`` on two ranks through ``tests/cli_worker.py``) take about two and a half
minutes together, so they carry the ``distributed`` marker (``make test-distributed``). The
helpers of :mod:`smore_gnn.train.distributed` are also tested in-process, unmarked.

Tolerances: the single process and DDP agree to the last bit here; FSDP2 reduce-scatters
gradients in another order, so its losses and adapter tensors are compared at 1e-5
(float32: a few units in the last place after 4 steps).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from smore_gnn.hf.methods import smore_paper_config
from smore_gnn.hf.model import SMoREModel, get_smore_model
from smore_gnn.hf.testing import tiny_llama
from smore_gnn.train import distributed

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")
TOL = 1e-5
MODES = ("single", "ddp", "fsdp")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(mode: str, out: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if mode == "single":
        cmd = [sys.executable, str(WORKER), str(out)]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch"]
        cmd += ["--config_file", str(ROOT / "configs" / "accelerate" / f"{mode}.yaml")]
        cmd += ["--num_processes", "2", "--main_process_port", str(_free_port())]
        cmd += [str(WORKER), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = 1 if mode == "single" else 2
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    out = {}
    for mode in MODES:
        folder = tmp_path_factory.mktemp(mode)
        out[mode] = {"dir": folder, "ranks": _launch(mode, folder)}
    return out


def _trajectory(rank: dict, key: str = "loss", logs: str = "logs") -> list[float]:
    return [log[key] for log in rank[logs]]


@pytest.mark.distributed
def test_fsdp_run_is_sharded_and_ddp_is_replicated(runs):
    fsdp, ddp = runs["fsdp"]["ranks"], runs["ddp"]["ranks"]
    assert all(r["distributed_type"] == "DistributedType.FSDP" for r in fsdp)
    assert all(r["wrapper"] == "FSDPSMoREModel" and r["sharded"] for r in fsdp)
    assert all(2 * r["shard_numel"] == r["full_numel"] for r in fsdp)  # half per rank
    assert all(r["wrapper"] == "DistributedDataParallel" and not r["sharded"] for r in ddp)
    assert all(r["world_size"] == 2 for r in fsdp + ddp)


@pytest.mark.distributed
@pytest.mark.parametrize("key", ["loss", "lm_loss", "aux_loss", "grad_norm"])
def test_loss_trajectories_match_single_process(runs, key):
    single = _trajectory(runs["single"]["ranks"][0], key)
    assert len(single) == 4 and len(set(single)) > 1
    for mode in ("ddp", "fsdp"):
        for rank in runs[mode]["ranks"]:
            assert _trajectory(rank, key) == pytest.approx(single, rel=TOL, abs=TOL), mode


@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_every_rank_adds_its_balance_loss(runs, mode):
    # One process accumulates micro-batches 0, 1 (step 1), 2, 3, ...; rank r gets batch 2 s + r.
    single = runs["single"]["ranks"][0]["local_losses"]
    for r, rank in enumerate(runs[mode]["ranks"]):
        local = rank["local_losses"]
        flat = [x for pair in single[r::2] for x in pair]
        assert [x for pair in local for x in pair] == pytest.approx(flat, rel=TOL, abs=TOL)
        assert all(total - lm > 0.1 for total, lm in local)  # the balance loss is in


@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_saved_adapter_loads_into_one_process_with_the_same_outputs(runs, mode):
    from safetensors.torch import load_file

    folder = runs[mode]["dir"] / "adapter"
    saved = load_file(folder / "adapter_model.safetensors")
    reference = load_file(runs["single"]["dir"] / "adapter" / "adapter_model.safetensors")
    assert saved.keys() == reference.keys()
    assert all(torch.allclose(saved[k], reference[k], atol=TOL) for k in saved)
    base, tokenizer = tiny_llama(hidden_size=32, intermediate_size=64, num_layers=2)
    model = SMoREModel.from_pretrained(base, folder).eval()
    sys.path.insert(0, str(WORKER.parent))
    from distributed_worker import probe_batch

    with torch.no_grad():
        logits = model(**probe_batch(tokenizer)).logits
    ranked = torch.load(runs[mode]["dir"] / "probe_logits.pt")  # rank 0's sharded model
    torch.testing.assert_close(logits, ranked, atol=TOL, rtol=0)


@pytest.mark.distributed
@pytest.mark.parametrize("mode", MODES)
def test_resume_from_checkpoint_continues_the_trajectory(runs, mode):
    for rank in runs[mode]["ranks"]:
        resumed = {log["step"]: log["loss"] for log in rank["resumed_logs"]}
        straight = {log["step"]: log["loss"] for log in rank["logs"]}
        assert set(resumed) >= {3, 4}
        assert [resumed[s] for s in (3, 4)] == pytest.approx([straight[s] for s in (3, 4)])


@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_routing_statistics_cover_every_rank_tokens(runs, mode):
    single = runs["single"]["ranks"][0]
    ranks = runs[mode]["ranks"]
    for rank in ranks:  # each rank routed half of the probe; all report the whole probe
        assert rank["probe_loads"] == single["probe_loads"]
        assert rank["probe_stats"] == pytest.approx(single["probe_stats"])
    # Without the reduction a rank would report its half: the halves' loads add up.
    for name, layers in single["probe_loads"].items():
        for l, load in enumerate(layers):
            halves = [rank["probe_shard_loads"][name][l] for rank in ranks]
            assert [a + b for a, b in zip(*halves)] == load
    assert any(r["probe_shard_loads"] != single["probe_loads"] for r in ranks)


@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_routing_health_callback_reports_the_same_on_every_rank(runs, mode):
    single = runs["single"]["ranks"][0]["health"]
    assert [h["step"] for h in single] == [2, 4]
    for rank in runs[mode]["ranks"]:
        for mine, theirs in zip(rank["health"], single, strict=True):
            assert mine.keys() == theirs.keys()
            assert mine == pytest.approx(theirs, rel=1e-4, abs=1e-4)


@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_ranks_with_different_adapter_initialisations_are_refused(runs, mode):
    for rank in runs[mode]["ranks"]:
        assert "ranks [1] differ from rank 0's" in rank["mismatch"]
        assert "manual_seed" in rank["mismatch"]


# ---- smore-gnn finetune on two ranks (tests/cli_worker.py) --------------------------------

CLI_WORKER = Path(__file__).with_name("cli_worker.py")
FINETUNE = ["finetune", "--model", "tiny", "--n-train", "8", "--n-test", "4", "--max-steps"]
FINETUNE += ["2", "--batch-size", "2", "--max-length", "160", "--no-progress", "--smore"]
FINETUNE += ['{"rank": [2, 2]}']


def _launch_cli(mode: str, log: Path, argv: list[str], **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(WORKER.parent), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    cmd += ["--config_file", str(ROOT / "configs" / "accelerate" / f"{mode}.yaml")]
    cmd += ["--num_processes", "2", "--main_process_port", str(_free_port())]
    cmd += [str(CLI_WORKER), str(log), *argv]
    log.mkdir(parents=True, exist_ok=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict[str, dict]:
    out = {}
    for mode in ("ddp", "fsdp"):
        folder = tmp_path_factory.mktemp(f"cli-{mode}")
        proc = _launch_cli(mode, folder / "log", [*FINETUNE, "--output-dir", str(folder / "run")])
        ranks = [folder / "log" / f"rank{r}.json" for r in (0, 1)]
        ranks = [json.loads(r.read_text()) if r.is_file() else None for r in ranks]
        out[mode] = {"dir": folder, "proc": proc, "ranks": ranks}
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_finetune_on_two_ranks_writes_and_prints_once(cli_runs, mode):
    proc, (main, other) = cli_runs[mode]["proc"], cli_runs[mode]["ranks"]
    assert proc.returncode == 0 and main["code"] == other["code"] == 0, proc.stderr[-4000:]
    assert other["calls"] == [], "only the main process checks, writes and saves"
    save = "save_adapter_gathered" if mode == "fsdp" else "save_any"  # FSDP: gathered first
    expected = [["probe_save", None], ["_write_atomic", "finetune_config.yaml"], [save, None]]
    expected += [["_write_atomic", n] for n in ("metrics.json", "routing_health.json")]
    assert main["calls"] == [*expected, ["_write_atomic", "metrics.json"]]
    assert proc.stdout.count("tuned accuracy") == 1 and proc.stdout.count("adapter saved") == 1
    assert proc.stdout.count("base accuracy:") == 1 and "routing tree drawn" in proc.stdout


@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_finetune_on_two_ranks_leaves_one_adapter_that_loads(cli_runs, mode):
    from smore_gnn.cli.commands import main

    folder = cli_runs[mode]["dir"]
    run = folder / "run"
    assert sorted(p.name for p in folder.iterdir()) == ["log", "run"]  # no rescue, no leftover
    names = {"adapter_config.json", "adapter_model.safetensors", "finetune_config.yaml"}
    names |= {"metrics.json", "routing_health.json", "routing_tree.png"}
    assert {p.name for p in run.iterdir() if p.name != "trainer"} == names
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_steps"] == 2 and metrics["tuned_accuracy"] is not None
    SMoREModel.from_pretrained(tiny_llama()[0], run)  # the folder is complete and fits
    argv = ["eval", "--model", "tiny", "--adapter", str(run), "--n-test", "4", "--no-progress"]
    scores = _last_json_line(main, argv)
    assert scores["accuracy"] == metrics["tuned_accuracy"]  # the trained adapter was saved


def _last_json_line(main, argv: list[str]) -> dict:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()) as text:
        assert main(argv) == 0
    return json.loads(text.getvalue().strip().splitlines()[-1])


def _codes(log: Path) -> list[int]:
    return [json.loads((log / f"rank{r}.json").read_text())["code"] for r in (0, 1)]


@pytest.mark.distributed
def test_finetune_user_error_on_two_ranks_is_one_line_and_both_stop(tmp_path):
    taken = tmp_path / "file"
    taken.write_text("mine")
    proc = _launch_cli("ddp", tmp_path / "log", [*FINETUNE, "--output-dir", str(taken)])
    assert _codes(tmp_path / "log") == [2, 2]
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and f"--output-dir: '{taken}' is a file" in lines[0], proc.stderr
    assert taken.read_text() == "mine"


@pytest.mark.distributed
def test_output_folder_refused_by_the_main_process_stops_both(tmp_path):
    # the probe runs on the main process only: the other must not go on to train alone
    out = tmp_path / "run"
    argv = [*FINETUNE, "--output-dir", str(out)]
    proc = _launch_cli("ddp", tmp_path / "log", argv, CLI_WORKER_FAIL="probe_save")
    assert _codes(tmp_path / "log") == [2, 2]
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "--output-dir: [Errno 30] Read-only" in lines[0], proc.stderr
    assert not out.exists() and "base accuracy" not in proc.stdout


@pytest.mark.distributed
def test_save_failing_on_the_main_process_after_training_stops_both(tmp_path):
    out = tmp_path / "run"
    argv = [*FINETUNE, "--output-dir", str(out)]
    proc = _launch_cli("ddp", tmp_path / "log", argv, CLI_WORKER_FAIL="save_any")
    assert _codes(tmp_path / "log") == [2, 2]  # the other process waited and stopped with it
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "could not save the trained adapter" in lines[0], proc.stderr
    (rescue,) = [p for p in tmp_path.iterdir() if p.name.startswith("run-")]
    assert f"it was saved to {rescue} instead" in lines[0]
    SMoREModel.from_pretrained(tiny_llama()[0], rescue)


# ---- in-process: the helpers without a process group ------------------------------------


def _tiny_smore(**overrides):
    torch.manual_seed(0)
    base, tokenizer = tiny_llama(hidden_size=32, intermediate_size=64, num_layers=1)
    config = smore_paper_config(num_experts=[4, 4], fanout=[2, 1], rank=[2, 2], **overrides)
    return get_smore_model(base, config), tokenizer


def test_global_routing_statistics_without_process_group_are_the_local_ones():
    model, tokenizer = _tiny_smore()
    ids = torch.tensor([tokenizer.encode("hello world")])
    model(input_ids=ids)
    assert not distributed.is_distributed()
    loads = distributed.summed_loads(model.adapters())
    own = {n: [t.double() for t in m.last_routing.load] for n, m in model.adapters().items()}
    assert {n: [t.tolist() for t in v] for n, v in loads.items()} == {
        n: [t.tolist() for t in v] for n, v in own.items()
    }
    assert distributed.global_routing_statistics(model) == model.routing_stats()
    assert model.routing_stats(loads=loads) == model.routing_stats()


@pytest.mark.parametrize("shared_pool", [False, True])
def test_adapter_from_state_dict_round_trips_and_names_a_missing_tensor(tmp_path, shared_pool):
    model, _ = _tiny_smore(shared_pool=shared_pool)
    state = model.state_dict()
    distributed.save_adapter_from_state_dict(model, tmp_path / "a", state)
    fresh = SMoREModel.from_pretrained(
        tiny_llama(hidden_size=32, intermediate_size=64, num_layers=1)[0], tmp_path / "a"
    )
    for (name, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters()):
        assert torch.equal(p, q), name
    key = next(k for k in state if ".router." in k)
    with pytest.raises(ValueError, match="FULL_STATE_DICT"):
        distributed.adapter_tensors_from_state_dict(
            model, {k: v for k, v in state.items() if k != key}
        )


def test_warns_when_accelerate_drops_fsdp(monkeypatch):
    class State:
        fsdp_plugin = None

    class Accelerator:
        state, distributed_type = State(), "DistributedType.MULTI_CPU"

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.warns(UserWarning, match="replicated on every rank, not sharded"):
        distributed.warn_if_sharding_ignored(Accelerator())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        State.fsdp_plugin = object()
        distributed.warn_if_sharding_ignored(Accelerator())  # FSDP is on
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
        State.fsdp_plugin = None
        distributed.warn_if_sharding_ignored(Accelerator())  # FSDP was not asked for
