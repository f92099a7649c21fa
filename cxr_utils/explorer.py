"""The latent-space explorer: plain render functions, and an ipywidgets UI that only wires them up.

Two kinds of generator are explored through one small adapter (:func:`latent_space`):

- a DCGAN-style generator (``G(z)``, attributes ``latent_dim``/``channels``) is explored in **z-space**;
- a StyleGAN2 generator (``G.mapping``, ``G.synthesis``, ``G.num_ws``, ``G.mapping.w_avg``) is explored in
  **W-space**, where truncation and style mixing live.

A latent *code* is a z vector for the first and a w vector (shared by every layer) for the second; the
functions below take and return codes, so the notebook, the tests and the widget callbacks all go through
the same few lines. Images come back as ``uint8`` grayscale arrays (channels averaged: the radiographs are
gray, RGB generators only replicate them).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, RunError
from .images import grid, png_bytes, save_gif, save_png, to_gray_uint8
from .paths import project_path
from .runs import load_run

__all__ = [
    "Directions",
    "LatentExplorer",
    "LatentSpace",
    "apply_directions",
    "direction_walk",
    "explorer_for_run",
    "figure_direction_walk",
    "figure_explained_variance",
    "interpolation_strip",
    "latent_directions",
    "latent_space",
    "montage",
    "render",
    "save_strip_gif",
    "save_strip_png",
    "seed_code",
    "slerp",
    "truncate",
]


# ----------------------------------------------------------------------------------------------- adapter


def _device(G: nn.Module) -> torch.device:
    param = next(G.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def _inference(G: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration, then the caller's mode back (BatchNorm must not
    normalise over a batch of one, and rendering must not disturb a model that is still training)."""
    was_training = G.training
    G.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        G.train(was_training)


class LatentSpace:
    """What the explorer needs to know about a generator: how a seed becomes a code, and a code an image.

    ``kind`` is ``"z"`` or ``"w"``; ``center`` is the point truncation pulls towards (0 in z, the tracked
    average ``w_avg`` in W); ``num_layers`` is the number of per-layer codes style mixing can split (0 when
    the generator has no layers to mix).
    """

    kind = "z"

    def __init__(self, G: nn.Module):
        self.G = G
        self.device = _device(G)
        self.latent_dim = int(G.latent_dim)
        self.dim = self.latent_dim
        self.num_layers = 0
        self.center = torch.zeros(self.dim)

    def codes_from_z(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent_dim) normal samples -> (N, dim) codes."""
        return z

    def synthesize(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, dim) codes (or (N, num_layers, dim) for W) -> (N, C, H, W) images in [-1, 1], on the CPU."""
        with _inference(self.G):
            return self.G(codes.to(self.device)).float().cpu()


def _per_layer(space: LatentSpace, codes: torch.Tensor) -> torch.Tensor:
    """(N, dim) -> (N, num_layers, dim), one w per synthesis layer; per-layer codes pass unchanged."""
    return codes if codes.dim() == 3 else codes[:, None].expand(-1, space.num_layers, -1)


class _WSpace(LatentSpace):
    kind = "w"

    def __init__(self, G: nn.Module):
        super().__init__(G)
        self.center = G.mapping.w_avg.detach().float().cpu()
        self.dim = int(self.center.shape[-1])
        self.num_layers = int(G.num_ws)

    def codes_from_z(self, z: torch.Tensor) -> torch.Tensor:
        with _inference(self.G):
            ws = self.G.mapping(z.to(self.device), truncation_psi=1.0)
        return ws[:, 0].float().cpu()  # untruncated mapping output: every layer carries the same w

    def synthesize(self, codes: torch.Tensor) -> torch.Tensor:
        codes = _per_layer(self, codes)
        with _inference(self.G):
            return self.G.synthesis(codes.to(self.device), noise_mode="const").float().cpu()


def latent_space(G: nn.Module) -> LatentSpace:
    """The adapter for ``G``: W-space when it has a StyleGAN2 mapping/synthesis split, z-space otherwise."""
    if isinstance(G, LatentSpace):
        return G
    if all(hasattr(G, a) for a in ("mapping", "synthesis", "num_ws")):
        return _WSpace(G)
    return LatentSpace(G)


# ------------------------------------------------------------------------------------------ latent codes


def _normal(seed: int, n: int, dim: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(int(seed)))


def seed_code(G: nn.Module | LatentSpace, seed: int) -> torch.Tensor:
    """The code of one seed, shape (dim,): its z, or for StyleGAN2 the w that z maps to (psi = 1)."""
    space = latent_space(G)
    return space.codes_from_z(_normal(seed, 1, space.latent_dim))[0]


def truncate(G: nn.Module | LatentSpace, code: torch.Tensor, psi: float) -> torch.Tensor:
    """Pull a code towards the centre of the space: ``center + psi * (code - center)``.

    psi < 1 trades variety for typicality (psi = 0 gives the average image in W, z = 0 in z-space).
    """
    center = latent_space(G).center.to(code)
    return center + float(psi) * (code - center)


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two codes (last dimension), for scalar or 1-D ``t``.

    Gaussian z concentrates on a shell, so a straight line between two samples passes through
    atypically short vectors; slerp stays on the shell. Falls back to a straight line for (anti)parallel
    codes, where the great circle is undefined.
    """
    t_ = torch.as_tensor(t, dtype=z0.dtype)
    scalar = t_.dim() == 0
    t_ = t_.reshape(-1, *([1] * z0.dim()))
    n0, n1 = z0.norm(dim=-1, keepdim=True), z1.norm(dim=-1, keepdim=True)
    cos = ((z0 * z1).sum(-1, keepdim=True) / (n0 * n1).clamp_min(1e-12)).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    if bool((sin.abs() < 1e-6).all()):
        out = (1 - t_) * z0 + t_ * z1
    else:
        out = (torch.sin((1 - t_) * omega) * z0 + torch.sin(t_ * omega) * z1) / sin
    return out[0] if scalar else out


# ----------------------------------------------------------------------------------------- principal axes


class Directions(NamedTuple):
    """Principal directions of a latent space.

    - ``mean`` (dim,): centre of the codes, 0 for z, the sample mean for w.
    - ``components`` (k, dim): each scaled so that a step of 1.0 moves one standard deviation of the
      codes along it.
    - ``explained_variance`` (k,): the fraction of the total variance each direction explains, in the
      space the PCA ran in (generated images for z, W itself for w).
    """

    mean: torch.Tensor
    components: torch.Tensor
    explained_variance: torch.Tensor


def _pca(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, top-k unit axes (k, D) and their explained-variance fractions, with a deterministic sign."""
    x = x.double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    var = s**2
    axes = vh[:k]
    sign = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))  # largest coefficient positive
    return mean, axes * sign, var[:k] / var.sum()


def _gray_small(images: torch.Tensor, max_side: int = 32) -> torch.Tensor:
    """Channel mean, area-downsampled to at most ``max_side``: the global modes of a radiograph are
    visible at 32 px, and PCA over 1,024 pixels instead of 4,096 or 16,384 is instant."""
    gray = images.mean(1, keepdim=True)
    if gray.shape[-1] > max_side:
        gray = nn.functional.adaptive_avg_pool2d(gray, max_side)
    return gray.flatten(1)


def latent_directions(G: nn.Module | LatentSpace, n_samples: int = 2000, k: int = 8, seed: int = 0,
                      batch: int = 250) -> Directions:
    """Principal directions to steer ``G`` along (GANSpace, Härkönen et al. 2020).

    W-space (StyleGAN2): PCA of ``n_samples`` mapped codes w. W is learned and anisotropic, so its
    principal axes are the directions the mapping network spreads samples along.

    z-space (DCGAN): z is isotropic Gaussian, so PCA of z itself finds nothing. Instead PCA runs on what
    the generator *makes* of z: the generated images (gray, at most 32 px). Each image's coordinates on
    the top-k image axes are then regressed on z by least squares, giving for every image axis the z
    direction that best predicts it; those are normalised to unit length (one standard deviation of z).
    This is GANSpace's "PCA on an activation, regress back to z" with the output as the activation: it
    needs no knowledge of the generator's internals and the axes are the image changes a user sees.
    """
    space = latent_space(G)
    if n_samples <= k:
        raise ConfigError(f"latent_directions: n_samples ({n_samples}) must exceed k ({k})")
    z = _normal(seed, n_samples, space.latent_dim)
    if space.kind == "w":
        w = torch.cat([space.codes_from_z(chunk) for chunk in z.split(batch)])
        mean, axes, ratio = _pca(w, k)
        std = ((w.double() - mean) @ axes.T).std(0)
        return Directions(mean.float(), (axes * std[:, None]).float(), ratio.float())
    feats = torch.cat([_gray_small(space.synthesize(chunk)) for chunk in z.split(batch)])
    mean, axes, ratio = _pca(feats, k)
    coords = (feats.double() - mean) @ axes.T  # (n, k)
    to_z = torch.linalg.lstsq(coords, z.double()).solution  # (k, latent): z ~ coords @ to_z
    to_z = to_z / to_z.norm(dim=1, keepdim=True)
    return Directions(space.center.clone(), to_z.float(), ratio.float())


def apply_directions(code: torch.Tensor, components: torch.Tensor, alphas: Sequence[float]) -> torch.Tensor:
    """``code + sum_i alphas[i] * components[i]`` (alphas in standard deviations; fewer alphas than
    components leave the rest at 0)."""
    a = torch.as_tensor(list(alphas), dtype=components.dtype)
    return code + a @ components[: len(a)]


# ------------------------------------------------------------------------------------------------ images


def render(G: nn.Module | LatentSpace, code: torch.Tensor, *, mix: torch.Tensor | None = None,
           crossover: int | None = None) -> np.ndarray:
    """Render codes to uint8 grayscale: (dim,) -> (H, W); (N, dim) -> (N, H, W).

    W-space only: ``mix`` (same shape as ``code``) with ``crossover`` c gives layers < c (coarse: pose,
    shape) from ``code`` and layers >= c (fine: texture, contrast) from ``mix``. A (N, num_ws, w_dim) code
    is taken as already per-layer.
    """
    space = latent_space(G)
    single = code.dim() == 1
    codes = code[None] if single else code
    if mix is not None:
        if space.kind != "w":
            raise ConfigError("style mixing needs a StyleGAN2 generator (W-space); this one has only z")
        c = space.num_layers if crossover is None else int(crossover)
        if not 0 <= c <= space.num_layers:
            raise ConfigError(f"crossover must be in 0..{space.num_layers}, got {c}")
        mixes = mix[None] if mix.dim() == 1 else mix
        layer = torch.arange(space.num_layers)[None, :, None]
        codes = torch.where(layer < c, _per_layer(space, codes), _per_layer(space, mixes))
    out = to_gray_uint8(space.synthesize(codes))
    return out[0] if single else out


def interpolation_strip(G: nn.Module | LatentSpace, seed_a: int, seed_b: int, steps: int = 8,
                        truncation_psi: float = 1.0) -> np.ndarray:
    """(steps, H, W) uint8 frames from seed A to seed B: slerp in z, a straight line in W (W is not
    Gaussian, and the StyleGAN papers measure path length along lines in W)."""
    space = latent_space(G)
    a = truncate(space, seed_code(space, seed_a), truncation_psi)
    b = truncate(space, seed_code(space, seed_b), truncation_psi)
    t = torch.linspace(0, 1, steps)
    codes = slerp(a, b, t) if space.kind == "z" else a + t[:, None] * (b - a)
    return render(space, codes)


def direction_walk(G: nn.Module | LatentSpace, code: torch.Tensor, components: torch.Tensor,
                   alphas: Sequence[float]) -> np.ndarray:
    """(k, len(alphas), H, W) uint8: row i moves ``code`` by each alpha along ``components[i]``."""
    steps = torch.as_tensor(list(alphas), dtype=code.dtype)
    codes = code + steps[None, :, None] * components[:, None, :]  # (k, a, dim)
    frames = render(G, codes.reshape(-1, code.shape[-1]))
    return frames.reshape(len(components), len(steps), *frames.shape[1:])


def montage(frames: np.ndarray, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile uint8 frames, (n, H, W) into one row or (rows, cols, H, W) into a grid, with ``pad`` px gaps
    of grey level ``pad_value`` between them and none around the edge.

    Returns (rows * (H + pad) - pad, cols * (W + pad) - pad) uint8. Tiled by :func:`cxr_utils.images.grid`
    (torchvision's ``make_grid``), whose outer border of ``pad`` px is cut off here.
    """
    tiles = frames[None] if frames.ndim == 3 else frames
    rows, cols, h, w = tiles.shape
    tiled = grid(np.ascontiguousarray(tiles.reshape(rows * cols, h, w)), nrow=cols, padding=pad,
                 pad_value=pad_value)
    return tiled[pad: tiled.shape[0] - pad, pad: tiled.shape[1] - pad]


def save_strip_png(frames: np.ndarray, path: str | Path, pad: int = 2) -> Path:
    """Save (n, H, W) uint8 frames side by side (:func:`montage`, white gaps) as one PNG."""
    return save_png(montage(frames, pad=pad), path)


def save_strip_gif(frames: np.ndarray, path: str | Path, fps: float = 8.0, boomerang: bool = True) -> Path:
    """Save (n, H, W) uint8 frames as a looping GIF; ``boomerang`` plays back and forth so the loop has
    no jump."""
    return save_gif(list(frames), path, durations_ms=1000.0 / fps, boomerang=boomerang)


# ----------------------------------------------------------------------------------------------- figures


def figure_explained_variance(directions: Directions, ax: Any = None) -> Any:
    """Bar chart of each direction's share of the variance, with the running total."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    ratio = directions.explained_variance.numpy() * 100
    idx = np.arange(1, len(ratio) + 1)
    ax.bar(idx, ratio, color="tab:blue", label="per direction")
    ax.plot(idx, np.cumsum(ratio), "o-", color="tab:orange", label="cumulative")
    ax.set(xlabel="principal direction", ylabel="variance explained (%)", xticks=idx)
    ax.legend(frameon=False)
    ax.figure.tight_layout()
    return ax.figure


def figure_direction_walk(walk: np.ndarray, alphas: Sequence[float], directions: Directions) -> Any:
    """The (k, a, H, W) walk as one gray grid labelled with the direction and the step in std."""
    import matplotlib.pyplot as plt

    k, a, h, w = walk.shape
    fig, ax = plt.subplots(figsize=(1.1 * a + 1, 1.1 * k + 0.6))
    ax.imshow(montage(walk), cmap="gray", vmin=0, vmax=255)
    ax.set_xticks([(w + 2) * j + w / 2 for j in range(a)], [f"{x:+.1f}" for x in alphas])
    ratio = directions.explained_variance
    ax.set_yticks([(h + 2) * i + h / 2 for i in range(k)],
                  [f"PC{i + 1} ({100 * float(ratio[i]):.1f}%)" for i in range(k)])
    ax.set_xlabel("step along the direction (standard deviations)")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------- widget


class LatentExplorer:
    """An ipywidgets view over one generator. Callbacks only call the plain functions above, so the
    same state can be reproduced without a browser (``code()``, ``current_image()``, ``export()``).

    Controls: the seed (a text box, 0..``max_seed``); one slider per principal direction (in standard
    deviations); for StyleGAN2 a truncation slider, a mixing seed (text box) and the crossover layer
    (layers from it on come from the mixing seed; the last value means no mixing); a second seed for the
    interpolation strip; export of the strip as PNG and GIF (and the current image as PNG) into
    ``out_dir``. Every slider track starts at the same x (one label width for all).
    """

    def __init__(self, G: nn.Module, *, n_components: int = 6, seed: int = 0, seed_b: int = 1,
                 out_dir: str | Path = "results/05_latent_explorer", directions: Directions | None = None,
                 n_samples: int = 2000, span: float = 3.0, strip_steps: int = 8, display_size: int = 256,
                 max_seed: int = 9999):
        import ipywidgets as W

        self.space = latent_space(G)
        if directions is None:
            directions = latent_directions(self.space, n_samples, k=n_components)
        self.directions = directions
        self.strip_steps = strip_steps
        self._quiet = False
        self.display_size = display_size
        # One label width for every control, so the slider tracks and text boxes share one left edge
        # whatever their labels say ("PC1 (43.2%)" is wider than "seed").
        label = {"description_width": "11em"}
        row = W.Layout(width="34em")
        slider = dict(continuous_update=False, style=label, layout=row)
        # Seeds are typed (0..max_seed): a 10,000-step slider on a short track cannot pick one.
        seed_box = dict(min=0, max=max_seed, step=1, continuous_update=False, style=label,
                        layout=W.Layout(width="18em"))

        self.seed = W.BoundedIntText(value=seed, description="seed", **seed_box)
        ratio = self.directions.explained_variance
        self.sliders = [
            W.FloatSlider(value=0.0, min=-span, max=span, step=0.1, readout_format="+.1f",
                          description=f"PC{i + 1} ({100 * float(r):.1f}%)", **slider)
            for i, r in enumerate(ratio)
        ]
        self.reset_button = W.Button(description="reset directions", layout=W.Layout(width="auto"))
        controls: list[Any] = [self.seed, *self.sliders, self.reset_button]
        self.truncation = self.mix_seed = self.crossover = None
        if self.space.kind == "w":
            n = self.space.num_layers
            self.truncation = W.FloatSlider(value=1.0, min=0.0, max=1.5, step=0.05,
                                            description="truncation psi", **slider)
            self.mix_seed = W.BoundedIntText(value=seed_b, description="mixing seed", **seed_box)
            self.crossover = W.IntSlider(value=n, min=0, max=n, description=f"fine layers from (of {n})",
                                         **slider)
            controls += [self.truncation, self.mix_seed, self.crossover]
        self.image = W.Image(format="png")
        self.seed_b = W.BoundedIntText(value=seed_b, description="strip: to seed", **seed_box)
        self.strip = W.Image(format="png")
        self.out_dir = W.Text(value=str(out_dir), description="export to", style=label,
                              layout=W.Layout(width="40em"))
        # width "auto" fits the button to its whole label (the default width cut it to "export strip PN...")
        self.export_button = W.Button(description="export strip PNG/GIF", icon="download",
                                      layout=W.Layout(width="auto"))
        self.status = W.Label()

        for w in [self.seed, *self.sliders, self.truncation, self.mix_seed, self.crossover]:
            if w is not None:
                w.observe(self._on_view_change, names="value")
        for w in [self.seed, self.seed_b, self.truncation]:
            if w is not None:
                w.observe(self._on_strip_change, names="value")
        self.reset_button.on_click(lambda _: self.reset())
        self.export_button.on_click(lambda _: self.export())

        self._box = W.VBox([
            W.HBox([W.VBox(controls), self.image]),
            W.HBox([self.seed_b]),
            self.strip,
            W.HBox([self.out_dir, self.export_button]),
            self.status,
        ])
        self._on_view_change()
        self._on_strip_change()

    @property
    def widget(self) -> Any:
        """The top-level box to display."""
        return self._box

    def _psi(self) -> float:
        return self.truncation.value if self.truncation is not None else 1.0

    def code(self) -> torch.Tensor:
        """The current code: the seed's code, truncated, then moved along the directions."""
        base = truncate(self.space, seed_code(self.space, self.seed.value), self._psi())
        return apply_directions(base, self.directions.components, [s.value for s in self.sliders])

    def current_image(self) -> np.ndarray:
        """The image the view shows, as (H, W) uint8."""
        if self.crossover is None or self.crossover.value >= self.space.num_layers:
            return render(self.space, self.code())
        mix = truncate(self.space, seed_code(self.space, self.mix_seed.value), self._psi())
        return render(self.space, self.code(), mix=mix, crossover=self.crossover.value)

    def current_strip(self) -> np.ndarray:
        """The interpolation strip from the seed to the strip's second seed, at the current truncation."""
        return interpolation_strip(self.space, self.seed.value, self.seed_b.value, self.strip_steps,
                                   truncation_psi=self._psi())

    def _scale(self, image: np.ndarray) -> int:
        return max(1, self.display_size // image.shape[0])

    def _on_view_change(self, _change: Any = None) -> None:
        if self._quiet:
            return
        img = self.current_image()
        self.image.value = png_bytes(img, self._scale(img))

    def _on_strip_change(self, _change: Any = None) -> None:
        frames = self.current_strip()
        self.strip.value = png_bytes(montage(frames), max(1, self._scale(frames[0]) // 2))

    def reset(self) -> None:
        """All direction sliders back to 0, with one re-render instead of one per slider."""
        self._quiet = True
        try:
            for s in self.sliders:
                s.value = 0.0
        finally:
            self._quiet = False
        self._on_view_change()

    def export(self) -> list[Path]:
        """Write the interpolation strip (PNG, GIF) and the current image (PNG) into ``out_dir``."""
        out = project_path(self.out_dir.value)
        a, b = self.seed.value, self.seed_b.value
        frames = self.current_strip()
        paths = [
            save_strip_png(frames, out / f"interp_{a:04d}_{b:04d}.png"),
            save_strip_gif(frames, out / f"interp_{a:04d}_{b:04d}.gif"),
        ]
        paths.append(save_png(self.current_image(), out / f"seed_{a:04d}.png"))
        self.status.value = "wrote " + ", ".join(str(p) for p in paths)
        return paths


def explorer_for_run(run_dir: str | Path, **kwargs: Any) -> LatentExplorer:
    """A :class:`LatentExplorer` over the generator of a trained run folder (keyword arguments go to it)."""
    path = project_path(run_dir)
    if not path.is_dir():
        raise RunError(f"run folder {run_dir} not found: run notebook 02 (notebooks/02_dcgan_training.ipynb) "
                       f"first, or `python -m cxr_utils train --out {run_dir}`")
    _, G = load_run(path, which=kwargs.pop("which", "final"))  # final | best | snapshot (runs.load_run)
    return LatentExplorer(G, **kwargs)
