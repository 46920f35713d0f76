"""Words to integers and back: the PTB tokenizer, the `Vocabulary` (JSON, never pickle) and coverage statistics.

Tokenisation policy (the same for training captions, generated captions and references):

* `tokenize` gives exactly the tokens of the COCO caption evaluation: pycocoevalcap runs the Stanford PTB
  tokenizer (Java) with `-lowerCase` and then drops the tokens in its punctuation list. `tokenize` is a
  pure-Python re-implementation of the PTB rules that captions meet, tested equal to the Java tokenizer on every
  Flickr8k caption, so training needs no Java.
* PTB rules: clitics are split off ("don't" -> "do" + "n't", "dog's" -> "dog" + "'s"), hyphenated words stay one
  token ("t-shirt", "2-year-old"), abbreviations keep their full stop ("a.m.", "u.s.", "mr."), numbers keep their
  separators ("3.5", "1,000"), brackets become "-lrb-", "-rrb-" and the like.
* Every token is lower-cased and the scorer's punctuation tokens (`PTB_PUNCTUATION`) are dropped.

Why: the scorer tokenises candidates and references this way before computing BLEU/METEOR/ROUGE-L/CIDEr, so a
word the vocabulary splits differently ("t shirt" against the scorer's "t-shirt") could never earn its n-grams,
and a capital letter or a full stop the model learnt to produce could never earn a point. Lower-casing also makes
"Dog", "dog" and "dog." one word instead of three, which shrinks the vocabulary and gives every word more examples.
(Quirk kept on purpose: pycocoevalcap compares the lower-cased "-lrb-" with its upper-case "-LRB-", so brackets
survive as words; the vocabulary keeps them too, because the scorer counts them.)
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

VOCAB_FORMAT = "labutils.vocab"
VOCAB_VERSION = 1


class VocabularyFileError(ValueError):
    """A vocabulary file that is not valid JSON or not in the format `Vocabulary.save` writes."""


# The tokens pycocoevalcap's PTBTokenizer removes after tokenising (it compares them with the lower-cased tokens).
PTB_PUNCTUATION = frozenset({"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":",
                             "-", "--", "...", ";"})
# Characters the PTB tokenizer rewrites (PTB3 escaping): brackets get names, quotes become LaTeX-style quotes.
_SYMBOLS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-", '"': "''",
            "“": "``", "”": "''", "‘": "`", "’": "'"}
# Words whose final full stop the PTB tokenizer keeps (its abbreviation lists, the part captions meet).
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "prof", "mt", "ave", "co", "inc",
                            "ltd", "corp", "jan", "feb", "aug", "sept", "oct", "nov", "dec"})
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"),
                "wanna": ("wan", "na"), "lemme": ("lem", "me"), "gimme": ("gim", "me")}
_AL = r"[^\W_]"  # a letter or digit
_PREFIX = rf"(?:[dDoOlL]['’](?={_AL}))?"  # the apostrophe PTB keeps inside a word: "o'neil", "d'artagnan"
_JOIN = r"(?:[-_/]|\.-?|(?<=\d)[,:](?=\d)|(?<=[A-Z])&(?=[A-Z]))"  # "t-shirt", "u.s.-based", "1,000", "AT&T"
_SUFFIX = rf"(?:(?:['’](?i:s|m|d|re|ve|ll)|(?<=[nN])['’][tT])(?!{_AL}))?"  # "dog's", "isn't": split later
# One piece of a caption, first alternative that matches: a free-standing clitic or clipped word
# ("'s", "'em"); a few words with their own rule; a word (inner joiners, a clitic suffix, a final full
# stop); an ellipsis; dashes; runs of ?/!; the HTML "&amp;"; any other single character.
_PIECE = re.compile(
    rf"(?P<clitic>['’][nN]['’]|['’][tT](?=(?i:is)\b)|['’](?i:s|m|d|re|ve|ll|n|cause|em|til)(?!{_AL}))"
    r"|(?P<special>(?i:ma['’]am\b|y['’](?=all\b)))"
    rf"|(?P<word>{_PREFIX}{_AL}+(?:{_JOIN}{_PREFIX}{_AL}+)*{_SUFFIX}\.?)"
    r"|(?P<dots>\.{3,}|…)|(?P<dashes>--+|[\u2013\u2014\u2015])|(?P<bangs>[?!]+)|(?P<amp>&amp;)"
    r"|(?P<other>\S)")
_CLITIC = re.compile(r"(?i)^(.+?)(n['’]t|['’](?:s|m|d|re|ve|ll))$")
_ACRONYM = re.compile(r"^(?:[^\W\d_]\.)+$|^[^\W\d_](?:\.[^\W\d_])+\.$")  # "a.m.", "U.S.", "e.g."


def _split_word(word: str) -> list[str]:
    """PTB's split of one word piece: a final full stop off unless an abbreviation, then clitics off."""
    tail = []
    if word.endswith(".") and not (_ACRONYM.match(word) or word[:-1].lower() in _ABBREVIATIONS):
        word, tail = word[:-1], ["."]
    clitic = _CLITIC.match(word)
    if clitic:  # "isn't" -> "is" + "n't", "o'neil's" -> "o'neil" + "'s"
        return [*_split_word(clitic.group(1)), clitic.group(2), *tail]
    return [*_SPLIT_WORDS.get(word.lower(), [word]), *tail]


def _ptb_tokens(text: str) -> list[str]:
    """The PTB tokenizer's tokens of `text`, case and punctuation kept (before pycocoevalcap's filter)."""
    tokens = []
    for match in _PIECE.finditer(text):
        kind, piece = match.lastgroup, match.group()
        if kind == "word":
            tokens += _split_word(piece)
        else:
            tokens.append({"dots": "...", "dashes": "--", "amp": "&"}.get(kind) or _SYMBOLS.get(piece, piece))
    return tokens


def tokenize(text: str) -> list[str]:
    """Split `text` into the COCO scorer's tokens: PTB tokenization, lower-cased, punctuation dropped."""
    if not isinstance(text, str):
        raise TypeError(f"tokenize() needs a string, got {type(text).__name__}; pass one caption at a time.")
    # Tokenise the original text and lower-case afterwards, as the Java tokenizer does ("AT&T" needs the capitals).
    lowered = (token.lower() for token in _ptb_tokens(text))
    return [token for token in lowered if token not in PTB_PUNCTUATION]


def tokenize_all(texts: Iterable[str], progress: bool = False, total: int | None = None) -> list[list[str]]:
    """Tokenize many captions (with an optional progress bar)."""
    from tqdm.auto import tqdm

    texts = list(texts)
    return [tokenize(text) for text in tqdm(texts, total=total or len(texts), desc="tokenize", disable=not progress)]


def count_words(captions: Iterable[str], progress: bool = False) -> Counter:
    """Count how often every token occurs in `captions` (after `tokenize`)."""
    counter: Counter = Counter()
    for tokens in tokenize_all(captions, progress=progress):
        counter.update(tokens)
    return counter


class Vocabulary:
    """A word <-> index table with the specials `<pad>`=0, `<start>`=1, `<end>`=2, `<unk>`=3.

    Words follow the specials ordered by frequency (most frequent first), ties alphabetically, so the same
    captions always give the same indices.
    """

    PAD = "<pad>"
    START = "<start>"
    END = "<end>"
    UNK = "<unk>"
    SPECIALS = (PAD, START, END, UNK)

    def __init__(self, words: Iterable[str] = (), counts: Mapping[str, int] | None = None, min_freq: int = 1):
        """Make a vocabulary of the specials followed by `words` in the given order (use `build` normally)."""
        self.itos: list[str] = list(self.SPECIALS)
        for word in words:
            if word in self.SPECIALS:
                continue
            self.itos.append(word)
        self.stoi: dict[str, int] = {word: index for index, word in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            duplicates = sorted(w for w, n in Counter(self.itos).items() if n > 1)
            raise ValueError(f"The word list repeats {duplicates[:5]}; give every word once.")
        self.counts: dict[str, int] = {w: int(counts[w]) for w in self.itos if counts and w in counts}
        self.min_freq = int(min_freq)

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_counter(cls, counter: Mapping[str, int], min_freq: int = 1) -> Vocabulary:
        """Keep the words seen at least `min_freq` times, most frequent first (ties alphabetically)."""
        if min_freq < 1:
            raise ValueError(f"min_freq must be at least 1, got {min_freq}.")
        kept = [(word, n) for word, n in counter.items() if n >= min_freq and word not in cls.SPECIALS]
        kept.sort(key=lambda item: (-item[1], item[0]))
        return cls([word for word, _ in kept], counts=dict(kept), min_freq=min_freq)

    @classmethod
    def build(cls, captions: Iterable[str], min_freq: int = 1, progress: bool = False) -> Vocabulary:
        """Tokenize `captions`, count the words and keep those seen at least `min_freq` times."""
        return cls.from_counter(count_words(captions, progress=progress), min_freq=min_freq)

    # -- lookups --------------------------------------------------------------------------------------------
    @property
    def pad_id(self) -> int:
        """Index of `<pad>` (always 0, so zero-filled tensors are padding)."""
        return self.stoi[self.PAD]

    @property
    def start_id(self) -> int:
        """Index of `<start>`, the first input of every caption."""
        return self.stoi[self.START]

    @property
    def end_id(self) -> int:
        """Index of `<end>`, the token that tells the decoder to stop."""
        return self.stoi[self.END]

    @property
    def unk_id(self) -> int:
        """Index of `<unk>`, used for every word not in the vocabulary."""
        return self.stoi[self.UNK]

    @property
    def words(self) -> list[str]:
        """The real words (no specials), in index order."""
        return self.itos[len(self.SPECIALS):]

    def __len__(self) -> int:
        """Number of entries including the four specials (the decoder's output size)."""
        return len(self.itos)

    def __contains__(self, word: object) -> bool:
        """Whether `word` has its own index."""
        return word in self.stoi

    def __getitem__(self, word: str) -> int:
        """Index of `word`, or of `<unk>` when the word is unknown."""
        return self.stoi.get(word, self.unk_id)

    def __eq__(self, other: object) -> bool:
        """Two vocabularies are equal when they map the same words to the same indices."""
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def __hash__(self):
        return hash(tuple(self.itos))

    def __repr__(self) -> str:
        preview = ", ".join(self.words[:6])
        return f"Vocabulary({len(self)} entries, min_freq={self.min_freq}: {preview}, ...)"

    # -- encode / decode ------------------------------------------------------------------------------------
    def encode(self, text: str | Sequence[str], add_specials: bool = True, max_len: int | None = None) -> list[int]:
        """Token ids of `text` (a caption or a list of tokens): `[<start>, w1, ..., wn, <end>]` by default.

        Unknown words become `<unk>`. `max_len` caps the length of the returned list, specials included;
        a longer caption is cut but still ends with `<end>`, so the model always learns to stop.
        """
        tokens = tokenize(text) if isinstance(text, str) else list(text)
        ids = [self.stoi.get(token, self.unk_id) for token in tokens]
        if not add_specials:
            return ids if max_len is None else ids[:max_len]
        if max_len is not None:
            if max_len < 2:
                raise ValueError(f"max_len={max_len} leaves no room for <start> and <end>; use at least 2.")
            ids = ids[: max_len - 2]
        return [self.start_id, *ids, self.end_id]

    def lookup_tokens(self, ids: Iterable[int]) -> list[str]:
        """The raw tokens for `ids`, specials included (for debugging)."""
        return [self.itos[int(i)] for i in _as_int_list(ids)]

    def decode(self, ids, keep_unk: bool = False) -> str:
        """Caption text for `ids` (list, tuple or 1-D tensor): stops at `<end>` and drops the specials.

        `<unk>` is dropped too unless `keep_unk=True` (useful to show what the vocabulary lost).
        """
        words = []
        for index in _as_int_list(ids):
            if index == self.end_id:
                break
            if not 0 <= index < len(self.itos):
                raise ValueError(f"Token id {index} is outside this vocabulary of {len(self)} entries; "
                                 "decode with the vocabulary the model was trained with.")
            if index in (self.pad_id, self.start_id) or (index == self.unk_id and not keep_unk):
                continue
            words.append(self.itos[index])
        return " ".join(words)

    def decode_batch(self, ids, keep_unk: bool = False) -> list[str]:
        """Decode every row of a 2-D tensor or a list of id lists."""
        return [self.decode(row, keep_unk=keep_unk) for row in ids]

    # -- JSON -----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain-types dict (JSON- and `torch.load(weights_only=True)`-safe) describing this vocabulary."""
        return {"format": VOCAB_FORMAT, "version": VOCAB_VERSION, "min_freq": self.min_freq,
                "itos": list(self.itos), "counts": dict(self.counts)}

    @classmethod
    def from_dict(cls, data: Mapping) -> Vocabulary:
        """Rebuild a vocabulary from `to_dict()` output, checking that it is one."""
        if not isinstance(data, Mapping) or data.get("format") != VOCAB_FORMAT or "itos" not in data:
            raise VocabularyFileError("This is not a labutils vocabulary (no 'format': 'labutils.vocab' and "
                                      "'itos' entries); build one with Vocabulary.build() and save() it.")
        if data.get("version") != VOCAB_VERSION:
            raise VocabularyFileError(f"Vocabulary format version {data.get('version')} is not supported "
                                      f"(this labutils reads version {VOCAB_VERSION}); rebuild the vocabulary.")
        itos = data["itos"]
        if (not isinstance(itos, list) or not all(isinstance(w, str) for w in itos)
                or tuple(itos[: len(cls.SPECIALS)]) != cls.SPECIALS):
            raise VocabularyFileError(f"The vocabulary's word list must be strings starting with {cls.SPECIALS}; "
                                      "the file is damaged, so rebuild it with Vocabulary.build().")
        try:
            return cls(itos[len(cls.SPECIALS):], counts=data.get("counts") or {}, min_freq=data.get("min_freq", 1))
        except ValueError as exc:
            raise VocabularyFileError(f"{exc} The vocabulary is damaged; rebuild it with Vocabulary.build().") from exc

    def save(self, path: str | Path) -> Path:
        """Write the vocabulary as UTF-8 JSON (atomically: a crash never leaves half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a vocabulary written by `save`; a missing, corrupt or foreign file raises a one-line error."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No vocabulary file at {path}; build one with Vocabulary.build() and save() it.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VocabularyFileError(f"{path} is not valid JSON ({exc}); delete it and save the vocabulary "
                                      "again.") from exc
        try:
            return cls.from_dict(data)
        except VocabularyFileError as exc:
            raise VocabularyFileError(f"{path}: {exc}") from exc


def _as_int_list(ids) -> list[int]:
    if hasattr(ids, "tolist"):  # torch tensors and numpy arrays
        ids = ids.tolist()
    if isinstance(ids, int):
        ids = [ids]
    flat = list(ids)
    if flat and isinstance(flat[0], list):
        raise ValueError("decode() takes one caption (a 1-D list or tensor); use decode_batch() for a batch.")
    return [int(i) for i in flat]


# -- coverage ---------------------------------------------------------------------------------------------------
@dataclass
class CoverageStats:
    """How well a vocabulary covers some captions."""

    n_tokens: int  # running words in the captions
    n_known: int  # of those, words the vocabulary has
    n_types: int  # distinct words in the captions
    n_dropped_words: int  # distinct words with no index (on the build captions: the words min_freq dropped)

    @property
    def coverage(self) -> float:
        """Share of running words the vocabulary knows (1.0 = no `<unk>` at all)."""
        return self.n_known / self.n_tokens if self.n_tokens else math.nan

    @property
    def oov_rate(self) -> float:
        """Share of running words that become `<unk>` (out of vocabulary)."""
        return 1.0 - self.coverage if self.n_tokens else math.nan

    def to_dict(self) -> dict:
        """Plain dict with the two rates added."""
        return {**asdict(self), "coverage": self.coverage, "oov_rate": self.oov_rate}

    def __str__(self) -> str:
        return (f"{self.n_tokens} tokens, {self.coverage:.2%} known, OOV rate {self.oov_rate:.2%}; "
                f"{self.n_dropped_words} of {self.n_types} distinct words have no index")


def coverage(vocab: Vocabulary, captions: Iterable[str] | Mapping[str, int]) -> CoverageStats:
    """Coverage of `captions` (caption strings, or a word Counter) by `vocab`."""
    counter = captions if isinstance(captions, Mapping) else count_words(captions)
    n_tokens = sum(counter.values())
    n_known = sum(n for word, n in counter.items() if word in vocab)
    dropped = sum(1 for word in counter if word not in vocab)
    return CoverageStats(n_tokens=n_tokens, n_known=n_known, n_types=len(counter), n_dropped_words=dropped)


def min_freq_table(counter: Mapping[str, int], values: Iterable[int] = (1, 2, 3, 5, 10)):
    """A pandas table: vocabulary size, words dropped, token coverage and OOV rate for each `min_freq`."""
    import pandas as pd

    rows = []
    for min_freq in values:
        vocab = Vocabulary.from_counter(counter, min_freq=min_freq)
        stats = coverage(vocab, counter)
        rows.append({"min_freq": min_freq, "vocab_size": len(vocab), "words_kept": len(vocab.words),
                     "words_dropped": stats.n_dropped_words, "token_coverage_%": round(100 * stats.coverage, 3),
                     "oov_rate_%": round(100 * stats.oov_rate, 3)})
    return pd.DataFrame(rows).set_index("min_freq")
