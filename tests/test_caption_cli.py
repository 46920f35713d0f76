"""`python -m labutils caption`: captions, attention figures, and one clear error per failure."""

import numpy as np
import pytest
import torch
from PIL import Image

from labutils import caption_cli, checkpoint, decoders, get_config, models, train
from labutils.vocab import Vocabulary


@pytest.fixture(scope="module")
def attention_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    cfg = get_config("quick")
    vocab = Vocabulary.build(["a red circle on the left", "two blue squares"])
    torch.manual_seed(0)
    channels = models.build_encoder(cfg.encoder, pretrained=False, grid_size=cfg.grid_size).out_channels
    decoder = decoders.build_decoder("attention", len(vocab), channels, cfg)
    path = checkpoint.save_checkpoint(folder / "attention.pt", decoder.state_dict(), vocab, cfg.to_dict(),
                                      decoder=train.decoder_spec(decoder))
    return path


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_captions_images_and_saves_attention_figures(attention_checkpoint, photo, tmp_path, capsys):
    out = tmp_path / "att.png"
    code = caption_cli.main([str(photo), str(photo), "--checkpoint", str(attention_checkpoint), "--beam", "2",
                             "--max-len", "5", "--attention-out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.count(f"{photo}: ") == 2
    assert (tmp_path / "att_1.png").stat().st_size > 1000 and (tmp_path / "att_2.png").exists()


def test_missing_checkpoint_is_one_clear_sentence(photo, tmp_path, capsys):
    assert caption_cli.main([str(photo), "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: No checkpoint at") and "notebook 07" in err and len(err.splitlines()) == 1


def test_unreadable_image_is_reported_and_others_still_captioned(attention_checkpoint, photo, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    code = caption_cli.main([str(bad), str(photo), "--checkpoint", str(attention_checkpoint), "--beam", "1",
                             "--max-len", "4"])
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.jpg" in captured.err and f"{photo}: " in captured.out


def test_checkpoint_vocabulary_mismatch(attention_checkpoint, photo, tmp_path, capsys):
    saved = checkpoint.load_checkpoint(attention_checkpoint)
    bigger = Vocabulary.build(["a red circle on the left", "two blue squares", "three green triangles"])
    broken = checkpoint.save_checkpoint(tmp_path / "mismatch.pt", saved["model_state"], bigger, saved["config"],
                                        decoder=saved["decoder"])
    assert caption_cli.main([str(photo), "--checkpoint", str(broken)]) == 2
    assert "does not match its vocabulary" in capsys.readouterr().err


def test_corrupt_checkpoint(photo, tmp_path, capsys):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    assert caption_cli.main([str(photo), "--checkpoint", str(bad)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
