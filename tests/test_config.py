"""Profiles: one place decides sizes and paths."""

import pytest

from labutils import config, get_config


def test_quick_profile_is_cpu_and_small(monkeypatch):
    monkeypatch.delenv("LAB_DATA_DIR", raising=False)
    cfg = get_config("quick")
    assert cfg.profile == "quick" and cfg.device == "cpu" and cfg.n_images <= 5000
    assert cfg.dataset_dir == cfg.data_root / "synthetic"
    assert cfg.captions_file.name == "captions.json" and cfg.split_file.name == "splits.json"


@pytest.mark.parametrize("native_bf16", [False, True])
def test_coco_profile_falls_back_to_cpu_without_cuda(monkeypatch, native_bf16):
    # Mixed precision stays asked for on the CPU, and runs (as bfloat16) only where the CPU computes it in hardware.
    import torch

    from labutils.infra import environment

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(environment, "native_bfloat16", lambda: native_bf16)
    cfg = get_config("coco")
    assert cfg.profile == "coco" and cfg.dataset_name == "coco2014"
    assert cfg.encoder == "resnet101" and cfg.device == "cpu" and cfg.mixed_precision
    for decoder_only in (True, False):
        assert (environment.autocast_dtype(cfg.device, cfg.mixed_precision, decoder_only=decoder_only)
                == (torch.bfloat16 if native_bf16 else None))
    quick = get_config("quick")  # the shapes stay float32 everywhere: CI's outputs are exact
    assert environment.autocast_dtype(quick.device, quick.mixed_precision, decoder_only=True) is None


def test_autocast_dtype_is_float16_for_the_encoder_on_cuda_and_bfloat16_only_on_a_native_cpu(monkeypatch):
    import torch

    from labutils.infra import environment

    monkeypatch.setattr(environment, "native_bfloat16", lambda: True)
    assert environment.autocast_dtype("cuda", True, decoder_only=False) is torch.float16
    # a decoder alone on cached features trains in float32 on CUDA (measured better and faster on an H200)
    assert environment.autocast_dtype("cuda", True, decoder_only=True) is None
    assert environment.autocast_dtype("cpu", True, decoder_only=True) is torch.bfloat16
    assert environment.autocast_dtype("cpu", True, decoder_only=False) is torch.bfloat16
    for device, decoder_only in (("cpu", True), ("cuda", True), ("cuda", False)):
        assert environment.autocast_dtype(device, False, decoder_only=decoder_only) is None
    monkeypatch.setattr(environment, "native_bfloat16", lambda: False)
    assert environment.autocast_dtype("cpu", True, decoder_only=True) is None  # emulated bfloat16: slower than float32
    assert environment.autocast_dtype("mps", True, decoder_only=False) is None


@pytest.fixture
def uncached_cpu_flags():
    """native_bfloat16 reads the CPU once per process: clear that before the test and after it, even when the test
    fails midway, so that no other test sees a made-up CPU."""
    from labutils.infra import environment

    environment.native_bfloat16.cache_clear()
    yield environment
    environment.native_bfloat16.cache_clear()


def test_native_bfloat16_reads_the_cpu_flags(monkeypatch, tmp_path, uncached_cpu_flags):
    environment = uncached_cpu_flags
    flags = {"zen4": "flags : fpu avx512f avx512_bf16 avx512_vnni\n", "sapphire": "flags : fpu amx_bf16 amx_tile\n",
             "skylake": "flags : fpu avx2 avx512f avx512bw\n"}
    real_path = environment.Path
    for cpu, text in flags.items():
        (tmp_path / cpu).write_text(text)
        monkeypatch.setattr(environment, "Path", lambda p, f=tmp_path / cpu: f if p == "/proc/cpuinfo" else real_path(p))
        environment.native_bfloat16.cache_clear()  # make it read this CPU's flags
        assert environment.native_bfloat16() == (cpu != "skylake"), cpu


@pytest.mark.parametrize("name", ["full", "FULL", " full "])
def test_the_former_name_full_says_the_profile_is_now_coco(monkeypatch, name):
    """`full` was renamed `coco` (issue 12): naming it, in code or in LAB_PROFILE, says the new name in one sentence."""
    with pytest.raises(ValueError) as in_code:
        get_config(name.strip())
    monkeypatch.setenv("LAB_PROFILE", name)
    with pytest.raises(ValueError) as in_environment:
        get_config()
    for message in (str(in_code.value), str(in_environment.value)):
        assert message.startswith("The profile 'full' is now called 'coco' (MS-COCO);")
        assert "--profile coco" in message and "LAB_PROFILE=coco" in message
        assert message.count(". ") == 0 and message.endswith(".") and "\n" not in message
    assert "full" not in config.PROFILES and "full" not in config.BASES


def test_environment_variables_choose_profile_and_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("LAB_PROFILE", "quick")
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path / "d"))
    cfg = get_config()
    assert cfg.profile == "quick" and cfg.data_root == tmp_path / "d"
    monkeypatch.setenv("LAB_PROFILE", "huge")
    with pytest.raises(ValueError, match="LAB_PROFILE"):
        get_config()


def test_overrides_and_plain_dict(tmp_path):
    cfg = get_config("quick", n_images=10, data_root=str(tmp_path))
    assert cfg.n_images == 10 and cfg.data_root == tmp_path
    as_dict = cfg.to_dict()
    assert as_dict["data_root"] == str(tmp_path) and isinstance(as_dict["split_fractions"], list)
    with pytest.raises(TypeError, match="unknown setting"):
        get_config("quick", n_imagez=3)


def test_find_lab_root_from_a_notebook_folder():
    root = config.find_lab_root()
    assert config.find_lab_root(root / "notebooks") == root


def test_quick_training_is_bounded_by_epochs_and_its_time_limit_is_only_a_safety():
    """The safety must stay far above a quiet machine's time for all epochs (or it would cut normal runs short and
    make the numbers depend on the machine again) and below nbval's cell timeout (so a cut says why in one
    sentence, rather than nbval killing the cell without one)."""
    import json
    import re

    root = config.find_lab_root()
    cfg = get_config("quick")
    recorded = json.loads((root / "benchmarks" / "results" / "quick_training.json").read_text(encoding="utf-8"))
    quiet_all_epochs_s = max(run["as_is"]["fastest_epoch_s"] for run in recorded["runs"].values()) * cfg.epochs
    cell_timeout = int(re.search(r"--nbval-cell-timeout=(\d+)", (root / "Makefile").read_text()).group(1))
    assert 4 * quiet_all_epochs_s <= cfg.time_budget_s < cell_timeout
    assert cfg.cpu_threads, "without a fixed CPU thread count the same seed trains other weights on other machines"
    assert get_config("coco").time_budget_s is None
    assert all(all(run["identical"].values()) for run in recorded["runs"].values()), "rerun the benchmark"
