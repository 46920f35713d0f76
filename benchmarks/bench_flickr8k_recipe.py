"""The flickr8k profile's recipe, end to end on this machine: prepared photos -> feature cache -> training ->
scored test captions, with the time of every stage and the dev curve (metric vs minutes).

Runs what a learner's notebooks run (`features.ensure_features`, `course.train_quick_captioner`,
`evaluation.evaluate_methods`) on the flickr8k profile's config, with named overrides for the experiments that
chose the recipe (`--set hidden_dim=256 --set epochs=12`). The recipe is chosen on the dev ("val") split; the test
split is scored once per run, with the coco-caption scorers (BLEU-4, METEOR, CIDEr-D) and beam search.

    python benchmarks/bench_flickr8k_recipe.py --from ../shared/flickr8k --label recipe
    python benchmarks/bench_flickr8k_recipe.py --from ../shared/flickr8k --set epochs=8 --label short --dev-only

Each run is appended to benchmarks/results/flickr8k_recipe.json (runs with the same label are replaced).
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib  # noqa: E402
import torch  # noqa: E402
from machine import machine_info, record_run  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from labutils import coco, course, decode, evaluation, features, get_config, viz  # noqa: E402
from labutils.infra import flickr8k  # noqa: E402
from labutils.infra.environment import autocast_dtype  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "flickr8k_recipe.json"
GOAL = {"Bleu_4": 0.22, "METEOR": 0.20, "CIDEr": 0.55, "minutes": 12.0}  # issue 12: on 2 CPU cores


def parse_overrides(items: list[str]) -> dict:
    """`name=value` pairs (values as Python literals, else strings) for `cfg.replace`."""
    out = {}
    for item in items:
        name, _, text = item.partition("=")
        try:
            out[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[name] = text
    return out


def scored(decoder, vocab, cache, lab, split: str, beam: int, length_penalty: float,
           keep_captions: bool = False) -> dict:
    """coco-caption scores of beam search (and greedy) on one split, plus caption length and diversity; with
    `keep_captions`, every caption too ("captions": method -> image id -> text), to score again elsewhere."""
    ids = lab.splits[split]
    methods = {f"beam{beam}": {"method": "beam", "beam_size": beam, "length_penalty": length_penalty},
               "greedy": {"method": "greedy"}}
    comparison = evaluation.evaluate_methods(decoder, vocab, cache.source, {i: lab.captions[i] for i in ids},
                                             methods=methods, max_len=lab.cfg.max_caption_len, progress=False)
    table = comparison.table
    rows = {}
    for name in methods:
        row = table.loc[name]
        rows[name] = {key: round(float(row[col]), 4) for key, col in
                      (("Bleu_4", "BLEU-4"), ("METEOR", "METEOR"), ("CIDEr", "CIDEr-D"), ("ROUGE_L", "ROUGE-L"),
                       ("words_per_caption", "words/caption"), ("distinct", "distinct"), ("decode_s", "decode s"))
                      if col in row}
    examples = {str(i): comparison.captions[f"beam{beam}"][i].text for i in ids[:10]}
    if not keep_captions:
        return {"methods": rows, "examples": examples}
    captions = {name: {str(i): comparison.captions[name][i].text for i in ids} for name in methods}
    return {"methods": rows, "examples": examples, "captions": captions}


def attention_figures(decoder, vocab, cache, lab, folder: Path, beam: int, length_penalty: float, n: int = 10):
    """One attention figure per test photo (`viz.plot_attention`), into `folder` (build output, never committed)."""
    captions = coco.load_captions(lab.cfg)
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in lab.splits["test"][:n]:
        best = decode.beam_search(decoder, cache.source(image_id).unsqueeze(0), vocab, beam_size=beam,
                                  length_penalty=length_penalty, max_len=lab.cfg.max_caption_len)[0][0]
        photo = lab.cfg.image_dir / captions.loadImgs(image_id)[0]["file_name"]
        viz.plot_attention(viz.encoder_view(photo, lab.cfg.encoder_input_size), best.words, best.alphas.numpy(),
                           lab.cfg.grid_size, title=best.text,
                           save_to=folder / f"test_{image_id}.png")
        plt.close("all")
        print(f"{image_id}: {best.text}", flush=True)


def decode_sweep(decoder, vocab, cache, lab, beams=(2, 3, 5), penalties=(0.0, 0.5, 1.0)) -> list[dict]:
    """Dev scores of beam search for each beam size and length penalty (the decoding half of the recipe)."""
    ids = lab.splits["val"]
    methods = {f"beam{b}-lp{lp}": {"method": "beam", "beam_size": b, "length_penalty": lp}
               for b in beams for lp in penalties}
    table = evaluation.evaluate_methods(decoder, vocab, cache.source, {i: lab.captions[i] for i in ids},
                                        methods=methods, max_len=lab.cfg.max_caption_len, progress=False).table
    rows = []
    for name, method in methods.items():
        row = table.loc[name]
        rows.append({"beam": method["beam_size"], "length_penalty": method["length_penalty"],
                     **{key: round(float(row[col]), 4) for key, col in (("Bleu_4", "BLEU-4"), ("METEOR", "METEOR"),
                                                                         ("CIDEr", "CIDEr-D"),
                                                                         ("words_per_caption", "words/caption"))}})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run(args) -> dict:
    overrides = parse_overrides(args.set)
    cfg = get_config("flickr8k", device=args.device, **overrides)
    if args.data_root:
        cfg = cfg.replace(data_root=Path(args.data_root))
    if args.build_dir:  # a fresh folder: the feature cache is built (and timed) as a learner's first run builds it
        cfg = cfg.replace(build_dir=Path(args.build_dir))
    stages: dict[str, float] = {}
    started = time.perf_counter()
    if args.source is not None:
        flickr8k.prepare_flickr8k(cfg, source=args.source, progress=False)
    course.ensure_dataset(cfg, progress=False)
    stages["dataset"] = time.perf_counter() - started

    started = time.perf_counter()
    cache = features.ensure_features(cfg, splits=("train", "val", "test"), progress=False)
    stages["features"] = time.perf_counter() - started

    curve = []
    t0 = time.perf_counter()

    def record(epoch, row):
        curve.append({"epoch": int(epoch), "minutes": round((time.perf_counter() - t0) / 60, 2),
                      "val_bleu4_greedy": round(float(row["val_bleu4"]), 4), "train_loss": round(float(row["train_loss"]), 4),
                      "lr": float(row["lr"])})
        print(json.dumps(curve[-1]), flush=True)

    started = time.perf_counter()
    lab = course.prepare_data(cfg, progress=False)
    stages["data"] = time.perf_counter() - started
    started = time.perf_counter()
    decoder, vocab, result, _path = course.train_quick_captioner(cfg, args.decoder, progress=False, lab_data=lab,
                                                                 callbacks=[record])
    stages["training"] = time.perf_counter() - started
    started = time.perf_counter()
    dev = scored(decoder, vocab, cache, lab, "val", args.beam, args.length_penalty)
    stages["dev_scoring"] = time.perf_counter() - started
    if args.figures:  # the first ten test photos, their beam captions and word-by-word attention (not recorded)
        attention_figures(decoder, vocab, cache, lab, Path(args.figures), args.beam, args.length_penalty)
    if args.decode_sweep:  # choosing beam size and length penalty, on dev only
        dev["decoding"] = decode_sweep(decoder, vocab, cache, lab)
    test = None
    if not args.dev_only:
        started = time.perf_counter()
        test = scored(decoder, vocab, cache, lab, "test", args.beam, args.length_penalty)
        stages["test_scoring"] = time.perf_counter() - started
    recipe_minutes = (stages["features"] + stages["data"] + stages["training"] + stages.get("test_scoring", 0)) / 60
    return {
        "label": args.label, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_flickr8k_recipe.py " + " ".join(sys.argv[1:]),
        "decoder": args.decoder, "overrides": overrides, "beam": args.beam, "length_penalty": args.length_penalty,
        "settings": {k: getattr(cfg, k) for k in ("encoder", "encoder_input_size", "grid_size", "min_freq",
                                                  "max_caption_len", "embed_dim", "hidden_dim", "attention_dim",
                                                  "dropout", "batch_size", "epochs", "decoder_lr", "lr_schedule",
                                                  "alpha_c", "cpu_threads", "device")}
        | {"precision": str(autocast_dtype(torch.device(cfg.device).type, cfg.mixed_precision, decoder_only=True) or "float32").removeprefix("torch.")},
        "vocab_size": len(vocab), "train_images": len(lab.splits["train"]), "epochs_run": len(result.history),
        "stopped": result.stopped,
        "stages_s": {k: round(v, 1) for k, v in stages.items()}, "recipe_minutes": round(recipe_minutes, 2),
        "curve": curve, "dev": dev, "test": test,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "machine": machine_info(),
    }


def table(results: dict) -> str:
    """The recorded runs as a Markdown table: test (else dev) scores of beam search, minutes per stage."""
    rows = ["| run | decoder | split | BLEU-4 | METEOR | CIDEr-D | words | distinct | features min | training min | "
            "recipe min (goal 12) | epochs | precision | date |", "|---" * 14 + "|"]
    for run in results["runs"]:
        split = "test" if run.get("test") else "dev"
        scores = run[split]["methods"][f"beam{run['beam']}"]
        stages = run["stages_s"]
        rows.append(f"| {run['label']} | {run.get('decoder', 'attention')} | {split} | {scores['Bleu_4']:.3f} | {scores['METEOR']:.3f} | "
                    f"{scores['CIDEr']:.3f} | {scores['words_per_caption']:.1f} | {scores['distinct']:.2f} | "
                    f"{stages['features'] / 60:.1f} | {stages['training'] / 60:.1f} | {run['recipe_minutes']:.1f} | "
                    f"{run['epochs_run']} | {run['settings'].get('precision', 'float32')} | {run['date'][:10]} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, default=None, help="a local copy of Flickr8k")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a config override")
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--length-penalty", type=float, default=0.0)
    parser.add_argument("--build-dir", default=None, help="build folder (an empty one times the feature cache)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--label", default="recipe")
    parser.add_argument("--decoder", default="attention", choices=("attention", "transformer"),
                        help="the decoder to train (notebook 10's Transformer: pass its --set decoder_lr=1e-3)")
    parser.add_argument("--dev-only", action="store_true", help="score the dev split only (choosing the recipe)")
    parser.add_argument("--figures", default=None, help="folder for attention figures of ten test photos")
    parser.add_argument("--decode-sweep", action="store_true", help="also score beam sizes x length penalties on dev")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--show", action="store_true", help="print the recorded runs as a table; run nothing")
    args = parser.parse_args(argv)
    if args.show:
        print(table(json.loads(args.out.read_text())))
        return 0
    record = run(args)
    record_run(args.out, record, GOAL)
    print(json.dumps({k: record[k] for k in ("label", "stages_s", "recipe_minutes", "epochs_run", "vocab_size")}))
    print(json.dumps({"dev": record["dev"]["methods"], "test": record["test"] and record["test"]["methods"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
