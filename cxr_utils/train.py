"""The one GAN training loop, shared by every model family, with resumable run folders.

``train(cfg, out_dir)`` keeps the whole data set as one in-memory tensor (decoded once, shuffled per
epoch by a seeded generator, last partial batch dropped), asks the model family's step object (``losses.GANSteps``
or the family's ``Steps``) for a D step and a G step per iteration, keeps the EMA of G, and writes the
run folder described in ``docs/architecture.md`` through ``runs``. The config is ``train_config``'s.
A ``training-state.pt`` checkpoint holds everything the loop depends on (weights, optimisers, EMA,
augmentation state, every RNG, the data-order generator, counters), so an interrupted run resumed with
``resume=True`` ends bit-identical to an uninterrupted one on the same machine.

History rows (``stats.jsonl``, one per iteration; ``history.csv``): ``iteration``, ``epoch``, ``kimg``,
``time_s`` (training wall time, checkpoint scoring excluded), ``loss_D``, ``loss_G``, ``D_x``, ``D_G_z1`` (fakes scored in the D step,
before D's update), ``D_G_z2`` (the same fakes in the G step, after it) -- D outputs as probabilities,
named as in pytorch/examples -- and with augmentation ``augment_p`` and ``augment_rt`` (ADA's r_t).
With ``n_dis > 1`` the G columns are empty on iterations without a G step.

Data parallel: launched by ``torchrun --nproc_per_node=K -m cxr_utils train ...`` the same loop runs in
K processes (NCCL on CUDA, each process on ``cuda:LOCAL_RANK``; gloo on CPU). ``batch_size`` stays the
global batch: every process uses the same seeded permutation and takes its contiguous 1/K of each batch,
draws the latents of the whole batch from the same RNG state and keeps its own share, and the gradients
are averaged over processes before every optimiser step (``distributed.average_gradients``; the networks
are not wrapped in ``DistributedDataParallel``, whose double-backward support StyleGAN2's lazy
regularisers would need). So K processes compute what one process does, except BatchNorm: its batch
statistics are per process (over batch_size / K images) unless ``sync_batchnorm`` converts G and D to
``SyncBatchNorm`` (CUDA only; on CPU it is a ConfigError). Initial weights are identical (same seed, then
rank 0's broadcast), every global RNG stays identical across processes, and the logged stats are
averaged over processes once per epoch. Only rank 0 writes the run folder (options, history, grids,
checkpoints, figures) and prints; every rank resumes from the checkpoint rank 0 wrote, which must be
readable by every process (a shared file system when several nodes train).

``python -m cxr_utils train --preset lungcancer-dcgan --out results/RUN [--resume] [--FIELD VALUE ...]``
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import config as C
from . import device as dev
from . import ada, distributed, runs
from .errors import ConfigError, CXRError, DataError, RunError
from .losses import GANSteps
from .models import build_discriminator, build_generator, family
from .paths import project_path
from .stats import seeded_subset
from .train_config import PRESETS, TrainConfig, cli_add_arguments, config_from_args, make_config  # noqa: F401

# The run folder's reader, here too for notebooks that read a run's history next to training it.
read_history = runs.read_history


# ------------------------------------------------------------------------------------------- the EMA


@torch.no_grad()
def ema_update(ema: nn.Module, G: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * G for weights; buffers (BatchNorm statistics) copied."""
    for pe, p in zip(ema.parameters(), G.parameters()):
        pe.lerp_(p, 1.0 - beta)
    for be, b in zip(ema.buffers(), G.buffers()):
        be.copy_(b)


@torch.no_grad()
def standing_statistics(G: nn.Module, latent_dim: int, device: torch.device | str = "cpu", n_batches: int = 16,
                        batch_size: int = 64, seed: int = 0) -> bool:
    """Replace G's BatchNorm running statistics by "standing statistics" of G itself; True if G has any.

    Brock et al. 2019 (BigGAN, Sec. 3.1 and Appendix C): the statistics are averaged over ``n_batches``
    training-mode forwards of ``batch_size`` latents z ~ N(0, I) (cumulative average, i.e. momentum
    None: the mean of the per-batch means and unbiased variances). This is what an EMA generator needs:
    its weights are an average of G's, while the buffers ``ema_update`` copies are G's own running
    statistics, computed for other weights (on the FastGAN main job the eval-mode images of the EMA
    with G's statistics had offline FID 1.21, with standing statistics 0.98, batch statistics 0.93).

    The latents come from a private generator seeded with ``seed`` and the forwards run under a forked
    RNG, so nothing the training loop draws changes (exact resume holds). ``momentum`` and the training
    flag are restored. A G without BatchNorm (StyleGAN2) is left as it is.
    """
    norms = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    momenta, was_training = [m.momentum for m in norms], G.training
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        G.train()
        try:
            for _ in range(n_batches):
                G(torch.randn(batch_size, latent_dim, generator=gen).to(device))
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
            G.train(was_training)
    return True


def ema_beta(cfg: TrainConfig, images_seen: int) -> float:
    """Per-step decay giving a half-life of ``ema_kimg`` thousand images at this batch size.

    With ``ema_rampup`` the half-life is at most ``ema_rampup * images_seen`` (StyleGAN2's ramp-up), so
    early in training the average follows G closely instead of holding on to the random initial weights.
    """
    if cfg.ema_kimg <= 0:
        return 0.0
    half_life = cfg.ema_kimg * 1000.0
    if cfg.ema_rampup:
        half_life = min(half_life, images_seen * cfg.ema_rampup)
    return 0.5 ** (cfg.batch_size / half_life) if half_life > 0 else 0.0


# ------------------------------------------------------------------------------------ data and RNGs


def _source_parts(cfg: TrainConfig, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``cfg.source`` loaded, split into (training part, held-out part) by ``cfg.holdout_fraction``.

    The split is ``splits.make_splits`` with seed 0 (never ``cfg.seed``: runs that differ in seed hold
    out the same images), stratified by class and patient-disjoint (``CXRDataset.groups``). With
    ``holdout_fraction == 0`` the held-out part is empty."""
    from .data import load
    from .splits import make_splits

    source = f"phantom:{cfg.num_data}" if cfg.source == "phantom" and cfg.num_data else cfg.source
    classes = list(cfg.classes) if cfg.classes else None
    ds = load(source, image_size=cfg.image_size, channels=cfg.channels, classes=classes, progress=progress)
    if cfg.holdout_fraction <= 0:
        return ds.images, ds.images[:0]
    parts = make_splits(ds.labels.numpy(), np.asarray(ds.groups), (1 - cfg.holdout_fraction, cfg.holdout_fraction),
                        seed=0, names=("train", "holdout"))
    if len(parts["holdout"]) == 0 or len(parts["train"]) == 0:
        raise DataError(f"holdout_fraction {cfg.holdout_fraction} of {len(ds.images)} images leaves "
                        f"{len(parts['train'])} to train on and {len(parts['holdout'])} held out")
    return ds.images[torch.from_numpy(parts["train"])], ds.images[torch.from_numpy(parts["holdout"])]


def held_out_images(cfg: TrainConfig, progress: bool = True) -> torch.Tensor:
    """The images of ``cfg.source`` a run never trains on (``holdout_fraction`` of them, see
    :func:`training_images`), float32 (N, C, S, S) in [-1, 1]; empty when ``holdout_fraction`` is 0."""
    return _source_parts(cfg, progress)[1].float()


def training_images(cfg: TrainConfig, images: torch.Tensor | None = None, progress: bool = True) -> torch.Tensor:
    """The training set as one float32 (N, C, S, S) tensor in [-1, 1]: ``images`` or ``data.load``.

    Loaded from ``cfg.source``, the ``holdout_fraction`` part (:func:`held_out_images`) is left out
    first, then ``max_images`` caps the rest. The data never depend on ``cfg.seed`` (the phantom is
    rendered with its default seed, the held-out split and the ``max_images`` subset are fixed), so
    runs that differ only in seed see the same images. Images of another shape, with NaN/inf pixels or
    outside [-1, 1] (0..255 floats), or fewer than one batch, are refused (ConfigError, DataError)
    before anything trains; so are given ``images`` with ``holdout_fraction > 0`` (the caller chose
    the training images: hold out before passing them)."""
    if images is None:
        images = _source_parts(cfg, progress)[0]
    elif cfg.holdout_fraction > 0:
        raise ConfigError(f"holdout_fraction {cfg.holdout_fraction} applies to the images loaded from source; "
                          "with images given, hold out before passing them (holdout_fraction=0)")
    expected = (cfg.channels, cfg.image_size, cfg.image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != expected:
        raise ConfigError(f"training images have shape {tuple(images.shape)}, config expects (N, *{expected})")
    images = images.float()
    if not bool(torch.isfinite(images).all()):
        bad = int((~torch.isfinite(images)).flatten(1).any(1).sum())
        raise DataError(f"{bad} of {len(images)} training images hold NaN or inf pixels")
    lo, hi = (float(v) for v in torch.aminmax(images)) if images.numel() else (0.0, 0.0)
    if lo < -1 - 1e-3 or hi > 1 + 1e-3:  # e.g. 0..255 floats: the generator's tanh could never match them
        raise DataError(f"training images must be scaled to [-1, 1], got values in [{lo:.4g}, {hi:.4g}] "
                        "(images.from_uint8 converts 0..255)")
    if cfg.max_images and len(images) > cfg.max_images:
        images = images[torch.from_numpy(seeded_subset(len(images), cfg.max_images, seed=0))]
    if len(images) < cfg.batch_size:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the data set ({len(images)} images)")
    return images.contiguous()


def _fingerprint(images: torch.Tensor) -> str:
    return hashlib.blake2b(images.cpu().numpy().tobytes(), digest_size=16).hexdigest()


def _own_cuda_device(device: torch.device | None) -> bool:
    """Under torchrun on CUDA each process touches only its own GPU's RNG (not every GPU's)."""
    return device is not None and device.type == "cuda" and distributed.info().enabled


def _rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every global RNG, in types that load with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    cuda: list[torch.Tensor] = []
    if torch.cuda.is_available():
        cuda = [torch.cuda.get_rng_state(device)] if _own_cuda_device(device) else torch.cuda.get_rng_state_all()
    return {"torch": torch.get_rng_state(), "cuda": cuda,
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate()}


def _set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if _own_cuda_device(device):
            torch.cuda.set_rng_state(state["cuda"][0], device)  # every rank's stream is rank 0's
        else:
            torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ---------------------------------------------------------------------------------------------- loop


@dataclass
class RunResult:
    """What a finished ``train`` call hands back (everything is also in the run folder)."""

    run_dir: Path
    config: TrainConfig
    G: nn.Module  # the EMA generator when kept, else G; eval mode
    history: list[dict[str, Any]]
    epochs: int
    kimg: float
    seconds: float
    best: dict[str, Any] | None = None  # the lowest checkpoint score (network-best.pt) when scoring was on


@dataclass
class _Counters:
    epoch: int = 0  # epochs completed
    iteration: int = 0  # D steps completed
    images: int = 0  # real images shown to D
    seconds: float = 0.0  # training wall time, summed over resumed segments


@dataclass
class _Parts:
    """Everything stateful the loop owns besides the history, as a checkpoint stores it."""

    steps: GANSteps
    G_ema: nn.Module | None
    augment: nn.Module | None
    order: torch.Generator  # the per-epoch data permutation
    count: _Counters

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps.state_dict(),
                "G_ema": self.G_ema.state_dict() if self.G_ema is not None else None,
                "augment": self.augment.state_dict() if self.augment is not None else None,
                "order": self.order.get_state(), "rng": _rng_state(self.steps.device),
                "counters": dataclasses.asdict(self.count)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps.load_state_dict(state["steps"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(state["G_ema"])
        if self.augment is not None:
            self.augment.load_state_dict(state["augment"])
        self.order.set_state(state["order"])
        _set_rng_state(state["rng"], self.steps.device)
        self.count = _Counters(**state["counters"])


def _check_world(cfg: TrainConfig, world: distributed.DistInfo, device: torch.device) -> None:
    """What a torchrun launch with ``world.world_size`` processes needs from the config."""
    if cfg.batch_size % world.world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} (the global batch) is not divisible by the "
                          f"{world.world_size} processes torchrun started")
    if cfg.sync_batchnorm and world.enabled and device.type != "cuda":
        raise ConfigError("sync_batchnorm needs CUDA (torch's SyncBatchNorm has no CPU implementation); "
                          "drop --sync-batchnorm to keep per-process BatchNorm statistics on CPU")


def _build(cfg: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None, fmt: torch.memory_format) -> _Parts:
    """Seeded models, optimisers, EMA copy and augmentation, placed on ``device``.

    Under torchrun every process builds the same weights (same seed; rank 0's are broadcast as well),
    G and D get SyncBatchNorm when ``sync_batchnorm`` is set (the EMA copy keeps plain BatchNorm), and
    the step object is built with this process's share of the batch.
    """
    world = distributed.info()
    _seed_everything(cfg.seed)
    G = build_generator(cfg).to(device, memory_format=fmt).train()
    D = build_discriminator(cfg).to(device, memory_format=fmt).train()
    distributed.broadcast_module(G)
    distributed.broadcast_module(D)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if cfg.ema_kimg > 0 else None
    if cfg.sync_batchnorm and world.enabled:
        G, D = nn.SyncBatchNorm.convert_sync_batchnorm(G), nn.SyncBatchNorm.convert_sync_batchnorm(D)
    augment = ada.from_train_config(cfg).to(device) if cfg.augment != "none" else None
    step_cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size // world.world_size) if world.enabled else cfg
    steps = getattr(family(cfg.model), "Steps", GANSteps)(G, D, step_cfg, device, amp_dtype, augment)
    return _Parts(steps, G_ema, augment, torch.Generator().manual_seed(cfg.seed), _Counters())


@contextlib.contextmanager
def _private_rng(steps: Any, cfg: TrainConfig, iteration: int, phase: int) -> Any:
    """Under torchrun, run a step of a family whose steps draw their own latents (not ``rank_aware``)
    from a random stream of this process's own, seeded by (seed, iteration, rank), so the processes'
    fakes differ; the global RNG, identical on every process and checkpointed, is left as it was. A
    no-op in one process and for ``GANSteps``."""
    world = distributed.info()
    if not world.enabled or getattr(steps, "rank_aware", False):
        yield
        return
    device = steps.device
    seed = ((cfg.seed * 1_000_003 + iteration) * 4 + phase) * world.world_size + world.rank
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        yield


def _out_of_time(cfg: TrainConfig, seconds: float) -> bool:
    """Whether ``time_budget_s`` is spent. Every process must agree to stop (their clocks differ slightly),
    so under torchrun this is an all-reduce: stop when any process is out of time."""
    if cfg.time_budget_s is None:
        return False
    return bool(distributed.all_reduce_sum(torch.tensor(float(seconds >= cfg.time_budget_s))) > 0)


@C.typed_keywords
def train(cfg: TrainConfig, out_dir: str | Path, images: torch.Tensor | None = None, resume: bool = False,
          overwrite: bool = False, progress: bool = True) -> RunResult:
    """Train ``cfg.model`` into the run folder ``out_dir`` (see the module docstring).

    Every keyword goes through ``config.coerce`` (papermill passes ``overwrite="false"`` as a string:
    it is False; ``"maybe"`` is a ConfigError), so the destructive ``overwrite`` acts on a real True only.
    Under torchrun every process calls this with the same arguments (the launcher does that for the
    CLI); each returns a RunResult, but only rank 0 writes the run folder.

    Raises RunError when ``training-state.pt`` cannot be resumed (truncated, empty, another model or
    shape, keys missing; the message names the intact ``network-snapshot.pt`` or ``--overwrite``), and
    when the losses stop being finite: the check runs once per epoch on the already-collected stats,
    names the first iteration and loss, and leaves the last checkpoint (``training-state.pt``,
    ``network-snapshot.pt``) as it was, without writing ``network-final.pt``.
    """
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"cfg must be a TrainConfig (train_config.make_config), got {type(cfg).__name__}")
    cfg.validate()
    run_dir = project_path(out_dir)
    device = dev.pick_device(cfg.device)
    world = distributed.init(device)
    if world.enabled and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    _check_world(cfg, world, device)
    main = world.is_main
    distributed.run_on_main(lambda: runs.open_run_dir(run_dir, cfg, resume, overwrite))
    amp_dtype = dev.resolve_precision(cfg.precision, device)
    channels_last = dev.resolve_channels_last(cfg.channels_last, device, amp_dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dev.enable_fast_math(device)
    data = distributed.main_first(lambda: training_images(cfg, images, progress and main))  # rank 0 fills the cache
    fingerprint = _fingerprint(data)
    if not distributed.same_on_all_ranks(fingerprint):
        raise ConfigError("the processes were given different training images")
    per_epoch = len(data) // cfg.batch_size
    local = distributed.batch_slice(cfg.batch_size, world.rank, world.world_size)
    epochs = math.ceil(cfg.kimg * 1000 / (per_epoch * cfg.batch_size)) if cfg.kimg else cfg.epochs
    scorer = None  # offline: built at the first score, so short runs that never score pay nothing
    if main and cfg.score_every_kimg > 0 and cfg.score_extractor != "offline":
        scorer = _checkpoint_scorer(cfg, data, device)  # fail now, not after hours, when weights are missing
    parts = _build(cfg, device, amp_dtype, fmt)
    steps, G, G_ema, augment, count = parts.steps, parts.steps.G, parts.G_ema, parts.augment, parts.count
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None  # the lowest checkpoint score so far (resumable)
    if resume:
        state = runs.read_state(run_dir, device)
        try:
            if state["data"] != fingerprint:
                raise RunError(f"cannot resume {run_dir}: the training images differ from the saved run's")
            saved_world = state.get("world_size", 1)
            if saved_world != world.world_size and not getattr(steps, "rank_aware", False):
                raise ConfigError(f"cannot resume this {cfg.model} run with {world.world_size} processes: it was "
                                  f"trained with {saved_world} (its step counters are per process)")
            parts.load_state_dict(state)
            history_len, best = int(state["history_len"]), state.get("best")
        except CXRError:
            raise
        except KeyError as exc:
            raise RunError(runs.unusable_state(run_dir, f"key {exc} missing")) from None
        except (RuntimeError, ValueError, TypeError, AttributeError) as exc:
            raise RunError(runs.unusable_state(run_dir, f"it does not fit this {cfg.model} config, another model "
                                                        f"family or shape? {runs.describe_error(exc)}")) from None
        count, history = parts.count, runs.read_history(run_dir, history_len)
        distributed.barrier()  # every process has read the history before rank 0 rewrites it
        if main:
            runs.write_history(run_dir, history)
    if main:
        runs.write_options(run_dir, cfg)
        processes = f", {world.world_size} processes ({world.backend})" if world.enabled else ""
        print(f"training {cfg.model} on {len(data)} images, {per_epoch} iterations/epoch, epochs "
              f"{count.epoch + 1}..{epochs} -> {run_dir}\n  {dev.describe(device, amp_dtype, channels_last)}"
              f"{processes}")
        if (busy := dev.busy_cpu_warning(device)) is not None:
            print(f"  {busy}")
    fixed_z = torch.randn(cfg.n_fixed, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))
    fixed_z, data = fixed_z.to(device), data.to(device)
    if cfg.time_budget_s is not None and count.seconds >= cfg.time_budget_s:
        epochs = count.epoch  # resumed with its time already spent: nothing more to train
    bar = tqdm(total=epochs * per_epoch, initial=count.iteration, disable=not (progress and main), unit="it")
    start = time.perf_counter() - count.seconds
    segment_start = count.seconds
    scoring = main and cfg.score_every_kimg > 0  # rank 0 scores; its forks leave every shared stream alone
    score_every = max(1, round(cfg.score_every_kimg * 1000))  # images between checkpoint scores
    score_seconds = 0.0  # spent scoring in this call; not training time (time_s, time_budget_s exclude it)
    checkpointed = count.epoch if resume else None  # epoch of the last checkpoint on disk
    standing_at = -1  # images seen when G_ema last got standing statistics (the same EMA needs them once)
    with runs.open_stats(run_dir) if main else contextlib.nullcontext() as stats_file:
        for epoch in range(count.epoch + 1, epochs + 1):
            perm = torch.randperm(len(data), generator=parts.order).to(device)
            pending = []
            for batch in perm[: per_epoch * cfg.batch_size].view(per_epoch, cfg.batch_size):
                with _private_rng(steps, cfg, count.iteration, 0):
                    stats = steps.d_step(data[batch[local]].contiguous(memory_format=fmt))
                if (count.iteration + 1) % cfg.n_dis == 0:
                    with _private_rng(steps, cfg, count.iteration, 1):
                        stats |= steps.g_step()
                    if G_ema is not None:
                        ema_update(G_ema, G, ema_beta(cfg, count.images))
                count.iteration += 1
                count.images += cfg.batch_size
                meta = {"iteration": count.iteration, "epoch": epoch, "kimg": count.images / 1000,
                        "time_s": round(time.perf_counter() - start, 3)}
                if augment is not None:
                    meta["augment_p"] = augment.p
                    meta["augment_rt"] = None if math.isnan(augment.r_t) else augment.r_t
                if scoring and count.images // score_every > (count.images - cfg.batch_size) // score_every:
                    tic = time.perf_counter()
                    if scorer is None:
                        scorer = _checkpoint_scorer(cfg, data, device)
                    if G_ema is not None and not (cfg.sync_batchnorm and world.enabled):  # (rank 0 only here:
                        standing_statistics(G_ema, cfg.latent_dim, device, seed=cfg.seed)  # no collectives)
                        standing_at = count.images
                    score = _score(scorer, G_ema if G_ema is not None else G, cfg, device)
                    meta |= score
                    if score["kid"] is not None and (best is None or score["kid"] < best["kid"]):
                        best = {**score, "kimg": count.images / 1000, "iteration": count.iteration}
                        runs.write_best(run_dir, cfg, G, G_ema, count.images / 1000, epoch, best)
                    spent = time.perf_counter() - tic
                    score_seconds, start = score_seconds + spent, start + spent
                pending.append((meta, stats))
                bar.update()
                if main and (count.iteration % 10 == 0 or count.iteration == 1):
                    bar.set_postfix({k: f"{v.item():.3f}" for k, v in stats.items()}, refresh=False)
                if _out_of_time(cfg, time.perf_counter() - start):
                    break  # the budget ends this epoch early: an equal-time comparison overshoots by one step
            rows, bad = _rows(pending)
            if main:
                runs.append_stats(stats_file, rows)
            history += rows
            if bad is not None:  # every process sees the same averaged stats, so all stop here
                bar.close()
                it, key, value = bad
                kept = (f"the last good checkpoint ({runs.STATE}, {runs.NETWORK_SNAPSHOT} of epoch {checkpointed}) "
                        "is unchanged" if checkpointed is not None else "no checkpoint had been written yet")
                raise RunError(f"training diverged at iteration {it} (epoch {epoch}): {key} = {value}; stopped "
                               f"without writing {runs.NETWORK_FINAL}; {kept}; lower lr_g/lr_d or change the recipe")
            count.epoch, count.seconds = epoch, time.perf_counter() - start
            out_of_time = _out_of_time(cfg, count.seconds)
            last = epoch == epochs or out_of_time
            grid_now = epoch % cfg.sample_every == 0 or epoch in cfg.grid_epochs or last
            if G_ema is not None and (grid_now or epoch % cfg.checkpoint_every == 0) and standing_at != count.images:
                # every process: with SyncBatchNorm the forward is a collective; the next ema_update copies
                # G's statistics back, so training itself never sees these
                standing_statistics(G_ema, cfg.latent_dim, device, seed=cfg.seed)
            if grid_now:
                # rendered on every process: with SyncBatchNorm the forward is a collective
                grid = steps.render(G_ema if G_ema is not None else G, fixed_z)
                if main:
                    runs.write_samples(run_dir, epoch, grid)
            if epoch % cfg.checkpoint_every == 0 or last:
                if main:
                    runs.append_stats(stats_file, [], durable=True)  # the rows it counts outlive a crash
                    state = {**parts.state_dict(), "history_len": len(history), "data": fingerprint,
                             "config": C.to_dict(cfg), "world_size": world.world_size, "best": best}
                    runs.write_checkpoint(run_dir, state, cfg, G, G_ema, count.images / 1000, epoch)
                    runs.write_csv(run_dir, history)
                checkpointed = epoch
                distributed.barrier()  # nobody runs ahead of (or resumes from) a half-written checkpoint
            if main and progress:  # one line per epoch: what a log (papermill --log-output, CI) shows
                losses = "  ".join(f"{k} {rows[-1][k]:.3f}" for k in ("loss_D", "loss_G") if k in rows[-1])
                bar.write(f"epoch {epoch}/{epochs}  {count.images / 1000:.1f} kimg  {losses}  "
                          f"{count.images / max(count.seconds, 1e-9):.0f} img/s  {count.seconds:.0f} s")
            if out_of_time:
                break
    bar.close()
    if scorer is not None:
        trained = count.seconds - segment_start  # this call's training time, scoring excluded
        share = score_seconds / trained if trained > 0 else float("nan")
        where = f"best KID {best['kid']:.4g} at {best['kimg']:.2f} kimg -> {runs.NETWORK_BEST}" if best else "no score"
        print(f"checkpoint scoring ({cfg.score_extractor}, n={scorer.n}): {score_seconds:.1f} s "
              f"(+{share:.1%} on this call's {trained:.0f} s of training); {where}")
    result = _finish(run_dir, cfg, G_ema if G_ema is not None else G, history, count, write=main)
    result.best = best
    distributed.barrier()  # when train() returns on any process, the run folder is complete
    return result


def _checkpoint_scorer(cfg: TrainConfig, data: torch.Tensor, device: torch.device) -> Any:
    """``metrics.CheckpointScorer`` on the training images (``score_n`` of them, a subset seeded by
    ``cfg.seed``) with ``score_extractor``; built under a forked RNG, so the run's streams are untouched."""
    from .metrics import CheckpointScorer

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return CheckpointScorer(data.cpu(), n=cfg.score_n, extractor=cfg.score_extractor, seed=cfg.seed,
                                latent_dim=cfg.latent_dim)


def _score(scorer: Any, G: nn.Module, cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """A history row's checkpoint score of ``G``: ``kid``, ``kid_std``, ``fid`` (in the scorer's feature
    space, ``score_extractor``). The scorer's latents come from its own seeded generator; anything else a
    forward draws (StyleGAN2's noise inputs) comes from the global RNG reseeded with ``cfg.seed`` inside
    ``fork_rng``, so every call scores on the same inputs and the training streams are left exactly as
    they were (a run with scoring trains the same weights as one without). A generator whose weights
    are no longer finite gets no score (the loop stops on the losses at the end of the epoch)."""
    if not all(bool(torch.isfinite(p).all()) for p in G.parameters()):
        return {"kid": None, "kid_std": None, "fid": None, "score_extractor": cfg.score_extractor}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.default_generator.manual_seed(cfg.seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(cfg.seed)
        result = scorer(G)
    return {"kid": result["kid"], "kid_std": result["kid_std"], "fid": result["fid"],
            "score_extractor": result["extractor"]}


_STAT_KEYS = ("loss_D", "loss_G", "D_x", "D_G_z1", "D_G_z2")


def _rows(pending: list[tuple[dict[str, Any], dict[str, torch.Tensor]]]
          ) -> tuple[list[dict[str, Any]], tuple[int, str, float] | None]:
    """History rows of one epoch, and the first non-finite stat as ``(iteration, name, value)`` (None
    when all are finite). Device values are fetched in one transfer, which is also the whole cost of
    the finiteness check (no sync per step). A stat missing on an iteration (a skipped G step, a lazy
    regulariser not due) -> None; a stat that was computed but is NaN or inf is the divergence the
    loop stops on. Family-specific stats (R1, path length) follow the shared ones. Under torchrun the
    values are averaged over the processes (one all-reduce per epoch); they are means over equal
    shares, so this gives the global batch's, and a NaN on any process reaches all of them."""
    if not pending:
        return [], None
    keys = list(dict.fromkeys([*_STAT_KEYS, *(k for _, s in pending for k in s)]))
    nan = torch.tensor(float("nan"), device=pending[0][1]["loss_D"].device)
    values = torch.stack([torch.stack([s.get(k, nan).float() for k in keys]) for _, s in pending])
    values = distributed.all_reduce_mean(values).tolist()
    bad = next(((meta["iteration"], k, v) for (meta, s), vals in zip(pending, values)
                for k, v in zip(keys, vals) if k in s and not math.isfinite(v)), None)
    rows = [{**meta, **{k: (None if math.isnan(v) else v) for k, v in zip(keys, vals)}}
            for (meta, _), vals in zip(pending, values)]
    return rows, bad


def _finish(run_dir: Path, cfg: TrainConfig, G: nn.Module, history: list[dict[str, Any]],
            count: _Counters, write: bool = True) -> RunResult:
    """Final weights, history.csv and the figures (when ``write``: rank 0 under torchrun); also run
    when a resumed run had nothing left to do."""
    if not write:
        return RunResult(run_dir, cfg, G.eval(), history, count.epoch, count.images / 1000, count.seconds)
    runs.write_final(run_dir)
    runs.write_csv(run_dir, history)
    runs.write_figures(run_dir, history, cfg.ada_target if cfg.augment == "ada" else None)
    runs.write_progress_gif(run_dir)
    kimg = count.images / 1000
    rate = count.images / count.seconds if count.seconds else float("nan")
    print(f"done: {count.epoch} epochs, {count.iteration} iterations, {kimg:.1f} kimg, "
          f"{count.seconds:.0f} s ({rate:.0f} img/s) -> {run_dir}")
    return RunResult(run_dir, cfg, G.eval(), history, count.epoch, kimg, count.seconds)


# ----------------------------------------------------------------------------------------------- CLI


def cli_run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    try:
        train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    finally:
        distributed.cleanup()  # under torchrun: leave the process group cleanly
    return 0
