"""The issue-13 benchmark's paired bootstrap: how far a CIDEr-D difference on the test photos could move."""


import pytest
from benchmark_scripts import load_benchmark

from labutils import scst

REFERENCES = {
    1: ["a dog runs on the grass", "a brown dog running across a lawn", "a dog is running outside"],
    2: ["two children play in the sand", "kids playing on a beach", "two kids dig in the sand"],
    3: ["a man rides a bike down a street", "a cyclist on a city road", "a man on a bicycle in traffic"],
    4: ["a woman sits on a bench", "a lady sitting on a park bench", "a woman resting on a bench"],
    5: ["a black cat sleeps on a bed", "a cat lying on a blanket", "a sleeping black cat"],
    6: ["a boy jumps into a pool", "a child jumping into the water", "a kid leaps into a swimming pool"],
}
GOOD = {"1": "a dog running on the grass", "2": "two kids playing in the sand", "3": "a man riding a bike",
        "4": "a woman sitting on a bench", "5": "a black cat sleeping on a bed", "6": "a boy jumping into a pool"}
WEAK = {"1": "a dog", "2": "two kids", "3": "a man", "4": "a woman", "5": "a cat", "6": "a boy"}  # right, but short


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_beyond")


def test_the_same_captions_differ_by_exactly_nothing_in_every_draw(bench):
    spread = bench.paired_bootstrap(GOOD, dict(GOOD), REFERENCES, resamples=500)
    # Paired draws score both sets on the same photos; independent draws would spread around zero.
    assert (spread["relative"], spread["low"], spread["high"]) == (0.0, 0.0, 0.0)


def test_captions_better_on_every_photo_give_an_interval_above_zero_around_the_difference(bench):
    spread = bench.paired_bootstrap(WEAK, GOOD, REFERENCES, resamples=2000)
    scorer = scst.CiderD(REFERENCES)
    ids = sorted(REFERENCES)
    good, weak = (scorer.scores(ids, [c[str(i)] for i in ids]).mean() for c in (GOOD, WEAK))
    assert spread["second"] == pytest.approx(good, abs=1e-4) and spread["first"] == pytest.approx(weak, abs=1e-4)
    assert spread["relative"] == pytest.approx(good / weak - 1, abs=1e-4)
    assert 0 < spread["low"] <= spread["relative"] <= spread["high"]
    assert spread["low"] < spread["high"]  # six photos: another draw moves the ratio
    assert (spread["images"], spread["resamples"]) == (6, 2000)


def test_caption_sets_of_different_photos_are_refused(bench):
    with pytest.raises(ValueError, match="different images"):
        bench.paired_bootstrap(GOOD, {k: v for k, v in GOOD.items() if k != "6"}, REFERENCES)


def a_run(label, before, after, lr=2e-4, cuda=None, batches=300, overrides=None, greedy=None, sampler=None,
          kind="attention", state=None, log_p=None):
    """A recorded run whose `kind` of decoder (the LSTM) scored `before` and `after` SCST with beam 3, and with
    greedy decoding too when `greedy` is (before, after)."""
    scores, tuned = {"beam3": {"CIDEr": before}}, {"beam3": {"CIDEr": after}}
    if greedy:
        scores["greedy"], tuned["greedy"] = {"CIDEr": greedy[0]}, {"CIDEr": greedy[1]}
    stage = {"batches": batches, "lr": lr, "xe_weight": 1.0, "schedule": "constant", "max_len": 16,
             "dropout": False, "test": {"methods": tuned}, **({"sampler": sampler} if sampler else {}),
             **({"state": state} if state else {}), **({"log_p": log_p} if log_p else {})}
    return {"label": label, "beam": 3, "machine": {"cuda": cuda},
            "models": {kind: {"test": {"methods": scores}, "scst": stage, "overrides": overrides or {}}}}


def test_runs_of_one_scst_setting_are_summed_up_together_and_other_settings_apart(bench):
    results = {"runs": [a_run("seed0", 0.40, 0.44), a_run("seed1", 0.50, 0.52, overrides={"epochs": 19}),
                        a_run("other-lr", 0.4, 0.6, lr=1e-4), a_run("gpu", 0.4, 0.6, cuda="NVIDIA H200"),
                        a_run("deeper", 0.4, 0.6, overrides={"transformer_layers": 3, "epochs": 13}),
                        a_run("xe-only", 0.4, 0.4, batches=0), a_run("drawn", 0.4, 0.6, sampler="decode.draw"),
                        {"label": "a dev sweep", "dev_lr_sweep": {}}]}
    lines = bench.seed_lines(results).splitlines()
    # Only the setting run twice gets a line (other epochs fit the same model to the minutes): +10 % and +4 %
    # average to +7 %. Another rate, device, model shape or sampler (it sets how many batches fit in the minutes)
    # is another experiment; no SCST batch, no SCST gain. A record without a sampler drew with torch.multinomial.
    assert len(lines) == 1 and "seed0 +10.0%, seed1 +4.0%" in lines[0] and "mean +7.0% over 2 runs" in lines[0]
    assert "drawn by torch.multinomial" in lines[0]
    assert not any(label in lines[0] for label in ("other-lr", "gpu", "deeper", "xe-only", "drawn +"))
    again = bench.seed_lines({"runs": [*results["runs"], a_run("drawn-again", 0.5, 0.55, sampler="decode.draw")]})
    assert "drawn by decode.draw, state grid float32, log p by steps' graph: drawn +50.0%, drawn-again +10.0%; mean +30.0% over 2 runs" \
        in again
    assert "greedy" not in lines[0]  # neither run scored greedy captions


def test_runs_with_another_state_layout_are_another_experiment(bench):
    # The layout sets how many SCST batches fit in the minutes; a record without one kept the state as before:
    # the Transformer's layers stacked, the LSTM's grid in float32.
    runs = [a_run("old-1", 0.4, 0.44, kind="transformer"), a_run("old-2", 0.4, 0.40, kind="transformer"),
            a_run("new-1", 0.4, 0.48, kind="transformer", state="per layer"),
            a_run("new-2", 0.4, 0.52, kind="transformer", state="per layer"),
            a_run("lstm-1", 0.4, 0.44), a_run("lstm-2", 0.4, 0.48),
            a_run("lstm-3", 0.4, 0.40, state="grid in autocast dtype"),
            a_run("lstm-4", 0.4, 0.60, state="grid in autocast dtype")]
    lines = bench.seed_lines({"runs": runs}).splitlines()
    assert len(lines) == 4
    assert "state stacked, log p by steps' graph: old-1 +10.0%, old-2 +0.0%; mean +5.0% over 2 runs" in lines[0]
    assert "state per layer, log p by steps' graph: new-1 +20.0%, new-2 +30.0%; mean +25.0% over 2 runs" in lines[1]
    assert lines[2].startswith("attention") and "state grid float32, log p by steps' graph: lstm-1 +10.0%, lstm-2 +20.0%" in lines[2]
    assert "state grid in autocast dtype, log p by steps' graph: lstm-3 +0.0%, lstm-4 +50.0%; mean +25.0%" in lines[3]


def test_runs_whose_log_p_kept_its_gradient_another_way_are_another_experiment(bench):
    # Scoring the samples in one pass changes how many SCST batches fit in the minutes, as the state layout does.
    runs = [a_run(f"steps-{i}", 0.4, 0.4 + 0.04 * i, kind="transformer", state="per layer") for i in (1, 2)]
    runs += [a_run(f"pass-{i}", 0.4, 0.4 + 0.08 * i, kind="transformer", state="per layer", log_p="one pass")
             for i in (1, 2)]
    lines = bench.seed_lines({"runs": runs}).splitlines()
    assert len(lines) == 2
    assert "log p by steps' graph: steps-1 +10.0%, steps-2 +20.0%; mean +15.0% over 2 runs" in lines[0]
    assert "log p by one pass: pass-1 +20.0%, pass-2 +40.0%; mean +30.0% over 2 runs" in lines[1]


def test_the_greedy_captions_gain_is_given_beside_the_beam_search_gain_when_every_run_scored_them(bench):
    both = [a_run("seed0", 0.40, 0.44, greedy=(0.40, 0.48)), a_run("seed1", 0.50, 0.52, greedy=(0.40, 0.44))]
    line = bench.seed_lines({"runs": both})
    # Beam +10 % and +4 % (mean +7 %); greedy +20 % and +10 % (mean +15 %): each run's pair, then both means.
    assert "seed0 +10.0% (greedy +20.0%), seed1 +4.0% (greedy +10.0%)" in line
    assert line.endswith("mean +7.0% over 2 runs (greedy +15.0%)")
    one_without = bench.seed_lines({"runs": [both[0], a_run("seed2", 0.50, 0.52)]})
    assert one_without.endswith("mean +7.0% over 2 runs")  # no greedy mean over fewer runs than the beam's


def test_the_scst_rate_stays_put_when_constant_and_falls_along_a_half_cosine_with_the_clock(bench):
    assert [bench.rate_at(2e-4, spent, "constant") for spent in (0.0, 0.5, 1.0)] == [2e-4] * 3
    cosine = [bench.rate_at(4e-4, spent, "cosine") for spent in (0.0, 0.25, 0.5, 1.0)]
    assert cosine == pytest.approx([4e-4, 4e-4 * (1 + 2**-0.5) / 2, 2e-4, 0.0])
    # The clock overruns a little (the last batch ends after the minutes): the rate stays at 0, never rises again.
    assert bench.rate_at(4e-4, 1.1, "cosine") == 0.0 and bench.rate_at(4e-4, -0.1, "cosine") == 4e-4


def a_matchup(label, lstm, transformer, overrides=None, reused_from=None):
    def model(cider, minutes, extra):
        return {"test": {"methods": {"beam3": {"CIDEr": cider}}}, "train_minutes": minutes, "reused_from": reused_from,
                "scst": {"batches": 0, "lr": 5e-5}, **extra}
    return {"label": label, "beam": 3, "machine": {"cuda": None},
            "models": {"attention": model(lstm, 7.0, {}), "transformer": model(transformer, 6.5, {"overrides": overrides or {}})}}


def test_transformer_against_lstm_is_summed_up_per_transformer_shape_without_the_reused_checkpoints(bench):
    results = {"runs": [a_matchup("two-a", 0.40, 0.38, {"epochs": 19}), a_matchup("two-b", 0.40, 0.40),
                        a_matchup("two-a-again", 0.40, 0.38, {"epochs": 19}, reused_from="two-a"),
                        a_matchup("three-a", 0.40, 0.42, {"transformer_layers": 3}),
                        a_matchup("three-b", 0.40, 0.44, {"transformer_layers": 3, "epochs": 13}),
                        a_run("lstm-only", 0.4, 0.5)]}
    two, three = bench.matchup_lines(results).splitlines()
    # -5 % and 0 % average to -2.5 %; the reused run is the same two models again and would pull the mean down.
    assert "two-a -5.0% (6.5 vs 7.0 min), two-b +0.0%" in two and "mean -2.5% over 2 runs" in two
    assert "again" not in two and "three" not in two
    assert three.startswith("Transformer (transformer_layers=3)") and "mean +7.5% over 2 runs" in three


def test_a_dev_sweep_decoded_at_several_length_penalties_lists_each_before_and_after_scst(bench):
    def row(cider_at, greedy):
        sweep = [{"length_penalty": lp, "CIDEr": c, "words_per_caption": w} for lp, (c, w) in cider_at.items()]
        return {"beam3": {"CIDEr": sweep[0]["CIDEr"]}, "greedy": {"CIDEr": greedy, "words_per_caption": 9.0},
                "length_penalties": sweep}
    sweep = {"label": "dev-lp", "beam": 3, "dev_lr_sweep": {"transformer": {
        "cross-entropy": row({0.0: (0.46, 8.5), 1.0: (0.47, 9.4)}, 0.45),
        "scst lr 5e-05": row({0.0: (0.48, 8.2), 1.0: (0.51, 9.3)}, 0.50)}}}
    plain = {"label": "dev-plain", "beam": 3, "dev_lr_sweep": {"attention": {"cross-entropy": {"beam3": {"CIDEr": 0.4}}}}}
    lines = bench.length_penalty_lines({"runs": [sweep, plain]}).splitlines()
    assert len(lines) == 2  # a sweep decoded with the plain beam only has nothing to list
    assert lines[1] == ("dev-lp transformer scst lr 5e-05: dev CIDEr-D of beam 3 by length penalty "
                        "0: 0.480 (8.2 words), 1: 0.510 (9.3 words); greedy 0.500 (9.0 words)")
    assert lines[0].startswith("dev-lp transformer cross-entropy:") and "1: 0.470 (9.4 words)" in lines[0]


def test_length_penalties_without_a_dev_sweep_are_refused_with_the_flag_to_add(bench):
    with pytest.raises(SystemExit, match="add --dev-lrs RATE"):
        bench.main(["--dev-length-penalties", "0", "1"])


def test_dev_scores_reuse_the_raw_beam_for_penalty_0_and_decode_only_the_other_penalties(bench, monkeypatch):
    beam = {"Bleu_4": 0.2, "METEOR": 0.18, "CIDEr": 0.45, "words_per_caption": 8.5, "decode_s": 3.0}
    swept_with = []
    monkeypatch.setattr(bench, "scored", lambda *a, **k: {"methods": {"beam3": beam, "greedy": {"CIDEr": 0.4}}})

    def sweep(decoder, vocab, cache, lab, beams, penalties):
        swept_with.append((beams, penalties))
        return [{"beam": beams[0], "length_penalty": lp, "CIDEr": 0.5 + lp} for lp in penalties]
    monkeypatch.setattr(bench, "decode_sweep", sweep)
    args = type("Args", (), {"beam": 3, "dev_length_penalties": [1.0, 0.0, 0.5]})()
    rows = bench.dev_scores(None, type("Lab", (), {"vocab": None})(), None, args)["length_penalties"]
    assert swept_with == [((3,), (1.0, 0.5))]  # penalty 0 is not decoded a second time
    assert [r["length_penalty"] for r in rows] == [0.0, 0.5, 1.0]
    assert rows[0] == {"beam": 3, "length_penalty": 0.0, "Bleu_4": 0.2, "METEOR": 0.18, "CIDEr": 0.45,
                       "words_per_caption": 8.5}
    args.dev_length_penalties = [0.5]
    assert [r["length_penalty"] for r in bench.dev_scores(None, type("Lab", (), {"vocab": None})(), None,
                                                          args)["length_penalties"]] == [0.5]


def test_an_scst_stage_records_what_sets_how_many_batches_fit_in_its_minutes(bench, tiny_cfg):
    import torch

    from labutils import course, decoders

    cfg = tiny_cfg.replace(embed_dim=8, hidden_dim=16, attention_dim=8, transformer_dim=16, num_heads=4,
                           transformer_layers=2, batch_size=8, max_caption_len=16, grid_size=2, cpu_threads=1,
                           scst_max_len=6)
    grids = {}
    lab = course.prepare_data(cfg, source=lambda i: grids.setdefault(i, torch.randn(4, 3)), feature_dim=3,
                              progress=False)
    cider = scst.CiderD({i: lab.captions[i] for i in lab.splits["train"]})
    for kind, state, log_p in (("transformer", "per layer", "one pass"),
                               ("attention", "grid in autocast dtype", "steps' graph")):
        torch.manual_seed(0)
        decoder = decoders.build_decoder(kind, len(lab.vocab), 3, cfg)
        # A clock-bounded stage runs whole batches until its minutes are spent: here, the first one.
        tuned, stage = bench.self_critical(decoder, cfg, lab, cider, minutes=1e-3, lr=1e-3)
        assert stage["batches"] >= 1 and stage["sampler"] == "decode.draw, ended rows dropped" == bench.SAMPLER
        assert stage["state"] == state, "the state layout is kept beside the sampler"
        assert stage["log_p"] == log_p, "and how the samples' log p kept its gradient"
        assert type(tuned) is type(decoder) and not tuned.training
