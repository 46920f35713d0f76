"""Tests for labutils.evaluation: decoding methods side by side, BLEU breakdown, exposure bias, attention helpers."""

import numpy as np
import pytest
import torch
from torch import nn

from labutils import decode, evaluation, metrics
from labutils.decoders import DecoderOutput, ShowAndTell, ShowAttendTell
from labutils.vocab import Vocabulary

pytestmark = pytest.mark.filterwarnings("ignore:java was not found:RuntimeWarning")


@pytest.fixture(autouse=True)
def no_java(monkeypatch):
    """Use the Python PTB tokenizer and skip METEOR: starting Java takes tens of seconds on a busy machine.

    `metrics` itself is tested against pycocoevalcap with Java; here we test what evaluation adds on top.
    """
    monkeypatch.setattr(metrics, "java_available", lambda: False)


@pytest.fixture(autouse=True, scope="module")
def one_thread(single_torch_thread):
    """Run this module on one torch thread (see tests/conftest.py)."""
    yield


class BigramDecoder(nn.Module):
    """A decoder whose next word depends only on the previous one, through a fixed table `next_of`."""

    uses_attention = False

    def __init__(self, vocab: Vocabulary, next_of: dict[str, str]):
        super().__init__()
        table = torch.zeros(len(vocab), len(vocab))
        for prev, nxt in next_of.items():
            table[vocab.stoi[prev], vocab.stoi[nxt]] = 10.0
        self.register_buffer("table", table)
        self.vocab_size = len(vocab)

    def forward(self, features, captions, lengths):
        return DecoderOutput(self.table[captions[:, :-1]], None)

    def init_state(self, features):
        return (features,)

    def step(self, tokens, state):
        return self.table[tokens], state, None


@pytest.fixture()
def drifting():
    """A model right 7 times out of 8 with the true previous word, which loops forever on its own words."""
    vocab = Vocabulary("a red circle above blue square".split())
    next_of = {"<start>": "a", "a": "red", "red": "circle", "circle": "above", "above": "a", "blue": "square",
               "square": "<end>"}
    return BigramDecoder(vocab, next_of), vocab, {7: ["a red circle above a blue square"]}


@pytest.fixture()
def attention_model():
    torch.manual_seed(0)
    captions = ["a red circle", "two blue squares", "a green triangle above a red circle"]
    vocab = Vocabulary.build(captions)
    decoder = ShowAttendTell(len(vocab), feature_dim=8, embed_dim=8, hidden_dim=16, attention_dim=8).eval()
    feats = {i: torch.randn(4, 8) for i in (1, 2, 3)}
    references = {1: captions[:2], 2: captions[1:], 3: [captions[0], captions[2]]}
    return decoder, vocab, feats.__getitem__, references


def test_evaluate_methods_scores_every_method_like_coco_scores(attention_model):
    decoder, vocab, source, references = attention_model
    methods = {"greedy": {"method": "greedy"}, "beam k=1": {"method": "beam", "beam_size": 1},
               "beam k=3": {"method": "beam", "beam_size": 3}, "sample": {"method": "sample", "temperature": 2.0}}
    result = evaluation.evaluate_methods(decoder, vocab, source, references, methods=methods, max_len=6,
                                         progress=False)
    assert list(result.table.index) == list(methods)
    for column in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr-D", "words/caption", "distinct", "decode s"):
        assert column in result.table.columns
    greedy = {i: c.text for i, c in result.captions["greedy"].items()}
    assert greedy == {i: c.text for i, c in result.captions["beam k=1"].items()}  # beam of one is greedy
    expected = metrics.coco_scores(greedy, references)
    assert result.table.loc["greedy", "BLEU-4"] == pytest.approx(expected["Bleu_4"])
    assert result.table.loc["greedy", "CIDEr-D"] == pytest.approx(expected["CIDEr"])
    again = evaluation.evaluate_methods(decoder, vocab, source, references, methods={"sample": methods["sample"]},
                                        max_len=6, progress=False)
    assert {i: c.text for i, c in again.captions["sample"].items()} == \
        {i: c.text for i, c in result.captions["sample"].items()}  # seeded: reproducible
    batched = evaluation.evaluate_methods(decoder, vocab, source, references, max_len=6, batch_size=2,
                                          methods={k: methods[k] for k in ("greedy", "beam k=3")}, progress=False)
    for name in ("greedy", "beam k=3"):  # reading features in batches changes nothing for deterministic search
        assert {i: c.text for i, c in batched.captions[name].items()} == \
            {i: c.text for i, c in result.captions[name].items()}
    text = result.format_examples([2])
    assert "image 2" in text and references[2][0] in text and "beam k=3" in text


def test_default_methods_cover_greedy_beam_and_every_sampling_rule():
    kinds = {name: kwargs["method"] for name, kwargs in evaluation.DEFAULT_METHODS.items()}
    assert [k for k in kinds.values() if k == "beam"] and kinds["greedy"] == "greedy"
    sampling = [kw for kw in evaluation.DEFAULT_METHODS.values() if kw["method"] == "sample"]
    for key in ("temperature", "top_k", "top_p", "top_n_schedule"):
        assert any(key in kw for kw in sampling), key


def test_bleu_breakdown_rows_isolate_each_difference():
    preds = {1: "A red circle.", 2: "two green squares above a big blue circle", 3: "red"}
    refs = {1: ["a red circle", "one red circle on the left"],
            2: ["two green squares above a blue circle", "a blue circle below two green squares today"],
            3: ["a red square", "the red square"]}
    table = evaluation.bleu_breakdown(preds, refs)
    coco = metrics.coco_scores(preds, refs)
    row = table.loc["COCO (pycocoevalcap) corpus BLEU"]
    assert [row[f"BLEU-{n}"] for n in range(1, 5)] == pytest.approx([coco[f"Bleu_{n}"] for n in range(1, 5)])
    plain = metrics.nltk_corpus_bleu(preds, refs)
    assert table.loc["NLTK corpus_bleu, text.split()", "BLEU-1"] == pytest.approx(plain["Bleu_1"])
    # Same tokens: NLTK's BLEU-1 equals COCO's (no short-caption or smoothing effect for unigrams).
    assert table.loc["NLTK corpus_bleu, PTB tokens", "BLEU-1"] == pytest.approx(row["BLEU-1"], abs=1e-6)
    assert table.loc["NLTK corpus_bleu, text.split()", "BLEU-1"] < row["BLEU-1"]  # "A" and "circle." miss
    # The 1-word caption adds 1 to NLTK's 4-gram denominator, COCO counts 0.
    assert table.loc["NLTK corpus_bleu, PTB tokens", "BLEU-4"] < row["BLEU-4"]
    # Shortest reference: no brevity penalty for caption 2 (8 words; references of 7 and 8 words).
    assert table.loc["COCO, brevity penalty: shortest ref", "BLEU-1"] > row["BLEU-1"]
    assert not np.isclose(table.loc["COCO, mean of per-image BLEU", "BLEU-2"], row["BLEU-2"])
    per_image_mean = metrics.per_image_scores(preds, refs)["Bleu_1"].mean()
    assert table.loc["COCO, mean of per-image BLEU", "BLEU-1"] == pytest.approx(per_image_mean)
    # Per sentence, the 1-word caption has no 4-gram: 0 without smoothing, more than 0 with it.
    plain_mean = table.loc["NLTK, mean of sentence_bleu", "BLEU-4"]
    assert table.loc["NLTK, mean of sentence_bleu, method1", "BLEU-4"] > plain_mean
    assert table.loc["NLTK, mean of sentence_bleu", "BLEU-1"] == pytest.approx(
        table.loc["COCO, mean of per-image BLEU", "BLEU-1"], abs=1e-6)


def test_bleu_breakdown_needs_references_for_every_prediction():
    with pytest.raises(ValueError, match="references"):
        evaluation.bleu_breakdown({1: "a", 2: "b"}, {1: ["a"]})


def test_teacher_forcing_looks_better_than_the_free_running_captions(drifting):
    decoder, vocab, references = drifting
    source = {7: torch.zeros(2, 3)}.__getitem__
    report = evaluation.teacher_forced_vs_free_running(decoder, vocab, source, references, max_len=12)
    forced, free = report.table.loc["teacher forced"], report.table.loc["free running (greedy)"]
    assert forced["token accuracy"] == pytest.approx(7 / 8)  # only "a" -> "blue" is missed
    assert free["token accuracy"] == pytest.approx(5 / 8)  # "a red circle above a" then red circle above ...
    assert not report.examples["exact"].any()
    assert forced["BLEU-4"] > free["BLEU-4"]
    assert forced["loss/word"] > 0 and np.isnan(free["loss/word"])
    example = report.examples.iloc[0]
    assert example["teacher_forced"] == "a red circle above a red square"
    assert example["free_running"].startswith("a red circle above a red circle above")
    assert "free running" in report.format_examples(1)


def test_a_model_that_writes_a_reference_is_exact_both_ways():
    vocab = Vocabulary("red blue circle".split())
    decoder = BigramDecoder(vocab, {"<start>": "red", "red": "circle", "blue": "circle", "circle": "<end>"})
    report = evaluation.teacher_forced_vs_free_running(decoder, vocab, {3: torch.zeros(1, 2)}.__getitem__,
                                                       {3: ["red circle", "blue circle"]})
    forced, free = report.table.loc["teacher forced"], report.table.loc["free running (greedy)"]
    # One yardstick, the closest reference. Teacher forced: fed "red circle" it predicts all 3 words; fed "blue
    # circle" it guesses "red" first (2 of 3). Free running writes "red circle" exactly.
    assert forced["token accuracy"] == 1.0 and free["token accuracy"] == 1.0
    assert report.examples["exact"].all() and report.format_examples() == ""
    assert list(report.examples["teacher_forced"]) == ["red circle"]


def test_attention_for_split_feeds_grounding_and_uniform_baseline(attention_model):
    decoder, vocab, source, references = attention_model
    maps = evaluation.attention_for_split(decoder, vocab, source, [1, 3], max_len=5)
    assert set(maps) == {1, 3}
    for words, alphas in maps.values():
        assert alphas.shape == (len(words), 4)
        assert np.allclose(alphas.sum(axis=1), 1.0, atol=1e-5)
    greedy = decode.greedy(decoder, torch.stack([source(1)]), vocab, max_len=5)[0]
    assert maps[1][0] == greedy.words
    flat = evaluation.uniform_attention(maps)
    assert np.allclose(flat[3][1], 0.25) and flat[3][0] == maps[3][0]
    show_tell = ShowAndTell(len(vocab), feature_dim=8, embed_dim=8, hidden_dim=8)
    with pytest.raises(ValueError, match="no attention"):
        evaluation.attention_for_split(show_tell, vocab, source, [1])


def test_caption_photo_returns_the_encoders_view_and_attention(tmp_path):
    from PIL import Image

    from labutils import encoders
    from labutils.course import Captioner

    encoder = encoders.build_encoder("efficientnet_lite0", pretrained=False, grid_size=2)
    vocab = Vocabulary.build(["a red circle"])
    decoder = ShowAttendTell(len(vocab), encoder.out_channels, embed_dim=8, hidden_dim=8, attention_dim=8).eval()
    captioner = Captioner(encoder.eval(), decoder, vocab, input_size=64)
    photo = np.zeros((60, 90, 3), dtype=np.uint8)
    photo[:, 45:] = 255
    seen, caption = evaluation.caption_photo(captioner, photo, beam=2, max_len=4)
    assert seen.size == (64, 64)
    assert caption.alphas.shape == (len(caption.words), 4)
    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    assert evaluation.caption_photo(captioner, path, beam=2, max_len=4)[1].text == caption.text
    # a transparent PNG is seen the way data.to_rgb shows it: over white, not over whatever its hidden pixels hold
    clear = Image.fromarray(np.zeros((60, 90, 4), dtype=np.uint8), mode="RGBA")  # fully transparent black
    seen_clear, _ = evaluation.caption_photo(captioner, clear, beam=2, max_len=4)
    assert np.asarray(seen_clear).min() == 255


def test_grounding_ceiling_is_reached_by_attention_on_the_most_covered_cell(tiny_cfg, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from labutils import coco, grounding

    instances = coco.load_instances(tiny_cfg)
    maps = {}
    for image_id in instances.getImgIds()[:6]:
        objects = grounding.objects_from_instances(instances, image_id)
        info = instances.loadImgs(image_id)[0]
        words = [objects[0]["colour"], objects[0]["shape"], "above"]
        alphas = []
        for word in words:
            targets = grounding.referred_objects(word, objects) or objects
            mask = grounding.box_mask([o["bbox"] for o in targets], info["height"], info["width"])
            best = np.zeros(16)
            best[grounding.cell_coverage(mask, 4).argmax()] = 1.0
            alphas.append(best)
        maps[image_id] = (words, np.stack(alphas))
    oracle = grounding.grounding_score(maps, instances, grid_size=4)
    ceiling = evaluation.grounding_ceiling(oracle, instances, grid_size=4)
    assert oracle.model == pytest.approx(ceiling)
    flat = grounding.grounding_score(evaluation.uniform_attention(maps), instances, grid_size=4)
    assert flat.model == pytest.approx(flat.uniform) and flat.uniform < ceiling <= 1.0

    fig = evaluation.plot_grounding(oracle, ceiling, save_to=tmp_path / "figures" / "grounding.png")
    assert (tmp_path / "figures" / "grounding.png").stat().st_size > 1000
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(f"{ceiling:.1%}" in label for label in labels) and len(labels) == 3
    image_id = next(iter(maps))
    boxes = [o["bbox"] for o in grounding.objects_from_instances(instances, image_id)]
    ax = evaluation.show_mass_inside(np.zeros((128, 128, 3), dtype=np.uint8), maps[image_id][1][0], boxes, 4)
    assert len(ax.patches) == len(boxes)
    matplotlib.pyplot.close("all")
