"""CI-sized: the flickr8k profile's path on real photos (a subset of the shared local copy), trained briefly, must
describe held-out photos better than the best single caption a model could learn without looking at them."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from labutils import course, get_config, train
from labutils.infra import flickr8k
from labutils.vocab import tokenize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "flickr8k"
N_TRAIN, N_VAL = 2000, 100  # photos: a few minutes of encoding and training on 2 CPU cores


def subset_copy(folder: Path) -> Path:
    """A local copy laid out like the archives, holding the first photos of the shared copy's train and dev lists
    (photos hard-linked, never written)."""
    text, photos = SHARED / flickr8k.TEXT_FOLDER, SHARED / flickr8k.IMAGE_FOLDERS[0]
    lists = flickr8k.read_split_files(text)
    chosen = {"train": lists["train"][:N_TRAIN], "val": lists["val"][:N_VAL], "test": lists["test"][:N_VAL]}
    (folder / flickr8k.IMAGE_FOLDERS[0]).mkdir(parents=True)
    (folder / flickr8k.TEXT_FOLDER).mkdir()
    for name in (n for names in chosen.values() for n in names):
        os.link(photos / name, folder / flickr8k.IMAGE_FOLDERS[0] / name)
    keep = {n for names in chosen.values() for n in names}
    lines = (text / flickr8k.TOKEN_FILE).read_text(encoding="utf-8").splitlines()
    (folder / flickr8k.TEXT_FOLDER / flickr8k.TOKEN_FILE).write_text(
        "\n".join(line for line in lines if line.split("#")[0] in keep) + "\n", encoding="utf-8")
    for split, file in flickr8k.SPLIT_FILES.items():
        (folder / flickr8k.TEXT_FOLDER / file).write_text("".join(f"{n}\n" for n in chosen[split]), encoding="utf-8")
    return folder


@pytest.mark.slow
def test_a_brief_flickr8k_run_beats_the_best_blind_caption(tmp_path):
    if not (SHARED / flickr8k.TEXT_FOLDER / flickr8k.TOKEN_FILE).is_file():
        pytest.skip(f"no local Flickr8k copy at {SHARED} (see its README); this test needs real photos")
    cfg = get_config("flickr8k", data_root=tmp_path / "data", build_dir=tmp_path / "build", device="cpu",
                     epochs=10)
    flickr8k.prepare_flickr8k(cfg, source=subset_copy(tmp_path / "copy"), progress=False)
    lab = course.prepare_data(cfg, progress=False)
    decoder, vocab, result, _ = course.train_quick_captioner(cfg, "attention", progress=False, lab_data=lab)
    predictions, references = train.caption_loader(decoder, lab.loaders["test"], vocab, max_len=cfg.max_caption_len)
    # The baseline: one caption for every photo, the one of the 50 commonest training captions that scores best on
    # the validation photos (CIDEr-D, which unlike BLEU does not forgive a generic caption naming nothing in the
    # photo), scored on the test photos.
    val = {i: lab.captions[i] for i in lab.splits["val"]}
    common = [c for c, _ in Counter(c.lower() for i in lab.splits["train"] for c in lab.captions[i]).most_common(50)]
    best = max(common, key=lambda caption: cider(dict.fromkeys(val, caption), val))
    blind = cider(dict.fromkeys(references, best), references)
    learned = cider(predictions, references)
    assert learned > blind, f"test CIDEr-D {learned:.3f} vs {blind:.3f} for {best!r} on every photo"
    # ... and it looks: different photos get different captions, with no <unk> left in them.
    captions = list(predictions.values())
    assert len(set(captions)) >= len(captions) // 5, f"only {len(set(captions))} distinct captions: {captions[:5]}"
    assert all("<unk>" not in c for c in captions), captions


def cider(predictions: dict, references: dict) -> float:
    """Corpus CIDEr-D (pycocoevalcap's scorer) on the lab's tokenization, which equals the scorer's own."""
    from pycocoevalcap.cider.cider import Cider

    gts = {i: [" ".join(tokenize(r)) for r in references[i]] for i in references}
    res = {i: [" ".join(tokenize(predictions[i]))] for i in references}
    return float(Cider().compute_score(gts, res)[0])
