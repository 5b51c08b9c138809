"""The settings: every one checked before any work, with what is allowed; and the device picked."""
import pytest
import torch

from bnstudy.config import SETTINGS, check_config, pick_device
from bnstudy.notebook import load_parameters


def test_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    for cuda, mps, expected in [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        assert pick_device("auto").type == expected


def test_absent_cuda_falls_back_to_cpu_with_one_note(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("cuda") == torch.device("cpu")
    assert pick_device("cuda:1") == torch.device("cpu")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("falling back to the CPU" in line for line in lines)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("cuda:1") == torch.device("cuda:1")


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match="Unknown device 'tpu'"):
        pick_device("tpu")


@pytest.fixture(scope="module")
def parameters():
    return load_parameters()


def test_the_committed_parameters_pass_and_cover_every_checked_setting(parameters):
    check_config(parameters)
    assert set(SETTINGS) == set(parameters), "check_config checks every setting of the parameters cell, no more"


@pytest.mark.parametrize("changes, word", [
    (dict(BATCH_SIZE=0), "BATCH_SIZE"), (dict(LR=-0.1), "LR"), (dict(LR=float("nan")), "LR"),
    (dict(EPOCHS=0), "EPOCHS"), (dict(FIRST_SEEDS=0), "FIRST_SEEDS"), (dict(TUNING_SEEDS=1), "TUNING_SEEDS"),
    (dict(GRID=[0.1, 0.01, 0.001]), "GRID"), (dict(SPEED_TARGETS=[85]), "SPEED_TARGETS"),
    (dict(MARGINS={"points": 1.0, "ratio": 0.8, "much": 2.0, "evaluation": 0.5}), "MARGINS"),
    (dict(MARGINS={"points": 1.0}), "MARGINS"), (dict(FIRST_SEEDS=40, MAX_SEEDS=30), "FIRST_SEEDS must be at most"),
    (dict(GRID_LIMITS=[0.01, 30.0]), "GRID_LIMITS"), (dict(DATA_ROOT=""), "DATA_ROOT"),
    (dict(LR=0.002), "LR must be one of GRID"), (dict(EDGE_FACTOR=1.0), "EDGE_FACTOR must be above 1"),
    (dict(TEST_BATCH_SIZES=[1, 64]), "TEST_BATCH_SIZES"), (dict(CHECKPOINT_EPOCHS=[5]), "CHECKPOINT_EPOCHS"),
    (dict(VAL_SIZE=60_000), "VAL_SIZE"), (dict(VAL_SIZE=20_063), "batch of one image"),
    (dict(MAX_SEEDS=6_000), "reporting seeds"), (dict(SEED=300_000), "SEED"), (dict(FINALISTS=20), "FINALISTS"),
    (dict(MARGINS={"points": True, "ratio": 1.25, "much": 2.0, "evaluation": 0.5}), "MARGINS"),
])
def test_nonsensical_config_is_refused_with_what_is_allowed(parameters, changes, word):
    with pytest.raises(ValueError, match=word):
        check_config({**parameters, **changes})


def test_a_missing_setting_is_named(parameters):
    with pytest.raises(ValueError, match="missing setting.*NOISE_LEVEL"):
        check_config({k: v for k, v in parameters.items() if k != "NOISE_LEVEL"})
