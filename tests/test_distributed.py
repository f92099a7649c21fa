"""Data-parallel training under torchrun on CPU (gloo): the helpers in two forked processes, and real
2-process runs launched with ``python -m torch.distributed.run`` (the CLI, and a script calling
``train.train`` that saves every rank's state): identical weights on both ranks, rank 0 alone writes,
resume is bit-identical, and the first step matches one process at the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from helpers import assert_identical

from cxr_utils import distributed, phantom
from cxr_utils.ada import AdaptiveAugment
from cxr_utils.images import from_uint8
from cxr_utils.errors import ConfigError
from cxr_utils.losses import GANSteps
from cxr_utils.train import _check_world, make_config, train

ROOT = Path(__file__).resolve().parents[1]

# The tiny recipe both the 2-process and the 1-process runs use: the stable preset (no BatchNorm in D;
# G keeps its BatchNorm, whose statistics are per process) at 32 px, one global batch of 32 = the whole
# data set, so every epoch is one step. ADA starts at p = 0 and measures r_t every step, so the
# cross-rank sum of sign(D(real)) is exercised while the first step draws no augmentation.
RECIPE = dict(preset="stable", image_size=32, base=8, latent_dim=16, batch_size=32, precision="fp32",
              n_fixed=16, grid_epochs=[1], checkpoint_every=1, augment="ada", augment_p=0.0, ada_interval=1)
# StyleGAN2 through the same loop: 2 epochs of 2 steps, lazy R1 every 2nd and path length every 4th step
# (double backward, gradients averaged by hand), latents drawn per rank.
SG2_RECIPE = dict(model="stylegan2", sg2_arch="tiny", image_size=32, latent_dim=16, batch_size=16, kimg=None,
                  epochs=2, precision="fp32", n_fixed=16, grid_epochs=[1], r1_gamma=1.0, r1_interval=2,
                  pl_weight=2.0)


def phantom_images() -> torch.Tensor:
    """32 phantom radiographs at 32 px (rendered at 64, 2x2-averaged), gray replicated to 3 channels."""
    ph = phantom.generate(32, 64, seed=0)
    return F.avg_pool2d(from_uint8(torch.from_numpy(ph.images))[:, None], 2).repeat(1, 3, 1, 1)


def torchrun(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# ------------------------------------------------------------------------------ one process, no group


def test_batch_slices_tile_the_global_batch_and_world_checks():
    for k in (1, 2, 4):
        parts = [torch.arange(32)[distributed.batch_slice(32, r, k)] for r in range(k)]
        assert torch.equal(torch.cat(parts), torch.arange(32)) and {len(p) for p in parts} == {32 // k}
    with pytest.raises(ValueError):
        distributed.batch_slice(30, 0, 4)
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        _check_world(make_config("stable", batch_size=32), distributed.DistInfo(0, 3), cpu)
    with pytest.raises(ConfigError, match="sync_batchnorm needs CUDA"):
        _check_world(make_config("stable", sync_batchnorm=True), distributed.DistInfo(0, 2), cpu)
    _check_world(make_config("stable", sync_batchnorm=True), distributed.DistInfo(), cpu)  # one process: no-op


def test_helpers_are_no_ops_in_one_process():
    lin = torch.nn.Linear(3, 2)
    lin(torch.ones(1, 3)).sum().backward()
    before = lin.weight.grad.clone()
    distributed.average_gradients(lin)
    assert torch.equal(lin.weight.grad, before)
    assert distributed.run_on_main(lambda: 7) == distributed.main_first(lambda: 7) == 7
    assert distributed.same_on_all_ranks(object())


# ---------------------------------------------------------------------------- two forked processes


def _fail(message: str):
    raise ConfigError(message)


def _two_ranks(rank: int, store: str) -> None:
    """Runs in each of two forked processes (assertion errors reach the parent with their traceback)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        # gradients: the mean over ranks, one parameter without a gradient left alone
        net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
        for i, p in enumerate(net[0].parameters()):
            p.grad = torch.full_like(p, float(10 * i + rank))
        distributed.average_gradients(net)
        assert [p.grad.unique().tolist() for p in net[0].parameters()] == [[0.5], [10.5]]
        assert all(p.grad is None for p in net[1].parameters())
        # rank 0's result or error reaches every rank
        assert distributed.run_on_main(lambda: dist.get_rank() + 40) == 40
        with pytest.raises(ConfigError, match="only rank 0 sees this"):
            distributed.run_on_main(lambda: _fail("only rank 0 sees this"))
        with pytest.raises(ConfigError, match="from rank 0"):
            distributed.main_first(lambda: _fail(f"from rank {dist.get_rank()}"))
        assert distributed.main_first(lambda: dist.get_rank()) == rank
        assert distributed.same_on_all_ranks("x") and not distributed.same_on_all_ranks(rank)
        # ADA: both ranks measure r_t over all 8 reals (6 of 8 positive -> 0.5) and move p alike
        aug = AdaptiveAugment(interval=1, kimg=1.0, target=0.25)
        aug.update(torch.tensor([1.0, 1.0, 1.0, 1.0]) if rank == 0 else torch.tensor([1.0, 1.0, -1.0, -1.0]))
        assert aug.r_t == 0.5 and aug.p == pytest.approx(8 / 1000)
        # latents: this rank's slice of the global batch's draw (what one process draws)
        cfg = make_config("lungcancer-dcgan", image_size=16, base=4, latent_dim=8, batch_size=8)
        from cxr_utils.models import build_discriminator, build_generator

        steps = GANSteps(build_generator(cfg), build_discriminator(cfg), cfg, torch.device("cpu"), None)
        torch.manual_seed(3)
        mine = steps.latents(4)
        torch.manual_seed(3)
        assert torch.equal(mine, torch.randn(8, 8)[4 * rank: 4 * rank + 4])
    finally:
        dist.destroy_process_group()


def test_helpers_in_two_processes(tmp_path):
    torch.multiprocessing.start_processes(_two_ranks, args=(str(tmp_path / "store"),), nprocs=2,
                                          start_method="fork")


# ------------------------------------------------------------------------------------- torchrun: CLI


def test_torchrun_cli_run_completes_and_rank_0_alone_writes(tmp_path):
    """`torchrun --nproc_per_node=2 -m cxr_utils train`: one history, one checkpoint, one line of output."""
    proc = torchrun(["-m", "cxr_utils", "train", "--preset", "stable", "--source", "phantom:32", "--out", "run",
                     "--base", "8", "--latent-dim", "16", "--batch-size", "16", "--epochs", "1", "--n-fixed",
                     "16", "--precision", "fp32", "--no-progress"], cwd=tmp_path)
    run = tmp_path / "run"
    assert proc.stdout.count("done: 1 epochs, 2 iterations") == 1 and "2 processes (gloo)" in proc.stdout
    names = {p.name for p in run.iterdir()}
    assert {"training_options.json", "stats.jsonl", "history.csv", "losses.png", "progress.gif"} <= names
    assert sorted(p.name for p in run.glob("*.pt")) == ["network-final.pt", "network-snapshot.pt", "training-state.pt"]
    assert not [n for n in names if n.startswith(".")]  # no torn temporary files
    assert [p.name for p in (run / "samples").iterdir()] == ["epoch_001.png"]
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2] and rows[-1]["kimg"] == pytest.approx(0.032)
    state = torch.load(run / "training-state.pt", weights_only=True)
    assert state["world_size"] == 2 and state["counters"]["images"] == 32


# --------------------------------------------------------------------------- torchrun: train.train()

SCRIPT = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[2])
from test_distributed import RECIPE, SG2_RECIPE, phantom_images
from cxr_utils import distributed
from cxr_utils import train as T

out, rank = Path(sys.argv[1]), int(__import__("os").environ["RANK"])
images = phantom_images()
built, writes = [], {"atomic_save": 0, "grid": 0}
build, save, grid = T._build, T.runs.atomic_save, T.runs.write_samples
T._build = lambda *a, **k: built.append(build(*a, **k)) or built[-1]
T.runs.atomic_save = lambda *a, **k: writes.__setitem__("atomic_save", writes["atomic_save"] + 1) or save(*a, **k)
T.runs.write_samples = lambda *a, **k: writes.__setitem__("grid", writes["grid"] + 1) or grid(*a, **k)

def state():
    parts = built[-1]
    return {"steps": parts.steps.state_dict(), "augment": parts.augment.state_dict()}

saved = {}
T.train(T.make_config(**{**RECIPE, "epochs": 1}), out / "split", images=images, progress=False)
saved["one_step"] = state()
T.train(T.make_config(**{**RECIPE, "epochs": 2}), out / "split", images=images, resume=True, progress=False)
saved["resumed"] = state()
result = T.train(T.make_config(**{**RECIPE, "epochs": 2}), out / "straight", images=images, progress=False)
saved["straight"], saved["history"], saved["writes"] = state(), result.history, dict(writes)
result = T.train(T.make_config(**SG2_RECIPE), out / "sg2", images=images, progress=False)
saved["sg2"], saved["sg2_history"] = state(), result.history
torch.save(saved, out / f"rank{rank}.pt")
distributed.cleanup()
"""


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """Two processes: 1 epoch (= 1 step) then resumed to 2 epochs, a straight 2-epoch run, and a short
    StyleGAN2 run; each rank saves its own state after each. Returns the folder and both ranks' states."""
    out = tmp_path_factory.mktemp("ddp")
    (out / "script.py").write_text(SCRIPT)
    torchrun([str(out / "script.py"), str(out), str(Path(__file__).parent)], cwd=out)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_both_ranks_hold_identical_weights_and_only_rank_0_writes(ddp):
    _, (r0, r1) = ddp
    for key in ("one_step", "resumed", "straight"):
        s0, s1 = r0[key]["steps"], r1[key]["steps"]
        for net in ("G", "D"):
            # parameters (and D's spectral-norm vectors) are bitwise equal; only G's BatchNorm running
            # statistics differ, because each process normalises over its own half of the batch
            differ = {k for k in s0[net] if not torch.equal(s0[net][k], s1[net][k])}
            assert differ == ({k for k in s0[net] if "running_" in k} if net == "G" else set()), (key, net)
        assert_identical(s0["opt_g"], s1["opt_g"], "opt_g")
        assert_identical(s0["opt_d"], s1["opt_d"], "opt_d")
        assert_identical(r0[key]["augment"], r1[key]["augment"], "augment")  # p and the r_t accumulators
    untimed = [[{k: v for k, v in row.items() if k != "time_s"} for row in r["history"]] for r in (r0, r1)]
    assert untimed[0] == untimed[1]  # the stats are averaged over the ranks
    # rank 0: state + snapshot at each of the 1 + 1 + 2 epoch ends, a final copy per run; one grid per
    # epoch. Rank 1 writes nothing.
    assert r0["writes"] == {"atomic_save": 2 * 4 + 3, "grid": 4} and r1["writes"] == {"atomic_save": 0, "grid": 0}


def test_resume_under_torchrun_is_bitassert_identical(ddp):
    out, _ = ddp
    a = torch.load(out / "straight" / "training-state.pt", weights_only=True)
    b = torch.load(out / "split" / "training-state.pt", weights_only=True)
    for key in ("steps", "G_ema", "augment", "rng", "order", "history_len", "config", "world_size"):
        assert_identical(a[key], b[key], key)
    rows = [[{k: v for k, v in json.loads(line).items() if k != "time_s"}
             for line in (out / run / "stats.jsonl").read_text().splitlines()] for run in ("straight", "split")]
    assert rows[0] == rows[1] and [r["iteration"] for r in rows[0]] == [1, 2]


def test_first_step_matches_one_process_at_the_same_global_batch(ddp, tmp_path):
    """The 2-process first step (16 + 16 images) against one process (32 images) on the same data,
    weights and latents. Only G's BatchNorm differs (statistics over 16 fakes instead of 32).

    Measured on this recipe: D(x) and r_t equal to the last digit; loss_D 4.5e-5, D(G(z)) 1.1e-5 and
    loss_G 1.7e-5 apart (the per-process BatchNorm). Bugs change these by 1e-3 or more: both ranks on
    the same half of the reals (loss_D 2.5e-3, D(x) 6.5e-4), latents not split (loss_D 1.2e-3, D(G(z))
    3e-4), different latents (2.2e-3), another data order (1.8e-3). The tolerances sit in between.
    """
    _, (r0, _) = ddp
    two = r0["history"][0]
    one = train(make_config(**{**RECIPE, "epochs": 1}), tmp_path / "one", images=phantom_images(),
                progress=False).history[0]
    assert (two["iteration"], two["kimg"]) == (one["iteration"], one["kimg"]) == (1, 0.032)
    assert two["augment_rt"] == one["augment_rt"] and two["augment_p"] == one["augment_p"]
    assert two["D_x"] == pytest.approx(one["D_x"], abs=1e-5)
    assert two["loss_D"] == pytest.approx(one["loss_D"], abs=3e-4)
    assert two["D_G_z1"] == pytest.approx(one["D_G_z1"], abs=1e-4)
    assert two["loss_G"] == pytest.approx(one["loss_G"], abs=2e-4)


def test_stylegan2_ranks_stay_in_step_through_lazy_regularisers(ddp):
    _, (r0, r1) = ddp
    s0, s1 = r0["sg2"]["steps"], r1["sg2"]["steps"]
    # weights and optimisers equal; w_avg (a truncation statistic of the latents seen) is per process
    assert {k for k in s0["G"] if not torch.equal(s0["G"][k], s1["G"][k])} == {"mapping.w_avg"}
    assert_identical(s0["D"], s1["D"], "D")
    assert_identical(s0["opt_g"], s1["opt_g"], "opt_g")
    assert_identical(s0["opt_d"], s1["opt_d"], "opt_d")
    # each rank drew its own latents, but the path-length mean is averaged over ranks, so it agrees
    assert s0["pl_mean"] == s1["pl_mean"] and float(s0["pl_mean"]) > 0
    assert s0["nimg"] == 4 * 8  # this rank's images: the lazy schedule follows the global iteration
    rows = r0["sg2_history"]
    assert [r.get("r1_penalty") is not None for r in rows] == [True, False, True, False]
    assert [r.get("pl_penalty") is not None for r in rows] == [True, False, False, False]
