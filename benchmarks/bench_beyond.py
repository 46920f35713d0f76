"""Beyond the LSTM, measured side by side: the attention LSTM, the Transformer decoder, and each after self-critical
training (SCST), on one profile's test split (issue 13; notebook 10 teaches the same steps).

For each decoder: train it with the profile's recipe (`course.train_quick_captioner`; the Transformer with its
learning rate capped at 1e-3, as notebook 10 does), score the test split, then fine-tune a copy with
`scst.scst_epoch` (CIDEr-D reward from the training references, leave-one-out baseline, dropout off) for at most
`--scst-minutes` of wall-clock time, and score it again. Scores: coco-caption BLEU-4, METEOR and CIDEr-D of beam
search (and greedy), words per caption, share of distinct captions; minutes of each stage.

    python benchmarks/bench_beyond.py --profile flickr8k --build-dir build/beyond --label cpu
    python benchmarks/bench_beyond.py --profile quick --set epochs=2 --scst-minutes 0.2 --out /tmp/beyond.json --label smoke
    python benchmarks/bench_beyond.py --build-dir build/beyond --dev-lrs 5e-5 2e-4 --scst-minutes 5 --label dev-lr

The last form chooses SCST's learning rate on the dev split, from the cross-entropy checkpoints a run left in the
build folder; the test runs then take the chosen rate with --scst-lr.

Each run is appended to benchmarks/results/beyond.json (runs with the same label are replaced); --show prints them.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_flickr8k_recipe import decode_sweep, parse_overrides, scored  # noqa: E402
from machine import machine_info, record_run  # noqa: E402

from labutils import coco, course, features, get_config, metrics, scst, train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "beyond.json"
GOAL = "SCST: test CIDEr-D +10 % relative, METEOR not lower, within 10 extra CPU minutes; Transformer >= LSTM CIDEr-D"
KINDS = ("attention", "transformer")
TRANSFORMER_MAX_LR = 1e-3  # notebook 10: at 3e-3 its loss rose again after a few epochs
# What draws SCST's samples (scst.draw_captions): before "decode.draw", torch.multinomial; records that say
# "decode.draw" alone kept ended rows in the batch to the last step (bench_scst_ended_rows.py).
SAMPLER = "decode.draw, ended rows dropped"
# How each decoder keeps its generation state, and (BEFORE_STATE) how it did in the records made before the field:
# the Transformer's layers stacked, the LSTM's grid float32 under autocast (bench_decoder_state.py: both slower).
STATE_LAYOUT = {"transformer": "per layer", "attention": "grid in autocast dtype"}
BEFORE_STATE = {"transformer": "stacked", "attention": "grid float32"}
# How the samples' log p keeps its gradient (scst.sample_with_log_probs): "one pass" scores them again in one
# causal pass (bench_scst_one_pass.py), "steps' graph" keeps the graph of every step (every record before the field).
LOG_P = {True: "one pass", False: "steps' graph"}


def test_scores(decoder, lab, cache, beam: int, captions: dict | None, key: str) -> dict:
    """Beam and greedy test scores; where `captions` is a dict, every test caption is kept in it under `key`."""
    test = scored(decoder, lab.vocab, cache, lab, "test", beam, 0.0, keep_captions=captions is not None)
    if captions is not None:
        captions[key] = test.pop("captions")
    return test


def train_scored(cfg, kind: str, lab, cache, beam: int, overrides: dict,
                 captions: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """Train decoder `kind` with the profile's recipe (and `overrides`); its test scores and training minutes."""
    if kind == "transformer":
        cfg = cfg.replace(decoder_lr=min(cfg.decoder_lr, TRANSFORMER_MAX_LR))
    cfg = cfg.replace(**overrides)
    started = time.perf_counter()
    decoder, vocab, result, _ = course.train_quick_captioner(cfg, kind, progress=False, lab_data=lab)
    minutes = (time.perf_counter() - started) / 60
    test = test_scores(decoder, lab, cache, beam, captions, f"{kind}/cross-entropy")
    return decoder, {"train_minutes": round(minutes, 2), "epochs": len(result.history), "overrides": overrides,
                     "test": test,
                     "parameters": sum(p.numel() for p in decoder.parameters())}


def dev_cider(cfg, lab):
    """A function giving a decoder's greedy dev CIDEr-D, in-process (`scst.CiderD` on the dev references, as
    pycocoevalcap computes it): the number the SCST stage keeps its best weights by, as cross-entropy training
    keeps its best validation epoch."""
    scorer = scst.CiderD({i: lab.captions[i] for i in lab.splits["val"]})

    def score(decoder) -> float:
        predictions, _ = train.caption_loader(decoder, lab.loaders["val"], lab.vocab, cfg.device, cfg.max_caption_len)
        return float(scorer.scores(list(predictions), list(predictions.values())).mean())
    return score


def rate_at(lr: float, spent: float, schedule: str) -> float:
    """The SCST learning rate after `spent` (0..1) of the stage's minutes: `lr` throughout ("constant"), or from
    `lr` down to 0 along a half cosine ("cosine"). The stage is bounded by the clock, not by epochs, so the
    schedule follows the clock too."""
    if schedule == "constant":
        return lr
    return lr * 0.5 * (1 + math.cos(math.pi * min(max(spent, 0.0), 1.0)))


def self_critical(decoder, cfg, lab, cider, minutes: float, lr: float, max_len: int | None = None,
                  dropout: bool = False, check_every: int = 0, xe_weight: float = 0.0,
                  schedule: str = "constant") -> tuple[torch.nn.Module, dict]:
    """Fine-tune a copy with SCST, batch by batch, until `minutes` of wall-clock time are spent; samples stop at
    `max_len` tokens (default: the profile's scst_max_len). Dropout is off (the policy scored is the model as
    it runs at test time) unless `dropout`. With `check_every` > 0 the greedy dev CIDEr-D is measured before the
    first batch, every `check_every` batches and at the end (inside the minutes), and the copy ends with the best
    weights seen: SCST's dev score rises, then falls as the captions collapse onto a few safe phrasings. The rate
    follows `schedule` (`rate_at`) over the minutes."""
    tuned = copy.deepcopy(decoder) if dropout else scst.policy_copy(decoder)
    optimizer = torch.optim.Adam(tuned.parameters(), lr=lr)
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    device_type = torch.device(cfg.device).type
    amp = train.MixedPrecision.for_config(cfg, device_type)
    score = dev_cider(cfg, lab) if check_every else None
    started, batches, epoch, history, checks, best = time.perf_counter(), 0, 0, [], [], None

    def check() -> None:
        nonlocal best
        checks.append({"batches": batches, "minutes": round((time.perf_counter() - started) / 60, 2),
                       "dev_cider_greedy": round(score(tuned), 4)})
        if best is None or checks[-1]["dev_cider_greedy"] > best[0]["dev_cider_greedy"]:
            best = (checks[-1], copy.deepcopy(tuned.state_dict()))

    with train.cpu_threads(cfg.cpu_threads):
        if score:
            check()
        while time.perf_counter() - started < minutes * 60:
            epoch += 1
            lab.loaders["train"].dataset.set_epoch(1000 + epoch)
            for batch in lab.loaders["train"]:
                for group in optimizer.param_groups:
                    group["lr"] = rate_at(lr, (time.perf_counter() - started) / (minutes * 60), schedule)
                stats = scst.scst_epoch(tuned, [batch], optimizer, lab.vocab, cider, cfg, n_samples=5,
                                        baseline="mean", max_len=max_len, generator=generator, amp=amp,
                                        xe_weight=xe_weight)
                batches += 1
                history.append({k: round(float(v), 4) for k, v in stats.items()})
                if score and batches % check_every == 0:
                    check()
                if time.perf_counter() - started >= minutes * 60:
                    break
        if score and checks[-1]["batches"] != batches:
            check()
    if best is not None:
        tuned.load_state_dict(best[1])
    spent = (time.perf_counter() - started) / 60
    mean_reward = [h["reward"] for h in history]
    return tuned.eval(), {"scst_minutes": round(spent, 2), "batches": batches, "lr": lr,
                          "max_len": max_len or int(cfg.scst_max_len or cfg.max_caption_len), "dropout": dropout,
                          "xe_weight": xe_weight, "schedule": schedule, "sampler": SAMPLER,
                          "state": STATE_LAYOUT.get(train.decoder_spec(decoder)["kind"]),
                          "log_p": LOG_P[scst.scores_in_one_pass(decoder)],
                          "kept_batch": best[0]["batches"] if best else batches, "dev_checks": checks,
                          "reward_first_10": round(sum(mean_reward[:10]) / max(1, len(mean_reward[:10])), 4),
                          "reward_last_10": round(sum(mean_reward[-10:]) / max(1, len(mean_reward[-10:])), 4)}


def prepared(args):
    """The config, feature cache, data and CIDEr-D reward (document frequencies from the training references)."""
    cfg = get_config(args.profile, device=args.device, **parse_overrides(args.set))
    if args.build_dir:  # keeps the benchmark's checkpoints apart from a learner's
        cfg = cfg.replace(build_dir=Path(args.build_dir))
    course.ensure_dataset(cfg, progress=False)
    cache = features.ensure_features(cfg, splits=("train", "val", "test"), progress=False)
    lab = course.prepare_data(cfg, progress=False)
    return cfg, cache, lab, scst.CiderD({i: lab.captions[i] for i in lab.splits["train"]})


def record_header(args, cfg) -> dict:
    """What every recorded run starts with: label, date, command, profile, beam and the machine."""
    return {"label": args.label, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python benchmarks/bench_beyond.py " + " ".join(sys.argv[1:]), "profile": cfg.profile,
            "beam": args.beam, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "machine": machine_info()}


def finished_checkpoint(cfg, kind: str) -> torch.nn.Module:
    """The finished cross-entropy model of `kind` that an earlier run left in the build folder. Never trained
    here: a sweep or a --reuse run given other settings than that run's (another --set seed, say) would otherwise
    train a new model in its place and overwrite the checkpoint it was meant to fine-tune."""
    try:
        decoder, _, _ = course.load_trained(cfg, kind, progress=False, use_instructor=False, train=False)
    except FileNotFoundError as error:
        raise SystemExit(f"{error} Here: the --set options of the run that trained it.") from None
    return decoder


def dev_scores(decoder, lab, cache, args) -> dict:
    """Dev scores of beam search (raw log-probabilities) and greedy decoding; with --dev-length-penalties, also of
    beam search at each length penalty, under "length_penalties"."""
    methods = scored(decoder, lab.vocab, cache, lab, "val", args.beam, 0.0)["methods"]
    if args.dev_length_penalties:  # penalty 0 is the beam just scored: not decoded twice
        raw = {"beam": args.beam, "length_penalty": 0.0, **{k: methods[f"beam{args.beam}"][k] for k in
                                                            ("Bleu_4", "METEOR", "CIDEr", "words_per_caption")}}
        others = tuple(lp for lp in args.dev_length_penalties if lp != 0.0)
        swept = decode_sweep(decoder, lab.vocab, cache, lab, beams=(args.beam,), penalties=others) if others else []
        methods["length_penalties"] = sorted([raw, *swept] if 0.0 in args.dev_length_penalties else swept,
                                             key=lambda row: row["length_penalty"])
    return methods


def dev_lr_sweep(args) -> dict:
    """The SCST learning rate chosen on dev, never on test: each rate fine-tunes a copy of the finished
    cross-entropy checkpoints a previous run left in the build folder for --scst-minutes; dev scores before/after."""
    cfg, cache, lab, cider = prepared(args)
    sweep = {}
    for kind in args.kinds:
        decoder = finished_checkpoint(cfg, kind)
        rows = {"cross-entropy": dev_scores(decoder, lab, cache, args)}
        for lr in args.dev_lrs:
            tuned, record = self_critical(decoder, cfg, lab, cider, args.scst_minutes, lr, args.scst_max_len,
                                          args.scst_dropout, args.scst_check_every, args.scst_xe[kind],
                                          args.scst_schedule)
            stage = (f"scst lr {lr:g}" + (f" {args.scst_schedule}" if args.scst_schedule != "constant" else "")
                     + f", max {record['max_len']} tokens" + (", dropout on" if args.scst_dropout else "")
                     + (f", + {record['xe_weight']:g} x cross-entropy" if record["xe_weight"] else "")
                     + (f", best dev after {record['kept_batch']}" if record["dev_checks"] else ""))
            rows[stage] = {**record, **dev_scores(tuned, lab, cache, args)}
            print(json.dumps({kind: {stage: rows[stage]}}), flush=True)
        sweep[kind] = rows
    return {**record_header(args, cfg), "split": "dev", "dev_lr_sweep": sweep}


def recorded_cross_entropy(cfg, kind: str, lab, cache, beam: int, run: dict,
                           captions: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """The cross-entropy checkpoint of decoder `kind` that recorded run `run` left in the build folder, with that
    run's training record; its test scores are measured again, and must be the recorded ones."""
    decoder = finished_checkpoint(cfg, kind)
    record = {k: v for k, v in run["models"][kind].items() if k != "scst"}
    test = test_scores(decoder, lab, cache, beam, captions, f"{kind}/cross-entropy")
    for name, row in record["test"]["methods"].items():
        if abs(test["methods"][name]["CIDEr"] - row["CIDEr"]) > 1e-6:
            raise SystemExit(f"The {kind} checkpoint in {cfg.checkpoint_dir} scores test CIDEr-D "
                             f"{test['methods'][name]['CIDEr']:.4f} ({name}), not run {run['label']}'s "
                             f"{row['CIDEr']:.4f}: it is another model; train again without --reuse.")
    return decoder, {**record, "reused_from": run["label"]}


def run(args) -> dict:
    cfg, cache, lab, cider = prepared(args)
    reused = None
    if args.reuse:
        reused = next((r for r in json.loads(args.out.read_text())["runs"] if r["label"] == args.reuse), None)
        if reused is None or "models" not in reused:
            raise SystemExit(f"No recorded test run is labelled {args.reuse!r} in {args.out}; see --show.")
    models, captions, first_command = {}, {} if args.captions_dir else None, None
    if args.extend:  # one run in several sittings: a lent GPU machine limits each command's minutes
        earlier = next((r for r in json.loads(args.out.read_text())["runs"] if r["label"] == args.label), None)
        if earlier is None or "models" not in earlier:
            raise SystemExit(f"--extend: no test run is labelled {args.label!r} in {args.out} to add to.")
        models, first_command = dict(earlier["models"]), earlier["command"]
        if captions is not None and (args.captions_dir / "captions.json").is_file():
            captions = json.loads((args.captions_dir / "captions.json").read_text())
    for kind in args.kinds:
        overrides = parse_overrides(args.transformer_set) if kind == "transformer" else {}
        decoder, record = (recorded_cross_entropy(cfg, kind, lab, cache, args.beam, reused, captions) if reused else
                           train_scored(cfg, kind, lab, cache, args.beam, overrides, captions))
        tuned, scst_record = self_critical(decoder, cfg, lab, cider, args.scst_minutes, args.scst_lr[kind],
                                           args.scst_max_len, args.scst_dropout, args.scst_check_every,
                                           args.scst_xe[kind], args.scst_schedule)
        # No batch (--scst-minutes 0) leaves the weights as they were: their scores are the cross-entropy ones.
        record["scst"] = {**scst_record, "test": test_scores(tuned, lab, cache, args.beam, captions, f"{kind}/scst")
                          if scst_record["batches"] else record["test"]}
        models[kind] = record
        print(json.dumps({kind: {k: v for k, v in record.items() if k != "test"}}), flush=True)
        # After each model, so that a run cut short (a time limit on a lent GPU machine) keeps what it finished.
        run_record = extended(record_header(args, cfg), first_command, models)
        if captions is not None:
            run_record["intervals"] = intervals(captions, lab.captions, f"beam{args.beam}", models)
        record_run(args.out, run_record, GOAL)
        if captions is not None:
            args.captions_dir.mkdir(parents=True, exist_ok=True)
            (args.captions_dir / "captions.json").write_text(json.dumps(captions) + "\n")
    return run_record


def paired_bootstrap(first: dict, second: dict, references: dict, resamples: int = 10_000, seed: int = 0) -> dict:
    """Test CIDEr-D of captions `second` relative to captions `first` (image id -> text, the same images), with a
    95 % paired bootstrap interval: how far the difference could move with another draw of test photos.

    Per-image CIDEr-D comes from `scst.CiderD` on these images' references (document frequencies from the same
    references, as pycocoevalcap takes them; the mean over images is the corpus score). The images are drawn with
    replacement `resamples` times, the same draw for both sets (paired), and the relative difference of the two
    means is taken in each draw; the interval holds the middle 95 % of those. The document frequencies stay those
    of the full test set, the usual simplification."""
    ids = sorted(first, key=int)
    if sorted(second, key=int) != ids:
        raise ValueError("The two caption sets cover different images; compare captions of the same test photos.")
    scorer = scst.CiderD({i: references[int(i)] for i in ids})
    a, b = (scorer.scores(ids, [captions[i] for i in ids]) for captions in (first, second))  # [N] each
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(resamples, len(ids)))  # [resamples, N]
    relative = b[draws].mean(axis=1) / a[draws].mean(axis=1) - 1  # [resamples]
    low, high = np.percentile(relative, [2.5, 97.5])
    return {"first": round(float(a.mean()), 4), "second": round(float(b.mean()), 4),
            "relative": round(float(b.mean() / a.mean() - 1), 4), "low": round(float(low), 4),
            "high": round(float(high), 4), "resamples": resamples, "images": len(ids)}


def intervals(captions: dict, references: dict, method: str, models: dict) -> dict:
    """Paired bootstrap intervals (`paired_bootstrap`, beam captions) of each decoder's SCST gain and, where both
    decoders ran, of the Transformer's cross-entropy CIDEr-D against the LSTM's."""
    out = {}
    for kind in (k for k in KINDS if k in models and f"{k}/scst" in captions):
        out[f"{kind} scst vs cross-entropy"] = paired_bootstrap(captions[f"{kind}/cross-entropy"][method],
                                                                captions[f"{kind}/scst"][method], references)
    if all(f"{k}/cross-entropy" in captions for k in KINDS):
        out["transformer vs attention, cross-entropy"] = paired_bootstrap(
            captions["attention/cross-entropy"][method], captions["transformer/cross-entropy"][method], references)
    return out


def extended(header: dict, first_command: str | None, models: dict) -> dict:
    """The run's record; one made in several sittings (--extend) names every command, in order."""
    if first_command:
        header["command"] = f"{first_command} ; then {header['command']}"
    return {**header, "models": models}


def meteor_from(args) -> dict:
    """Run `--label` as a machine without a Java runtime (a GPU machine) recorded it in `--meteor-from`'s
    beyond.json, with METEOR measured here from the test captions it saved there (captions.json). BLEU-4 and
    CIDEr-D are measured again from the same captions and must equal the record's: the same captions, the same
    tokens (the Python PTB tokenizer it used is tested equal to the Java one). The record also gets the run's
    paired bootstrap intervals (`intervals`), from the same captions."""
    if not metrics.java_available():
        raise SystemExit("METEOR needs `java` on the PATH: install a Java runtime (apt-get install default-jre) "
                         "and run --meteor-from again.")
    folder = args.meteor_from
    runs = json.loads((folder / "beyond.json").read_text())["runs"]
    run = next((r for r in runs if r["label"] == args.label), None)
    if run is None or "models" not in run:
        raise SystemExit(f"No test run is labelled {args.label!r} in {folder / 'beyond.json'}; pass its --label.")
    captions = json.loads((folder / "captions.json").read_text())
    references = coco.captions_by_image(coco.load_captions(get_config(run["profile"], device="cpu")))
    for kind, record in run["models"].items():
        for stage, test in (("cross-entropy", record["test"]), ("scst", record["scst"]["test"])):
            for method, texts in captions[f"{kind}/{stage}"].items():
                predictions = {int(i): text for i, text in texts.items()}
                scores = metrics.coco_scores(predictions, {i: references[i] for i in predictions})
                row = test["methods"][method]
                for name in ("Bleu_4", "CIDEr"):
                    if abs(scores[name] - row[name]) > 1e-4:
                        raise SystemExit(f"{kind} {stage} {method}: {name} from the saved captions is "
                                         f"{scores[name]:.4f}, the record says {row[name]:.4f}; the captions in "
                                         f"{folder} are not that run's.")
                row["METEOR"] = round(float(scores["METEOR"]), 4)
    spread = {"intervals": intervals(captions, references, f"beam{run['beam']}", run["models"])}
    return {**run, **spread, "label": args.record_as or run["label"], "meteor_measured_on": machine_info(),
            "meteor_command": "python benchmarks/bench_beyond.py " + " ".join(sys.argv[1:])}


def meteor(scores: dict) -> str:
    """METEOR for a table; "—" where the run was made without java (see --meteor-from)."""
    return f"{scores['METEOR']:.3f}" if "METEOR" in scores else "—"


def table(results: dict) -> str:
    """Each run's models before and after SCST as a Markdown table (beam search on the test split)."""
    rows = ["| run | model | stage | BLEU-4 | METEOR | CIDEr-D | words | distinct | minutes |",
            "|---|---|---|---|---|---|---|---|---|"]
    for run in (r for r in results["runs"] if "models" in r):  # dev sweeps: see dev_table
        for kind, record in run["models"].items():
            schedule = record["scst"].get("schedule", "constant")
            scst_stage = (f"+ SCST, lr {record['scst']['lr']:g}" + (f" {schedule}" if schedule != "constant" else "")
                          + f", {record['scst']['batches']} batches")
            if record["scst"].get("xe_weight"):
                scst_stage += f", + {record['scst']['xe_weight']:g} x cross-entropy"
            if record["scst"].get("dev_checks"):
                scst_stage += f" (best dev after {record['scst']['kept_batch']})"
            stages = [(f"cross-entropy, {record['epochs']} epochs", record["test"], record["train_minutes"]),
                      (scst_stage, record["scst"]["test"], record["scst"]["scst_minutes"])]
            for stage, test, minutes in stages[:2 if record["scst"]["batches"] else 1]:  # 1: --scst-minutes 0
                s = test["methods"][f"beam{run['beam']}"]
                rows.append(f"| {run['label']} | {kind} | {stage} | {s['Bleu_4']:.3f} | {meteor(s)} | "
                            f"{s['CIDEr']:.3f} | {s['words_per_caption']:.1f} | {s['distinct']:.2f} | {minutes:.1f} |")
    return "\n".join(rows)


def goal_lines(results: dict) -> str:
    """Each test run against the goal: SCST's relative CIDEr-D gain and METEOR change (beam), and the Transformer's
    CIDEr-D against the LSTM's with both training minutes."""
    lines = []
    for run in (r for r in results["runs"] if "models" in r):
        beam = f"beam{run['beam']}"
        for kind, record in run["models"].items():
            if not record["scst"]["batches"]:  # cross-entropy only (--scst-minutes 0)
                continue
            before, after = record["test"]["methods"][beam], record["scst"]["test"]["methods"][beam]
            gain = after["CIDEr"] / before["CIDEr"] - 1 if before["CIDEr"] else float("nan")
            lines.append(f"{run['label']}: {kind} SCST CIDEr-D {gain:+.1%} relative, "
                         f"METEOR {after.get('METEOR', float('nan')) - before.get('METEOR', float('nan')):+.4f}, in {record['scst']['scst_minutes']:.1f} min")
        if {"attention", "transformer"} <= run["models"].keys():
            lstm, tfm = run["models"]["attention"], run["models"]["transformer"]
            lines.append(f"{run['label']}: Transformer CIDEr-D {tfm['test']['methods'][beam]['CIDEr']:.3f} in "
                         f"{tfm['train_minutes']:.1f} min vs LSTM {lstm['test']['methods'][beam]['CIDEr']:.3f} in "
                         f"{lstm['train_minutes']:.1f} min")
        for name, spread in run.get("intervals", {}).items():
            lines.append(f"{run['label']}: {name}: CIDEr-D {spread['relative']:+.1%}, 95 % interval "
                         f"{spread['low']:+.1%} to {spread['high']:+.1%} (paired bootstrap, {spread['images']} photos)")
    return "\n".join(lines)


def shape_of(model: dict) -> str:
    """A recorded decoder's shape: its overrides but the epochs, which only fit it to the minutes ("" for none)."""
    return ", ".join(f"{k}={v}" for k, v in sorted((model.get("overrides") or {}).items()) if k != "epochs")


def device_of(run: dict) -> str:
    return run["machine"].get("cuda") or "cpu"


def scst_setting(run: dict, kind: str) -> tuple:
    """What makes two SCST stages the same experiment: the decoder and its shape (its overrides but the epochs,
    which only fit it to the minutes), the device and the stage's settings (records made before a setting existed
    had its default: no cross-entropy term, a constant rate, 40-token samples, drawn by torch.multinomial, the
    state as BEFORE_STATE, log p from the steps' graph: the sampler, the state layout and how log p keeps its
    gradient decide how many batches fit in the minutes)."""
    stage = run["models"][kind]["scst"]
    return (kind, shape_of(run["models"][kind]), device_of(run), stage["lr"],
            stage.get("xe_weight") or 0.0, stage.get("schedule") or "constant", stage.get("max_len") or 40,
            bool(stage.get("dropout")), stage.get("sampler") or "torch.multinomial",
            stage.get("state") or BEFORE_STATE[kind], stage.get("log_p") or LOG_P[False])


def seed_lines(results: dict) -> str:
    """SCST's relative test CIDEr-D gain for each setting run more than once (other seeds or other checkpoints),
    run by run and their mean: one run on a few hundred photos is within a few points of chance (see the
    intervals), so a goal is read off the runs together. The gain is the run's beam search's (the goal's method);
    the greedy captions' gain follows where both were scored, since beam search lifts a cross-entropy model more
    than the SCST model that was trained on its own samples."""
    gains: dict[tuple, list[tuple[str, float, float | None]]] = {}
    for run in (r for r in results["runs"] if "models" in r):
        for kind, record in run["models"].items():
            if record["scst"]["batches"]:
                before, after = record["test"]["methods"], record["scst"]["test"]["methods"]
                ratio = {method: after[method]["CIDEr"] / before[method]["CIDEr"] - 1
                         for method in (f"beam{run['beam']}", "greedy") if method in before and method in after}
                gains.setdefault(scst_setting(run, kind), []).append(
                    (run["label"], ratio[f"beam{run['beam']}"], ratio.get("greedy")))
    lines = []
    for (kind, shape, device, lr, xe, schedule, max_len, dropout, sampler, state, log_p), runs in gains.items():
        if len(runs) > 1:
            listed = ", ".join(f"{label} {gain:+.1%}" + (f" (greedy {greedy:+.1%})" if greedy is not None else "")
                               for label, gain, greedy in runs)
            greedy = [g for _, _, g in runs if g is not None]
            lines.append(f"{kind}{f' ({shape})' if shape else ''} SCST on {device}, lr {lr:g} {schedule}, xe {xe:g}, "
                         f"{max_len} tokens{', dropout' if dropout else ''}, drawn by {sampler}, state {state}, "
                         f"log p by {log_p}: "
                         f"{listed}; "
                         f"mean {sum(g for _, g, _ in runs) / len(runs):+.1%} over {len(runs)} runs"
                         + (f" (greedy {sum(greedy) / len(greedy):+.1%})" if len(greedy) == len(runs) else ""))
    return "\n".join(lines)


def matchup_lines(results: dict) -> str:
    """The Transformer's cross-entropy CIDEr-D relative to the LSTM's of the same run, for each Transformer shape
    (its overrides other than epochs) and device run more than once: run by run, with both training minutes, and
    the mean. A run that fine-tuned another run's checkpoints (--reuse) is that run again, and is left out."""
    ratios: dict[tuple, list[tuple]] = {}
    for run in (r for r in results["runs"] if "models" in r and set(KINDS) <= r["models"].keys()):
        lstm, tfm = (run["models"][kind] for kind in KINDS)
        if lstm.get("reused_from") or tfm.get("reused_from"):
            continue
        beam = f"beam{run['beam']}"
        relative = tfm["test"]["methods"][beam]["CIDEr"] / lstm["test"]["methods"][beam]["CIDEr"] - 1
        setting = (shape_of(tfm), device_of(run))
        ratios.setdefault(setting, []).append((run["label"], relative, tfm["train_minutes"], lstm["train_minutes"]))
    lines = []
    for (shape, device), runs in ratios.items():
        if len(runs) > 1:
            listed = ", ".join(f"{label} {gain:+.1%} ({mine:.1f} vs {theirs:.1f} min)" for label, gain, mine, theirs in runs)
            lines.append(f"Transformer{f' ({shape})' if shape else ''} vs LSTM after cross-entropy on {device}: "
                         f"{listed}; mean {sum(run[1] for run in runs) / len(runs):+.1%} over {len(runs)} runs")
    return "\n".join(lines)


def dev_table(results: dict) -> str:
    """Each dev sweep: dev CIDEr-D and METEOR (beam) of the cross-entropy model and after SCST at each rate."""
    rows = ["| sweep | model | stage | dev BLEU-4 | dev METEOR | dev CIDEr-D | SCST minutes |", "|---|---|---|---|---|---|---|"]
    for run in (r for r in results["runs"] if "dev_lr_sweep" in r):
        for kind, stages in run["dev_lr_sweep"].items():
            for stage, row in stages.items():
                s = row[f"beam{run['beam']}"]
                rows.append(f"| {run['label']} | {kind} | {stage} | {s['Bleu_4']:.3f} | {meteor(s)} | "
                            f"{s['CIDEr']:.3f} | {row.get('scst_minutes', 0):.1f} |")
    return "\n".join(rows)


def length_penalty_lines(results: dict) -> str:
    """Each dev sweep that decoded with several length penalties: dev CIDEr-D and words per caption at each, before
    and after SCST. A raw-log-prob beam (penalty 0) favours short captions, and SCST sharpens the policy it ranks."""
    lines = []
    for run in (r for r in results["runs"] if "dev_lr_sweep" in r):
        for kind, stages in run["dev_lr_sweep"].items():
            for stage, row in stages.items():
                if sweep := row.get("length_penalties"):
                    listed = ", ".join(f"{r['length_penalty']:g}: {r['CIDEr']:.3f} ({r['words_per_caption']:.1f} words)"
                                       for r in sweep)
                    greedy = row["greedy"]
                    lines.append(f"{run['label']} {kind} {stage}: dev CIDEr-D of beam {run['beam']} by length "
                                 f"penalty {listed}; greedy {greedy['CIDEr']:.3f} "
                                 f"({greedy['words_per_caption']:.1f} words)")
    return "\n".join(lines)


def per_decoder(values: list[str], flag: str) -> dict[str, float]:
    """`["5e-5"]` (every decoder) or `["attention=2e-4", "transformer=5e-5"]` (each) as {decoder kind: number}."""
    usage = f"{flag} takes one number for both decoders, or KIND=NUMBER for each of {' and '.join(KINDS)}"
    pairs = ([(kind, values[0]) for kind in KINDS] if len(values) == 1 and "=" not in values[0]
             else [item.partition("=")[::2] for item in values])
    chosen = {}
    for kind, number in pairs:
        try:
            chosen[kind] = float(number)
        except ValueError:
            raise SystemExit(f"{usage}; {number!r} is not a number.") from None
        if kind not in KINDS:
            raise SystemExit(f"{usage}; {kind!r} is not a decoder.")
    if missing := [kind for kind in KINDS if kind not in chosen]:
        raise SystemExit(f"{usage}; {' and '.join(missing)} got none.")
    return chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="flickr8k")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a config override")
    parser.add_argument("--transformer-set", action="append", default=[], metavar="NAME=VALUE",
                        help="a config override for the Transformer only, e.g. epochs=N to give it the LSTM's "
                             "training minutes (it runs an epoch faster than the LSTM on a CPU)")
    parser.add_argument("--build-dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--scst-minutes", type=float, default=10.0, help="wall-clock budget of each SCST stage")
    parser.add_argument("--scst-lr", nargs="+", default=["attention=2e-4", "transformer=5e-5"], metavar="LR",
                        help="SCST's learning rate: one for both decoders, or KIND=LR for each (default: the rates "
                             "chosen on dev)")
    parser.add_argument("--scst-max-len", type=int, default=None,
                        help="tokens a SCST sample may run to (default: the profile's scst_max_len)")
    parser.add_argument("--scst-xe", nargs="+", default=["attention=1", "transformer=0"], metavar="WEIGHT",
                        help="add WEIGHT x the teacher-forced cross-entropy of the batch's reference captions to the "
                             "SCST loss (0: SCST alone): one for both decoders, or KIND=WEIGHT for each (default: "
                             "the weights chosen on dev)")
    parser.add_argument("--scst-schedule", choices=("constant", "cosine"), default="constant",
                        help="SCST's learning rate over its minutes: constant, or from --scst-lr down to 0 along a "
                             "half cosine")
    parser.add_argument("--scst-dropout", action="store_true", help="keep the decoder's dropout during SCST")
    parser.add_argument("--scst-check-every", type=int, default=40, metavar="N",
                        help="measure the greedy dev CIDEr-D every N SCST batches and keep the best weights (0: off)")
    parser.add_argument("--label", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--dev-lrs", type=float, nargs="+", default=None, metavar="LR",
                        help="choose the SCST rate on dev: fine-tune the finished checkpoints in --build-dir with "
                             "each rate and score the dev split (nothing trained from scratch, nothing on test)")
    parser.add_argument("--dev-length-penalties", type=float, nargs="+", default=None, metavar="ALPHA",
                        help="with --dev-lrs: also score dev with beam search at each length penalty (Wu et al.), "
                             "before and after SCST")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS,
                        help="the decoders to train (or sweep, with --dev-lrs), in this order")
    parser.add_argument("--reuse", default=None, metavar="LABEL",
                        help="skip cross-entropy training: fine-tune the checkpoints recorded run LABEL left in "
                             "--build-dir (their test scores are checked against the record), to compare SCST "
                             "settings on the same models")
    parser.add_argument("--extend", action="store_true",
                        help="add the --kinds trained now to the recorded run of the same --label (made earlier with "
                             "the same settings and other --kinds)")
    parser.add_argument("--captions-dir", type=Path, default=None, metavar="DIR",
                        help="also write every test caption to DIR/captions.json (for --meteor-from)")
    parser.add_argument("--meteor-from", type=Path, default=None, metavar="DIR",
                        help="record run --label from DIR/beyond.json, made where java was missing (no METEOR), "
                             "with METEOR measured here from DIR/captions.json")
    parser.add_argument("--record-as", default=None, metavar="LABEL",
                        help="with --meteor-from: the label to record that run under (default: its own)")
    parser.add_argument("--show", action="store_true", help="print the recorded runs as a table; run nothing")
    args = parser.parse_args(argv)
    args.scst_lr, args.scst_xe = per_decoder(args.scst_lr, "--scst-lr"), per_decoder(args.scst_xe, "--scst-xe")
    if args.dev_length_penalties and not args.dev_lrs:
        raise SystemExit("--dev-length-penalties scores the dev split of a --dev-lrs sweep; add --dev-lrs RATE.")
    if args.show:
        if not args.out.is_file():
            print(f"No runs are recorded in {args.out} yet; run the benchmark without --show first.")
            return 1
        results = json.loads(args.out.read_text())
        print(table(results), goal_lines(results), seed_lines(results), matchup_lines(results), dev_table(results),
              length_penalty_lines(results), sep="\n\n")
        return 0
    record = meteor_from(args) if args.meteor_from else dev_lr_sweep(args) if args.dev_lrs else run(args)
    if args.meteor_from or args.dev_lrs:  # a test run records itself, after each model
        record_run(args.out, record, GOAL)
    one = {"runs": [record]}
    print(f"{dev_table(one)}\n\n{length_penalty_lines(one)}" if args.dev_lrs else f"{table(one)}\n\n{goal_lines(one)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
