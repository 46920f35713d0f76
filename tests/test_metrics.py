"""Tests for labutils.metrics: exact agreement with pycocoevalcap's own COCOEvalCap, NLTK BLEU, tables, fallbacks."""

import json
import urllib.error

import pandas as pd
import pytest

from labutils import metrics

# Ten images, ids deliberately unsorted; captions with capitals, punctuation, clitics and one empty prediction,
# so the PTB tokenisation and every scorer's edge cases are exercised.
REFERENCES = {
    42: ["Two green circles above a red circle.", "a red circle below two green circles",
         "There are two green circles and one red circle.", "two green round shapes over a red one",
         "A red circle, and two green circles above it."],
    7: ["a blue square", "one blue square in the middle", "A single blue square.", "a blue square on its own"],
    100: ["on the left is a blue circle , on the right are three green squares",
          "three green squares to the right of a blue circle", "a blue circle left of three green squares"],
    3: ["a yellow triangle above a purple square", "A purple square under a yellow triangle."],
    58: ["four red triangles", "there are four red triangles", "Four triangles, all red."],
    12: ["a green circle next to a green square", "a green square beside a green circle"],
    91: ["two orange squares", "a pair of orange squares", "Two squares; both are orange."],
    25: ["a cyan circle below a red triangle", "a red triangle above a cyan circle"],
    66: ["three blue circles in a row", "a row of three blue circles", "Three blue circles side by side."],
    80: ["a magenta triangle", "one magenta triangle", "The image shows a magenta triangle."],
}
PREDICTIONS = {
    42: "two green circles above a red circle",
    7: "A blue square.",
    100: "a blue circle on the left and three green squares on the right",
    3: "a yellow triangle above a square",
    58: "four red triangles",
    12: "a green circle next to a green circle",
    91: "two orange squares",
    25: "",
    66: "three blue circles",
    80: "a triangle isn't magenta",
}
CLEAN_PREDICTIONS = {  # lower-case, no punctuation, at least 4 words: whitespace and PTB tokens agree
    42: "two green circles above a red circle", 7: "a blue square in the middle",
    100: "a blue circle left of three green circles", 3: "a yellow triangle above a purple square",
    58: "there are four red squares", 12: "a green square beside a green circle", 91: "a pair of orange circles",
    25: "a red triangle above a cyan circle", 66: "three blue circles in a row", 80: "a single magenta triangle",
}
CLEAN_REFERENCES = {i: [r.lower().replace(".", "").replace(",", "").replace(";", "") for r in refs]
                    for i, refs in REFERENCES.items()}


class OfflineSpice:
    """Stand-in for pycocoevalcap's Spice inside COCOEvalCap.evaluate, which always runs SPICE; the real one
    downloads Stanford CoreNLP, impossible offline. Every other scorer is COCOEvalCap's own."""

    def compute_score(self, gts, res):
        return 0.0, [{"All": {"f": 0.0}} for _ in gts]

    def method(self):
        return "SPICE"


@pytest.fixture(scope="module")
def cocoevalcap_result(tmp_path_factory):
    """pycocotools COCO + loadRes + COCOEvalCap.evaluate on the fixed captions written to JSON files."""
    import pycocoevalcap.eval as coco_eval
    from pycocotools.coco import COCO

    folder = tmp_path_factory.mktemp("cocoeval")
    annotations = [{"id": n, "image_id": i, "caption": c}
                   for n, (i, c) in enumerate(((i, c) for i, refs in REFERENCES.items() for c in refs), start=1)]
    gt = {"info": {}, "licenses": [], "type": "captions", "images": [{"id": i} for i in REFERENCES],
          "annotations": annotations}
    (folder / "gt.json").write_text(json.dumps(gt))
    (folder / "res.json").write_text(json.dumps([{"image_id": i, "caption": c} for i, c in PREDICTIONS.items()]))
    coco = COCO(str(folder / "gt.json"))
    results = coco.loadRes(str(folder / "res.json"))
    original_spice, original_meteor = coco_eval.Spice, coco_eval.Meteor
    coco_eval.Spice = OfflineSpice
    # The METEOR jar keeps no state between EVAL requests; reusing our started process saves a JVM start (~5 s).
    coco_eval.Meteor = metrics._meteor_scorer
    try:
        evaluator = coco_eval.COCOEvalCap(coco, results)
        evaluator.evaluate()
    finally:
        coco_eval.Spice, coco_eval.Meteor = original_spice, original_meteor
    return evaluator


@pytest.fixture(scope="module")
def ours():
    return metrics.evaluate(PREDICTIONS, REFERENCES)


def test_coco_scores_equal_cocoevalcap_exactly(cocoevalcap_result, ours):
    scores, _ = ours
    assert list(scores) == list(metrics.METRICS)
    for name in metrics.METRICS:
        assert scores[name] == cocoevalcap_result.eval[name], name  # bit-for-bit, not approximately
    assert 0 < scores["Bleu_4"] < scores["Bleu_1"] < 1
    assert scores["CIDEr"] > 0


def test_per_image_scores_equal_cocoevalcap_exactly(cocoevalcap_result, ours):
    _, table = ours
    assert list(table.index) == list(REFERENCES)
    assert table.index.name == "image_id"
    for image_id, row in table.iterrows():
        for name in metrics.METRICS:
            assert row[name] == cocoevalcap_result.imgToEval[image_id][name], (image_id, name)
    assert table.loc[25, "prediction"] == ""
    assert table.loc[25, "CIDEr"] == 0.0 and table.loc[42, "CIDEr"] > 1.0
    assert table.loc[7, "references"] == REFERENCES[7]


def test_only_predicted_images_are_scored_in_reference_order():
    subset = {66: PREDICTIONS[66], 42: PREDICTIONS[42], 58: PREDICTIONS[58]}
    assert list(metrics.per_image_scores(subset, REFERENCES).index) == [42, 58, 66]
    exact = {58: PREDICTIONS[58], 42: PREDICTIONS[42]}  # both equal one of their references
    assert metrics.coco_scores(exact, REFERENCES)["Bleu_4"] == pytest.approx(1.0, abs=1e-6)


def test_bleu_fast_paths_equal_coco_scores(ours):
    assert metrics.bleu4(PREDICTIONS, REFERENCES) == ours[0]["Bleu_4"]
    assert metrics.coco_bleu(PREDICTIONS, REFERENCES) == [ours[0][f"Bleu_{n}"] for n in range(1, 5)]


def test_bleu_without_java_tokenizer_for_training(monkeypatch):
    # exact=False never starts Java (what validation after each epoch wants) and scores like the Java path on
    # plain captions; it is the same number the no-java fallback of coco_scores gives
    refs = {1: ["a red circle on the left", "there is a red circle on the left"], 2: ["two blue squares"]}
    assert metrics.bleu4({1: "a red circle on the left", 2: "Two blue squares"}, refs, exact=False) == \
        pytest.approx(1.0, abs=1e-6)
    assert metrics.bleu4({1: "green triangles", 2: "above below"}, refs, exact=False) < 0.01
    exact = metrics.coco_bleu(CLEAN_PREDICTIONS, CLEAN_REFERENCES)

    def no_java(*args, **kwargs):
        raise AssertionError("exact=False must not run java")

    monkeypatch.setattr(metrics, "_java_ptb_tokenize", no_java)
    assert metrics.coco_bleu(CLEAN_PREDICTIONS, CLEAN_REFERENCES, exact=False) == exact
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.warns(RuntimeWarning, match="java was not found"):
        fallback = metrics.coco_scores(CLEAN_PREDICTIONS, CLEAN_REFERENCES)
    assert metrics.bleu4(CLEAN_PREDICTIONS, CLEAN_REFERENCES, exact=False) == fallback["Bleu_4"]


def test_results_table_rows_per_method_columns_per_metric(ours):
    greedy = ours[0]
    other = {k: v / 2 for k, v in greedy.items()}
    table = metrics.results_table({"greedy": greedy, "beam3": other})
    assert list(table.index) == ["greedy", "beam3"]
    assert list(table.columns) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"]
    assert table.loc["beam3", "CIDEr-D"] == greedy["CIDEr"] / 2
    assert metrics.results_table({"greedy": greedy}, percent=True).loc["greedy", "BLEU-1"] == greedy["Bleu_1"] * 100


def test_nltk_bleu_equals_coco_bleu_when_tokens_agree_and_no_caption_is_short():
    coco = metrics.coco_scores(CLEAN_PREDICTIONS, CLEAN_REFERENCES)
    nltk = metrics.nltk_corpus_bleu(CLEAN_PREDICTIONS, CLEAN_REFERENCES)
    assert 0.3 < coco["Bleu_4"] < 0.9
    for n in range(1, 5):
        # Same tokens, same corpus-level sums, same closest-reference brevity penalty: only COCO's 1e-9
        # epsilons separate them.
        assert nltk[f"Bleu_{n}"] == pytest.approx(coco[f"Bleu_{n}"], abs=1e-7)
    # A 3-word caption has no 4-gram: COCO counts 0 of them, NLTK at least 1, so NLTK's BLEU-4 drops.
    with_short = {**CLEAN_PREDICTIONS, 91: "two orange squares"}
    coco_short = metrics.coco_scores(with_short, CLEAN_REFERENCES)
    nltk_short = metrics.nltk_corpus_bleu(with_short, CLEAN_REFERENCES)
    assert nltk_short["Bleu_1"] == pytest.approx(coco_short["Bleu_1"], abs=1e-7)
    assert nltk_short["Bleu_4"] < coco_short["Bleu_4"] - 1e-3


def test_nltk_bleu_differs_on_raw_text_and_without_smoothing():
    refs = {12: REFERENCES[12]}
    raw = {12: "A green circle next to a green square."}
    # PTB tokens match a reference exactly; whitespace tokens keep "A" and "square." apart from "a", "square".
    assert metrics.coco_scores(raw, refs)["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert metrics.nltk_corpus_bleu(raw, refs)["Bleu_4"] < 0.8
    no_4gram = {3: "a yellow triangle below a square", 58: "red triangles four there"}  # no 4-gram matches
    assert metrics.nltk_corpus_bleu(no_4gram, REFERENCES)["Bleu_4"] < 1e-50
    assert metrics.nltk_corpus_bleu(no_4gram, REFERENCES, smoothing=True)["Bleu_4"] > 0.01
    assert 0.0 < metrics.bleu4(no_4gram, REFERENCES) < 1e-3  # COCO's epsilon: tiny, not zero
    with pytest.raises(ValueError, match="smoothing"):
        metrics.nltk_corpus_bleu(PREDICTIONS, REFERENCES, smoothing="method42")


def test_spice_offline_gives_one_message_and_is_left_out(monkeypatch):
    import pycocoevalcap.spice.spice as spice_module

    def no_network():
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(spice_module, "get_stanford_models", no_network)  # offline, even on an online CI runner
    subset = {42: PREDICTIONS[42], 7: PREDICTIONS[7]}
    with pytest.warns(RuntimeWarning, match="SPICE could not run") as caught:
        scores = metrics.coco_scores(subset, REFERENCES, spice=True)
    assert len(caught) == 1
    assert "SPICE" not in scores and set(metrics.METRICS) <= set(scores)
    assert "SPICE" not in metrics.results_table({"greedy": scores}).columns


def test_without_java_a_python_tokenizer_is_used_and_meteor_left_out(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.warns(RuntimeWarning, match="java was not found"):
        scores = metrics.coco_scores(CLEAN_PREDICTIONS, CLEAN_REFERENCES)
    assert "METEOR" not in scores
    monkeypatch.undo()
    with_java = metrics.coco_scores(CLEAN_PREDICTIONS, CLEAN_REFERENCES)
    for name in ("Bleu_4", "ROUGE_L", "CIDEr"):
        assert scores[name] == with_java[name]


def test_python_tokenizer_matches_ptb_on_typical_captions():
    captions = ["A man, riding a horse.", "Two dogs' toys on the grass!", "It isn't a cat; it's a DOG...",
                "on the left is a blue circle , on the right are three green squares",
                "A 2-year-old boy in a T-shirt (red) at 5 a.m."]
    ptb = metrics.ptb_tokenize({0: captions})[0]
    assert [metrics.simple_ptb_tokenize(c) for c in captions] == ptb


def test_predictions_may_be_decode_captions():
    from labutils.decode import Caption

    captions = {i: Caption(tokens=[], words=[], text=t, log_prob=0.0, score=0.0) for i, t in PREDICTIONS.items()}
    assert metrics.bleu4(captions, REFERENCES) == metrics.bleu4(PREDICTIONS, REFERENCES)


def test_clear_errors_for_mismatched_inputs():
    with pytest.raises(ValueError, match="no references"):
        metrics.coco_scores({999: "a red circle"}, REFERENCES)
    with pytest.raises(ValueError, match="empty"):
        metrics.coco_scores({}, REFERENCES)
    with pytest.raises(ValueError, match="non-empty list"):
        metrics.coco_scores({7: "a blue square"}, {7: "a blue square"})
    with pytest.raises(TypeError, match="caption string"):
        metrics.bleu4({7: 3}, REFERENCES)


def test_results_table_is_a_dataframe_with_spice_last_when_present():
    table = metrics.results_table({"a": {"CIDEr": 1.0, "SPICE": 0.2, "Bleu_1": 0.5}})
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["BLEU-1", "CIDEr-D", "SPICE"]
