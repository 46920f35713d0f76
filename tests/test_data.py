"""Tests for labutils.data: robust image loading, the caption Datasets, collate and the DataLoader factory."""

import functools

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import RandomSampler, SequentialSampler

from labutils import get_config
from labutils.data import (
    BadImageReport,
    CaptionBatch,
    CaptionDataset,
    EvalDataset,
    ImageFolderSource,
    ImageLoadError,
    LengthGroupedBatchSampler,
    build_caption_datasets,
    build_eval_datasets,
    collate_captions,
    collate_captions_sorted,
    collate_eval,
    count_bad_images,
    file_names_from_captions,
    load_image,
    make_loader,
)
from labutils.vocab import Vocabulary

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def assert_close(pixel, expected, tol=6):
    assert all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected, strict=True)), (pixel, expected)


# -- load_image: every kind of file becomes correct RGB -------------------------------------------------------
def test_rgb_passes_through(tmp_path):
    Image.new("RGB", (5, 4), (10, 20, 30)).save(tmp_path / "x.png")
    image = load_image(tmp_path / "x.png")
    assert image.mode == "RGB" and image.size == (5, 4) and image.getpixel((2, 2)) == (10, 20, 30)


def test_grayscale_and_bilevel(tmp_path):
    Image.new("L", (4, 4), 77).save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").getpixel((0, 0)) == (77, 77, 77)
    Image.new("1", (4, 4), 1).save(tmp_path / "b.png")
    assert load_image(tmp_path / "b.png").getpixel((0, 0)) == WHITE


def test_rgba_is_composited_on_white(tmp_path):
    array = np.zeros((4, 4, 4), np.uint8)
    array[:, :2] = (255, 0, 0, 128)  # half-transparent red
    array[:, 2:] = (0, 0, 0, 0)  # fully transparent black: must become white, not black
    Image.fromarray(array, "RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.mode == "RGB"
    assert_close(image.getpixel((0, 0)), (255, 127, 127), tol=2)
    assert image.getpixel((3, 0)) == WHITE


def test_la_is_composited_on_white(tmp_path):
    array = np.stack([np.full((4, 4), 0, np.uint8), np.full((4, 4), 0, np.uint8)], -1)
    array[0, 0] = (0, 255)  # one opaque black pixel, the rest transparent
    Image.fromarray(array, "LA").save(tmp_path / "la.png")
    image = load_image(tmp_path / "la.png")
    assert image.getpixel((0, 0)) == (0, 0, 0) and image.getpixel((3, 3)) == WHITE


def test_palette_with_and_without_transparency(tmp_path):
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (0, 0, 2, 4))  # left half green (index 1), right half red (index 0)
    palette.save(tmp_path / "p.png")
    image = load_image(tmp_path / "p.png")
    assert image.getpixel((0, 0)) == (0, 255, 0) and image.getpixel((3, 0)) == RED
    palette.save(tmp_path / "pt.png", transparency=0)  # index 0 (red) transparent
    image = load_image(tmp_path / "pt.png")
    assert image.getpixel((0, 0)) == (0, 255, 0) and image.getpixel((3, 0)) == WHITE


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk(tmp_path, suffix):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / f"c{suffix}")  # C=0 M=Y=100%: red
    image = load_image(tmp_path / f"c{suffix}")
    assert image.mode == "RGB"
    assert_close(image.getpixel((4, 4)), RED)


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    gradient = np.linspace(0, 65535, 256).round().astype(np.uint16)[None].repeat(3, axis=0)
    Image.fromarray(gradient).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # really a 16-bit file
    pixels = np.asarray(load_image(tmp_path / "g16.png"))
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 256, 3)
    row = pixels[0, :, 0]
    assert row.min() == 0 and row.max() == 255  # the full range...
    assert np.all(np.diff(row.astype(int)) >= 0)  # ...monotone...
    assert abs(int(row[128]) - 128) <= 1  # ...and mid-grey stays mid-grey (PIL's own convert gives 255)
    assert np.array_equal(row, np.round(gradient[0] / 257).astype(np.uint8))


def test_16bit_rgb_png(tmp_path):
    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16)[None].repeat(2, axis=0)
    rgb = np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 32896)], -1)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb[..., ::-1])  # cv2 writes BGR, 16 bits per channel
    pixels = np.asarray(load_image(tmp_path / "rgb16.png"))
    assert pixels[0, 0].tolist() == [0, 255, 128] and pixels[0, -1].tolist() == [255, 0, 128]


def test_exif_orientation_6_is_rotated_upright(tmp_path):
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 8, 8))  # red in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "phone.jpg")
    assert image.size == (20, 40)  # portrait now
    assert_close(image.getpixel((image.width - 2, 1)), RED)  # the corner moved to the top-right
    assert_close(image.getpixel((1, 1)), BLUE)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ImageLoadError, match="nothere.jpg.*does not exist") as info:
        load_image(tmp_path / "nothere.jpg")
    assert isinstance(info.value, ValueError)
    with pytest.raises(ImageLoadError, match="is a folder"):
        load_image(tmp_path)


def test_truncated_and_non_image_files(tmp_path):
    Image.new("RGB", (64, 64), RED).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("cut.jpg", "text.jpg", "empty.png"):
        with pytest.raises(ImageLoadError, match=rf"{name} is corrupt") as info:
            load_image(tmp_path / name)
        message = str(info.value)
        assert "\n" not in message and message.endswith(".")


def test_count_bad_images_skips_and_counts(tmp_path):
    good = []
    for i in range(3):
        Image.new("RGB", (8, 8), RED).save(tmp_path / f"ok{i}.png")
        good.append(tmp_path / f"ok{i}.png")
    (tmp_path / "bad.jpg").write_text("oops")
    paths = [*good, tmp_path / "bad.jpg", tmp_path / "gone.png"]
    report = count_bad_images(paths, workers=2)
    assert isinstance(report, BadImageReport)
    assert (report.n_checked, report.n_ok, report.n_bad) == (5, 3, 2)
    assert set(report.bad) == {str(tmp_path / "bad.jpg"), str(tmp_path / "gone.png")}
    assert "does not exist" in report.bad[str(tmp_path / "gone.png")]


# -- datasets on hand-made captions and a fake image source ----------------------------------------------------
CAPTIONS = {
    10: ["a red circle", "one red circle on the left", "a circle", "red circle", "the red circle is here"],
    20: ["two blue squares", "blue squares"],
    30: ["a green triangle"],
}


def fake_source(image_id):
    return torch.full((3, 2, 2), float(image_id))


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary.build([c for caps in CAPTIONS.values() for c in caps])


def test_caption_dataset_lengths_per_mode(vocab):
    sample = CaptionDataset([10, 20, 30], CAPTIONS, vocab, fake_source)
    every = CaptionDataset([10, 20, 30], CAPTIONS, vocab, fake_source, mode="all")
    assert len(sample) == 3 and len(every) == 8 and sample.n_captions == 8
    with pytest.raises(ValueError, match="'sample' or 'all'"):
        CaptionDataset([10], CAPTIONS, vocab, fake_source, mode="each")


def test_caption_dataset_items(vocab):
    ds = CaptionDataset([20, 10], CAPTIONS, vocab, fake_source, mode="all", max_len=5)
    image, caption, image_id = ds[0]
    assert image_id == 20 and torch.equal(image, fake_source(20))
    assert caption.dtype == torch.long and caption.tolist() == vocab.encode("two blue squares")
    texts = [vocab.decode(ds[i][1]) for i in range(len(ds))]
    assert [ds[i][2] for i in range(len(ds))] == [20, 20, 10, 10, 10, 10, 10]
    assert texts[:3] == ["two blue squares", "blue squares", "a red circle"]
    assert texts[3] == "one red circle"  # max_len=5: <start> one red circle <end>
    assert all(len(ds[i][1]) <= 5 and ds[i][1][-1] == vocab.end_id for i in range(len(ds)))
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_sampling_is_seeded_per_epoch(vocab):
    def picks(seed, epoch):
        ds = CaptionDataset([10, 20, 30] * 20, CAPTIONS, vocab, fake_source, seed=seed)
        ds.set_epoch(epoch)
        return [ds[i][1].tolist() for i in range(len(ds))]

    assert picks(0, 0) == picks(0, 0)  # same seed and epoch: same captions
    assert picks(0, 1) != picks(0, 0)  # new epoch: new picks
    assert picks(1, 0) != picks(0, 0)  # new seed: new picks
    ds = CaptionDataset([10], CAPTIONS, vocab, fake_source)
    seen = set()
    for epoch in range(40):
        ds.set_epoch(epoch)
        assert ds.epoch == epoch
        seen.add(vocab.decode(ds[0][1]))
    assert seen == set(CAPTIONS[10])  # over epochs, every caption of the image is used


def test_set_epoch_reaches_persistent_workers(vocab):
    ds = CaptionDataset([10, 20, 30] * 4, CAPTIONS, vocab, fake_source, seed=3)
    cfg = get_config("quick", num_workers=2, batch_size=4)
    loader = make_loader(ds, cfg, train=False)
    assert loader.persistent_workers
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        from_workers = [c for batch in loader for c in batch.captions.tolist()]
        expected = collate_captions([ds[i] for i in range(len(ds))]).captions
        # pad each batch separately, then compare caption ids without padding
        assert [[t for t in c if t] for c in from_workers] == [[t for t in c if t] for c in expected.tolist()]


def test_images_without_captions_are_refused(vocab):
    with pytest.raises(ValueError, match="Image 99 .*has no captions"):
        CaptionDataset([10, 99], CAPTIONS, vocab, fake_source)
    with pytest.raises(ValueError, match="Image 99"):
        EvalDataset([99], CAPTIONS, fake_source)
    with pytest.raises(ValueError, match="No image ids"):
        CaptionDataset([], CAPTIONS, vocab, fake_source)


def test_eval_dataset_keeps_all_references():
    ds = EvalDataset([30, 10], CAPTIONS, fake_source)
    assert len(ds) == 2
    image, refs, image_id = ds[1]
    assert image_id == 10 and refs == CAPTIONS[10] and torch.equal(image, fake_source(10))
    inputs, references, ids = collate_eval([ds[0], ds[1]])
    assert inputs.shape == (2, 3, 2, 2) and references == [CAPTIONS[30], CAPTIONS[10]] and ids == [30, 10]


# -- collate -----------------------------------------------------------------------------------------------------
def batch_of(lengths):
    return [(torch.full((3, 2, 2), float(i)), torch.arange(1, n + 1), 100 + i) for i, n in enumerate(lengths)]


def test_collate_pads_with_zero_and_reports_lengths():
    batch = collate_captions(batch_of([3, 5, 2]))
    assert isinstance(batch, CaptionBatch)
    assert batch.inputs.shape == (3, 3, 2, 2) and batch.captions.shape == (3, 5)
    assert batch.captions.dtype == torch.long and batch.lengths.dtype == torch.long
    assert batch.lengths.tolist() == [3, 5, 2] and batch.image_ids == [100, 101, 102]
    assert batch.captions.tolist() == [[1, 2, 3, 0, 0], [1, 2, 3, 4, 5], [1, 2, 0, 0, 0]]


def test_collate_sort_orders_by_length_descending_and_keeps_rows_together():
    batch = collate_captions(batch_of([3, 5, 2, 5]), sort=True)
    assert batch.lengths.tolist() == [5, 5, 3, 2]
    assert batch.image_ids == [101, 103, 100, 102]  # stable: equal lengths keep their order
    assert [int(x) for x in batch.inputs[:, 0, 0, 0]] == [1, 3, 0, 2]  # images moved with their captions
    assert (batch.captions != 0).sum(1).tolist() == batch.lengths.tolist()
    assert collate_captions_sorted(batch_of([3, 5, 2, 5])).image_ids == batch.image_ids
    # exactly what pack_padded_sequence(enforce_sorted=True) needs
    packed = pack_padded_sequence(batch.captions, batch.lengths, batch_first=True, enforce_sorted=True)
    assert packed.batch_sizes.tolist() == [4, 4, 3, 2, 2]
    with pytest.raises(RuntimeError):
        unsorted = collate_captions(batch_of([3, 5, 2]))
        pack_padded_sequence(unsorted.captions, unsorted.lengths, batch_first=True, enforce_sorted=True)


def test_caption_batch_to_keeps_lengths_on_cpu():
    batch = collate_captions(batch_of([2, 3])).to("cpu")
    assert batch.lengths.device.type == "cpu" and batch.image_ids == [100, 101]


def test_collate_rejects_empty_batches():
    with pytest.raises(ValueError, match="empty batch"):
        collate_captions([])
    with pytest.raises(ValueError, match="empty batch"):
        collate_eval([])


# -- DataLoader factory ------------------------------------------------------------------------------------------
def test_make_loader_settings(vocab):
    ds = CaptionDataset([10, 20, 30] * 5, CAPTIONS, vocab, fake_source)
    cpu = get_config("quick", batch_size=4, num_workers=0, seed=7)
    train = make_loader(ds, cpu, train=True)
    assert isinstance(train.sampler, RandomSampler) and train.batch_size == 4
    assert train.num_workers == 0 and not train.persistent_workers and not train.pin_memory
    assert isinstance(make_loader(ds, cpu, train=False).sampler, SequentialSampler)
    gpu_cfg = cpu.replace(device="cuda", num_workers=2)
    gpu = make_loader(ds, gpu_cfg, train=True, collate_fn=collate_captions_sorted)
    assert gpu.pin_memory and gpu.persistent_workers and gpu.num_workers == 2
    assert isinstance(make_loader(EvalDataset([10], CAPTIONS, fake_source), cpu, train=False).collate_fn(
        [(fake_source(10), ["x"], 10)]), tuple)


def test_make_loader_shuffle_is_seeded(vocab):
    ds = CaptionDataset([10, 20, 30] * 5, CAPTIONS, vocab, fake_source)
    cfg = get_config("quick", batch_size=4, num_workers=0, seed=7)

    def order(cfg):
        return [i for batch in make_loader(ds, cfg, train=True) for i in batch.image_ids]

    assert order(cfg) == order(cfg)
    assert order(cfg) != order(cfg.replace(seed=8))
    loader = make_loader(ds, cfg, train=True, collate_fn=functools.partial(collate_captions, sort=True))
    for batch in loader:
        assert batch.lengths.tolist() == sorted(batch.lengths.tolist(), reverse=True)


# -- batches of similar length -----------------------------------------------------------------------------------
def varied_captions(n_images=120, per_image=3):
    """Captions of 2..14 words, several per image, so each epoch's picks have other lengths."""
    rng = np.random.default_rng(0)
    return {i: [" ".join(["red"] * int(rng.integers(2, 15))) for _ in range(per_image)] for i in range(n_images)}


def test_length_grouped_batches_see_every_item_once_with_similar_lengths():
    captions = varied_captions()
    ds = CaptionDataset(list(captions), captions, Vocabulary.build(["red"]), fake_source)
    ds.set_epoch(3)
    sampler = LengthGroupedBatchSampler(ds, 8, torch.Generator().manual_seed(0), pool_batches=5)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 15
    assert sorted(i for b in batches for i in b) == list(range(120)) and all(len(b) <= 8 for b in batches)
    lengths = ds.item_lengths()
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    shuffled = np.random.default_rng(1).permutation(120).reshape(15, 8)
    assert spread < 0.5 * np.mean([np.ptp(lengths[b]) for b in shuffled])
    # item_lengths follows the epoch's caption picks, which is what the batches are grouped by
    assert [len(ds[i][1]) for i in range(120)] == lengths.tolist()
    ds.set_epoch(4)
    assert ds.item_lengths().tolist() != lengths.tolist()


def test_length_grouped_order_is_seeded_and_resumes_from_the_generator_state():
    captions = varied_captions()
    ds = CaptionDataset(list(captions), captions, Vocabulary.build(["red"]), fake_source)

    def epochs(generator, n):
        return [list(LengthGroupedBatchSampler(ds, 8, generator)) for _ in range(n)]

    full = epochs(torch.Generator().manual_seed(5), 3)
    assert full == epochs(torch.Generator().manual_seed(5), 3)
    assert full[0] != full[1] and full[0] != epochs(torch.Generator().manual_seed(6), 1)[0]
    generator = torch.Generator().manual_seed(5)
    epochs(generator, 1)
    state = generator.get_state()
    resumed = torch.Generator()
    resumed.set_state(state)
    assert epochs(resumed, 2) == full[1:]


def test_make_loader_groups_by_length_only_when_asked_and_training(vocab):
    captions = varied_captions()
    ds = CaptionDataset(list(captions), captions, Vocabulary.build(["red"]), fake_source)
    cfg = get_config("quick", batch_size=8, num_workers=0, seed=7)
    assert not isinstance(make_loader(ds, cfg, train=True).batch_sampler, LengthGroupedBatchSampler)
    grouped = make_loader(ds, cfg.replace(group_by_length=True), train=True)
    assert isinstance(grouped.batch_sampler, LengthGroupedBatchSampler)
    assert not isinstance(make_loader(ds, cfg.replace(group_by_length=True), train=False).batch_sampler,
                          LengthGroupedBatchSampler)
    batches = list(grouped)
    assert sum(len(b.image_ids) for b in batches) == 120 and grouped.generator is grouped.batch_sampler.generator
    with pytest.raises(TypeError, match="item_lengths"):
        LengthGroupedBatchSampler(EvalDataset([10], CAPTIONS, fake_source), 4, torch.Generator())


# -- on the real (tiny synthetic) dataset ------------------------------------------------------------------------
def test_image_folder_source(tiny_cfg):
    source = ImageFolderSource.from_config(tiny_cfg)
    assert len(source) == 60
    image = source(1)
    assert image.shape == (3, tiny_cfg.image_size, tiny_cfg.image_size) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    with pytest.raises(KeyError, match="not in this dataset"):
        source(123456)
    from labutils import coco

    # the plain-json file-name table agrees with pycocotools' index of the same captions file
    pycoco = coco.load_captions(tiny_cfg)
    assert source.file_names == {int(i): img["file_name"] for i, img in pycoco.imgs.items()}
    assert file_names_from_captions(tiny_cfg.captions_file) == source.file_names
    assert source.path(1).name == pycoco.imgs[1]["file_name"]
    with pytest.raises(FileNotFoundError, match="No captions file"):
        file_names_from_captions(tiny_cfg.data_root / "nowhere.json")


def test_build_caption_and_eval_datasets(tiny_cfg):
    vocab = Vocabulary.build(["two red circles"])
    sources = {split: fake_source for split in ("train", "val", "test")}
    datasets = build_caption_datasets(tiny_cfg, vocab, sources)
    assert {k: len(v) for k, v in datasets.items()} == {"train": 40, "val": 10, "test": 10}
    assert all(d.n_captions == 5 * len(d) for d in datasets.values())
    assert all(d.max_len == tiny_cfg.max_caption_len for d in datasets.values())
    every = build_caption_datasets(tiny_cfg, vocab, fake_source, mode="all", splits=("val",))
    assert list(every) == ["val"] and len(every["val"]) == 50
    evals = build_eval_datasets(tiny_cfg, fake_source)
    _, refs, image_id = evals["test"][0]
    assert len(refs) == 5 and image_id in set(datasets["test"].image_ids)
    assert not set(datasets["train"].image_ids) & set(evals["test"].image_ids)
    with pytest.raises(KeyError, match="not in"):
        build_eval_datasets(tiny_cfg, fake_source, splits=("restval",))


def test_build_caption_datasets_missing_dataset(tmp_path):
    cfg = get_config("quick", data_root=tmp_path)
    with pytest.raises(FileNotFoundError, match="ensure_dataset"):
        build_caption_datasets(cfg, Vocabulary(), fake_source)
