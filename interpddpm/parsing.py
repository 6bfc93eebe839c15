"""Face parsing: label maps of generated images.

The paper segments every generated image x_0 with a face parser (BiSeNet) and measures locality
inside and outside the parser's mask of one concept. This module provides two parsers with the
same interface (``predict(images [B,3,H,W] in [-1,1]) -> labels [B,H,W]`` in the label set of
:data:`interpddpm.toyfaces.LABELS`):

- :class:`FaceParser`: a compact U-Net (about 114k parameters) trained in minutes on a CPU on the
  exact label maps of the toy faces (:func:`train_parser`, cached by :func:`get_parser`). Its
  pooled encoder features (:meth:`FaceParser.encode`) double as an offline feature network for
  FID on toy faces.
- :class:`BiSeNetParser`: the pretrained 19-class BiSeNet of face-parsing.PyTorch (the parser the
  paper uses on CelebA), merged to our 12 classes by :data:`CELEBAMASK_TO_TOY`; its weights come
  from the Hugging Face Hub (:func:`load_bisenet`).

:func:`evaluate_parser` measures per-class and per-concept IoU on held-out toy faces.

Serves chapters 6 to 12: the label maps of the locality and realism measures.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import threads
from .artifacts import (
    ArtifactError,
    atomic_write,
    digest_file,
    verify_artifact,
    write_artifact,
)
from .errors import UserError
from .locks import locked
from .toyfaces import CONCEPTS, LABELS, N_CLASSES, ToyFaces

__all__ = [
    "BISENET_CLASSES",
    "BISENET_FILENAME",
    "BISENET_REPO",
    "BISENET_TO_TOY",
    "CELEBAMASK_TO_TOY",
    "PART_TO_TOY",
    "HELDOUT_SEED_OFFSET",
    "BiSeNet",
    "BiSeNetParser",
    "BiSeNetWeightsNotAvailableError",
    "FaceParser",
    "ParserFileError",
    "ResNet18",
    "concept_iou",
    "confusion_matrix",
    "evaluate_parser",
    "get_parser",
    "iou_from_confusion",
    "load_bisenet",
    "load_parser",
    "merge_celebamask_labels",
    "merge_table",
    "save_parser",
    "train_parser",
]

# Held-out faces for evaluation come from ToyFaces(seed=train_seed + HELDOUT_SEED_OFFSET): item
# parameters are hashed from (seed, index), so the two streams share no face.
HELDOUT_SEED_OFFSET = 1000
_FORMAT = "interpddpm.face_parser/1"


class _Predictor(Protocol):
    def predict(self, images: torch.Tensor) -> torch.Tensor: ...


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"images must be a tensor [B, 3, H, W] in [-1, 1], got {shape}")


# --------------------------------------------------------------------------- the small parser


def _group_norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: outputs of one image never depend on the rest of the batch, so
    # predict/encode are deterministic per image and train/eval behave the same.
    return nn.GroupNorm(max(1, min(8, channels // 4)), channels)


class _DoubleConv(nn.Sequential):
    """Two 3x3 conv + GroupNorm + ReLU layers."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            _group_norm(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            _group_norm(cout),
            nn.ReLU(inplace=True),
        )


class FaceParser(nn.Module):
    """A compact U-Net face parser: images [B,3,H,W] in [-1,1] -> logits [B,n_classes,H,W].

    ``widths`` are the channels of the encoder levels (each level halves the resolution); the
    bottleneck also receives a global-average context vector, so the whole face informs every
    pixel at any input size. Fully convolutional: works at 32x32, 64x64 or any size >= 4.
    ``size`` records the resolution it was trained at (informational).
    """

    def __init__(
        self,
        n_classes: int = N_CLASSES,
        widths: Sequence[int] = (24, 32, 64),
        size: int | None = None,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"widths needs at least two positive entries, got {widths}")
        self.n_classes = int(n_classes)
        self.widths = widths
        self.size = size
        self.stem = _DoubleConv(3, widths[0])
        pairs = list(zip(widths[:-1], widths[1:], strict=True))
        self.down = nn.ModuleList(_DoubleConv(a, b) for a, b in pairs)
        self.context = nn.Sequential(nn.Conv2d(widths[-1], widths[-1], 1), nn.ReLU(inplace=True))
        pairs.reverse()
        # Decoder: upsample, project to the skip's width and add (cheaper than concatenating).
        self.proj = nn.ModuleList(nn.Conv2d(b, a, 1) for a, b in pairs)
        self.up = nn.ModuleList(_DoubleConv(a, a) for a, _ in pairs)
        self.head = nn.Conv2d(widths[0], self.n_classes, 1)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (saved next to the weights)."""
        return {"n_classes": self.n_classes, "widths": list(self.widths), "size": self.size}

    @property
    def feature_dim(self) -> int:
        """Length D of :meth:`encode`'s feature vectors (the sum of the encoder widths)."""
        return sum(self.widths)

    def _levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(images)]
        for block in self.down:
            feats.append(block(F.max_pool2d(feats[-1], 2)))
        feats[-1] = feats[-1] + self.context(feats[-1].mean(dim=(2, 3), keepdim=True))
        return feats

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits [B, n_classes, H, W]."""
        feats = self._levels(images)
        x = feats[-1]
        for proj, block, skip in zip(self.proj, self.up, reversed(feats[:-1]), strict=True):
            x = F.interpolate(proj(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(x + skip)
        return self.head(x)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def _eval_call(
        self, fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor
    ) -> torch.Tensor:
        _check_images(images)
        was_training = self.training
        self.eval()
        try:
            param = next(self.parameters())  # the parser's own dtype (float32 unless cast)
            out = fn(images.to(param.device, param.dtype))
        finally:
            self.train(was_training)
        return out.to(images.device)

    def predict(self, images: torch.Tensor, flip: bool = True) -> torch.Tensor:
        """Label ids int64 [B, H, W] (eval mode, no grad; returned on the images' device).

        ``flip``: average the class probabilities of the image and of its mirror image (every
        label is left/right symmetric); about +0.01 IoU on the small parts for twice the cost.
        """

        def labels(x: torch.Tensor) -> torch.Tensor:
            probs = self(x).softmax(dim=1)
            if flip:
                probs = probs + self(x.flip(-1)).softmax(dim=1).flip(-1)
            return probs.argmax(dim=1)

        return self._eval_call(labels, images)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features [B, D], D = :attr:`feature_dim` (120 by default).

        The spatial means of every encoder level, concatenated (colour and texture from the first
        level, shapes from the deeper ones): a deterministic function of each image alone, used
        as an offline FID feature network on toy faces.
        """
        return self._eval_call(
            lambda x: torch.cat([f.mean(dim=(2, 3)) for f in self._levels(x)], dim=1), images
        )


# --------------------------------------------------------------------------- IoU


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, n_classes: int = N_CLASSES
) -> torch.Tensor:
    """Counts int64 [n_classes, n_classes]: entry (i, j) = pixels of true class i predicted j."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    idx = target.reshape(-1).long() * n_classes + pred.reshape(-1).long()
    return torch.bincount(idx.cpu(), minlength=n_classes * n_classes).view(n_classes, n_classes)


def iou_from_confusion(conf: torch.Tensor) -> torch.Tensor:
    """Per-class IoU float64 [n_classes] (NaN for a class absent from both maps)."""
    conf = conf.double()
    inter = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, math.nan))


def concept_iou(conf: torch.Tensor, classes: Sequence[int]) -> float:
    """IoU of the union of ``classes`` (a concept such as mouth = {6, 7}) from a confusion matrix.

    Confusions inside the concept (mouth predicted as lips) count as correct.
    """
    conf = conf.double()
    c = torch.as_tensor(list(classes), dtype=torch.long)
    inter = conf[c][:, c].sum()
    union = conf[c].sum() + conf[:, c].sum() - inter
    return float(inter / union) if union > 0 else math.nan


@torch.no_grad()
def evaluate_parser(
    parser: _Predictor,
    size: int = 32,
    n: int = 512,
    seed: int = HELDOUT_SEED_OFFSET,
    *,
    dataset: Any = None,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Per-class and per-concept IoU of ``parser`` on ``n`` held-out faces.

    The faces are ``ToyFaces(size, seed=seed)`` items 0..n-1 (``seed`` defaults to the held-out
    stream of a parser trained with seed 0), or items of ``dataset`` (anything with
    ``.batch(indices) -> (images, labels)``). IoUs are accumulated over all pixels of the set.
    Returns ``{"class_iou": {label: iou}, "concept_iou": {concept: iou}, "miou": mean over the
    12 classes, "pixel_accuracy", "n", "size", "seed"}``; ``parser`` is anything with
    ``predict``.
    """
    data = dataset if dataset is not None else ToyFaces(size=size, length=n, seed=seed)
    conf = torch.zeros(N_CLASSES, N_CLASSES, dtype=torch.long)
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="evaluating parser", disable=not progress):
        images, labels = data.batch(list(range(start, min(n, start + batch_size))))
        conf += confusion_matrix(parser.predict(images), labels)
    ious = iou_from_confusion(conf)
    return {
        "class_iou": {name: float(v) for name, v in zip(LABELS, ious, strict=True)},
        "concept_iou": {name: concept_iou(conf, cls) for name, cls in CONCEPTS.items()},
        "miou": float(ious.nanmean()),
        "pixel_accuracy": float(conf.diagonal().sum() / conf.sum()),
        "n": n,
        "size": size,
        "seed": seed if dataset is None else None,
    }


# --------------------------------------------------------------------------- training


def _render_pool(data: Any, n: int, chunk: int, progress: bool) -> tuple[torch.Tensor, ...]:
    images, labels = [], []
    for start in tqdm(range(0, n, chunk), desc="rendering faces", disable=not progress):
        x, y = data.batch(list(range(start, min(n, start + chunk))))
        images.append(x)
        labels.append(y.to(torch.uint8))  # a quarter of the memory of int64
    return torch.cat(images), torch.cat(labels)


def _augment(
    images: torch.Tensor, labels: torch.Tensor, g: torch.Generator, max_shift: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Label-preserving augmentation of a batch (CPU, driven by ``g``)."""
    b = images.shape[0]

    def u(*shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    # Horizontal flips: every class is symmetric (no left/right labels), so labels just flip.
    flip = u(b) < 0.5
    images = torch.where(flip.view(b, 1, 1, 1), images.flip(-1), images)
    labels = torch.where(flip.view(b, 1, 1), labels.flip(-1), labels)
    # Integer shifts with edge replication: pixels move with their labels, nothing resamples.
    if max_shift > 0:
        p = max_shift
        pad_x = F.pad(images, (p, p, p, p), mode="replicate")
        pad_y = F.pad(labels[:, None].float(), (p, p, p, p), mode="replicate")[:, 0].long()
        s = images.shape[-1]
        dy, dx = torch.randint(0, 2 * p + 1, (2, b), generator=g).tolist()
        images = torch.stack([pad_x[i, :, dy[i] : dy[i] + s, dx[i] : dx[i] + s] for i in range(b)])
        labels = torch.stack([pad_y[i, dy[i] : dy[i] + s, dx[i] : dx[i] + s] for i in range(b)])
    # Photometric jitter (contrast, brightness, per-channel gain) and, on some images, mild
    # Gaussian noise (generated images are slightly grainy). No blur: it would smear the
    # partial-coverage colours that decide the labels of boundary pixels.
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * u(b, 1, 1, 1, lo=0.8, hi=1.2) + mean
    images = images * u(b, 3, 1, 1, lo=0.95, hi=1.05) + u(b, 1, 1, 1, lo=-0.1, hi=0.1)
    sigma = u(b, 1, 1, 1, lo=0.0, hi=0.04) * (u(b, 1, 1, 1) < 0.3)
    images = images + sigma * torch.randn(images.shape, generator=g)
    return images.clamp(-1.0, 1.0), labels


def _dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss averaged over the classes present in the batch."""
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    present = onehot.sum(dim=(0, 2, 3)) > 0
    dice = (2 * inter + 1.0) / (total + 1.0)
    return (1 - dice)[present].mean()


def _defaults(size: int) -> tuple[int, int]:
    """(steps, batch size) that reach IoU >= 0.85 on eyes, nose and mouth in a few CPU minutes."""
    return (2000, 16) if size <= 32 else (1200, 8)


def train_parser(
    size: int = 32,
    steps: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    dataset: Any = None,
    *,
    n_train: int = 1024,
    lr: float = 3e-3,
    widths: Sequence[int] = (24, 32, 64),
    eval_n: int = 256,
    eval_dataset: Any = None,
) -> tuple[FaceParser, dict[str, Any]]:
    """Train a :class:`FaceParser` on toy-face label maps; returns ``(parser, history)``.

    A pool of ``n_train`` faces (items 0..n_train-1 of ``ToyFaces(size, seed=seed)``, or of
    ``dataset``: anything with ``.batch(indices) -> (images [B,3,S,S], labels [B,S,S])``) is
    rendered once, then ``steps`` AdamW steps (cosine learning rate after a warm-up) minimise
    cross-entropy plus soft Dice (Dice keeps the small classes, eyes, nose, mouth, from being
    swamped by the background) on augmented batches: flips, integer shifts, contrast, brightness
    and colour jitter and mild Gaussian noise, none of which changes a label. Defaults:
    2000 steps of 16 images at 32x32 (about 2 minutes of one CPU core), 1200 steps of 8 images
    above (about 3 minutes at 64x64). Then, with ``eval_n > 0``,
    :func:`evaluate_parser` runs on ``eval_n`` held-out faces (``ToyFaces(size,
    seed=seed + HELDOUT_SEED_OFFSET)``, or ``eval_dataset``; skipped for a custom ``dataset``
    without ``eval_dataset``).

    ``history``: ``loss`` (per step), ``seconds`` (total wall time), ``render_seconds``,
    ``train_seconds``, ``cpu_seconds``, the settings, and ``eval`` (the
    :func:`evaluate_parser` dict or None). Deterministic for a given seed on one machine.
    """
    device = torch.device(device)
    t0, c0 = time.perf_counter(), time.process_time()
    if dataset is None:
        data: Any = ToyFaces(size=size, length=n_train, seed=seed)
    else:
        data = dataset
        n_train = min(n_train, len(dataset)) if hasattr(dataset, "__len__") else n_train
    pool_x, pool_y = _render_pool(data, n_train, 64, progress)
    size = int(pool_x.shape[-1])
    render_seconds = time.perf_counter() - t0
    default_steps, default_batch = _defaults(size)
    steps = default_steps if steps is None else int(steps)
    batch_size = default_batch if batch_size is None else int(batch_size)

    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(seed)
        parser = FaceParser(N_CLASSES, widths, size=size).to(device)
    # channels_last: about 1.5x faster convolutions on CPU (oneDNN) for these small layers.
    parser = parser.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(parser.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, min(100, steps // 10))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    max_shift = max(1, size // 16)
    losses: list[float] = []
    parser.train()
    if device.type == "cpu" and steps * batch_size >= 4000:  # a long job: threads from the load
        threads.choose_threads(f"training the face parser ({steps} steps)")
    bar = tqdm(range(steps), desc="training parser", disable=not progress)
    for _ in bar:
        threads.recheck()
        idx = torch.randint(0, n_train, (batch_size,), generator=g)
        x, y = _augment(pool_x[idx], pool_y[idx].long(), g, max_shift)
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        y = y.to(device)
        logits = parser(x)
        loss = F.cross_entropy(logits, y) + _dice_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress and len(losses) % 25 == 0:
            bar.set_postfix(loss=f"{sum(losses[-25:]) / 25:.3f}")
    # Back to the default layout, so the trained parser computes exactly like a loaded one.
    parser = parser.to(memory_format=torch.contiguous_format).eval()
    train_seconds = time.perf_counter() - t0

    result = None
    if eval_n > 0 and (dataset is None or eval_dataset is not None):
        result = evaluate_parser(
            parser, size, eval_n, seed + HELDOUT_SEED_OFFSET, dataset=eval_dataset
        )
    history = {
        "loss": losses,
        "seconds": time.perf_counter() - t0,
        "train_seconds": train_seconds,
        "render_seconds": render_seconds,
        "cpu_seconds": time.process_time() - c0,  # CPU time of this process (all threads)
        "size": size,
        "steps": steps,
        "batch_size": batch_size,
        "n_train": n_train,
        "seed": seed,
        "lr": lr,
        "eval": result,
    }
    return parser, history


# --------------------------------------------------------------------------- files


class ParserFileError(UserError):
    """A parser file exists but cannot be used (truncated, corrupted, or not a parser file)."""


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_parser(
    parser: FaceParser, path: str | os.PathLike, extra: Mapping[str, Any] | None = None
) -> Path:
    """Save ``parser`` to ``path`` (safetensors) plus a JSON sidecar ``path.with_suffix('.json')``.

    The safetensors file is self-contained (the config is in its metadata) and written
    atomically; the sidecar repeats the config and adds ``extra`` (e.g. training time and IoUs)
    for people and notebooks.
    """
    from safetensors.torch import save_file

    path = Path(path)
    config = parser.config
    state = {k: v.detach().cpu().contiguous() for k, v in parser.state_dict().items()}
    meta = {"format": _FORMAT, "config": json.dumps(config)}
    # atomic, with its digest beside it (<path>.sha256), which load_parser checks
    write_artifact(path, lambda tmp: save_file(state, str(tmp), metadata=meta))
    info = {"format": _FORMAT, "config": config, **dict(extra or {})}
    text = json.dumps(info, indent=2, default=float)
    atomic_write(_sidecar(path), lambda tmp: tmp.write_text(text))
    return path


def load_parser(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    require_digest: bool = False,
) -> FaceParser:
    """Load a :class:`FaceParser` written by :func:`save_parser` (eval mode, on ``device``).

    The file is checked against its digest ``<path>.sha256`` (written by :func:`save_parser`)
    when there is one; ``require_digest=True`` (the cache of :func:`get_parser`) also refuses a
    file without one. Raises FileNotFoundError when ``path`` is missing and
    :class:`ParserFileError` when it is not a readable parser file (a digest mismatch, truncated
    or corrupted bytes, another format, wrong tensors).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No face parser file at {path}")
    if require_digest or digest_file(path).is_file():
        try:
            verify_artifact(path)
        except ArtifactError as err:
            message = f"{err}; delete it (get_parser retrains) or save it again"
            raise ParserFileError(message) from err
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:  # safetensors raises several types for bad bytes
        raise ParserFileError(
            f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); "
            "delete it (get_parser retrains) or save the parser again"
        ) from err
    if meta.get("format") != _FORMAT:
        raise ParserFileError(f"{path} is not a face parser file (format {meta.get('format')!r})")
    try:
        config = json.loads(meta["config"])
        parser = FaceParser(**config)
        parser.load_state_dict(state)
    except Exception as err:
        raise ParserFileError(f"{path}: config or tensors do not match FaceParser: {err}") from err
    return parser.to(device).eval()


def get_parser(
    size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    retrain: bool = False,
    on_corrupt: str = "retrain",
    **train_kwargs: Any,
) -> FaceParser:
    """The toy-face parser for ``size``, from ``cache_dir/parser-{size}.safetensors`` or trained.

    ``cache_dir`` defaults to :func:`interpddpm.profiles.cache_dir` of the current profile.
    A missing file (or ``retrain=True``) trains a parser with :func:`train_parser` (``seed``,
    ``progress`` and ``train_kwargs`` are passed on) and saves it atomically, with its training
    time and held-out IoUs in the JSON sidecar, so later chapters and processes reuse it. A
    cached file is reused as it is, whatever ``train_kwargs`` say; a cached parser trained at
    another size is retrained. A corrupted or unreadable cache file is, with
    ``on_corrupt="retrain"`` (the default), reported with a warning and replaced by a freshly
    trained parser; with ``on_corrupt="raise"`` it raises :class:`ParserFileError`.
    """
    if on_corrupt not in ("retrain", "raise"):
        raise ValueError(f"on_corrupt must be 'retrain' or 'raise', got {on_corrupt!r}")
    if cache_dir is None:
        from .profiles import cache_dir as profile_cache_dir

        cache_dir = profile_cache_dir()
    path = Path(cache_dir) / f"parser-{size}.safetensors"
    # locked: a second process waits for the parser being trained, then loads it
    with locked(path, wait=True, what="face parser build (get_parser)"):
        return _get_parser_locked(
            path, size, seed, device, progress, retrain, on_corrupt, train_kwargs
        )


def _get_parser_locked(
    path: Path,
    size: int,
    seed: int,
    device: str | torch.device,
    progress: bool,
    retrain: bool,
    on_corrupt: str,
    train_kwargs: dict[str, Any],
) -> FaceParser:
    if path.is_file() and not retrain:
        try:
            parser = load_parser(path, device, require_digest=True)
        except ParserFileError as err:
            if on_corrupt == "raise":
                raise
            warnings.warn(f"{err}; retraining the parser", RuntimeWarning, stacklevel=3)
        else:
            if parser.size in (None, size):
                return parser
            warnings.warn(
                f"{path} holds a parser trained at {parser.size}x{parser.size}, not {size}; "
                "retraining",
                RuntimeWarning,
                stacklevel=3,
            )
    parser, history = train_parser(
        size, seed=seed, device=device, progress=progress, **train_kwargs
    )
    extra = {k: v for k, v in history.items() if k != "loss"}
    extra["final_loss"] = sum(history["loss"][-50:]) / max(1, len(history["loss"][-50:]))
    save_parser(parser, path, extra=extra)
    return parser


# --------------------------------------------------------------------------- BiSeNet
# The pretrained parser of the paper: BiSeNet as trained on CelebAMask-HQ by
# face-parsing.PyTorch (zllrunning). Module and attribute names follow that code exactly so
# that its checkpoint `79999_iter.pth` loads with strict key matching.

BISENET_REPO = "vivym/face-parsing-bisenet"
BISENET_FILENAME = "79999_iter.pth"

# CelebAMask-HQ class order, as BiSeNet predicts it.
BISENET_CLASSES: tuple[str, ...] = (
    "background",
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "eye_g",
    "l_ear",
    "r_ear",
    "ear_r",
    "nose",
    "mouth",
    "u_lip",
    "l_lip",
    "neck",
    "neck_l",
    "cloth",
    "hair",
    "hat",
)

#: CelebAMask-HQ part name -> the book's class id (:data:`interpddpm.toyfaces.LABELS`): left and
#: right parts merge; glasses count as eyes, earrings as ears, a necklace as neck.
PART_TO_TOY: dict[str, int] = {
    "background": 0,
    "skin": 1,
    "l_brow": 2,
    "r_brow": 2,
    "l_eye": 3,
    "r_eye": 3,
    "eye_g": 3,
    "l_ear": 4,
    "r_ear": 4,
    "ear_r": 4,
    "nose": 5,
    "mouth": 6,
    "u_lip": 7,
    "l_lip": 7,
    "neck": 8,
    "neck_l": 8,
    "cloth": 9,
    "hair": 10,
    "hat": 11,
}


def merge_table(id2label: Mapping[int | str, str] | Sequence[str]) -> torch.Tensor:
    """The lookup table ``[n]`` (int64) that maps a dataset's part ids to the book's 12 classes,
    built from the part NAMES of its ``id2label`` (a mapping as in ``id2label.json``, or a list
    of names in id order). Every id from 0 to n-1 must be named, with a known part name.

    Label ids differ between sources (BiSeNet's order is not the order of the CelebAMask-HQ
    copy on the hub): never merge by position, always by name.
    """
    if isinstance(id2label, Mapping):
        try:
            named = {int(k): str(v) for k, v in id2label.items()}
        except (TypeError, ValueError) as e:
            raise ValueError(f"id2label keys must be integer ids, got {list(id2label)}.") from e
    else:
        named = dict(enumerate(id2label))
    if sorted(named) != list(range(len(named))):
        raise ValueError(f"id2label must name every id 0..n-1, got ids {sorted(named)}.")
    unknown = sorted({v for v in named.values() if v not in PART_TO_TOY})
    if unknown:
        raise ValueError(
            f"unknown part names {unknown} in id2label; known: {sorted(PART_TO_TOY)}. Map them "
            "to the book's classes by hand (parsing.PART_TO_TOY) before merging."
        )
    return torch.tensor([PART_TO_TOY[named[i]] for i in range(len(named))], dtype=torch.long)


#: BiSeNet's 19 ids -> the book's 12 classes.
BISENET_TO_TOY = merge_table(BISENET_CLASSES)
#: Former name of :data:`BISENET_TO_TOY` (BiSeNet's order, NOT the hub copy's: see
#: :data:`interpddpm.datasets.CELEBAMASK_HQ_ID2LABEL`).
CELEBAMASK_TO_TOY = BISENET_TO_TOY
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def merge_celebamask_labels(labels: torch.Tensor) -> torch.Tensor:
    """BiSeNet label ids (0..18, :data:`BISENET_CLASSES`) -> the 12 toy-face label ids (int64)."""
    return BISENET_TO_TOY.to(labels.device)[labels.long()]


class _ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, ks: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class _BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs, projection shortcut when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _resnet_layer(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        _BasicBlock(cin, cout, stride), *(_BasicBlock(cout, cout) for _ in range(blocks - 1))
    )


class ResNet18(nn.Module):
    """ResNet-18 trunk without its classifier; returns the 1/8, 1/16 and 1/32 feature maps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _resnet_layer(64, 64, 2, 1)
        self.layer2 = _resnet_layer(64, 128, 2, 2)
        self.layer3 = _resnet_layer(128, 256, 2, 2)
        self.layer4 = _resnet_layer(256, 512, 2, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class _AttentionRefinement(nn.Module):
    """ARM: a 3x3 conv whose channels are reweighted by a global-pooled sigmoid attention."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1)))
        return feat * atten.sigmoid()


class _ContextPath(nn.Module):
    """ResNet-18 plus ARMs on the 1/16 and 1/32 features and a global context vector."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = _AttentionRefinement(256, 128)
        self.arm32 = _AttentionRefinement(512, 128)
        self.conv_head32 = _ConvBNReLU(128, 128)
        self.conv_head16 = _ConvBNReLU(128, 128)
        self.conv_avg = _ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))
        feat32_sum = self.arm32(feat32) + avg  # broadcast = nearest upsampling of a 1x1 map
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, feat16.shape[-2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, feat8.shape[-2:], mode="nearest"))
        return feat8, feat16_up, feat32_up  # 1/8, 1/8, 1/16


class _FeatureFusion(nn.Module):
    """FFM: concatenate, 1x1 conv, then add a squeeze-and-excitation reweighted copy."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = _ConvBNReLU(cin, cout, ks=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp: torch.Tensor, fcp: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))).sigmoid()
        return feat * atten + feat


class _Output(nn.Module):
    def __init__(self, cin: int, mid: int, n_classes: int) -> None:
        super().__init__()
        self.conv = _ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """BiSeNet for face parsing, as in face-parsing.PyTorch (19 CelebAMask-HQ classes).

    Context path: ResNet-18 with attention refinement modules (ARM) on its 1/16 and 1/32
    features and a global-average context; feature fusion module (FFM); output heads at 1/8
    (``conv_out``) plus the two auxiliary heads used in training (``conv_out16``,
    ``conv_out32``). As in that code, the separate spatial path of the BiSeNet paper is replaced
    by the ResNet's own 1/8 feature map, so the checkpoint has no ``sp.*`` weights.
    Input: ImageNet-normalised RGB (512x512 in training; H, W multiples of 32). Output: the
    three logit maps [B, n_classes, H, W], the first being the prediction.
    """

    def __init__(self, n_classes: int = 19) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.cp = _ContextPath()
        self.ffm = _FeatureFusion(256, 256)
        self.conv_out = _Output(256, 256, n_classes)
        self.conv_out16 = _Output(128, 64, n_classes)
        self.conv_out32 = _Output(128, 64, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        feat_res8, feat_cp8, feat_cp16 = self.cp(x)
        feat_fuse = self.ffm(feat_res8, feat_cp8)
        outs = (self.conv_out(feat_fuse), self.conv_out16(feat_cp8), self.conv_out32(feat_cp16))
        return tuple(  # type: ignore[return-value]
            F.interpolate(o, size, mode="bilinear", align_corners=True) for o in outs
        )


class BiSeNetWeightsNotAvailableError(OSError):
    """The BiSeNet checkpoint is neither a local file nor obtainable from the Hugging Face Hub."""


def _offline_env() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE only once, at import.
    value = os.environ.get("HF_HUB_OFFLINE") or ""
    return value.upper() in {"1", "ON", "YES", "TRUE"}


def _read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(file))
    else:
        state = torch.load(file, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # some mirrors wrap the weights
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise ValueError(f"{file} does not hold a state dict (found {type(state).__name__})")
    # Checkpoints saved from nn.DataParallel prefix every key with "module.".
    return {k.removeprefix("module."): v for k, v in state.items()}


def _resolve_bisenet_file(path_or_repo: str | os.PathLike, filename: str, offline: bool) -> Path:
    path = Path(path_or_repo).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / filename).is_file():
            return path / filename
        raise FileNotFoundError(f"No BiSeNet checkpoint {filename!r} in folder {path}")
    name = str(path_or_repo)
    if name.endswith((".pth", ".pt", ".safetensors")) or name.count("/") != 1:
        raise FileNotFoundError(
            f"{name!r} is neither a BiSeNet checkpoint file, a folder holding {filename!r}, nor "
            f"a Hugging Face Hub repo id such as {BISENET_REPO!r}"
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(name, filename, local_files_only=offline))
    except Exception as err:  # offline, unknown repo or file, HTTP errors: all mean "not here"
        raise BiSeNetWeightsNotAvailableError(
            f"Could not get the BiSeNet face-parsing weights {filename!r} from the Hugging Face "
            f"Hub repo {name!r} ({type(err).__name__}: {err}).\n"
            "To get them: run once with network access (the file is cached under $HF_HOME, "
            f"by default ~/.cache/huggingface), or download it elsewhere with `hf download "
            f"{name} {filename} --local-dir DIR` (or from the face-parsing.PyTorch README) and "
            f"call load_bisenet('DIR/{filename}')."
        ) from err


def load_bisenet(
    path_or_repo: str | os.PathLike = BISENET_REPO,
    filename: str = BISENET_FILENAME,
    *,
    device: str | torch.device = "cpu",
    local_files_only: bool | None = None,
) -> BiSeNet:
    """Pretrained 19-class :class:`BiSeNet` (eval mode) from a file, a folder or the Hub.

    ``path_or_repo``: a checkpoint file (``.pth`` state dict as published, or
    ``.safetensors``), a folder holding ``filename``, or a Hugging Face Hub repo id (default
    :data:`BISENET_REPO`, downloaded once into the Hub cache). ``local_files_only`` (default:
    the ``HF_HUB_OFFLINE`` environment variable) uses only that cache. Raises
    :class:`BiSeNetWeightsNotAvailableError` (an OSError) naming the repo and file, with how to
    get them, when the Hub cannot provide them, and ValueError when the keys do not match.
    """
    offline = _offline_env() if local_files_only is None else local_files_only
    file = _resolve_bisenet_file(path_or_repo, filename, offline)
    state = _read_state_dict(file)
    n_classes = int(state["conv_out.conv_out.weight"].shape[0]) if state else 19
    model = BiSeNet(n_classes)
    result = model.load_state_dict(state, strict=False)
    # BatchNorm's num_batches_tracked counters are absent from old checkpoints; nothing else is.
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{file} is not a face-parsing BiSeNet checkpoint: missing keys {missing[:5]}, "
            f"unexpected keys {result.unexpected_keys[:5]}"
        )
    return model.to(device).eval()


class BiSeNetParser(nn.Module):
    """BiSeNet behind the :class:`FaceParser` interface: 12 merged classes at any image size.

    Images [B,3,H,W] in [-1,1] are mapped to [0,1], resized to ``input_size`` squared
    (bilinear, antialiased when shrinking; 512 as in face-parsing.PyTorch) and normalised with
    the ImageNet mean and std, as the original inference code does. The 19 class probabilities
    are summed into the 12 classes of :data:`CELEBAMASK_TO_TOY` and resized back to H x W
    (area averaging when shrinking) before the argmax, so small parts survive the resize better
    than with nearest-neighbour label resizing.
    """

    def __init__(self, model: BiSeNet | None = None, input_size: int = 512) -> None:
        super().__init__()
        self.model = model if model is not None else BiSeNet(19)
        self.input_size = int(input_size)
        self.register_buffer("merge", BISENET_TO_TOY.clone(), persistent=False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), False)
        self.eval()

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo: str | os.PathLike = BISENET_REPO,
        filename: str = BISENET_FILENAME,
        *,
        input_size: int = 512,
        device: str | torch.device = "cpu",
        local_files_only: bool | None = None,
    ) -> BiSeNetParser:
        """Wrap :func:`load_bisenet` (same arguments)."""
        model = load_bisenet(
            path_or_repo, filename, device=device, local_files_only=local_files_only
        )
        return cls(model, input_size).to(device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the 12 merged classes [B, 12, H, W] (usable as logits)."""
        _check_images(images)
        h, w = images.shape[-2:]
        s = self.input_size
        x = (images.to(self.mean.device, torch.float32) + 1) / 2
        x = F.interpolate(x, (s, s), mode="bilinear", align_corners=False, antialias=max(h, w) > s)
        probs = self.model((x - self.mean) / self.std)[0].softmax(dim=1)
        merged = probs.new_zeros(probs.shape[0], N_CLASSES, s, s).index_add_(1, self.merge, probs)
        if h <= s and w <= s:
            merged = F.interpolate(merged, (h, w), mode="area")
        else:
            merged = F.interpolate(merged, (h, w), mode="bilinear", align_corners=False)
        return merged.clamp_min(1e-12).log()

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Label ids int64 [B, H, W] in the 12-class set (eval mode, no grad, in chunks)."""
        _check_images(images)
        was_training = self.training
        self.eval()
        try:
            out = [self(chunk).argmax(dim=1) for chunk in images.split(batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out).to(images.device)
