"""Backdoor triggers as small callables ``x -> x_triggered`` on image batches (N, C, H, W).

Because every trigger has the same shape, they compose: :class:`Compose` applies several in turn,
:class:`RandomPatch` moves any pattern around, and the same object poisons the training set and
triggers the test set.

* :class:`Patch`: BadNets (Gu et al. 2017): stamp a small pattern at a fixed spot.
* :class:`Blend`: blended injection (Chen et al. 2017): ``x' = alpha * key + (1 - alpha) * x``.
* :class:`RandomPatch`: random-location backdoor (Salem et al. 2022): the pattern lands anywhere
  inside a region (the whole image by default).
* :class:`Compose`: apply triggers in sequence (composite triggers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ._validate import check_float, check_images, check_int

# ---------------------------------------------------------------------------------------------
# Patterns
# ---------------------------------------------------------------------------------------------

def checkerboard(size: int = 4, channels: int = 1) -> torch.Tensor:
    """A ``size x size`` black/white checkerboard (top-left white), shape (C, size, size)."""
    check_int("size", size, low=1, high=1024)
    check_int("channels", channels, low=1, high=4)
    i = torch.arange(size)
    board = ((i[:, None] + i[None, :]) % 2 == 0).float()
    return board.expand(channels, size, size).clone()


def white_square(size: int = 4, channels: int = 1) -> torch.Tensor:
    """A solid white ``size x size`` square, shape (C, size, size)."""
    check_int("size", size, low=1, high=1024)
    check_int("channels", channels, low=1, high=4)
    return torch.ones(channels, size, size)


def noise_key(shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """A uniform random-noise blend key of shape (C, H, W) (Chen et al.'s random pattern key)."""
    gen = torch.Generator().manual_seed(check_int("seed", seed, low=0))
    if len(shape) != 3:
        raise ValueError(f"shape must be (C, H, W), got {shape}")
    for name, n in zip("CHW", shape, strict=True):
        check_int(f"shape's {name}", n, low=1)
    return torch.rand(tuple(shape), generator=gen)


def _as_pattern(pattern: torch.Tensor) -> torch.Tensor:
    if not isinstance(pattern, torch.Tensor):
        raise TypeError(f"pattern must be a torch.Tensor (C, h, w) or (h, w), got {type(pattern).__name__}")
    if pattern.ndim == 2:
        pattern = pattern.unsqueeze(0)
    if pattern.ndim != 3 or min(pattern.shape) < 1:
        raise ValueError(f"pattern must have shape (C, h, w) or (h, w); got {tuple(pattern.shape)}")
    if not pattern.is_floating_point():
        raise TypeError(f"pattern must be a float tensor in [0, 1], got {pattern.dtype}")
    if float(pattern.min()) < 0 or float(pattern.max()) > 1:
        raise ValueError("pattern values must lie in [0, 1]")
    return pattern.float()


def _check_fits(x: torch.Tensor, pattern: torch.Tensor, where: str) -> None:
    c, h, w = pattern.shape
    if h > x.shape[2] or w > x.shape[3]:
        raise ValueError(f"trigger pattern {h}x{w} is larger than the {where} "
                         f"({x.shape[2]}x{x.shape[3]}); use a smaller pattern")
    if c not in (1, x.shape[1]):
        raise ValueError(f"pattern has {c} channels; the images have {x.shape[1]} (use 1 or {x.shape[1]})")


def stamp(x: torch.Tensor, pattern: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """Paste ``pattern`` into each image ``x[i]`` with its top-left corner at ``(rows[i], cols[i])``.

    ``pattern`` is (C, h, w), shared by all images, or (N, C, h, w), one per image (generated
    triggers; gradients flow back into it). Where ``mask`` (h, w) is given the result is
    ``mask * pattern + (1 - mask) * x``. Returns a new tensor.
    """
    n = x.shape[0]
    h, w = pattern.shape[-2:]
    pat = pattern.to(x.device, x.dtype)
    pat = pat.expand(n, x.shape[1], h, w) if pat.ndim == 4 else pat.expand(x.shape[1], h, w)[None].expand(n, -1, -1, -1)
    m = (torch.ones(h, w) if mask is None else mask).to(x.device, x.dtype)
    out = x.clone()
    if bool((rows == rows[0]).all()) and bool((cols == cols[0]).all()):
        r, c = int(rows[0]), int(cols[0])
        out[:, :, r:r + h, c:c + w] = m * pat + (1 - m) * x[:, :, r:r + h, c:c + w]
        return out
    rr = rows.to(x.device)[:, None] + torch.arange(h, device=x.device)[None]   # (n, h)
    cc = cols.to(x.device)[:, None] + torch.arange(w, device=x.device)[None]   # (n, w)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    rr, cc = rr[:, :, None], cc[:, None, :]
    region = x.permute(0, 2, 3, 1)[idx_n, rr, cc]  # (n, h, w, C)
    mm = m[None, :, :, None]
    new = mm * pat.permute(0, 2, 3, 1) + (1 - mm) * region
    flat = out.permute(0, 2, 3, 1)  # a view of out
    flat[idx_n, rr, cc] = new
    return out


# ---------------------------------------------------------------------------------------------
# Triggers
# ---------------------------------------------------------------------------------------------

class Trigger:
    """Base class: a callable mapping an image batch (N, C, H, W) to its triggered copy."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __add__(self, other: Trigger) -> Compose:
        return Compose((self, other))


@dataclass
class Patch(Trigger):
    """BadNets patch: stamp ``pattern`` at a fixed position.

    Args:
        pattern: (C, h, w) or (h, w) float tensor in [0, 1].
        position: ``"bottom-right"``, ``"top-left"``, ``"top-right"``, ``"bottom-left"`` or an
            explicit ``(row, col)`` of the top-left corner.
        margin: pixels between the pattern and the image border for the named corners.
    """

    pattern: torch.Tensor = field(default_factory=checkerboard)
    position: str | tuple[int, int] = "bottom-right"
    margin: int = 1

    def __post_init__(self) -> None:
        self.pattern = _as_pattern(self.pattern)
        check_int("margin", self.margin, low=0)
        named = ("bottom-right", "top-left", "top-right", "bottom-left")
        if isinstance(self.position, str):
            if self.position not in named:
                raise ValueError(f"position={self.position!r} is not allowed; choose one of "
                                 f"{list(named)} or a (row, col) tuple")
        elif not (isinstance(self.position, tuple) and len(self.position) == 2):
            raise TypeError(f"position must be a corner name or a (row, col) tuple, got {self.position!r}")
        else:
            for i, v in enumerate(self.position):
                check_int(f"position[{i}]", v, low=0)

    def corner(self, h_img: int, w_img: int) -> tuple[int, int]:
        _, h, w = self.pattern.shape
        if isinstance(self.position, tuple):
            r, c = self.position
        else:
            r = self.margin if "top" in self.position else h_img - h - self.margin
            c = self.margin if "left" in self.position else w_img - w - self.margin
        if r < 0 or c < 0 or r + h > h_img or c + w > w_img:
            raise ValueError(f"trigger {h}x{w} at position {(r, c)} does not fit in a "
                             f"{h_img}x{w_img} image")
        return r, c

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_images("x", x)
        _check_fits(x, self.pattern, "image")
        r, c = self.corner(x.shape[2], x.shape[3])
        n = len(x)
        return stamp(x, self.pattern, torch.full((n,), r), torch.full((n,), c))


@dataclass
class Blend(Trigger):
    """Blended injection (Chen et al. 2017): ``x' = alpha * key + (1 - alpha) * x``.

    Args:
        key: (C, H, W) or (H, W) image in [0, 1] (random noise or a real image).
        alpha: blend ratio in (0, 1].
    """

    key: torch.Tensor
    alpha: float = 0.2

    def __post_init__(self) -> None:
        self.key = _as_pattern(self.key)
        self.alpha = check_float("alpha", self.alpha, low=0.0, high=1.0, low_open=True)

    def with_alpha(self, alpha: float) -> Blend:
        """The same key at another blend ratio (train with one alpha, test with another)."""
        return Blend(self.key, alpha)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_images("x", x)
        if tuple(self.key.shape[1:]) != tuple(x.shape[2:]) or self.key.shape[0] not in (1, x.shape[1]):
            raise ValueError(f"blend key shape {tuple(self.key.shape)} does not match images "
                             f"{tuple(x.shape[1:])}")
        key = self.key.to(x.device, x.dtype)
        return self.alpha * key + (1 - self.alpha) * x


@dataclass
class BlendedPatch(Trigger):
    """A patch blended in with opacity ``alpha``: ``alpha * patch(x) + (1 - alpha) * x`` (only the
    patch window changes; ``alpha = 1`` is the plain patch)."""

    patch: Patch
    alpha: float = 0.5

    def __post_init__(self) -> None:
        self.alpha = check_float("alpha", self.alpha, low=0.0, high=1.0, low_open=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.patch(x) + (1 - self.alpha) * x


@dataclass
class RandomPatch(Trigger):
    """Random-location backdoor (Salem et al. 2022): ``pattern`` stamped at a uniformly random
    position inside ``region`` = (row0, col0, row1, col1) (default: the whole image), a fresh
    position for every image and call. ``seed`` makes the sequence of positions reproducible."""

    pattern: torch.Tensor = field(default_factory=checkerboard)
    region: tuple[int, int, int, int] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.pattern = _as_pattern(self.pattern)
        check_int("seed", self.seed, low=0)
        if self.region is not None:
            if len(self.region) != 4:
                raise ValueError(f"region must be (row0, col0, row1, col1), got {self.region}")
            for i, v in enumerate(self.region):
                check_int(f"region[{i}]", v, low=0)
        self._gen = torch.Generator().manual_seed(self.seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_images("x", x)
        _check_fits(x, self.pattern, "image")
        _, h, w = self.pattern.shape
        r0, c0, r1, c1 = self.region or (0, 0, x.shape[2], x.shape[3])
        if r1 > x.shape[2] or c1 > x.shape[3] or r1 - r0 < h or c1 - c0 < w:
            raise ValueError(f"region {(r0, c0, r1, c1)} cannot hold a {h}x{w} pattern inside a "
                             f"{x.shape[2]}x{x.shape[3]} image")
        n = len(x)
        rows = torch.randint(r0, r1 - h + 1, (n,), generator=self._gen)
        cols = torch.randint(c0, c1 - w + 1, (n,), generator=self._gen)
        return stamp(x, self.pattern, rows, cols)


@dataclass
class Compose(Trigger):
    """Apply several triggers in order (composite triggers: both conditions present)."""

    parts: tuple[Trigger, ...]

    def __post_init__(self) -> None:
        if len(self.parts) < 1 or not all(callable(t) for t in self.parts):
            raise TypeError("parts must be a non-empty tuple of triggers (callables)")
        self.parts = tuple(self.parts)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.parts:
            x = t(x)
        return x


def region_grid(image_hw: tuple[int, int], n_regions: int, rows: int | None = None) -> list[tuple[int, int, int, int]]:
    """Split an image into ``n_regions`` equal cells of a ``rows x (n_regions / rows)`` grid,
    row-major; returns (row0, col0, row1, col1) per cell (multi-target backdoor regions)."""
    check_int("n_regions", n_regions, low=1)
    h, w = image_hw
    if rows is None:
        rows = max(r for r in range(1, n_regions + 1) if n_regions % r == 0 and r * r <= n_regions)
    check_int("rows", rows, low=1, high=n_regions)
    if n_regions % rows:
        raise ValueError(f"rows={rows} must divide n_regions={n_regions}")
    cols = n_regions // rows
    rb = [round(i * h / rows) for i in range(rows + 1)]
    cb = [round(j * w / cols) for j in range(cols + 1)]
    return [(rb[i], cb[j], rb[i + 1], cb[j + 1]) for i in range(rows) for j in range(cols)]
