"""Structured pruning: channel counts shrink, the pruned nets run, export, save and reload."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.compress.export import export_onnx
from engine.compress.prune import (
    PruneError,
    load_pruned,
    prune_model,
    recalibrate_batchnorm,
    save_pruned,
    task_batches,
    task_losses,
)
from engine.models import build_detector, build_recognizer
from engine.runtime.preprocess import detector_input, recognizer_input

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = sorted((ROOT / "examples" / "datasets" / "icdar2015").glob("*/images/*.jpg"))
CROPS = sorted((ROOT / "examples" / "datasets" / "lines" / "crops").glob("*.jpg"))


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def pruned_detector():
    torch.manual_seed(0)
    model = build_detector("dbnet", "mobilenetv3").eval()
    x = torch.from_numpy(detector_input(_rgb(PHOTOS[0]), 128)[0])
    before = {n: m.out_channels for n, m in model.named_modules()
              if isinstance(m, torch.nn.Conv2d)}
    pruned, report = prune_model(model, x, 0.3, importance="l1")
    return pruned, report, before


def test_pruning_changes_channels_and_keeps_heads(pruned_detector):
    model, report, before = pruned_detector
    assert report["params_after"] < 0.75 * report["params_before"]
    assert report["macs_after"] < 0.8 * report["macs_before"]
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    shrunk = [n for n in before if after[n] < before[n]]
    assert len(shrunk) > 10
    # kept prefixes: the head branches keep their output channels, the map stays 1 channel
    for n in before:
        if n.startswith(("prob_head", "thresh_head")):
            assert after[n] == before[n], n
    assert model.prob_head.body[-1].out_channels == 1
    # round_to=8 for every pruned layer, rounded up: no layer keeps fewer than int(70 %) of its
    # channels (rounding down cut 16-channel layers to 8)
    assert all(after[n] % 8 == 0 for n in shrunk)
    assert all(after[n] >= int(0.7 * before[n]) for n in before), {n: (before[n], after[n]) for n in shrunk}
    assert {before[n] for n in shrunk} >= {40, 64}  # ... while layers big enough to round still shrink
    # the neck's lateral convs are coupled by the top-down adds: same width everywhere
    assert len({c.out_channels for c in model.neck.lateral}) == 1
    assert report["channels"]["neck.lateral.0"]["after"][1] == model.neck.lateral[0].out_channels


def test_pruned_detector_runs_in_both_modes_and_exports(pruned_detector, tmp_path):
    model, _, _ = pruned_detector
    x1 = detector_input(_rgb(PHOTOS[1]), 128)[0]
    x2 = detector_input(_rgb(PHOTOS[2]), 96)[0]
    model.eval()
    assert model(torch.from_numpy(x1)).shape == (1, 1, *x1.shape[2:])
    model.train()
    out = model(torch.from_numpy(x2))  # the threshold branch was pruned consistently
    assert set(out) == {"prob", "thresh", "binary"}
    model.eval()
    report = export_onnx(model, "detector", tmp_path / "pruned.onnx", [x1, x2])
    assert max(report["max_abs_diff"]) < 1e-3


def test_save_load_pruned_roundtrip_weights_only(pruned_detector, tmp_path):
    model, report, _ = pruned_detector
    path = tmp_path / "pruned.pt"
    save_pruned(path, model, {"kind": "detector", "arch": "dbnet", "variant": "mobilenetv3"},
                extra={"prune": {"amount": report["amount"]}})
    payload = torch.load(path, weights_only=True)  # plain data only
    assert payload["format"] == "engine.pruned/1"
    loaded, extra = load_pruned(path)
    assert extra == {"prune": {"amount": 0.3}}
    x = torch.from_numpy(detector_input(_rgb(PHOTOS[3]), 128)[0])
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_prune_recognizer_bilstm_and_conv(tmp_path):
    crops = [_rgb(p) for p in CROPS]
    x = recognizer_input(crops, 32, 128)
    for seq in ("bilstm", "conv"):
        torch.manual_seed(0)
        small = {"channels": (16, 32, 64, 64), "hidden": 64}
        rec = build_recognizer("crnn", seq, num_classes=40, height=32, **small).eval()
        rec, report = prune_model(rec, torch.from_numpy(x[:1]), 0.3, importance="lamp")
        assert report["params_after"] < report["params_before"]
        assert rec.classifier.out_features == 40  # the charset is never pruned
        with torch.no_grad():
            assert rec(torch.from_numpy(x)).shape == (len(crops), x.shape[3] // 4, 40)
        spec = {"kind": "recognizer", "arch": "crnn", "variant": seq,
                "options": {"num_classes": 40, "height": 32, **small}}
        save_pruned(tmp_path / f"{seq}.pt", rec, spec)
        again, _ = load_pruned(tmp_path / f"{seq}.pt")
        with torch.no_grad():
            assert torch.allclose(again(torch.from_numpy(x)), rec(torch.from_numpy(x)))


def test_keep_patterns_and_output_layers_always_kept():
    model = build_detector("dbnet", "mobilenetv3").eval()
    x = torch.from_numpy(detector_input(_rgb(PHOTOS[0]), 64)[0])
    _, report = prune_model(model, x, 0.3, keep=["*head*", "neck.smooth", "no_such"])
    assert report["keep_unmatched"] == ["no_such"]
    assert all(c.out_channels == 24 for c in model.neck.smooth)  # kept by prefix
    assert model.prob_head.body[0][0].out_channels == 24  # kept by pattern
    rec = build_recognizer("crnn", "conv", num_classes=40, height=32,
                           channels=(16, 32, 64, 64), hidden=64, layers=2).eval()
    xr = torch.from_numpy(recognizer_input([_rgb(CROPS[0])], 32, 96))
    prune_model(rec, xr, 0.5, keep=())  # nothing kept explicitly: the classifier still is
    assert rec.classifier.out_features == 40


def test_taylor_needs_a_loss_and_bad_arguments_are_rejected():
    model = build_detector("dbnet", "mobilenetv3").eval()
    x = torch.from_numpy(detector_input(_rgb(PHOTOS[0]), 64)[0])
    with pytest.raises(PruneError, match="loss_fn"):
        prune_model(model, x, 0.3, importance="taylor")
    with pytest.raises(PruneError, match="known"):
        prune_model(model, x, 0.3, importance="l3")
    with pytest.raises(PruneError, match="amount"):
        prune_model(model, x, 1.0)
    _, report = prune_model(model, x, 0.2, importance="taylor", loss_fn=lambda m: m(x).mean())
    assert report["macs_after"] < report["macs_before"]


def test_recalibrate_batchnorm_estimates_the_data_statistics():
    torch.manual_seed(0)
    conv, norm = torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)
    model = torch.nn.Sequential(conv, norm, torch.nn.ReLU()).eval()
    norm.running_mean.fill_(5.0)  # stale, as after pruning the layer's inputs
    norm.running_var.fill_(100.0)
    batches = [torch.randn(4, 3, 16, 16) * 2 + 1 for _ in range(3)]
    assert recalibrate_batchnorm(model, batches, max_batches=2) == 2
    with torch.no_grad():
        seen = torch.cat([conv(b) for b in batches[:2]])
    torch.testing.assert_close(norm.running_mean, seen.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    assert norm.momentum == 0.1 and not model.training
    before = norm.running_mean.clone()
    assert recalibrate_batchnorm(model, []) == 0  # no data: statistics kept, not reset
    torch.testing.assert_close(norm.running_mean, before)


def test_taylor_ranks_by_the_task_loss_over_several_batches(tmp_path):
    from test_training_tasks import _manifest  # the tiny real detection manifest

    from engine.training.tasks import DetectorTask

    task = DetectorTask(_manifest(tmp_path), backbone="mobilenetv3", train_size=64, input_size=128)
    state = torch.random.get_rng_state()
    first, again = list(task_batches(task, 2, seed=3)), list(task_batches(task, 2, seed=3))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert len(first) == 2 and all(torch.equal(a["image"], b["image"]) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0]["image"], next(task_batches(task, 2, seed=4))["image"])
    losses = list(task_losses(task, batches=2, batch_size=2)(task.model))
    assert len(losses) == 2 and all(loss.ndim == 0 and torch.isfinite(loss) for loss in losses)
    # the gradients come from training-mode losses; the trained BatchNorm statistics stay
    from engine.compress.prune import _taylor_gradients

    stats = {k: v.clone() for k, v in task.model.named_buffers()}
    _taylor_gradients(task.model, task_losses(task, 2, 2))
    assert all(torch.equal(v, stats[k]) for k, v in task.model.named_buffers())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.model.parameters())
    x = torch.from_numpy(detector_input(_rgb(PHOTOS[0]), 64)[0])
    model, report = prune_model(task.model, x, 0.3, "taylor", loss_fn=task_losses(task, 2, 2))
    assert report["macs_after"] < 0.8 * report["macs_before"]
    assert all(p.grad is None for p in model.parameters())
    assert recalibrate_batchnorm(model, task_batches(task, batch_size=2)) == 2  # 3 images
    assert len(task.validate(model.eval())) >= 3  # the pruned, re-normalised model still runs


def test_prune_stage_keeps_old_batchnorm_statistics_unless_they_score_worse(tmp_path):
    """An untrained detector finds nothing with either statistics: the tie keeps the old ones."""
    from test_training_tasks import _manifest

    from engine.compress.prune import renormalise
    from engine.training.tasks import DetectorTask

    task = DetectorTask(_manifest(tmp_path), backbone="mobilenetv3", train_size=64, input_size=128)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    acc, reestimated = renormalise(task, task.model, batch_size=2)
    assert acc["hmean"] == 0 and reestimated is False
    for key, value in task.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_mac_model_counts_what_torch_pruning_counts():
    """Conv (dense and depthwise), Linear and LSTM MACs without biases, as torch-pruning counts."""
    from engine.compress.prune import _MacModel, _output_positions, count_macs_params

    convs = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1, bias=False),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
        torch.nn.Conv2d(16, 8, 1, bias=False), torch.nn.Flatten(), torch.nn.Linear(8 * 10 * 12, 5, bias=False))
    x = torch.rand(1, 3, 10, 12)
    macs = _MacModel(_output_positions(convs, x))
    assert macs.total() == count_macs_params(convs, x)[0]
    # one channel between the first two convs: 3x9 per position in the first, 9 in the depthwise,
    # and 8 per position in the 1x1 that reads it
    first, depthwise, pointwise = convs[0], convs[1], convs[2]
    sides = [(first, 1), (depthwise, 1), (pointwise, 0)]
    assert macs.saving(sides, 1) == (27 + 9 + 8) * 120
    macs.remove(sides, 4)
    assert macs.dims[depthwise] == [12, 12] and macs.dims[pointwise] == [12, 8]


def test_sensitivity_allocation_removes_uniform_macs_where_the_loss_is_cheapest(tmp_path):
    """On the shipped trained detector: the same MACs as uniform pruning within one block, spread
    unevenly (capped at twice ``amount``), and the planned MACs are the pruned model's."""
    import copy

    from test_training_tasks import _manifest

    from engine.compress.prune import _MacModel, _output_positions
    from engine.training.pretrained import BASE_WEIGHTS_DIR
    from engine.training.tasks import DetectorTask, model_from_checkpoint

    base, _ = model_from_checkpoint(BASE_WEIGHTS_DIR / "detector_dbnet_mobilenetv3.pt")
    task = DetectorTask(_manifest(tmp_path), backbone="mobilenetv3", train_size=64, input_size=128)
    x = torch.from_numpy(detector_input(_rgb(PHOTOS[0]), 160)[0])
    before = {n: m.out_channels for n, m in base.named_modules() if isinstance(m, torch.nn.Conv2d)}
    _, uniform = prune_model(copy.deepcopy(base), x, 0.3, "taylor", loss_fn=task_losses(task, 2, 2))
    model, report = prune_model(copy.deepcopy(base), x, 0.3, "taylor", loss_fn=task_losses(task, 2, 2),
                                allocation="sensitivity")
    plan = report["sensitivity"]
    assert report["allocation"] == "sensitivity"
    # the plan is exact: it is what the pruned model computes (torch-pruning adds biases and norms)
    assert plan["macs_planned"] == _MacModel(_output_positions(model.eval(), x)).total()
    assert abs(report["macs_after"] - uniform["macs_after"]) < 0.04 * report["macs_before"]
    ratios = sorted(plan["group_ratios"].values())
    assert ratios[0] == 0.0 and 0.3 < ratios[-1] <= 0.6  # uneven, never past twice `amount`
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert all(after[n] % 8 == 0 for n in before if after[n] < before[n])
    exported = export_onnx(model.eval(), "detector", tmp_path / "d.onnx", [x.numpy()], simplify=False)
    assert max(exported["max_abs_diff"]) < 1e-3
    with pytest.raises(PruneError, match="loss_fn"):
        prune_model(copy.deepcopy(base), x, 0.3, allocation="sensitivity")
    with pytest.raises(PruneError, match="known: uniform, sensitivity"):
        prune_model(copy.deepcopy(base), x, 0.3, allocation="global")
