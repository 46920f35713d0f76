"""Caption metrics: the COCO evaluation (pycocoevalcap) per image and as tables, and NLTK's BLEU for comparison.

`evaluation.bleu_breakdown` is the one table of BLEU computed several ways on the same captions.

`coco_scores` gives exactly the numbers of pycocoevalcap's own `COCOEvalCap.evaluate` (tested): captions and
references go through the same Stanford PTB tokenizer (Java; lower-cases, splits off punctuation and clitics,
then drops punctuation) and the same scorers, image by image in the same order.

What the numbers are:

* `Bleu_1`..`Bleu_4` (Papineni et al. 2002): corpus-level BLEU, clipped n-gram counts and lengths summed over all
  images before the geometric mean; the brevity penalty uses, per image, the reference length closest to the
  candidate's.
* `METEOR` (Denkowski & Lavie 2014, METEOR 1.5): unigram matching with stems, synonyms and paraphrases.
* `ROUGE_L` (Lin 2004): longest-common-subsequence F-measure (beta 1.2), averaged over images.
* `CIDEr`: pycocoevalcap's `Cider` class is **CIDEr-D** (Vedantam et al. 2015), the variant the COCO server
  reports: no stemming, candidate n-gram counts clipped to the reference's, a Gaussian length penalty
  exp(-(l_cand - l_ref)^2 / (2 * 6^2)), times 10. Its IDF weights come from the references of the images being
  evaluated, so CIDEr-D of a subset is not the mean of the whole set's per-image values.
* `SPICE` (Anderson et al. 2016) only with `spice=True`: it needs Stanford CoreNLP, which pycocoevalcap downloads
  on first use, so offline it is left out with one message.

METEOR and the tokenizer need `java` on the PATH (it is on Colab). Without it, captions are tokenised by
`vocab.tokenize`, the Python re-implementation of the PTB tokenizer (tested equal to it on every Flickr8k caption),
METEOR is left out, and a warning says so.

pycocoevalcap's own PTBTokenizer and Spice write their temporary files into the installed package folder, which
fails on a read-only install (a shared JupyterHub, a system conda) and leaves files there when a run is
interrupted. So the lab runs the same jars with the same arguments from a temporary folder of its own
(`_scratch_folder`), removed afterwards: same input bytes, same output, nothing written beside the package.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import shutil
import socket
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .infra.files import disk_full_as_error
from .vocab import tokenize

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
DISPLAY_NAMES = {"Bleu_1": "BLEU-1", "Bleu_2": "BLEU-2", "Bleu_3": "BLEU-3", "Bleu_4": "BLEU-4",
                 "METEOR": "METEOR", "ROUGE_L": "ROUGE-L", "CIDEr": "CIDEr-D", "SPICE": "SPICE"}
NO_JAVA = ("java was not found, so captions are tokenised with the Python re-implementation of the PTB "
           "tokenizer and METEOR is left out; install a Java runtime (apt-get install default-jre, or conda "
           "install openjdk) for the official COCO numbers.")

_ptb_cache: dict[str, str] = {}  # caption -> PTB tokens (see ptb_tokenize)
_meteor = None  # one METEOR java process per Python process: starting it (loading paraphrases) takes seconds


def java_available() -> bool:
    """Whether a `java` executable is on the PATH (needed by the PTB tokenizer, METEOR and SPICE)."""
    return shutil.which("java") is not None


# -- inputs and tokenisation ----------------------------------------------------------------------------------
def _text(value) -> str:
    value = getattr(value, "text", value)  # accept decode.Caption objects as predictions
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise TypeError(f"A prediction must be a caption string, got {type(value).__name__}.")
    return value


def _aligned(predictions: Mapping, references: Mapping[int, Sequence[str]]) -> tuple[list, dict, dict]:
    """Image ids in the order of `references` (COCOEvalCap follows the annotation file's order), with texts."""
    if not predictions:
        raise ValueError("predictions is empty; caption some images first (a dict image_id -> caption).")
    missing = [i for i in predictions if i not in references]
    if missing:
        raise ValueError(f"Image {missing[0]!r} has a prediction but no references ({len(missing)} such images); "
                         "pass the references of every predicted image.")
    ids = [i for i in references if i in predictions]
    for i in ids:
        refs = references[i]
        if isinstance(refs, str) or not refs:
            raise ValueError(f"Image {i!r} needs a non-empty list of reference captions, got {refs!r}.")
    preds = {i: _text(predictions[i]) for i in ids}
    refs = {i: [str(r) for r in references[i]] for i in ids}
    return ids, preds, refs


def simple_ptb_tokenize(text: str) -> str:
    """The PTB tokenizer in Python (used without java and for validation during training): `vocab.tokenize`, the
    same tokens the vocabulary is built from, tested equal to pycocoevalcap's Java tokenizer, joined by spaces."""
    return " ".join(tokenize(text))


@contextlib.contextmanager
def _scratch_folder(what: str) -> Iterator[Path]:
    """A temporary folder of the lab's own for a jar's input and output files, removed afterwards whatever happens."""
    folder = Path(tempfile.mkdtemp(prefix="labutils-metrics-"))
    try:
        with disk_full_as_error(folder, what):
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_java(args: list[str], folder: Path, name: str) -> bytes:
    """Run `java *args` in `folder` and return its stdout; a failure is one sentence with java's first error line."""
    done = subprocess.run(["java", *args], cwd=folder, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if done.returncode != 0:
        errors = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
        raise RuntimeError(f"{name} (java) failed with exit code {done.returncode}: "
                           f"{errors[0][:200] if errors else 'no message'}; check that `java -version` runs.")
    return done.stdout


def _java_ptb_tokenize(sentences: list[str]) -> list[str]:
    """pycocoevalcap's `PTBTokenizer.tokenize` for a list of sentences, run from `_scratch_folder`.

    Same jar, same arguments, the same bytes in the input file and the same punctuation filter, so the tokens are
    identical (tested against COCOEvalCap); only the folder holding the input file differs.
    """
    from pycocoevalcap.tokenizer import ptbtokenizer as ptb

    jar = Path(ptb.__file__).resolve().parent / ptb.STANFORD_CORENLP_3_4_1_JAR
    text = "\n".join(s.replace("\n", " ") for s in sentences)
    with _scratch_folder("the captions for the PTB tokenizer") as folder:
        (folder / "captions.txt").write_bytes(text.encode())
        output = _run_java(["-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                            "-lowerCase", "captions.txt"], folder, "The PTB tokenizer")
    lines = output.decode().split("\n")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in ptb.PUNCTUATIONS) for line in lines]


def ptb_tokenize(captions: Mapping[object, Sequence[str]]) -> dict[object, list[str]]:
    """Tokenise {key: [caption, ...]} exactly as COCOEvalCap does (PTBTokenizer in Java; `vocab.tokenize` without).

    The tokenizer treats every line on its own, so each distinct caption is tokenised once per process and
    remembered: scoring several decoding methods against the same references starts Java only for new text.
    """
    if not java_available():
        return _python_tokenize(captions)
    new = list(dict.fromkeys(c for caps in captions.values() for c in caps
                             if c not in _ptb_cache and c.strip()))
    if new:
        tokenized = _java_ptb_tokenize(new)
        if len(_ptb_cache) + len(new) > 500_000:  # bound the memory of a long session
            _ptb_cache.clear()
        _ptb_cache.update((c, tokenized[n] if n < len(tokenized) else "") for n, c in enumerate(new))
    return {key: [_ptb_cache.get(c, "") if c.strip() else "" for c in caps] for key, caps in captions.items()}


def _python_tokenize(captions: Mapping[object, Sequence[str]]) -> dict[object, list[str]]:
    return {key: [simple_ptb_tokenize(c) for c in caps] for key, caps in captions.items()}


def _tokenized(ids, preds, refs, exact: bool = True) -> tuple[dict, dict]:
    tokenize = ptb_tokenize if exact else _python_tokenize
    tokens = tokenize({("ref", i): refs[i] for i in ids} | {("pred", i): [preds[i]] for i in ids})
    return {i: tokens[("ref", i)] for i in ids}, {i: tokens[("pred", i)] for i in ids}


# -- scorers --------------------------------------------------------------------------------------------------
def _meteor_scorer():
    global _meteor
    from pycocoevalcap.meteor.meteor import Meteor

    if _meteor is None or _meteor.meteor_p.poll() is not None:
        _meteor = Meteor()
    return _meteor


def _run_spice(gts: dict, res: dict):
    """pycocoevalcap's `Spice.compute_score`, with its input and output files in `_scratch_folder`.

    pycocoevalcap keeps them, and SPICE's parse cache, in its package folder; the lab runs without the cache
    (which only saves re-parsing the same references), so a run leaves nothing behind.
    """
    import numpy as np
    from pycocoevalcap.spice import spice as spice_module

    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap's download chatter; we warn once instead
        spice_module.get_stanford_models()  # downloads Stanford CoreNLP (several hundred MB) on first use
    jar = Path(spice_module.__file__).resolve().parent / spice_module.SPICE_JAR
    ids = sorted(gts)
    records = [{"image_id": i, "test": res[i][0], "refs": gts[i]} for i in ids]
    with _scratch_folder("the captions for SPICE") as folder:
        (folder / "in.json").write_text(json.dumps(records, indent=2))
        _run_java(["-jar", "-Xmx8G", str(jar), "in.json", "-out", "out.json", "-subset", "-silent"], folder,
                  "The SPICE jar")
        results = json.loads((folder / "out.json").read_text())
    by_id = {item["image_id"]: item["scores"] for item in results}
    # In the order of `gts`, as every other scorer returns them (pycocoevalcap's are sorted by id).
    per_image = [{category: {k: _float_or_nan(v) for k, v in values.items()}
                  for category, values in by_id[i].items()} for i in gts]
    return np.mean(np.array([_float_or_nan(item["scores"]["All"]["f"]) for item in results])), per_image


def _float_or_nan(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _spice(gts: dict, res: dict):
    """SPICE scores, or None with one clear message when it cannot run (offline, no java, failed jar)."""
    if not java_available():
        warnings.warn("SPICE needs java, which was not found; SPICE is left out.", RuntimeWarning, stacklevel=3)
        return None
    previous = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(20)  # offline, fail in seconds instead of hanging on the CoreNLP download
        return _run_spice(gts, res)
    except Exception as exc:  # network errors, a broken download, or the SPICE jar failing
        warnings.warn(_spice_failure(exc), RuntimeWarning, stacklevel=3)
        return None
    finally:
        socket.setdefaulttimeout(previous)


def _spice_failure(exc: Exception) -> str:
    from pycocoevalcap.spice import spice as spice_module

    package = str(Path(spice_module.__file__).resolve().parent)
    if (isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES)
            and str(exc.filename or "").startswith(package)):
        return (f"SPICE could not store Stanford CoreNLP in {package}, which is read-only, so SPICE is left out; "
                "install pycocoevalcap where you can write, or have its owner run "
                "`python -m pycocoevalcap.spice.get_stanford_models` once.")
    return (f"SPICE could not run ({type(exc).__name__}: {str(exc)[:100]}); it needs Stanford CoreNLP, which "
            "pycocoevalcap downloads on first use, so run once online, with Java 8 or 11. SPICE is left out.")


def evaluate(predictions: Mapping, references: Mapping[int, Sequence[str]], spice: bool = False):
    """Corpus scores (dict) and per-image scores (DataFrame) of `predictions` against `references`.

    `predictions` maps image id -> caption (a string or a `decode.Caption`); `references` maps image id -> list
    of reference captions. Only predicted images are scored, in the order of `references`.
    """
    import pandas as pd
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids, preds, refs = _aligned(predictions, references)
    if not java_available():
        warnings.warn(NO_JAVA, RuntimeWarning, stacklevel=2)
    gts, res = _tokenized(ids, preds, refs)

    scores: dict[str, float] = {}
    per_image: dict[str, list[float]] = {}
    bleu, bleu_images = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        scores[f"Bleu_{n + 1}"] = bleu[n]
        per_image[f"Bleu_{n + 1}"] = list(bleu_images[n])
    if java_available():
        scores["METEOR"], meteor_images = _meteor_scorer().compute_score(gts, res)
        per_image["METEOR"] = list(meteor_images)
    scores["ROUGE_L"], rouge_images = Rouge().compute_score(gts, res)
    per_image["ROUGE_L"] = list(rouge_images)
    scores["CIDEr"], cider_images = Cider().compute_score(gts, res)
    per_image["CIDEr"] = list(cider_images)
    if spice:
        spice_result = _spice(gts, res)
        if spice_result is not None:
            scores["SPICE"] = spice_result[0]
            per_image["SPICE"] = [s["All"]["f"] for s in spice_result[1]]
    scores = {key: float(value) for key, value in scores.items()}

    table = pd.DataFrame(per_image, index=pd.Index(ids, name="image_id"))
    table.insert(0, "prediction", [preds[i] for i in ids])
    table["references"] = [refs[i] for i in ids]
    return scores, table


def coco_scores(predictions: Mapping, references: Mapping[int, Sequence[str]], spice: bool = False) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr-D (+ SPICE if asked and possible), keyed as COCOEvalCap keys them."""
    return evaluate(predictions, references, spice=spice)[0]


def per_image_scores(predictions: Mapping, references: Mapping[int, Sequence[str]], spice: bool = False):
    """A DataFrame indexed by image id: the prediction, every metric for that image, and its references."""
    return evaluate(predictions, references, spice=spice)[1]


def coco_bleu(predictions: Mapping, references: Mapping[int, Sequence[str]], exact: bool = True) -> list[float]:
    """Corpus BLEU-1..4 exactly as `coco_scores` computes them, and nothing else (fast: no METEOR/ROUGE/CIDEr).

    `exact=False` tokenises with `simple_ptb_tokenize`, the Python stand-in, even where java is installed: no
    Java process per call, which is what validation after every training epoch wants, and the same tokens as
    the PTB tokenizer for plain captions like the synthetic ones.
    """
    from pycocoevalcap.bleu.bleu import Bleu

    ids, preds, refs = _aligned(predictions, references)
    gts, res = _tokenized(ids, preds, refs, exact)
    return [float(b) for b in Bleu(4).compute_score(gts, res, verbose=0)[0]]


def bleu4(predictions: Mapping, references: Mapping[int, Sequence[str]], exact: bool = True) -> float:
    """Corpus BLEU-4 exactly as `coco_scores` computes it (`exact=False`: the Python tokenizer, see `coco_bleu`)."""
    return coco_bleu(predictions, references, exact)[3]


def results_table(results: Mapping[str, Mapping[str, float]], percent: bool = False):
    """One row per decoding method (e.g. {"greedy": scores, "beam3": scores}), one column per metric."""
    import pandas as pd

    table = pd.DataFrame.from_dict({name: dict(scores) for name, scores in results.items()}, orient="index")
    order = [m for m in (*METRICS, "SPICE") if m in table.columns]
    table = table[order + [c for c in table.columns if c not in order]]
    table = table.rename(columns=DISPLAY_NAMES)
    table.index.name = "method"
    return table * 100 if percent else table


# -- NLTK BLEU, for comparison --------------------------------------------------------------------------------
def nltk_corpus_bleu(predictions: Mapping, references: Mapping[int, Sequence[str]],
                     smoothing: bool | str | None = None, max_n: int = 4) -> dict[str, float]:
    """NLTK's `corpus_bleu` on whitespace tokens, as many tutorials compute it; keys as in `coco_scores`.

    Why it differs from `coco_scores`' BLEU on the same captions:

    * Tokenisation: here `caption.split()`, so "Dog" / "dog" and "circle." / "circle" are different words;
      COCO's PTB tokenizer lower-cases and drops punctuation first. (Tutorials that score vocabulary ids also
      turn rare reference words into `<unk>`, which can match a predicted `<unk>`.)
    * Corpus vs averaged: both functions here are corpus-level (counts summed over images, then one geometric
      mean). Averaging per-image sentence BLEU, as `per_image_scores(...).mean()` would, gives another number.
    * Short captions: NLTK puts at least 1 in every n-gram precision's denominator per caption (max(1, count)),
      so a 3-word caption lowers NLTK's BLEU-4; COCO counts its zero 4-grams as zero.
    * Brevity penalty: both use the reference length closest to each candidate (ties to the shorter one) in the
      installed versions; some older scripts (NIST's mteval-v11, pycocoevalcap's unused "shortest" option) take
      the shortest reference, which penalises short captions less.
    * Zero counts and smoothing: COCO adds 1e-15 / 1e-9 to every n-gram precision, so a corpus with no matching
      4-gram gets BLEU-4 of about 0 without complaint; NLTK returns about 1e-78 (and warns, silenced here)
      unless `smoothing` names a `SmoothingFunction` method ("method1".."method7"; True means "method1"), and
      smoothing raises scores noticeably on small corpora.
    """
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    ids, preds, refs = _aligned(predictions, references)
    hypotheses = [preds[i].split() for i in ids]
    reference_lists = [[r.split() for r in refs[i]] for i in ids]
    smoother = None
    if smoothing:
        name = "method1" if smoothing is True else str(smoothing)
        smoother = getattr(SmoothingFunction(), name, None)
        if smoother is None:
            raise ValueError(f"Unknown NLTK smoothing {smoothing!r}; use 'method0' to 'method7' or True.")
    weights = [tuple([1.0 / n] * n) for n in range(1, max_n + 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # NLTK's "0 counts of n-gram overlaps" warning
        values = corpus_bleu(reference_lists, hypotheses, weights=weights, smoothing_function=smoother)
    return {f"Bleu_{n}": float(v) for n, v in enumerate(values, start=1)}
