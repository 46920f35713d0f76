"""Training: metrics and schedules, reproducibility, early stopping, budget, exact resume, the notebook helpers."""

import math

import pandas as pd
import pytest
import torch

from labutils import checkpoint as ckpt
from labutils import course, decode, metrics
from labutils import train as T
from labutils.decoders import ShowAttendTell, build_decoder


def _colour_grid_source(cfg):
    """Stand-in for the encoder feature cache: each image's mean colour on a 4x4 grid, [16, 3] (cheap, real)."""
    from labutils import coco, data

    source = data.ImageFolderSource.from_config(cfg)
    splits = coco.load_splits(cfg)
    ids = [i for name in ("train", "val", "test") for i in splits[name]]
    grids = {i: torch.nn.functional.adaptive_avg_pool2d(source(i), 4).flatten(1).T.contiguous() for i in ids}
    return grids.__getitem__


@pytest.fixture(scope="module")
def lab(tiny_cfg):
    # grid_size matches the 4x4 stand-in grid; alpha_c=1 keeps the attention penalty's path under test.
    # One CPU thread: tiny tensors gain nothing from a second, which only adds synchronisation.
    cfg = tiny_cfg.replace(embed_dim=8, hidden_dim=16, attention_dim=8, dropout=0.1, batch_size=8,
                           decoder_lr=1e-2, time_budget_s=None, max_caption_len=16, grid_size=4, alpha_c=1.0,
                           cpu_threads=1)
    return course.prepare_data(cfg, source=_colour_grid_source(cfg), feature_dim=3, progress=False)


def _decoder(lab, kind="attention", seed=0):
    torch.manual_seed(seed)
    return build_decoder(kind, len(lab.vocab), lab.feature_dim, lab.cfg)


def _metrics(history):
    return history.drop(columns=["seconds"]).to_dict("records")


def test_topk_accuracy_ignores_padding():
    logits = torch.tensor([[[0.0, 3.0, 2.0, 1.0], [0.0, 1.0, 2.0, 3.0], [9.0, 0.0, 0.0, 0.0]]])
    targets = torch.tensor([[1, 1, 0]])  # third position is <pad>
    assert T.topk_accuracy(logits, targets, k=1) == pytest.approx(0.5)
    assert T.topk_accuracy(logits, targets, k=3) == pytest.approx(1.0)
    assert T.topk_correct(logits, targets, k=1) == (1, 2)


def test_scheduled_sampling_probability_grows_to_its_cap():
    linear = [T.sampling_probability(e, 0.3, ramp_epochs=3) for e in range(6)]
    assert linear == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.3, 0.3])
    sigmoid = [T.sampling_probability(e, 0.5, ramp_epochs=8, schedule="inverse_sigmoid") for e in range(40)]
    assert all(a <= b for a, b in zip(sigmoid, sigmoid[1:], strict=False)) and sigmoid[-1] == pytest.approx(0.5, abs=1e-3)
    assert T.sampling_probability(5, 0.0) == 0.0
    with pytest.raises(ValueError, match="schedule"):
        T.sampling_probability(1, 0.2, schedule="cosine")


def test_validation_captions_are_decode_greedy_captions(lab):
    # Validation has no greedy decoder of its own: its captions are decode.greedy's, batch by batch, and its
    # number is metrics.bleu4 on them with the Python tokenizer.
    decoder = _decoder(lab, seed=5)
    with torch.no_grad():
        for weight in decoder.parameters():
            weight.normal_(0.0, 1.0)  # large random weights: captions that differ between images
    predictions, references = T.caption_loader(decoder, lab.loaders["val"], lab.vocab, max_len=16)
    features = torch.stack([lab.loaders["val"].dataset.image_source(i) for i in predictions])  # [N, P, C]
    assert list(predictions.values()) == [c.text for c in decode.greedy(decoder, features, lab.vocab, max_len=16)]
    assert len(set(predictions.values())) > 1  # a real test: the captions differ between images
    assert T.validate(decoder, lab.loaders["val"], lab.vocab, "cpu", 16) == metrics.bleu4(predictions, references,
                                                                                        exact=False)


def test_training_reduces_the_loss_and_is_reproducible(lab):
    runs = []
    for _ in range(2):
        decoder = _decoder(lab, seed=1)
        result = T.train(lab.cfg.replace(epochs=3), decoder, lab.loaders, lab.vocab, patience=None, progress=False)
        runs.append((decoder, result))
    (first, r1), (second, r2) = runs
    losses = r1.history["train_loss"].tolist()
    assert losses[-1] < losses[0]
    assert list(r1.history.columns[:6]) == ["epoch", "train_loss", "top5", "val_bleu4", "lr", "ss_prob"]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(),
                                                  strict=True))
    assert _metrics(r1.history) == _metrics(r2.history)


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(lab, tmp_path):
    cfg = lab.cfg.replace(epochs=4)
    settings = dict(patience=None, restore_best=False, progress=False, scheduled_sampling=0.3, ss_ramp_epochs=2)
    straight = _decoder(lab, seed=2)
    full = T.train(cfg, straight, lab.loaders, lab.vocab, checkpoint_path=tmp_path / "full.pt", **settings)

    def stop_after_two(epoch, row):
        if epoch == 2:
            raise T.TrainingInterrupted("simulated Colab disconnect")

    path = tmp_path / "interrupted.pt"
    with pytest.raises(T.TrainingInterrupted):
        T.train(cfg, _decoder(lab, seed=2), lab.loaders, lab.vocab, checkpoint_path=path,
                callbacks=[stop_after_two], **settings)
    assert ckpt.load_checkpoint(path)["epoch"] == 2
    torch.manual_seed(123)  # the resumed process starts from other random state and other weights
    resumed_decoder = _decoder(lab, seed=7)
    resumed = T.train(cfg, resumed_decoder, lab.loaders, lab.vocab, checkpoint_path=path, resume_from=path,
                      **settings)
    assert len(resumed.history) == 4
    for (name, a), b in zip(straight.state_dict().items(), resumed_decoder.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{name} differs after resuming"
    assert _metrics(full.history) == _metrics(resumed.history)
    saved_full, saved_resumed = ckpt.load_checkpoint(tmp_path / "full.pt"), ckpt.load_checkpoint(path)
    assert saved_full["best_epoch"] == saved_resumed["best_epoch"]
    assert all(torch.equal(saved_full["model_state"][k], v) for k, v in saved_resumed["model_state"].items())


def test_training_runs_on_the_configured_thread_count_and_gives_it_back(lab):
    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        T.train(lab.cfg.replace(cpu_threads=2, epochs=2), _decoder(lab, "show_and_tell"), lab.loaders, lab.vocab,
                patience=None, progress=False, callbacks=[lambda epoch, row: seen.append(torch.get_num_threads())])
        assert seen == [2, 2] and torch.get_num_threads() == 3
        T.train(lab.cfg.replace(cpu_threads=None, epochs=1), _decoder(lab, "show_and_tell"), lab.loaders,
                lab.vocab, patience=None, progress=False,
                callbacks=[lambda epoch, row: seen.append(torch.get_num_threads())])
        assert seen[-1] == 3  # None: torch's own count, untouched
    finally:
        torch.set_num_threads(before)


def test_automatic_patience_never_stops_a_cosine_run_early(lab):
    frozen = lab.cfg.replace(epochs=6, decoder_lr=0.0)  # nothing improves after epoch 1
    plateau = T.train(frozen.replace(lr_schedule="plateau"), _decoder(lab), lab.loaders, lab.vocab, progress=False)
    assert plateau.stopped == "early_stopping" and len(plateau.history) == 5  # "auto" is 4 epochs there
    cosine = T.train(frozen.replace(lr_schedule="cosine"), _decoder(lab), lab.loaders, lab.vocab, progress=False)
    assert cosine.stopped == "epochs" and len(cosine.history) == 6 and cosine.best_epoch == 1


def test_early_stopping_and_the_safety_time_limit_that_says_so(lab, capsys):
    frozen = T.train(lab.cfg.replace(epochs=6, decoder_lr=0.0), _decoder(lab), lab.loaders, lab.vocab, patience=2,
                     progress=False)
    assert frozen.stopped == "early_stopping" and len(frozen.history) == 3 and frozen.best_epoch == 1
    assert capsys.readouterr().out == ""  # only a cut by the clock is announced
    rushed = T.train(lab.cfg.replace(epochs=6, time_budget_s=0.0), _decoder(lab, "show_and_tell"), lab.loaders,
                     lab.vocab, progress=False)
    assert rushed.stopped == "time_budget" and len(rushed.history) == 1
    assert capsys.readouterr().out.strip() == (
        "Training stopped after 1 of 6 epochs because the 0 s safety limit (time_budget_s) was reached; results "
        "will differ from the reference.")


def test_best_checkpoint_rebuilds_the_decoder(lab, tmp_path):
    cfg = lab.cfg.replace(build_dir=tmp_path, epochs=2)
    decoder, vocab, result, path = course.train_quick_captioner(cfg, "show_and_tell", progress=False, lab_data=lab,
                                                           patience=None)
    assert path == cfg.checkpoint_dir / "show_and_tell.pt" and path.is_file()
    assert 0.0 <= result.test_metric <= 1.0 and len(result.test_samples) == 8
    loaded, loaded_vocab, saved = course.load_trained(cfg, "show_and_tell", progress=False)
    assert loaded_vocab == vocab and saved["test_metric"] == result.test_metric
    assert all(torch.equal(a, b) for a, b in zip(decoder.state_dict().values(), loaded.state_dict().values(),
                                                  strict=True))
    assert not loaded.training
    T.assert_learned(saved, result.test_metric)  # notebooks 08 and 09 check the checkpoint they load
    with pytest.raises(AssertionError, match=rf"test BLEU-4 = {result.test_metric:.3f} < .* after 2 epochs"):
        T.assert_learned(saved, result.test_metric + 0.01)


def test_assert_learned_explains_what_to_do():
    import pandas as pd

    result = T.TrainResult(history=pd.DataFrame([{"epoch": 1}]), best_epoch=1, best_metric=0.42,
                           stopped="early_stopping", seconds=10.0)
    with pytest.raises(AssertionError, match=r"validation BLEU-4 = 0.420 < 0.80.*Train longer"):
        T.assert_learned(result, 0.8)
    result.stopped = "time_budget"
    with pytest.raises(AssertionError, match=r"safety time limit cut training short: raise time_budget_s"):
        T.assert_learned(result, 0.8)
    result.test_metric = 0.85
    T.assert_learned(result, 0.8)
    result.test_metric = math.nan
    with pytest.raises(AssertionError, match="test BLEU-4"):
        T.assert_learned(result, 0.8)


def test_encoder_gets_its_own_learning_rate_only_when_fine_tuned():
    decoder, encoder = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    encoder.requires_grad_(False)
    assert len(T._make_optimizer(decoder, encoder, 1e-3, 1e-4).param_groups) == 1
    encoder.weight.requires_grad_(True)
    groups = T._make_optimizer(decoder, encoder, 1e-3, 1e-4).param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-4] and groups[1]["params"] == [encoder.weight]


def test_plot_history_draws_loss_and_metric(lab):
    import matplotlib

    matplotlib.use("Agg")
    history = [{"epoch": 1, "train_loss": 2.0, "top5": 0.5, "val_bleu4": 0.1},
               {"epoch": 2, "train_loss": 1.0, "top5": 0.8, "val_bleu4": 0.4}]
    fig = T.plot_history(history)
    left, right = fig.axes
    assert list(left.lines[0].get_ydata()) == [2.0, 1.0] and list(right.lines[1].get_ydata()) == [0.1, 0.4]


def test_checkpoints_of_the_plain_paper_model_still_load():
    plain = ShowAttendTell(11, 6, 4, 8, 5, 0.0)
    spec = {"kind": "attention", "vocab_size": 11, "feature_dim": 6, "embed_dim": 4, "hidden_dim": 8,
            "attention_dim": 5, "dropout": 0.0}  # written before deep_output/adapter/positions existed
    loaded = T.decoder_from_checkpoint({"decoder": spec, "model_state": plain.state_dict()})
    assert loaded.adapter is None and loaded.position is None and loaded.feature_norm is None


def test_training_and_validation_never_read_the_test_split(lab, tmp_path):
    read = []

    def recording_source(image_id):
        read.append(int(image_id))
        return lab.source(image_id)

    cfg = lab.cfg.replace(build_dir=tmp_path, epochs=2)
    recorded = course.prepare_data(cfg, source=recording_source, feature_dim=3, progress=False)
    read.clear()  # from here on, every feature read is training's, validation's or the final test scoring's
    seen_after_epoch = []
    course.train_quick_captioner(cfg, "show_and_tell", progress=False, lab_data=recorded, patience=None,
                            callbacks=[lambda epoch, row: seen_after_epoch.append(set(read))])
    splits = {name: set(ids) for name, ids in lab.splits.items()}
    during_training = seen_after_epoch[-1]
    assert during_training.isdisjoint(splits["test"]), "training or validation read test images"
    assert splits["train"] | splits["val"] == during_training  # validation did run, on the validation images
    assert splits["test"] <= set(read)  # the test split is read once, after training, to score the result


def test_only_the_checkpoint_of_the_last_epoch_says_the_run_finished(lab, tmp_path):
    path = tmp_path / "run.pt"

    def flags(cfg, **options):
        seen = []

        def record(epoch, row):
            saved = ckpt.load_checkpoint(path)
            seen.append((saved["finished"], saved["stopped"]))

        T.train(cfg, _decoder(lab, "show_and_tell"), lab.loaders, lab.vocab, checkpoint_path=path,
                callbacks=[record], progress=False, **options)
        return seen

    assert flags(lab.cfg.replace(epochs=3), patience=None) == [(False, None), (False, None), (True, "epochs")]
    assert flags(lab.cfg.replace(epochs=6, decoder_lr=0.0), patience=2) == [(False, None), (False, None),
                                                                            (True, "early_stopping")]
    assert flags(lab.cfg.replace(epochs=6, time_budget_s=0.0)) == [(True, "time_budget")]
    assert ckpt.load_checkpoint(path)["settings"]["epochs"] == 6


def test_load_trained_resumes_a_cut_short_run_and_says_so(lab, tmp_path, monkeypatch, capsys):
    cfg = lab.cfg.replace(epochs=3)
    monkeypatch.setattr(course, "prepare_data", lambda *args, **kwargs: lab)  # the colour grids, not the encoder's
    _, _, _, straight_path = course.train_quick_captioner(cfg.replace(build_dir=tmp_path / "straight"), "show_and_tell",
                                                     progress=False)
    straight = ckpt.load_checkpoint(straight_path)

    def disconnect(epoch, row):
        if epoch == 1:
            raise T.TrainingInterrupted("simulated Colab disconnect")

    cut = cfg.replace(build_dir=tmp_path / "cut")
    with pytest.raises(T.TrainingInterrupted):
        course.train_quick_captioner(cut, "show_and_tell", progress=False, callbacks=[disconnect])
    capsys.readouterr()
    decoder, _, saved = course.load_trained(cut, "show_and_tell", progress=False)
    assert capsys.readouterr().out.strip() == (
        f"Resuming the show_and_tell captioner's training at epoch 2 of at most 3, because "
        f"{course.checkpoint_path_for(cut, 'show_and_tell')} is from a run that stopped before it finished.")
    assert saved["finished"] and saved["epoch"] == 3 and "test_metric" in saved
    assert _metrics(pd.DataFrame(saved["history"])) == _metrics(pd.DataFrame(straight["history"]))
    for name, weight in straight["model_state"].items():
        assert torch.equal(weight, saved["model_state"][name]) and torch.equal(weight, decoder.state_dict()[name])

    course.load_trained(cut, "show_and_tell", progress=False)  # now finished: used as it is, without a word
    assert capsys.readouterr().out == ""

    legacy = {k: v for k, v in saved.items() if k not in ("format", "version", "finished")}  # an older labutils'
    path = ckpt.save_checkpoint(course.checkpoint_path_for(cut, "show_and_tell"), legacy.pop("model_state"),
                                legacy.pop("vocab"), legacy.pop("config"), **legacy)
    _, _, retrained = course.load_trained(cut, "show_and_tell", progress=False)
    said = capsys.readouterr().out
    assert said.startswith("Training the show_and_tell captioner first, for at most 3 epochs as notebook 07 does "
                           "(the checkpoint does not say whether its run finished") and str(path) in said
    assert retrained["finished"]


def test_load_trained_says_it_trains_before_it_starts(lab, tmp_path, monkeypatch, capsys):
    cfg = lab.cfg.replace(epochs=2, build_dir=tmp_path)
    monkeypatch.setattr(course, "prepare_data", lambda *args, **kwargs: lab)
    said_before_training = []
    real_train = T.train

    def train_and_note(*args, **kwargs):
        said_before_training.append(capsys.readouterr().out)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(T, "train", train_and_note)
    course.load_trained(cfg, "show_and_tell", progress=False)
    path = course.checkpoint_path_for(cfg, "show_and_tell")
    assert said_before_training == [
        f"Training the show_and_tell captioner first, for at most 2 epochs as notebook 07 does (no checkpoint yet: "
        f"{path}).\n"]


def test_load_trained_resumes_a_run_the_safety_limit_cut_short(lab, tmp_path, monkeypatch, capsys):
    cfg = lab.cfg.replace(epochs=3)
    monkeypatch.setattr(course, "prepare_data", lambda *args, **kwargs: lab)
    straight = ckpt.load_checkpoint(course.train_quick_captioner(cfg.replace(build_dir=tmp_path / "straight"),
                                                            "show_and_tell", progress=False, patience=None)[3])
    cut = cfg.replace(build_dir=tmp_path / "cut")
    course.train_quick_captioner(cut.replace(time_budget_s=0.0), "show_and_tell", progress=False, patience=None)
    path = course.checkpoint_path_for(cut, "show_and_tell")
    assert ckpt.load_checkpoint(path)["stopped"] == "time_budget"
    capsys.readouterr()
    _, _, saved = course.load_trained(cut, "show_and_tell", progress=False)  # cut's safety limit: None
    assert capsys.readouterr().out.strip() == (
        f"Resuming the show_and_tell captioner's training at epoch 2 of at most 3, because {path} is from a run "
        "that the safety time limit cut short.")
    assert saved["stopped"] == "epochs" and saved["settings"]["time_budget_s"] is None
    assert _metrics(pd.DataFrame(saved["history"])) == _metrics(pd.DataFrame(straight["history"]))
    assert all(torch.equal(w, saved["model_state"][k]) for k, w in straight["model_state"].items())


def test_instructor_fallback_is_used_until_the_learner_finishes_and_never_overwritten(lab, tmp_path, monkeypatch,
                                                                                     capsys):
    cfg = lab.cfg.replace(epochs=2, build_dir=tmp_path / "room")
    monkeypatch.setattr(course, "prepare_data", lambda *args, **kwargs: lab)
    instructor = course.train_quick_captioner(cfg.replace(build_dir=tmp_path / "instructor", epochs=3),
                                              "show_and_tell", progress=False, patience=None)[3]
    fallback = course.instructor_checkpoint_path(cfg, "show_and_tell")
    fallback.parent.mkdir(parents=True)
    fallback.write_bytes(instructor.read_bytes())
    capsys.readouterr()
    _, _, used = course.load_trained(cfg, "show_and_tell", progress=False)
    said = capsys.readouterr().out
    assert said.startswith("Using the instructor's trained show_and_tell captioner") and "no checkpoint yet" in said
    assert used["epoch"] == 3 and not course.checkpoint_path_for(cfg, "show_and_tell").exists()
    assert used["checkpoint_file"] == str(fallback)

    def disconnect(epoch, row):
        raise T.TrainingInterrupted("simulated Colab disconnect")

    with pytest.raises(T.TrainingInterrupted):  # the learner's run, cut short: the fallback still serves
        course.train_quick_captioner(cfg, "show_and_tell", progress=False, callbacks=[disconnect])
    assert course.load_trained(cfg, "show_and_tell", progress=False)[2]["epoch"] == 3
    assert "has not finished" in capsys.readouterr().out
    course.train_quick_captioner(cfg, "show_and_tell", progress=False, patience=None)
    assert fallback.read_bytes() == instructor.read_bytes()  # the learner's training wrote its own file only
    _, _, own = course.load_trained(cfg, "show_and_tell", progress=False)
    assert own["epoch"] == 2 and capsys.readouterr().out == ""
    assert own["checkpoint_file"] == str(course.checkpoint_path_for(cfg, "show_and_tell"))
    other = cfg.replace(build_dir=tmp_path / "other", grid_size=cfg.grid_size + 1)
    course.instructor_checkpoint_path(other, "show_and_tell").parent.mkdir(parents=True)
    course.instructor_checkpoint_path(other, "show_and_tell").write_bytes(instructor.read_bytes())
    assert course._instructor_fallback(other, "show_and_tell", "no checkpoint yet") is None
    assert "trained on other data/features" in capsys.readouterr().out


def test_train_runs_the_module_level_epoch_function(lab, monkeypatch):
    # Notebook 07 plugs its own train_one_epoch into the module; train must run that one, once per epoch.
    calls = []

    def no_learning(decoder, loaders, vocab, optimizer, lr_scheduler, amp, cfg, **options):
        calls.append(options["ss_prob"])
        return {"train_loss": 1.0, "top5": 0.0, "val_bleu4": 0.0, "lr": 0.0}

    monkeypatch.setattr(T, "train_one_epoch", no_learning)
    decoder = _decoder(lab, seed=3)
    before = {name: value.clone() for name, value in decoder.state_dict().items()}
    result = T.train(lab.cfg.replace(epochs=3), decoder, lab.loaders, lab.vocab, patience=None, progress=False)
    assert len(calls) == 3 and result.history["train_loss"].tolist() == [1.0, 1.0, 1.0]
    assert all(torch.equal(before[name], value) for name, value in decoder.state_dict().items())


def test_a_bfloat16_epoch_on_the_cpu_learns_without_a_scaler(lab):
    # CPU mixed precision: the forward pass in bfloat16, the weights and their updates in float32, no loss scaling.
    T.seed_everything(0)
    decoder = _decoder(lab, seed=4)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lab.cfg.decoder_lr)
    amp = T.MixedPrecision(torch.bfloat16, "cpu")
    assert amp.enabled and not amp.scaler.is_enabled()
    with amp.autocast():
        out = decoder(torch.randn(2, 16, decoder.feature_dim), torch.full((2, 5), 4), torch.tensor([5, 5]))
    assert out.logits.dtype == torch.bfloat16
    first = T.train_one_epoch(decoder, lab.loaders, lab.vocab, optimizer, None, amp, lab.cfg, max_len=16)
    second = T.train_one_epoch(decoder, lab.loaders, lab.vocab, optimizer, None, amp, lab.cfg, max_len=16)
    assert all(p.dtype == torch.float32 for p in decoder.parameters())
    assert second["train_loss"] < first["train_loss"] < math.log(len(lab.vocab)) + 1


def test_train_asks_for_the_decoder_only_precision_when_no_encoder_fine_tunes(lab, monkeypatch):
    # On CUDA that precision is float32 (environment.autocast_dtype): float16 made the decoders worse and slower.
    asked = []
    monkeypatch.setattr(T, "autocast_dtype", lambda device_type, mixed, *, decoder_only: asked.append(
        (device_type, mixed, decoder_only)))
    T.train(lab.cfg.replace(epochs=1, mixed_precision=True), _decoder(lab, seed=4), lab.loaders, lab.vocab,
            patience=None, progress=False)
    assert asked == [("cpu", True, True)]


def test_one_epoch_trains_and_validates_without_teacher_forcing(lab):
    # The epoch function on its own: weights move, the loss is a real cross-entropy, and its validation number is
    # the BLEU-4 of the decoder's own greedy captions (caption_loader + metrics.bleu4), taken after the updates.
    cfg = lab.cfg
    T.seed_everything(0)
    decoder = _decoder(lab, seed=4)
    before = {name: value.clone() for name, value in decoder.state_dict().items()}
    optimizer = torch.optim.Adam(decoder.parameters(), lr=cfg.decoder_lr)
    amp = T.MixedPrecision(None, "cpu")
    numbers = T.train_one_epoch(decoder, lab.loaders, lab.vocab, optimizer, None, amp, cfg, max_len=16)
    assert set(numbers) == {"train_loss", "top5", "val_bleu4", "lr"}
    assert 0 < numbers["train_loss"] < math.log(len(lab.vocab)) + 1 and numbers["lr"] == cfg.decoder_lr
    assert not all(torch.equal(before[name], value) for name, value in decoder.state_dict().items())
    predictions, references = T.caption_loader(decoder, lab.loaders["val"], lab.vocab, max_len=16)
    assert numbers["val_bleu4"] == metrics.bleu4(predictions, references, exact=False)



def test_load_trained_without_training_refuses_a_missing_or_mismatched_checkpoint_and_leaves_it_alone(
        lab, tmp_path, monkeypatch, capsys):
    cfg = lab.cfg.replace(epochs=1, build_dir=tmp_path)
    monkeypatch.setattr(course, "prepare_data", lambda *args, **kwargs: lab)
    path = course.checkpoint_path_for(cfg, "show_and_tell")
    with pytest.raises(FileNotFoundError, match="no checkpoint yet") as missing:
        course.load_trained(cfg, "show_and_tell", progress=False, train=False)
    assert str(path) in str(missing.value) and not path.exists()  # nothing was trained in its place

    course.train_quick_captioner(cfg, "show_and_tell", progress=False)
    made = path.read_bytes()
    with pytest.raises(FileNotFoundError, match="trained on other data/features"):
        course.load_trained(cfg.replace(seed=cfg.seed + 1), "show_and_tell", progress=False, train=False)
    assert path.read_bytes() == made and capsys.readouterr().out == ""  # not retrained, not overwritten

    decoder, _, saved = course.load_trained(cfg, "show_and_tell", progress=False, train=False)
    assert saved["finished"] and path.read_bytes() == made
    for name, weight in saved["model_state"].items():
        assert torch.equal(weight, decoder.state_dict()[name].cpu())

    def disconnect(epoch, row):
        raise T.TrainingInterrupted("simulated Colab disconnect")

    cut = cfg.replace(epochs=2, build_dir=tmp_path / "cut")
    with pytest.raises(T.TrainingInterrupted):
        course.train_quick_captioner(cut, "show_and_tell", progress=False, callbacks=[disconnect])
    with pytest.raises(FileNotFoundError, match="its run has not finished"):  # resuming would train
        course.load_trained(cut, "show_and_tell", progress=False, train=False)
