"""StyleGAN2-ADA's training step: logistic loss, lazy R1 and path-length regularisation, style mixing.

The networks are in ``models/stylegan2.py``; this is the family's ``Steps`` (a ``losses.GANSteps``
subclass), as stylegan2-ada-pytorch keeps ``loss.py`` apart from ``networks.py``. It builds its own
optimisers from the ``TrainConfig`` (Adam with the lazy-regularisation correction, G and D at their own
learning rates); the training loop owns the EMA generator (with ``ema_rampup``), the ADA module (fed
here through ``augment.update``) and the counters.

One iteration: the D step draws fresh fakes (no gradient) and scores them and the reals through the
augmentation, then every ``r1_interval`` D steps runs a separate R1 step on the reals; the G step draws
new fakes with style mixing (``style_mixing``), updates the tracked mean w, and every ``pl_interval``
G steps runs a separate path-length step on half a batch. Lazy steps are scheduled by the iteration
index, derived from the images seen, so they land on the same iterations after a resume.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn

from .. import distributed
from ..losses import GANSteps, r1_penalty


def path_length_penalty(img: Tensor, ws: Tensor, pl_mean: Tensor, decay: float = 0.01) -> tuple[Tensor, Tensor]:
    """Per-sample (|J_w^T y| - a)^2 with y ~ N(0, I)/sqrt(HW) and a the running mean length.

    Returns the penalty and the updated running mean (detached). Under torchrun the mean length of the
    batch is averaged over processes first, so every rank keeps the same running mean (and a resume
    is exact).
    """
    h, w = img.shape[2:]
    noise = torch.randn_like(img) / math.sqrt(h * w)
    (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()
    new_mean = pl_mean.lerp(distributed.all_reduce_mean(lengths.mean().detach()), decay)
    return (lengths - new_mean).square(), new_mean


def lazy_adam(params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float],
              reg_interval: int | None) -> torch.optim.Adam:
    """Adam with the lazy-regularisation correction: a regulariser run as a separate step every
    ``reg_interval`` minibatches adds steps, so lr and betas are scaled by interval / (interval + 1)."""
    if reg_interval:
        ratio = reg_interval / (reg_interval + 1)
        lr, betas = lr * ratio, (betas[0] ** ratio, betas[1] ** ratio)
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=1e-8)


class StyleGAN2Steps(GANSteps):
    """StyleGAN2-ADA's D and G steps behind the ``GANSteps`` interface (see the module docstring).

    Reads from the config: ``lr_g``, ``lr_d``, ``beta1``, ``beta2``, ``r1_gamma``, ``r1_interval``,
    ``pl_weight``, ``style_mixing``, ``batch_size`` (this process's share). Its own state, saved with
    the networks and optimisers: the path-length running mean ``pl_mean`` and ``nimg`` (real images
    shown to D by this process).
    """

    rank_aware = False  # draws its own latents: under torchrun each process gets a private stream
    pl_interval = 4  # G steps between lazy path-length steps (the ADA paper's)
    pl_decay = 0.01  # running-mean decay of the path length
    pl_batch_shrink = 2  # the path-length step uses batch / this samples

    def __init__(self, G: nn.Module, D: nn.Module, cfg: Any, device: torch.device,
                 amp_dtype: torch.dtype | None, augment: Any = None) -> None:
        super().__init__(G, D, cfg, device, amp_dtype, augment)
        self.pl_mean = torch.zeros([], device=device)
        self.nimg = 0
        self._last: tuple[int, int] | None = None

    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        c = self.cfg
        betas = (c.beta1, c.beta2)
        return (lazy_adam(self.G.parameters(), c.lr_g, betas, self.pl_interval if c.pl_weight > 0 else None),
                lazy_adam(self.D.parameters(), c.lr_d, betas, c.r1_interval if c.r1_gamma > 0 else None))

    def generate(self, n: int, update_w_avg: bool = False) -> tuple[Tensor, Tensor]:
        """``n`` fakes with style mixing and random noise, and their ws."""
        z = torch.randn(n, self.G.z_dim, device=self.device)
        ws = self.G.mapping_mixed(z, None, mixing_prob=self.cfg.style_mixing, update_w_avg=update_w_avg)
        return self.G.synthesis(ws, noise_mode="random"), ws

    def d_step(self, real: Tensor) -> dict[str, Tensor]:
        """D main step on a real batch and as many fakes (+ the lazy R1 step when due)."""
        n, index = real.shape[0], self.nimg // self.cfg.batch_size
        self._last = (n, index)
        with torch.no_grad(), self.autocast():
            fake, _ = self.generate(n)
        with self.autocast():
            fake_logits = self.d_forward(self.augment(fake)).float()
            real_logits = self.d_forward(self.augment(real)).float()
        loss = self.d_loss(real_logits, fake_logits)
        self.optimizer_step(loss, self.D, self.opt_d)
        if self.measures_reals:
            self.augment.update(real_logits.detach())
        real_logits, fake_logits = real_logits.detach(), fake_logits.detach()
        stats = {"loss_D": loss.detach(), "D_real": real_logits.mean(), "D_fake": fake_logits.mean(),
                 "D_real_sign": real_logits.sign().mean(), "D_x": torch.sigmoid(real_logits).mean(),
                 "D_G_z1": torch.sigmoid(fake_logits).mean()}
        if self.cfg.r1_gamma > 0 and index % self.cfg.r1_interval == 0:
            real = real.detach().requires_grad_(True)
            penalty = r1_penalty(self.d_forward(self.augment(real)), real)  # fp32: a gradient of a gradient
            self.optimizer_step(penalty.mean() * (self.cfg.r1_gamma / 2) * self.cfg.r1_interval, self.D, self.opt_d)
            stats["r1_penalty"] = penalty.detach().mean()
        self.nimg += n
        return stats

    def g_step(self) -> dict[str, Tensor]:
        """G main step on as many new fakes as the last D step's reals (+ the lazy path-length step)."""
        n, index = self._last
        self.D.requires_grad_(False)  # saves the unused half of D's backward
        try:
            with self.autocast():
                fake, _ = self.generate(n, update_w_avg=True)
                logits = self.d_forward(self.augment(fake)).float()
            loss = self.g_loss(logits)
            self.optimizer_step(loss, self.G, self.opt_g)
            stats = {"loss_G": loss.detach(), "D_G_z2": torch.sigmoid(logits.detach()).mean()}
            if self.cfg.pl_weight > 0 and index % self.pl_interval == 0:
                img, ws = self.generate(max(n // self.pl_batch_shrink, 1))
                penalty, self.pl_mean = path_length_penalty(img, ws, self.pl_mean, self.pl_decay)
                self.optimizer_step(penalty.mean() * self.cfg.pl_weight * self.pl_interval, self.G, self.opt_g)
                stats.update(pl_penalty=penalty.detach().mean(), pl_mean=self.pl_mean.clone())
        finally:
            self.D.requires_grad_(True)
        return stats

    @torch.no_grad()
    def render(self, G: nn.Module, z: Tensor) -> Tensor:
        """Progress-grid images: constant noise inputs, so frames differ only by training."""
        was_training = G.training
        G.eval()
        out = G(z, noise_mode="const").float()
        G.train(was_training)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pl_mean": self.pl_mean.clone(), "nimg": self.nimg}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # checkpoints written before the one-step-class restructure name the optimisers G_opt / D_opt
        state = {"opt_g": state.get("G_opt"), "opt_d": state.get("D_opt"), **state}
        super().load_state_dict(state)
        self.pl_mean = state["pl_mean"].to(self.device).clone()
        self.nimg = int(state["nimg"])
