"""Image augmentation and preprocessing: crops, flips, rotations and affine warps with OpenCV, ImageNet
normalisation, the `torchvision.transforms.v2` pipelines used for training/evaluation (resizing a folder of
images once is `labutils.infra.resize`).

Conventions: the OpenCV helpers take and return numpy arrays of shape HxWx3, dtype uint8, RGB order (as
`np.asarray(PIL_image)` or `skimage.data.chelsea()` give them; OpenCV itself does not care about channel order
for these geometric operations). Affine matrices are 2x3 float arrays in OpenCV's convention: they map a
*source* pixel (x, y) (x = column, y = row, pixel centres at integer coordinates) to its place in the output.

Captioning is not classification: an augmentation must not change what the caption says. A horizontal flip
turns "a red circle to the left of a blue square" into a picture where the red circle is on the RIGHT, and
colour jitter can turn "red" into "orange". So the training pipeline here does neither unless you ask for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

# The per-channel mean and standard deviation of the ImageNet training images (RGB, pixel values in [0, 1]).
# Every torchvision / EfficientNet ImageNet-pretrained encoder was trained on inputs normalised with exactly
# these numbers, so its first-layer filters expect them: feed it differently scaled inputs and its features
# (and therefore our captions) silently get worse.
IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------- crops & flips
def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int (square) or a (height, width) pair."""
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def _check_image(img: np.ndarray) -> np.ndarray:
    """Raise a clear error unless `img` is an HxWxC numpy array."""
    if not isinstance(img, np.ndarray) or img.ndim != 3:
        shape = getattr(img, "shape", type(img).__name__)
        raise ValueError(f"Expected an HxWx3 numpy image (e.g. np.asarray(pil_image)), got {shape}.")
    return img


def _check_crop(img: np.ndarray, h: int, w: int) -> None:
    """Raise a clear error when a crop of h x w does not fit in `img`."""
    if h > img.shape[0] or w > img.shape[1] or h <= 0 or w <= 0:
        raise ValueError(f"Cannot crop {h}x{w} from an image of {img.shape[0]}x{img.shape[1]}; "
                         "resize the image first or ask for a smaller crop.")


def center_crop(img: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Cut the central `size` (int or (height, width)) window out of an HxWx3 image."""
    img = _check_image(img)
    h, w = _hw(size)
    _check_crop(img, h, w)
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[top:top + h, left:left + w].copy()


def random_crop(img: np.ndarray, size: int | Sequence[int],
                rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Cut a `size` window at a random position (drawn from `rng`, a numpy Generator or a seed)."""
    img = _check_image(img)
    rng = np.random.default_rng(rng)
    h, w = _hw(size)
    _check_crop(img, h, w)
    top = int(rng.integers(0, img.shape[0] - h + 1))
    left = int(rng.integers(0, img.shape[1] - w + 1))
    return img[top:top + h, left:left + w].copy()


def horizontal_flip(img: np.ndarray) -> np.ndarray:
    """Mirror an image left-right (beware: it swaps "left" and "right" in the image's captions)."""
    return cv2.flip(_check_image(img), 1)


def rotate(img: np.ndarray, degrees: float, border: int = cv2.BORDER_REFLECT) -> np.ndarray:
    """Rotate counter-clockwise by `degrees` about the centre, keeping the size and filling corners by reflection.

    Why reflect and not the default black: black corners are content that never occurs in real photos, so a
    model can learn "black triangles in the corners" as a feature of rotated training images (and our
    synthetic dataset literally contains triangles). Reflecting the image into the corners keeps colours and
    textures plausible; the price is that an object touching the border may appear mirrored in a corner.
    """
    img = _check_image(img)
    h, w = img.shape[:2]
    return apply_affine(img, rotation_matrix(degrees, center=((w - 1) / 2, (h - 1) / 2)), border=border)


# ------------------------------------------------------------------------------------------ affine matrices
def _as3x3(m: np.ndarray) -> np.ndarray:
    """A 2x3 affine matrix as the 3x3 homogeneous matrix [[M], [0, 0, 1]]."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape == (3, 3):
        return m
    if m.shape != (2, 3):
        raise ValueError(f"An affine matrix must be 2x3 (or 3x3 homogeneous), got shape {m.shape}.")
    return np.vstack([m, [0.0, 0.0, 1.0]])


def _about(m: np.ndarray, center: Sequence[float]) -> np.ndarray:
    """Make the linear 2x2 map `m` act about `center` instead of the origin: T(c) @ m @ T(-c)."""
    cx, cy = center
    return compose(translation_matrix(-cx, -cy), np.hstack([m, [[0.0], [0.0]]]), translation_matrix(cx, cy))


def translation_matrix(tx: float, ty: float) -> np.ndarray:
    """2x3 matrix moving every pixel by (tx, ty) (x to the right, y down)."""
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty]])


def scale_matrix(sx: float, sy: float, center: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """2x3 matrix scaling x by `sx` and y by `sy` about `center` (which stays put)."""
    return _about(np.array([[sx, 0.0], [0.0, sy]]), center)


def rotation_matrix(degrees: float, center: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """2x3 matrix rotating counter-clockwise (as seen on screen) about `center`; same as cv2.getRotationMatrix2D."""
    # The y axis points down in images, so a counter-clockwise turn on screen has +sin in the top row.
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    return _about(np.array([[c, s], [-s, c]]), center)


def shear_matrix(shx: float, shy: float = 0.0, center: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """2x3 matrix shearing about `center`: x' = x + shx*y, y' = y + shy*x (relative to the centre)."""
    return _about(np.array([[1.0, shx], [shy, 1.0]]), center)


def compose(*matrices: np.ndarray) -> np.ndarray:
    """One 2x3 matrix doing `matrices` in the order given (the first is applied first).

    With column vectors a point goes through M1 then M2 as M2 @ M1 @ p, so the 3x3 product is built from the
    right; writing the steps in the order they happen is easier to read and harder to get wrong.
    """
    if not matrices:
        raise ValueError("compose() needs at least one matrix.")
    out = np.eye(3)
    for m in matrices:
        out = _as3x3(m) @ out
    return out[:2].copy()


def transform_points(M: np.ndarray, points: Sequence[Sequence[float]]) -> np.ndarray:
    """Where an affine matrix sends (x, y) points: an Nx2 array."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    M = _as3x3(M)
    return pts @ M[:2, :2].T + M[:2, 2]


def apply_affine(img: np.ndarray, M: np.ndarray, border: int = cv2.BORDER_REFLECT,
                 size: Sequence[int] | None = None) -> np.ndarray:
    """Warp an image with a 2x3 matrix via cv2.warpAffine; output keeps the input size unless `size`=(h, w)."""
    img = _check_image(img)
    h, w = _hw(size) if size is not None else img.shape[:2]
    M = _as3x3(M)[:2].astype(np.float64)
    return cv2.warpAffine(img, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=border)


# ---------------------------------------------------------------------------------- ImageNet normalisation
def _stats(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std shaped [3, 1, 1] on the tensor's device and dtype, after checking the channel axis."""
    if t.ndim < 3 or t.shape[-3] != 3:
        raise ValueError(f"Expected a float tensor [3, H, W] or [B, 3, H, W], got shape {tuple(t.shape)}.")
    if not t.is_floating_point():
        raise ValueError("Normalisation needs a float tensor with values in [0, 1]; "
                         "convert with v2.ToDtype(torch.float32, scale=True) first.")
    mean = torch.tensor(IMAGENET_MEAN, dtype=t.dtype, device=t.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=t.dtype, device=t.device).view(3, 1, 1)
    return mean, std


def imagenet_normalize(tensor: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel for a [3,H,W] or [B,3,H,W] float tensor in [0, 1]."""
    mean, std = _stats(tensor)
    return (tensor - mean) / std


def imagenet_denormalize(tensor: torch.Tensor) -> torch.Tensor:
    """Undo `imagenet_normalize`: x * std + mean (not clamped)."""
    mean, std = _stats(tensor)
    return tensor * std + mean


def to_numpy_image(tensor: torch.Tensor) -> np.ndarray:
    """A normalised [3,H,W] tensor back to an HxWx3 uint8 array for plotting."""
    x = imagenet_denormalize(tensor.detach().float().cpu()).clamp(0, 1)
    return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------- torchvision.transforms.v2
def train_transform(size: int, max_zoom: float = 1.1, flip: bool = False, max_rotation: float = 0.0,
                    color_jitter: float = 0.0):
    """PIL image -> normalised float32 tensor [3, size, size] with mild, caption-safe random zoom and crop.

    Defaults are deliberately gentle because the caption must stay true after augmenting:
    - a random zoom of 1..`max_zoom` (shorter side) followed by a random square crop shifts and rescales the
      scene a little; a strong zoom could crop away an object the caption counts ("three circles");
    - `flip=True` adds random horizontal flips: only for captions without left/right words (it makes
      "the dog to the left of the car" false);
    - `max_rotation` (degrees) > 0 adds small random rotations; large ones break "above"/"below";
    - `color_jitter` > 0 jitters brightness/contrast/saturation by that fraction; hue is never jittered,
      because it would turn a "red" object "orange".
    """
    from torchvision.transforms import v2

    steps = [
        v2.ToImage(),
        v2.RandomResize(size, int(round(size * max_zoom)) + 1, antialias=True),  # shorter side, upper bound excl.
        v2.RandomCrop(size),
    ]
    if flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if max_rotation > 0:
        # Plain PIL/tensor rotation has no reflect border; small angles leave only thin corners to fill.
        steps.append(v2.RandomRotation(max_rotation, interpolation=v2.InterpolationMode.BILINEAR))
    if color_jitter > 0:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


def eval_transform(size: int):
    """PIL image -> normalised float32 tensor [3, size, size]: shorter side to `size`, centre crop, no randomness."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.ToImage(),
        v2.Resize(size, antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def show_images(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, size: float = 2.0,
                cols: int | None = None):
    """Plot HxWx3 images in a small grid with optional titles; returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    n = len(images)
    cols = cols or n
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, img) in enumerate(zip(axes.flat, images, strict=False)):
        ax.imshow(img)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig
