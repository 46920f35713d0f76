"""Tests for labutils.vocab: tokenisation policy, vocabulary order, encode/decode, JSON round trip, coverage."""

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from labutils.vocab import (
    CoverageStats,
    Vocabulary,
    VocabularyFileError,
    count_words,
    coverage,
    min_freq_table,
    tokenize,
    tokenize_all,
)

CAPTIONS = [
    "A red circle on the left.",
    "Two red circles, above a blue square!",
    "a blue square",
    "the   red  square\n",
]


@pytest.fixture
def vocab():
    return Vocabulary.build(CAPTIONS)


def test_tokenize_lowercases_and_drops_punctuation_and_whitespace():
    assert tokenize("Two Red circles, above a BLUE square!") == ["two", "red", "circles", "above", "a", "blue",
                                                                 "square"]
    assert tokenize("the   red\n square .") == ["the", "red", "square"]
    assert tokenize("") == []


# Tricky captions and the tokens pycocoevalcap's PTBTokenizer (Java, CoreNLP 3.4.1, -lowerCase, then its punctuation
# filter) gave for them, recorded once so that this test needs no Java; test_tokenize_equals_java_ptb_on_flickr8k
# checks the same equality live on real captions.
RECORDED_PTB = {
    "A boy in a white T-shirt.": "a boy in a white t-shirt",
    "A 2-year-old dog jumps over a half-pipe -- or a ramp - at the park.":
        "a 2-year-old dog jumps over a half-pipe or a ramp at the park",
    "The dog's ball and the dogs' toys, someone 's hand": "the dog 's ball and the dogs toys someone 's hand",
    "It isn't a cat; it's a DOG... I can't, won't, cannot": "it is n't a cat it 's a dog i ca n't wo n't can not",
    "At 5 a.m. in the U.S. with Mr. Smith, etc.": "at 5 a.m. in the u.s. with mr. smith etc.",
    "Two men, 3.5 and 1,000 and 10:30 and $5 and 50%": "two men 3.5 and 1,000 and 10:30 and $ 5 and 50 %",
    "A man (in red) [and] {blue} with # 7": "a man -lrb- in red -rrb- -lsb- and -rsb- -lcb- blue -rcb- with # 7",
    "He said \"hello\" to 'them' and \u201chi\u201d to \u2018us\u2019": "he said hello to them and hi to us",
    "the   red    square   .": "the red square",
    "A DOG Runs On The GRASS !": "a dog runs on the grass",
    "What ?! A slip 'n' slide ?": "what ?! a slip 'n' slide",
    "Rock & roll &amp; AT&T": "rock & roll & at&t",
    "O'Neil's rock'n'roll at 5 o'clock, ma'am": "o'neil 's rock 'n' roll at 5 o'clock ma'am",
    "A U.S.-based B&B, 'tis 5'10\" tall": "a u.s.-based b&b 't is 5 10 tall",
}
FLICKR8K_TEXT = Path("/work/shared/flickr8k/Flickr8k_text")


@pytest.mark.parametrize("caption", list(RECORDED_PTB))
def test_tokenize_equals_recorded_java_ptb_tokens(caption):
    # Hyphenated words stay whole ("t-shirt", as the scorer counts them), clitics split off, abbreviations keep
    # their full stop, brackets survive as "-lrb-" because pycocoevalcap's filter compares upper-case names.
    assert tokenize(caption) == RECORDED_PTB[caption].split()


def _flickr8k_training_captions() -> list[str]:
    train = set((FLICKR8K_TEXT / "Flickr_8k.trainImages.txt").read_text().split())
    lines = (FLICKR8K_TEXT / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines()
    return [caption for name, caption in (line.split("\t", 1) for line in lines if "\t" in line)
            if name.split("#")[0] in train]


@pytest.mark.skipif(not (FLICKR8K_TEXT / "Flickr8k.token.txt").is_file(),
                    reason=f"Flickr8k captions not found under {FLICKR8K_TEXT}; download Flickr8k to run this test")
@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTB tokenizer needs java")
def test_tokenize_equals_java_ptb_on_flickr8k():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = _flickr8k_training_captions()  # 30,000: spaCy's tokenizer differed on 771 of them (hyphens)
    assert len(captions) > 20_000
    java = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    differ = [(c, tokenize(c), java[i][0].split()) for i, c in enumerate(captions) if tokenize(c) != java[i][0].split()]
    assert not differ, f"{len(differ)} of {len(captions)} captions differ, e.g. {differ[:3]}"


def test_tokenize_keeps_synthetic_captions_as_plain_words():
    # The synthetic captions are lower-case words, spaces and free-standing commas: the tokens are exactly the
    # words, as with the spaCy tokenizer used before (vocab sizes and the quick profile's numbers depend on this).
    import numpy as np

    from labutils.infra.synthetic import sample_scene

    rng = np.random.default_rng(0)
    captions = [caption for _ in range(200) for caption in sample_scene(rng, 64)[1]]
    assert all(tokenize(caption) == [w for w in caption.split() if w != ","] for caption in captions)


def test_tokenize_rejects_non_strings():
    with pytest.raises(TypeError, match="string"):
        tokenize(["a", "list"])


def test_tokenize_all_matches_tokenize():
    assert tokenize_all(CAPTIONS) == [tokenize(c) for c in CAPTIONS]


def test_specials_have_fixed_indices(vocab):
    assert vocab.itos[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    assert [Vocabulary.PAD, Vocabulary.START, Vocabulary.END, Vocabulary.UNK] == vocab.itos[:4]


def test_order_is_frequency_then_alphabetical(vocab):
    # counts: red 3, a 3, square 3, blue 2, ... ; ties alphabetical
    counts = count_words(CAPTIONS)
    assert counts["red"] == 3 and counts["a"] == 3 and counts["square"] == 3 and counts["blue"] == 2
    assert vocab.words[:4] == ["a", "red", "square", "blue"]
    assert vocab.words[4:] == sorted(vocab.words[4:], key=lambda w: (-counts[w], w))
    assert len(vocab) == 4 + len(counts)
    # building twice, or from a differently ordered corpus, gives identical indices
    assert Vocabulary.build(list(reversed(CAPTIONS))).itos == vocab.itos


def test_min_freq_drops_rare_words():
    vocab = Vocabulary.build(CAPTIONS, min_freq=2)
    assert vocab.words == ["a", "red", "square", "blue", "the"]
    assert "circle" not in vocab and vocab["circle"] == vocab.unk_id
    assert vocab.min_freq == 2
    with pytest.raises(ValueError, match="min_freq"):
        Vocabulary.build(CAPTIONS, min_freq=0)


def test_encode_adds_specials_and_maps_unknown_words(vocab):
    ids = vocab.encode("A red zebra.")
    assert ids == [vocab.start_id, vocab["a"], vocab["red"], vocab.unk_id, vocab.end_id]
    assert vocab.encode("a red", add_specials=False) == [vocab["a"], vocab["red"]]
    assert vocab.encode(["a", "red"]) == vocab.encode("A red")  # pre-tokenized input


def test_encode_truncates_but_keeps_end(vocab):
    ids = vocab.encode("a red square on the left", max_len=5)
    assert len(ids) == 5
    assert ids == [vocab.start_id, vocab["a"], vocab["red"], vocab["square"], vocab.end_id]
    assert vocab.encode("a red", max_len=10) == vocab.encode("a red")  # short captions untouched
    assert vocab.encode("a red", max_len=2) == [vocab.start_id, vocab.end_id]
    with pytest.raises(ValueError, match="max_len"):
        vocab.encode("a red", max_len=1)


def test_decode_stops_at_end_and_drops_specials(vocab):
    ids = [vocab.start_id, vocab["red"], vocab.unk_id, vocab["circle"], vocab.end_id, vocab["blue"], 0, 0]
    assert vocab.decode(ids) == "red circle"
    assert vocab.decode(ids, keep_unk=True) == "red <unk> circle"
    assert vocab.decode(torch.tensor(ids)) == "red circle"
    assert vocab.decode(tuple(ids)) == "red circle"
    assert vocab.decode([vocab["red"], vocab.pad_id, vocab["circle"]]) == "red circle"  # no <end>: all of it
    assert vocab.lookup_tokens(ids[:3]) == ["<start>", "red", "<unk>"]


def test_decode_errors_are_clear(vocab):
    with pytest.raises(ValueError, match="outside this vocabulary"):
        vocab.decode([vocab.start_id, len(vocab) + 5])
    with pytest.raises(ValueError, match="decode_batch"):
        vocab.decode([[1, 2], [1, 2]])


def test_decode_batch(vocab):
    batch = torch.tensor([vocab.encode("a red square"), vocab.encode("the blue") + [0]])
    assert vocab.decode_batch(batch) == ["a red square", "the blue"]


def test_round_trip_of_known_captions(vocab):
    for caption in CAPTIONS:
        assert vocab.decode(vocab.encode(caption)) == " ".join(tokenize(caption))


def test_dict_round_trip_is_plain_json(vocab, tmp_path):
    data = vocab.to_dict()
    assert json.loads(json.dumps(data)) == data
    again = Vocabulary.from_dict(data)
    assert again == vocab and again.counts == vocab.counts and again.min_freq == vocab.min_freq
    # inside a checkpoint: loadable with weights_only=True because it is plain types only
    torch.save({"vocab": data}, tmp_path / "ckpt.pt")
    assert Vocabulary.from_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["vocab"]) == vocab


def test_save_load_round_trip(vocab, tmp_path):
    path = vocab.save(tmp_path / "sub" / "vocab.json")
    loaded = Vocabulary.load(path)
    assert loaded.itos == vocab.itos
    assert loaded.encode("a red zebra") == vocab.encode("a red zebra")
    assert not list(path.parent.glob("*.tmp"))


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="build one"):
        Vocabulary.load(tmp_path / "nope.json")


def test_load_corrupt_or_foreign_files(tmp_path, vocab):
    bad = tmp_path / "bad.json"
    bad.write_text('{"itos": ["<pad>", ', encoding="utf-8")
    with pytest.raises(VocabularyFileError, match="not valid JSON"):
        Vocabulary.load(bad)
    bad.write_bytes(b"\x80\x03PK pickle bytes")
    with pytest.raises(ValueError, match="not valid JSON"):
        Vocabulary.load(bad)
    bad.write_text(json.dumps({"word2idx": {"a": 0}}), encoding="utf-8")
    with pytest.raises(VocabularyFileError, match="not a labutils vocabulary"):
        Vocabulary.load(bad)
    damaged = vocab.to_dict()
    damaged["itos"] = ["a", "<pad>", "<start>", "<end>", "<unk>"]
    with pytest.raises(VocabularyFileError, match="starting with"):
        Vocabulary.from_dict(damaged)
    damaged["itos"] = list(Vocabulary.SPECIALS) + ["a", "a"]
    with pytest.raises(VocabularyFileError, match="repeats"):
        Vocabulary.from_dict(damaged)
    damaged = dict(vocab.to_dict(), version=99)
    with pytest.raises(VocabularyFileError, match="version 99"):
        Vocabulary.from_dict(damaged)


def test_coverage_counts_known_tokens():
    counter = Counter({"a": 6, "red": 3, "zebra": 1})
    vocab = Vocabulary.from_counter(counter, min_freq=2)
    stats = coverage(vocab, counter)
    assert isinstance(stats, CoverageStats)
    assert (stats.n_tokens, stats.n_known, stats.n_types, stats.n_dropped_words) == (10, 9, 3, 1)
    assert stats.coverage == pytest.approx(0.9) and stats.oov_rate == pytest.approx(0.1)
    assert stats.to_dict()["oov_rate"] == pytest.approx(0.1)
    # from caption strings: the same numbers as from the counter
    assert coverage(vocab, ["A red zebra", "a a a a a, red red!"]) == CoverageStats(10, 9, 3, 1)


def test_min_freq_table():
    counter = Counter({"a": 10, "red": 5, "blue": 2, "zebra": 1, "okapi": 1})
    table = min_freq_table(counter, values=(1, 2, 5, 11))
    assert list(table.index) == [1, 2, 5, 11]
    assert table["vocab_size"].tolist() == [9, 7, 6, 4]
    assert table["words_dropped"].tolist() == [0, 2, 3, 5]
    assert table["token_coverage_%"].tolist() == pytest.approx([100.0, 100 * 17 / 19, 100 * 15 / 19, 0.0], abs=1e-3)
    assert (table["token_coverage_%"] + table["oov_rate_%"]).tolist() == pytest.approx([100.0] * 4)
