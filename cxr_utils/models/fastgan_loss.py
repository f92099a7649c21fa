"""FastGAN's training step: hinge loss averaged per head, optional L1 reconstruction, reused fakes.

The networks are in ``models/fastgan.py``; this is the family's ``Steps`` (a ``losses.GANSteps``
subclass), following Liu et al. 2021 ("Towards Faster and Stabilized GAN Training for High-fidelity
Few-shot Image Synthesis") and, for the projected discriminator, Sauer et al. 2021 ("Projected GANs
Converge Faster"). The training loop owns the EMA generator (``ema_kimg`` with ``ema_rampup``), the
augmentation (``augment="diffaug"`` with a fixed ``augment_p``; ``augment_pipeline="radiograph"`` is
translation, cutout, brightness and contrast, see ``ada.PIPELINES``), data order and checkpoints.

One iteration, as FastGAN's reference training script does it:

* D step: fakes G(z) from this process's share of the global batch's latents (``GANSteps.latents``,
  so torchrun computes what one process does); reals and detached fakes each pass the augmentation
  and D. Loss: for every head k the hinge terms mean(relu(1 - D_k(x))) + mean(relu(1 + D_k(G(z))))
  over its patches and batch, then the mean over heads (every head weighs the same whatever its patch
  count). With ``recon_weight > 0`` the scratch part's decoder reconstructs the augmented real
  images downsampled to 32x32 (``ScratchDiscriminator.reconstruction_target``), adding
  ``recon_weight * mean |recon - target|`` (pixel L1 in [-1, 1] units instead of the paper's LPIPS:
  no perceptual network is needed and the loss is the same on any data).
* G step: the same fakes (not detached), scored by the updated D through a fresh augmentation draw;
  loss -mean_k mean(D_k(G(z))).

Optimisers: Adam on the trainable parameters only (``D.parameters()`` excludes the projected D's
frozen feature network and CCM/CSM, which are buffers), at ``lr_g`` / ``lr_d`` with
``(beta1, beta2)``; FastGAN's own are 2e-4 and (0.5, 0.999). Gradients are averaged over torchrun's
processes before each step; the frozen buffers are never written, so they stay identical everywhere.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import GANSteps


def hinge_d_loss(real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor]) -> Tensor:
    """mean over heads k of [mean relu(1 - real_k) + mean relu(1 + fake_k)]; fp32 scalar.

    ``real_logits`` / ``fake_logits``: one (N, 1, h, w) tensor per head (patch logits), in the same
    head order. Each head's hinge terms are averaged over its batch and patches first, so a 16x16
    patch head and a global head count alike (Lim & Ye 2017 hinge loss, per head as in Projected GAN).
    """
    if len(real_logits) != len(fake_logits) or not real_logits:
        raise ValueError(f"need the same non-zero number of heads, got {len(real_logits)} and {len(fake_logits)}")
    terms = [F.relu(1 - r.float()).mean() + F.relu(1 + f.float()).mean() for r, f in zip(real_logits, fake_logits)]
    return torch.stack(terms).mean()


def hinge_g_loss(fake_logits: Sequence[Tensor]) -> Tensor:
    """-mean over heads k of mean D_k(G(z)); fp32 scalar (each head averaged over batch and patches)."""
    return -torch.stack([f.float().mean() for f in fake_logits]).mean()


def per_sample_logits(logits: Sequence[Tensor]) -> Tensor:
    """(N,) mean logit of each sample: every head's patches averaged, then the heads (for ADA's r_t
    and the logged D(x) / D(G(z)) probabilities)."""
    return torch.stack([l.float().flatten(1).mean(dim=1) for l in logits]).mean(dim=0)


class FastGANSteps(GANSteps):
    """FastGAN's D and G steps behind the ``GANSteps`` interface (see the module docstring).

    Reads from the config: ``lr_g``, ``lr_d``, ``beta1``, ``beta2``, ``recon_weight`` and
    ``batch_size`` (this process's share). It keeps no state of its own beyond G, D and the two Adam
    optimisers, so :meth:`GANSteps.state_dict` is the whole of it. Stats: the shared ``loss_D``,
    ``D_x``, ``D_G_z1``, ``loss_G``, ``D_G_z2`` (sigmoid of the per-sample mean logit) plus
    ``D_real`` / ``D_fake`` (mean raw logits) and, with reconstruction, ``recon_l1``.
    """

    rank_aware = True  # latents per global batch, sliced per process (GANSteps.latents)

    def __init__(self, G: nn.Module, D: nn.Module, cfg: Any, device: torch.device,
                 amp_dtype: torch.dtype | None, augment: Any = None) -> None:
        super().__init__(G, D, cfg, device, amp_dtype, augment)
        self.recon_weight = float(getattr(cfg, "recon_weight", 0.0))
        if self.recon_weight > 0 and not hasattr(D, "forward_with_reconstruction"):
            raise ConfigError("recon_weight > 0 needs a discriminator with a scratch part (d_arch scratch or hybrid)")

    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """(G's, D's) Adam over the parameters that require gradients, at ``lr_g`` / ``lr_d``."""
        betas = (self.cfg.beta1, self.cfg.beta2)
        trainable = lambda net: [p for p in net.parameters() if p.requires_grad]  # noqa: E731
        return (torch.optim.Adam(trainable(self.G), lr=self.cfg.lr_g, betas=betas),
                torch.optim.Adam(trainable(self.D), lr=self.cfg.lr_d, betas=betas))

    def d_step(self, real: Tensor) -> dict[str, Tensor]:
        z = self.latents(real.shape[0])
        recon_l1 = None
        with self.autocast():
            self._fake = self.g_forward(z)
            real_in = self.augment(real)
            if self.recon_weight > 0:
                real_logits, recon = self.D.forward_with_reconstruction(real_in)
                target = self.D.reconstruction_target(real_in)
                recon_l1 = (recon.float() - target.float()).abs().mean()
            else:
                real_logits = self.d_forward(real_in)
            fake_logits = self.d_forward(self.augment(self._fake.detach()))
        loss = hinge_d_loss(real_logits, fake_logits)
        stats_loss = loss.detach()
        if recon_l1 is not None:
            loss = loss + self.recon_weight * recon_l1
        self.optimizer_step(loss, self.D, self.opt_d)
        real_s, fake_s = per_sample_logits(real_logits).detach(), per_sample_logits(fake_logits).detach()
        if self.measures_reals:
            self.augment.update(real_s)
        stats = {"loss_D": stats_loss, "D_x": torch.sigmoid(real_s).mean(), "D_G_z1": torch.sigmoid(fake_s).mean(),
                 "D_real": real_s.mean(), "D_fake": fake_s.mean()}
        if recon_l1 is not None:
            stats["recon_l1"] = recon_l1.detach()
        return stats

    def g_step(self) -> dict[str, Tensor]:
        fake, self._fake = self._fake, None
        self.D.requires_grad_(False)  # saves D's weight gradients; the frozen buffers are untouched either way
        try:
            with self.autocast():
                logits = self.d_forward(self.augment(fake))
            loss = hinge_g_loss(logits)
            self.optimizer_step(loss, self.G, self.opt_g)
        finally:
            self.D.requires_grad_(True)
        return {"loss_G": loss.detach(), "D_G_z2": torch.sigmoid(per_sample_logits(logits).detach()).mean()}

    @torch.no_grad()
    def render(self, G: nn.Module, z: Tensor) -> Tensor:
        """Progress-grid images in eval mode (BatchNorm running statistics), exactly what ``generate``,
        ``evaluate`` and the study get from the saved generator."""
        was_training = G.training
        G.eval()
        try:
            return G(z).float()
        finally:
            G.train(was_training)
