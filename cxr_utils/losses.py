"""GAN losses shared by every model family, and ``GANSteps``: the default (DCGAN) training step.

Why one shared module plus one step module per family (rather than one loss file per family, as
stylegan2-ada-pytorch's ``loss.py``): the adversarial losses (BCE, its softplus "ns"/logistic form,
hinge) and the R1 gradient penalty are the same functions whichever networks they score, so they live
here once; what differs per family is the order of passes, the regularisers and their schedule, which
is a ``GANSteps`` subclass next to the family's networks (``models/stylegan2_loss.py``). A family with
nothing but other losses (FastGAN's, say) overrides :meth:`GANSteps.d_loss` / :meth:`GANSteps.g_loss`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import device as dev
from . import distributed
from .errors import ConfigError


def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Discriminator loss on fp32 logits. ``bce`` is the reference's BCE(sigmoid) with targets 1/0,
    computed from logits for stability; ``ns`` is the same loss in softplus form (StyleGAN's logistic
    loss, softplus(-D(x)) + softplus(D(G(z))))."""
    if kind == "bce":
        return (F.binary_cross_entropy_with_logits(real, torch.full_like(real, 1.0 - smoothing))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    if kind == "ns":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    raise ConfigError(f"unknown loss {kind!r}")


def g_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """Generator loss on fp32 logits: fakes labelled real (bce/ns: non-saturating), or -D(G(z)) (hinge)."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    if kind == "ns":
        return F.softplus(-fake).mean()
    if kind == "hinge":
        return -fake.mean()
    raise ConfigError(f"unknown loss {kind!r}")


def r1_penalty(real_logits: torch.Tensor, real_img: torch.Tensor) -> torch.Tensor:
    """Per-sample squared norm of dD/dx at the reals (graph kept, so it can be minimised)."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_img, create_graph=True)
    return grad.square().sum(dim=(1, 2, 3))


class GANSteps:
    """How one iteration updates D and G: the default step (DCGAN's), and the base of every family's.

    The interface the training loop (``train.train``) uses, all a family's ``Steps`` must provide:

    - ``Steps(G, D, cfg, device, amp_dtype, augment)``: ``cfg`` a ``TrainConfig`` whose ``batch_size``
      is this process's share; ``augment`` the D-input augmentation (``ada.AdaptiveAugment``) or None.
      The step object builds its own optimisers from ``cfg`` (:meth:`optimizers`).
    - ``d_step(real) -> stats`` and ``g_step() -> stats``: one D update on a real batch, one G update
      (the loop calls ``g_step`` after every ``n_dis``-th ``d_step``). Stats are detached 0-dim tensors
      (the loop never waits on the device per iteration): ``loss_D``, ``D_x``, ``D_G_z1`` and ``loss_G``,
      ``D_G_z2`` as probabilities; extra keys become extra history columns.
    - ``render(G, z) -> images``: the progress-grid images of fixed latents.
    - ``state_dict()`` / ``load_state_dict(state)``: G, D, optimisers and any step state (not the EMA
      generator, the augmentation or the RNGs, which the loop saves).
    - ``rank_aware``: True when the step draws its latents per global batch (see below); otherwise the
      loop gives each torchrun process a private random stream for the step.

    The EMA of G is the loop's, never the step's. To change only the losses, override :meth:`d_loss`
    and :meth:`g_loss`; to change the optimisers, :meth:`optimizers`; a different pass order or
    regularisers override ``d_step`` / ``g_step`` (as ``models.stylegan2_loss.StyleGAN2Steps`` does).

    The default step: as in the reference, the G step reuses the fakes of the preceding D step (now
    scored by the updated D); logits leave autocast before any loss, so losses are always fp32. Under
    torchrun ``real`` is this process's share of the global batch; the latents are drawn for the whole
    global batch and sliced the same way, and gradients are averaged over the processes before each
    optimiser step.
    """

    rank_aware = True  # draws its latents per global batch; other families get a private RNG per rank

    def __init__(self, G: nn.Module, D: nn.Module, cfg: Any, device: torch.device,
                 amp_dtype: torch.dtype | None, augment: Any = None):
        self.G, self.D, self.cfg, self.device, self.amp_dtype = G, D, cfg, device, amp_dtype
        self.augment = augment if augment is not None else (lambda x: x)
        self.measures_reals = hasattr(augment, "update")  # ADA's r_t = E[sign(D(real))]
        self.g_forward = torch.compile(G) if cfg.compile else G
        d_logits = getattr(D, "logits", D)
        self.d_forward = torch.compile(d_logits) if cfg.compile else d_logits
        self.opt_g, self.opt_d = self.optimizers()
        self._fake: torch.Tensor | None = None
        self.dist = distributed.info()

    # ----------------------------------------------------------------- what a family may override

    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """(G's, D's) optimiser: Adam at ``lr_g`` / ``lr_d`` with ``(beta1, beta2)``."""
        betas = (self.cfg.beta1, self.cfg.beta2)
        return (torch.optim.Adam(self.G.parameters(), lr=self.cfg.lr_g, betas=betas),
                torch.optim.Adam(self.D.parameters(), lr=self.cfg.lr_d, betas=betas))

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return d_loss(self.cfg.loss, real_logits, fake_logits, self.cfg.label_smoothing)

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return g_loss(self.cfg.loss, fake_logits)

    # ------------------------------------------------------------------------------ the steps

    def autocast(self):
        return dev.autocast(self.device, self.amp_dtype)

    def latents(self, n: int) -> torch.Tensor:
        """z for this process's ``n`` samples: the whole global batch's latents, drawn from the same RNG
        state on every process (so exactly what one process would draw), sliced like the real batch."""
        k, rank = self.dist.world_size, self.dist.rank
        z = torch.randn(n * k, self.G.latent_dim, device=self.device)
        return z[distributed.batch_slice(n * k, rank, k)] if k > 1 else z

    def optimizer_step(self, loss: torch.Tensor, net: nn.Module, opt: torch.optim.Optimizer) -> None:
        """Backward ``loss``, average ``net``'s gradients over the processes, step ``opt``."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(net)
        opt.step()

    def d_step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.latents(real.shape[0])
        with self.autocast():
            self._fake = self.g_forward(z)
            real_logits = self.d_forward(self.augment(real)).float()
            fake_logits = self.d_forward(self.augment(self._fake.detach())).float()
        loss = self.d_loss(real_logits, fake_logits)
        self.optimizer_step(loss, self.D, self.opt_d)
        if self.measures_reals:
            self.augment.update(real_logits.detach())
        return {"loss_D": loss.detach(), "D_x": torch.sigmoid(real_logits.detach()).mean(),
                "D_G_z1": torch.sigmoid(fake_logits.detach()).mean()}

    def g_step(self) -> dict[str, torch.Tensor]:
        fake, self._fake = self._fake, None
        self.D.requires_grad_(False)
        with self.autocast():
            logits = self.d_forward(self.augment(fake)).float()
        loss = self.g_loss(logits)
        self.optimizer_step(loss, self.G, self.opt_g)
        self.D.requires_grad_(True)
        return {"loss_G": loss.detach(), "D_G_z2": torch.sigmoid(logits.detach()).mean()}

    @torch.no_grad()
    def render(self, G: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """Images of the fixed latents for the progress grids, rendered as the reference does: in
        training mode, BatchNorm using the statistics of this batch. (Early on the running statistics
        still hold their initial values and eval-mode images come out washed-out gray.) Running
        statistics are left as they were: the forward updates copies."""
        was_training = G.training
        G.train()
        buffers = {name: b.clone() for name, b in G.named_buffers()}
        out = torch.func.functional_call(G, buffers, (z,))
        G.train(was_training)
        return out.float()

    def state_dict(self) -> dict[str, Any]:
        return {"G": self.G.state_dict(), "D": self.D.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
