"""`python -m labutils caption`: captions, attention figures, and one clear error per failure."""

import json
import os
import shutil
import subprocess
import sys
import wave
import weakref
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from labutils import applications, checkpoint, decoders, encoders, get_config, train
from labutils.cli import caption as caption_cli
from labutils.vocab import Vocabulary


@pytest.fixture(scope="module")
def attention_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    cfg = get_config("quick")
    vocab = Vocabulary.build(["a red circle on the left", "two blue squares"])
    torch.manual_seed(0)
    channels = encoders.build_encoder(cfg.encoder, pretrained=False, grid_size=cfg.grid_size).out_channels
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


def test_corrupt_checkpoint(attention_checkpoint, photo, tmp_path, capsys):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(attention_checkpoint.read_bytes()[:5000])
    assert caption_cli.main([str(photo), "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "cut short or damaged" in err and len(err.splitlines()) == 1


def _one_sentence(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- learner mistakes: one sentence each -------------------------------------------------------------------------
@pytest.mark.parametrize(("swapped", "looks_like"), [("photo.jpg", "a JPEG image"), ("vocab.json", "a JSON file")])
def test_a_photo_or_the_vocabulary_given_as_checkpoint_is_not_a_checkpoint(attention_checkpoint, photo, tmp_path,
                                                                           capsys, swapped, looks_like):
    wrong = tmp_path / swapped
    if swapped.endswith(".jpg"):
        Image.open(photo).save(wrong)
    else:
        wrong.write_text(json.dumps(checkpoint.load_checkpoint(attention_checkpoint)["vocab"]))
    assert caption_cli.main([str(photo), "--checkpoint", str(wrong)]) == 2
    err = _one_sentence(capsys.readouterr().err)
    assert f"{wrong} is {looks_like}" in err and "not a checkpoint" in err and "as --checkpoint" in err
    assert "delete" not in err and "could run code" not in err  # the old, wrong advice


def test_a_checkpoint_holding_a_pickled_object_is_refused_in_one_sentence(photo, tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.CHECKPOINT_FORMAT, "version": 1, "gift": Vocabulary.build(["a cat"])}, evil)
    assert caption_cli.main([str(photo), "--checkpoint", str(evil)]) == 2
    err = _one_sentence(capsys.readouterr().err)
    assert "pickled Python object" in err and "refused" in err and "Vocabulary" in err


@pytest.mark.parametrize(("drop", "named"), [("decoder", "'decoder'"), ("config.encoder", "'encoder'"),
                                             ("decoder.feature_dim", "'feature_dim'")])
def test_a_checkpoint_missing_a_key_is_one_sentence(attention_checkpoint, photo, tmp_path, capsys, drop, named):
    saved = checkpoint.load_checkpoint(attention_checkpoint)
    extra = {"decoder": dict(saved["decoder"])}
    config = dict(saved["config"])
    if drop == "decoder":
        extra = {}
    elif drop == "config.encoder":
        del config["encoder"]
    else:
        del extra["decoder"]["feature_dim"]
    broken = checkpoint.save_checkpoint(tmp_path / "partial.pt", saved["model_state"], saved["vocab"], config,
                                        **extra)
    assert caption_cli.main([str(photo), "--checkpoint", str(broken)]) == 2
    err = _one_sentence(capsys.readouterr().err)
    assert "lacks" in err and named in err and "cannot caption" in err and "KeyError" not in err


@pytest.mark.parametrize(("args", "says"), [
    (["--max-len", "0"], "argument --max-len: 0 is too small, it must be at least 1"),
    (["--max-len", "ten"], "argument --max-len: 'ten' is not a whole number"),
    (["--beam", "-2"], "argument --beam: -2 is too small, it must be at least 1"),
    (["--beam", "0"], "argument --beam: 0 is too small"),
    (["--batch-size", "0"], "argument --batch-size: 0 is too small"),
    (["--device", "cuda"], "argument --device: 'cuda' needs a CUDA GPU, and PyTorch sees none"),
    (["--device", "cuda:1"], "argument --device: 'cuda:1' needs a CUDA GPU"),
    (["--device", "banana"], "argument --device: 'banana' is not a device; use cpu"),
    (["--attention-out", "figure"], "argument --attention-out: 'figure' has no image suffix"),
])
def test_bad_numbers_and_unavailable_devices_are_argument_errors(photo, monkeypatch, capsys, args, says):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)

    def must_not_load(*_args, **_kwargs):
        raise AssertionError("the arguments were accepted and the checkpoint loaded")

    monkeypatch.setattr(caption_cli, "load_captioner", must_not_load)
    with pytest.raises(SystemExit) as stopped:
        caption_cli.main([str(photo), "--checkpoint", "any.pt", *args])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and says in errors[0] and "Traceback" not in err, err


def test_a_gpu_that_is_there_is_accepted(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    args = caption_cli.build_parser().parse_args(["p.jpg", "--checkpoint", "c.pt", "--device", "cuda:1"])
    assert args.device == "cuda:1" and args.beam == 3 and args.max_len == 30


# -- streaming: batch by batch, bounded memory, each caption printed as soon as it is ready ----------------------
class _RecordingCaptioner:
    """Stands in for the model: records how many photos had been read when each batch was captioned."""

    def __init__(self, pulled: list):
        self.pulled, self.read_when_captioned = pulled, []

    def caption(self, images, beam=1, max_len=30):
        self.read_when_captioned.append(len(self.pulled))
        return [f"caption of {image.info['key']}" for image in images]


def test_the_stream_reads_one_batch_ahead_at_most_and_frees_each_batch():
    pulled, alive, most_alive = [], [0], [0]

    def source(count):
        for key in range(count):
            image = Image.new("RGB", (64, 48))
            image.info["key"] = key
            alive[0] += 1
            weakref.finalize(image, lambda: alive.__setitem__(0, alive[0] - 1))
            most_alive[0] = max(most_alive[0], alive[0])
            pulled.append(key)
            yield key, image

    captioner = _RecordingCaptioner(pulled)
    seen = []
    for key, _image, caption in caption_cli.caption_stream(captioner, source(20), batch_size=3):
        seen.append((key, caption))
        if key == 0:
            assert len(pulled) == 3, "the first caption must come before the fourth photo is read"
    assert seen == [(key, f"caption of {key}") for key in range(20)]
    assert captioner.read_when_captioned == [3, 6, 9, 12, 15, 18, 20]
    # One batch plus the photo the caller is still holding; keeping every decoded photo would reach 20.
    assert most_alive[0] <= 3 + 1


def test_the_command_prints_captions_before_it_reads_the_later_photos(attention_checkpoint, photo, tmp_path):
    """In a real process with stdout a pipe (block-buffered unless flushed): captions interleave with reads."""
    photos = []
    for index in range(5):
        path = tmp_path / f"p{index}.png"
        path.write_bytes(photo.read_bytes())
        photos.append(str(path))
    # The child logs every image it opens on stderr, which shares the pipe with stdout, so the pipe's order is
    # the order of events: a caption printed late (or left in a buffer) appears after the later photos' READ.
    driver = ("import sys, labutils.cli.caption as c\n"
              "load = c.load_image\n"
              "def logged(path, **kw):\n"
              "    print('READ', path, file=sys.stderr, flush=True)\n"
              "    return load(path, **kw)\n"
              "c.load_image = logged\n"
              "sys.exit(c.main(sys.argv[1:]))\n")
    # Without PYTHONUNBUFFERED (set in some CI shells, never on a learner's machine) a pipe is block-buffered.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", driver, *photos, "--checkpoint", str(attention_checkpoint),
                           "--beam", "1", "--max-len", "3", "--batch-size", "2"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1], env={**env, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout
    events = [("read", line[len("READ "):]) if line.startswith("READ ") else ("caption", line.split(": ")[0])
              for line in done.stdout.splitlines()]
    assert events == [("read", photos[0]), ("read", photos[1]), ("caption", photos[0]), ("caption", photos[1]),
                      ("read", photos[2]), ("read", photos[3]), ("caption", photos[2]), ("caption", photos[3]),
                      ("read", photos[4]), ("caption", photos[4])]


# -- reduced-size decoding ---------------------------------------------------------------------------------------
def test_photos_are_decoded_at_reduced_size_but_never_below_what_the_encoder_needs(tmp_path):
    from labutils.data import load_image

    rng = np.random.default_rng(1)
    pixels = (rng.random((1200, 1600, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "big.jpg", quality=90)
    Image.fromarray(pixels).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.jpg").size == (1600, 1200)
    assert load_image(tmp_path / "big.jpg", min_side=256).size == (400, 300)  # JPEG draft at 1/4: 300 >= 256
    assert load_image(tmp_path / "big.png", min_side=256).size == (400, 300)  # PNG: decoded, then reduced by 4
    assert load_image(tmp_path / "big.jpg", min_side=700).size == (1600, 1200)  # half would be 600 < 700
    # A portrait phone photo: stored landscape with an EXIF "rotate 90" tag; still upright after draft.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "phone.jpg", min_side=256).size == (300, 400)


def test_reduced_size_decoding_gives_the_encoder_nearly_the_same_input(tmp_path):
    """The caption command decodes at twice the encoder input; the encoder's own resize then sees ~the same."""
    from skimage import data as photos

    from labutils.data import load_image

    astronaut = Image.fromarray(photos.astronaut()).resize((1536, 1536), Image.LANCZOS)
    astronaut.save(tmp_path / "astronaut.jpg", quality=92)
    encoder = encoders.build_encoder(get_config("quick").encoder, pretrained=False, grid_size=8)
    transform = encoder.eval_transform(128)
    full = transform(load_image(tmp_path / "astronaut.jpg"))
    reduced_image = load_image(tmp_path / "astronaut.jpg", min_side=256)
    assert reduced_image.size == (384, 384)
    reduced = transform(reduced_image)
    # The encoder's inputs span [-1, 1]. Decoded at 2x they move by about 0.002 on average; decoding at the
    # encoder's own size (1x) would move them by about 0.008.
    assert (full - reduced).abs().mean() < 0.005


# -- attention figures ---------------------------------------------------------------------------------------------
def test_figures_are_numbered_by_argument_and_an_unwritable_one_is_one_sentence(attention_checkpoint, photo,
                                                                               tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "figs" / "att.jpg"
    code = caption_cli.main([str(bad), str(photo), "--checkpoint", str(attention_checkpoint), "--beam", "1",
                             "--max-len", "4", "--attention-out", str(out)])
    captured = capsys.readouterr()
    assert code == 1 and "broken.jpg" in captured.err
    assert sorted(p.name for p in out.parent.iterdir()) == ["att_2.jpg"]
    assert Image.open(out.parent / "att_2.jpg").format == "JPEG"
    assert f"attention figure: {out.parent / 'att_2.jpg'}" in captured.out

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = caption_cli.main([str(photo), "--checkpoint", str(attention_checkpoint), "--beam", "1",
                             "--max-len", "4", "--attention-out", str(blocker / "att.png")])
    captured = capsys.readouterr()
    assert code == 1 and f"{photo}: " in captured.out
    err = _one_sentence(captured.err)
    assert err.startswith("error: could not write") and "att.png" in err


def test_a_full_disk_while_writing_figures_is_one_sentence_and_leaves_no_partial_file(attention_checkpoint, photo,
                                                                                      small_disk, capsys):
    disk = small_disk(16 * 1024)  # room for the folder, not for a PNG of noise
    code = caption_cli.main([str(photo), "--checkpoint", str(attention_checkpoint), "--beam", "1",
                             "--max-len", "4", "--attention-out", str(disk / "att.png")])
    captured = capsys.readouterr()
    assert code == 1 and f"{photo}: " in captured.out and "attention figure:" not in captured.out
    err = _one_sentence(captured.err)
    assert "is full" in err and "att.png" in err
    assert list(disk.iterdir()) == []


# -- speech: --speak DIR reads each caption aloud into a WAV ---------------------------------------------------------
def _audio_frames(path: Path) -> int:
    assert path.read_bytes()[:4] == b"RIFF" and path.read_bytes()[8:12] == b"WAVE"
    with wave.open(str(path)) as wav:
        return wav.getnframes()


def test_speak_writes_a_wav_per_photo_and_prints_its_path_after_the_caption(attention_checkpoint, photo,
                                                                           tmp_path, capsys):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng, or `make setup`)")
    other = tmp_path / "other.png"
    other.write_bytes(photo.read_bytes())
    voices = tmp_path / "voices" / "new"  # does not exist yet
    code = caption_cli.main([str(photo), str(other), str(photo), "--checkpoint", str(attention_checkpoint),
                             "--beam", "1", "--max-len", "4", "--speak", str(voices)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # photo.png given twice: numbered by position, so neither WAV overwrites the other.
    expected = [(str(photo), voices / "photo_1.wav"), (str(other), voices / "other.wav"),
                (str(photo), voices / "photo_3.wav")]
    assert sorted(voices.iterdir()) == sorted(wav for _, wav in expected)
    assert all(_audio_frames(wav) > 0 for _, wav in expected)
    lines = captured.out.splitlines()
    assert [line.split(": ")[0] for line in lines[0::2]] == [name for name, _ in expected]
    assert lines[1::2] == [f"  speech: {wav}" for _, wav in expected]


def test_without_the_speech_engine_captions_print_and_one_install_sentence_exits_1(attention_checkpoint, photo,
                                                                                  tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(applications, "SPEECH_ENGINE", "no-such-speech-engine")
    other = tmp_path / "other.png"
    other.write_bytes(photo.read_bytes())
    voices = tmp_path / "voices"
    code = caption_cli.main([str(photo), str(other), "--checkpoint", str(attention_checkpoint), "--beam", "1",
                             "--max-len", "4", "--speak", str(voices)])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{photo}: " in captured.out and f"{other}: " in captured.out and "speech:" not in captured.out
    err = _one_sentence(captured.err)
    assert err.startswith("error: The offline speech engine") and "apt-get install -y espeak-ng" in err
    assert not voices.exists() or list(voices.iterdir()) == []


def test_a_wav_that_fails_is_reported_for_that_photo_and_the_others_are_still_spoken(attention_checkpoint, photo,
                                                                                    tmp_path, monkeypatch, capsys):
    def fake_speak(text, wav_path):
        if Path(wav_path).stem == "photo":
            raise applications.SpeechError(f"espeak-ng could not write {wav_path} (no voice); check the voice.")
        Path(wav_path).parent.mkdir(parents=True, exist_ok=True)
        Path(wav_path).write_bytes(b"RIFF")
        return Path(wav_path)

    monkeypatch.setattr(caption_cli, "speak", fake_speak)
    later = tmp_path / "later.png"
    later.write_bytes(photo.read_bytes())
    code = caption_cli.main([str(photo), str(later), "--checkpoint", str(attention_checkpoint), "--beam", "1",
                             "--max-len", "4", "--speak", str(tmp_path / "voices")])
    captured = capsys.readouterr()
    assert code == 1
    assert "photo.wav" in _one_sentence(captured.err)
    assert f"  speech: {tmp_path / 'voices' / 'later.wav'}" in captured.out and f"{photo}: " in captured.out
    assert (tmp_path / "voices" / "later.wav").exists()


def test_a_caption_that_starts_with_a_dash_is_spoken_not_read_as_an_option(attention_checkpoint, photo, tmp_path,
                                                                           monkeypatch, capsys):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng, or `make setup`)")

    def dashed_stream(captioner, keyed_images, batch_size, beam=1, max_len=30):
        for key, image in keyed_images:
            yield key, image, SimpleNamespace(text="--help a cat on a sofa")  # espeak-ng would print its help

    monkeypatch.setattr(caption_cli, "caption_stream", dashed_stream)
    monkeypatch.chdir(tmp_path)
    code = caption_cli.main([str(photo), "--checkpoint", str(attention_checkpoint), "--speak", "voices"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert _audio_frames(tmp_path / "voices" / "photo.wav") > 0
