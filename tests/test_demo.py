"""`python -m labutils demo`: the function behind the page (captions, figure, refusals in one sentence), the
speech fallback, the Gradio page's wiring and the command line. The browser test is tests/test_demo_browser.py."""

from __future__ import annotations

import io
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from labutils import applications, checkpoint, decoders, encoders, get_config, train
from labutils.cli import demo
from labutils.course import CaptionCommandError, load_captioner
from labutils.vocab import Vocabulary

CAPTIONS = ["a cat sitting on a red sofa", "two dogs running on the grass", "a cat looking at the camera"]


def _checkpoint(folder, kind: str, talkative: bool = True):
    """A quick-profile checkpoint as labutils.train writes it, with untrained weights: these tests check the
    page's mechanics, not caption quality. `talkative`: <end> made unlikely, so that every caption has words to
    show (an untrained decoder often ends at once)."""
    cfg = get_config("quick")
    vocab = Vocabulary.build(CAPTIONS)
    torch.manual_seed(0)
    channels = encoders.build_encoder(cfg.encoder, pretrained=False, grid_size=cfg.grid_size).out_channels
    decoder = decoders.build_decoder(kind, len(vocab), channels, cfg)
    state = decoder.state_dict()
    if talkative:
        state["fc.bias"][vocab.end_id] = -30.0
    return checkpoint.save_checkpoint(folder / f"{kind}.pt", state, vocab, cfg.to_dict(),
                                      decoder=train.decoder_spec(decoder))


@pytest.fixture(scope="module")
def attention_checkpoint(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("ckpt"), "attention")


@pytest.fixture(scope="module")
def captioner(attention_checkpoint):
    return load_captioner(attention_checkpoint)


def _jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def chelsea() -> bytes:
    return _jpeg(skdata.chelsea())


def _one_sentence(result: demo.PageResult, *phrases: str) -> None:
    """A refused photo: no caption, no figure, one sentence naming the cause and what to do."""
    assert result.caption == "" and result.figure is None
    assert "\n" not in result.status and "Traceback" not in result.status
    assert result.status.endswith(".") and result.status.count(". ") == 0, result.status
    for phrase in phrases:
        assert phrase in result.status, result.status


# -- a good photo, each decoding ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "beam"), [("greedy", 1), ("beam", 3)])
def test_a_photo_gets_the_captioners_own_caption_and_a_figure_with_one_panel_per_word(captioner, chelsea,
                                                                                      method, beam):
    result = demo.caption_for_page(captioner, chelsea, method, beam=beam, max_len=8)
    image = demo.read_photo(chelsea, captioner.decode_side)
    expected = captioner.caption([image], beam=beam, max_len=8)[0]
    assert result.caption == expected.text and result.caption
    assert result.status.startswith("Captioned in ") and f"{result.seconds:.2f} s" in result.status
    # The mosaic: the photo, then one 128-px panel per word (<end> included), five to a row, under a white band.
    panels = len(expected.words) + 1
    rows, cols = -(-panels // 5), 5
    assert isinstance(result.figure, Image.Image)
    assert result.figure.size == (cols * 132 + 4, rows * 150 + 4 + demo.FIGURE_TOP_BAND)
    assert np.asarray(result.figure).std() > 10  # heat maps drawn, not a blank canvas


def test_sampling_is_reproducible_with_a_seed_and_varies_without(captioner, chelsea):
    first = demo.caption_for_page(captioner, chelsea, "sample", temperature=1.5, top_p=1.0, seed=1, max_len=8)
    again = demo.caption_for_page(captioner, chelsea, "sample", temperature=1.5, top_p=1.0, seed=1, max_len=8)
    assert first.caption == again.caption and "sampled at temperature 1.5, top-p 1" in first.status
    others = {demo.caption_for_page(captioner, chelsea, "sample", temperature=1.5, top_p=1.0, seed=seed,
                                    max_len=8).caption for seed in range(2, 8)}
    assert len(others | {first.caption}) > 1  # alternatives: different seeds give different captions


def test_a_tiny_top_p_keeps_only_the_best_word_so_sampling_equals_greedy(captioner, chelsea):
    greedy = demo.caption_for_page(captioner, chelsea, "greedy", max_len=8)
    nucleus = demo.caption_for_page(captioner, chelsea, "sample", temperature=1.0, top_p=1e-6, seed=3, max_len=8)
    assert nucleus.caption == greedy.caption


@pytest.mark.parametrize("form", ["path", "array", "pil"])
def test_a_path_a_webcam_array_or_a_pil_image_are_captioned_like_the_bytes(captioner, chelsea, tmp_path, form):
    decoded = np.asarray(Image.open(io.BytesIO(chelsea)))
    photo = {"array": decoded, "pil": Image.fromarray(decoded)}.get(form)
    if form == "path":
        photo = tmp_path / "chelsea.jpg"
        photo.write_bytes(chelsea)
    result = demo.caption_for_page(captioner, photo, "greedy", max_len=8)
    assert result.caption and result.figure is not None and result.status.startswith("Captioned in ")


def test_a_decoder_without_attention_captions_and_says_there_is_nothing_to_draw(tmp_path, chelsea):
    captioner = load_captioner(_checkpoint(tmp_path, "show_and_tell"))
    result = demo.caption_for_page(captioner, chelsea, "beam", beam=2, max_len=6)
    assert result.caption and result.figure is None
    assert result.status.endswith("This checkpoint's decoder has no attention to draw.")


def test_a_caption_without_words_is_said_in_words(tmp_path, chelsea):
    captioner = load_captioner(_checkpoint(tmp_path, "attention", talkative=False))
    image = demo.read_photo(chelsea, captioner.decode_side)
    assert captioner.caption([image])[0].text == ""  # this untrained decoder says <end> first
    result = demo.caption_for_page(captioner, chelsea)
    assert result.caption == "" and result.status.startswith("The model ended the caption before any word")


# -- bad input: one sentence, nothing else -----------------------------------------------------------------------
def test_a_text_file_is_not_an_image(captioner, tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is a shopping list, not a photo\n")
    _one_sentence(demo.caption_for_page(captioner, fake), "not a readable image", "upload a JPEG, PNG or WebP")


@pytest.mark.parametrize("damage", ["cut_short", "scrambled"])
def test_a_corrupt_jpeg_is_refused(captioner, chelsea, damage):
    broken = chelsea[: len(chelsea) // 3] if damage == "cut_short" else chelsea[:20] + bytes(len(chelsea) - 20)
    _one_sentence(demo.caption_for_page(captioner, broken), "not a readable image")


def test_too_many_pixels_is_refused_from_the_header_before_decoding(captioner, tmp_path, monkeypatch):
    huge = tmp_path / "panorama.png"
    Image.new("1", (10_000, 6_000)).save(huge)  # 60 megapixels in a small file
    assert huge.stat().st_size < demo.MAX_BYTES
    decoded, load = [], Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self) or load(self))
    _one_sentence(demo.caption_for_page(captioner, huge), "10000 x 6000 pixels", "50 megapixels", "resize it")
    assert decoded == []


def test_a_huge_array_from_the_webcam_path_is_refused_too(captioner, monkeypatch):
    monkeypatch.setattr(demo, "MAX_PIXELS", 100 * 100)
    _one_sentence(demo.caption_for_page(captioner, np.zeros((101, 100, 3), np.uint8)), "101 pixels")


def test_an_array_that_is_not_a_picture_is_refused(captioner):
    _one_sentence(demo.caption_for_page(captioner, np.zeros((2, 3, 4, 5))), "shape (2, 3, 4, 5)", "H x W x 3")


def test_too_many_bytes_is_refused_before_reading_the_picture(captioner):
    oversized = b"\xff\xd8\xff" + os.urandom(demo.MAX_BYTES)
    _one_sentence(demo.caption_for_page(captioner, oversized), "more than the 25 MB", "smaller copy")


def test_no_photo_and_a_vanished_upload_are_sentences(captioner, tmp_path):
    _one_sentence(demo.caption_for_page(captioner, None), "No photo yet")
    _one_sentence(demo.caption_for_page(captioner, tmp_path / "gone.jpg"), "did not arrive")


def test_a_good_photo_after_bad_ones_is_still_captioned(captioner, chelsea):
    for bad in (b"GIF89a nonsense", b"", chelsea[:100]):
        assert demo.caption_for_page(captioner, bad).caption == ""
    assert demo.caption_for_page(captioner, chelsea, max_len=6).caption


# -- speech ------------------------------------------------------------------------------------------------------
def test_without_a_speech_engine_the_page_says_so_and_still_captions(captioner, chelsea, tmp_path, monkeypatch):
    monkeypatch.setattr(applications.shutil, "which", lambda name: None)
    on_photo = demo._handler(captioner, tmp_path)
    caption, figure, audio, status = on_photo(chelsea, "greedy", 3, 1.0, 0.9)
    assert caption and figure is not None and audio is None
    assert status.startswith("Captioned in ") and "espeak-ng is not installed" in status


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install "
                    "espeak-ng); the page then shows one sentence instead of the audio")
def test_the_caption_is_read_aloud_into_a_wav_file(captioner, chelsea, tmp_path):
    on_photo = demo._handler(captioner, tmp_path)
    caption, _, audio, status = on_photo(chelsea, "beam", 2, 1.0, 0.9)
    assert audio and open(audio, "rb").read(4) == b"RIFF" and os.path.getsize(audio) > 1000
    assert "espeak" not in status


def test_a_refused_photo_has_no_audio_and_only_its_sentence(captioner, tmp_path):
    caption, figure, audio, status = demo._handler(captioner, tmp_path)(b"not an image", "greedy", 3, 1.0, 0.9)
    assert (caption, figure, audio) == ("", None, None) and status.startswith("This file is not a readable image")


# -- the page and the command ------------------------------------------------------------------------------------
def test_the_photo_input_hands_the_upload_unopened_to_our_function(captioner, tmp_path):
    FileData = pytest.importorskip("gradio.data_classes", reason="the page needs Gradio").FileData

    page = demo.build_demo(captioner)
    photo = next(block for block in page.blocks.values() if getattr(block, "elem_id", None) == "photo")
    fake = tmp_path / "fake.jpg"
    fake.write_text("not a picture")
    # gr.Image would open it with Pillow here and raise; ours passes the path on for the one-sentence refusal.
    assert photo.preprocess(FileData(path=str(fake), orig_name="fake.jpg")) == str(fake)
    assert photo.get_block_name() == "image" and set(photo.sources) == {"upload", "webcam", "clipboard"}


def test_without_gradio_the_page_is_one_sentence_saying_how_to_install_it(captioner, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # what `import gradio` sees when it is not installed
    with pytest.raises(CaptionCommandError, match=r"needs Gradio, which is not installed; run `pip install "
                                                  r"'labutils\[demo\]'`"):
        demo.build_demo(captioner)


def test_the_command_listens_on_localhost_without_a_public_link_by_default():
    args = demo.build_parser().parse_args(["--checkpoint", "x.pt"])
    assert (args.host, args.share) == ("127.0.0.1", False)


def test_a_missing_checkpoint_is_one_sentence_and_exit_2(tmp_path, capsys):
    assert demo.main(["--checkpoint", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: No checkpoint at") and len(err.splitlines()) == 1


def test_the_demo_is_a_listed_command():
    from labutils.cli import main as cli_main

    assert cli_main.COMMANDS["demo"] == "labutils.cli.demo"
    assert "\n  demo " in cli_main.USAGE
