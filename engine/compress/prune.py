"""Structured channel pruning with torch-pruning, and saving/loading pruned models.

Why structured: removing whole channels makes every Conv smaller, which is what speeds up
onnxruntime on a Pi and TensorRT on a Jetson.  Unstructured sparsity (zeroed weights) changes
nothing at inference time on those runtimes.

Why torch-pruning: DBNet couples channels across layers — residual adds in MobileNetV3 and
ResNet, the SE gates (``x * gate``), the FPN's top-down adds that tie every lateral conv
together, and the concatenation of the four smoothed levels that feeds the heads.  Pruning one
channel means pruning the matching channel in every coupled layer.  ``tp.DependencyGraph``
traces the model and groups those channels, so a pruned model is always consistent.

How the detector is traced: torch-pruning puts the model in eval mode for tracing, and in eval
mode DBNet skips its threshold branch — the dependency graph would not see ``thresh_head`` and
pruning the neck would leave that branch with the wrong input width (training would then
crash during fine-tuning).  ``forward_fn`` therefore flips only the *top-level* ``training``
flag during the trace: DBNet returns all three maps while every BatchNorm stays in eval mode
(running statistics untouched).

Kept layers (``keep``): module-name prefixes whose output channels are never pruned — the DB
head branches (their last layer has one output channel, the map) and the CRNN classifier (its
outputs are the charset).  Their *input* channels still shrink with the layers that feed them.
Multi-layer LSTMs are kept automatically: torch-pruning 1.6 prunes only single-layer LSTMs.

Saving (``save_pruned`` / ``load_pruned``): the architecture of a pruned model is no longer the
one its constructor builds, and pickling the module (what ``tp.state_dict`` does, by copying
every module ``__dict__``) cannot be loaded with ``torch.load(weights_only=True)``.  So the
checkpoint stores plain data only: the constructor spec (kind / arch / variant / options), the
per-module shape attributes (``in_channels``, ``out_channels``, ``groups``, ``num_features``,
``in_features``, ``out_features``, ``input_size``, ``hidden_size`` ...) and the ``state_dict``.
Loading builds the unpruned model from the spec, shrinks each module to the recorded shape
(attributes plus empty parameters/buffers of the saved shapes), then loads the state dict with
``strict=True``.  No tracing is needed at load time, and the file loads with weights_only=True.
"""

from __future__ import annotations

import copy
import fnmatch
import heapq
import io
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from . import atomic_write_bytes

__all__ = [
    "ALLOCATIONS",
    "DEFAULT_KEEP",
    "IMPORTANCES",
    "PRUNED_FORMAT",
    "PruneError",
    "channel_table",
    "count_macs_params",
    "load_pruned",
    "prune_model",
    "recalibrate_batchnorm",
    "save_pruned",
    "task_batches",
    "task_losses",
]

#: module-name prefixes never pruned on their outputs: DB head branches and the CRNN classifier.
DEFAULT_KEEP: tuple[str, ...] = ("prob_head", "thresh_head", "classifier")
IMPORTANCES = ("l1", "l2", "taylor", "lamp")
#: how ``amount`` is spread over the layer groups (see ``prune_model``).
ALLOCATIONS = ("uniform", "sensitivity")
PRUNED_FORMAT = "engine.pruned/1"

# Attributes that define a layer's shape; everything else about a layer is unchanged by pruning.
_SHAPE_ATTRS = (
    "in_channels",
    "out_channels",
    "groups",
    "num_features",
    "in_features",
    "out_features",
    "input_size",
    "hidden_size",
    "proj_size",
    "normalized_shape",
    "num_parameters",
    "num_channels",
    "num_groups",
)
_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.LSTM)


class PruneError(ValueError):
    """Bad pruning arguments, or a checkpoint that is not a pruned model."""


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """A dotted-prefix match ("neck" keeps "neck.lateral.0"), or an fnmatch pattern when the
    entry has wildcards ("*head*" keeps "prob_head.body.0")."""
    for p in patterns:
        if any(c in p for c in "*?["):
            if fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*"):
                return True
        elif name == p or name.startswith(p + "."):
            return True
    return False


def _output_layers(model: nn.Module) -> list[nn.Module]:
    """Layers that produce what the model returns — the last Conv/Linear of every top-level
    child named like a head or classifier — kept whatever ``keep`` says: pruning them would
    change the number of maps or of charset classes."""
    out: list[nn.Module] = []
    for name, child in model.named_children():
        if not (name.endswith("head") or name.endswith("classifier")):
            continue
        layers = [m for m in child.modules() if isinstance(m, _LAYER_TYPES)]
        if layers:
            out.append(layers[-1])
    return out


class _AtMostPruner(tp.pruner.BasePruner):
    """torch-pruning's pruner, except that ``round_to`` rounds the channels a layer *keeps* up,
    not down, to a multiple: a layer keeps at least ``int((1 - amount) x channels)`` of them
    (torch-pruning floors that count before rounding: 24 channels at 30 % keep 16).

    Rounding down (torch-pruning's choice) turned "30 %" into 50 % of every 16- and 32-channel
    layer and 40 % of the 40- and 56-channel ones of MobileNetV3 - the early, high-resolution
    layers the detector's geometry depends on - while the big layers lost 30 %."""

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        return max(current_channels - _round_up(current_channels - n_pruned, round_to), 0)


def _round_up(kept: int, round_to: int) -> int:
    """``kept`` channels rounded up to a multiple of ``round_to``."""
    return -(-kept // round_to) * round_to


def _importance(name: str) -> tp.importance.Importance:
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    if name == "lamp":
        return tp.importance.LAMPImportance(p=2)
    raise PruneError(f"unknown pruning importance {name!r}; known: {', '.join(IMPORTANCES)}")


def _output_positions(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, int]:
    """{layer: output positions (batch x spatial, or batch x steps)} of every Conv / Linear /
    LSTM the *eval* graph runs at ``example``'s size.  Layers only training runs (DBNet's
    threshold branch) are absent: they cost nothing at inference."""
    seen: dict[nn.Module, int] = {}

    def record(m: nn.Module, _inputs: Any, out: Any) -> None:
        t = out[0] if isinstance(out, tuple) else out
        channels = t.shape[1] if isinstance(m, nn.modules.conv._ConvNd) else t.shape[-1]
        seen[m] = int(t.numel() // max(int(channels), 1))

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, _LAYER_TYPES)]
    was = model.training
    try:
        with torch.no_grad():
            _eval_forward(model.eval(), example)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return seen


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups == m.in_channels == m.out_channels


def _layer_macs(m: nn.Module, n_in: int, n_out: int, positions: int) -> int:
    """MACs of layer ``m`` with ``n_in`` input and ``n_out`` output channels (hidden units for an
    LSTM) at ``positions`` output positions."""
    if isinstance(m, nn.modules.conv._ConvNd):
        k = int(torch.tensor(m.kernel_size).prod())
        per_group_in = 1 if _is_depthwise(m) else n_in // m.groups
        return n_out * per_group_in * k * positions
    if isinstance(m, nn.Linear):
        return n_in * n_out * positions
    if isinstance(m, nn.LSTM):  # per direction and step: 4 gates x hidden x (input + hidden)
        return (2 if m.bidirectional else 1) * 4 * n_out * (n_in + n_out) * positions
    return 0


class _MacModel:
    """The inference MACs of a model's Conv / Linear / LSTM layers as channel groups shrink.

    Exact for those layers (what torch-pruning's counter counts, less biases, BatchNorm and
    activations).  A layer's MACs are bilinear in its input and output channels, so what one
    group's channels save depends on how much the groups on its other side have already lost.
    """

    def __init__(self, positions: dict[nn.Module, int]):
        self.positions = positions
        self.dims = {m: [_in_width(m), _out_width(m)] for m in positions}

    def _macs(self, m: nn.Module, n_in: int, n_out: int) -> int:
        return _layer_macs(m, n_in, n_out, self.positions[m])

    def total(self) -> int:
        return sum(self._macs(m, i, o) for m, (i, o) in self.dims.items())

    def saving(self, sides: list[tuple[nn.Module, int]], size: int) -> int:
        """MACs saved by removing ``size`` channels on ``sides`` ((layer, 0=in / 1=out))."""
        saved = 0
        for m, side in sides:
            dims = self.dims[m]
            shrunk = list(dims)
            shrunk[side] -= size
            if _is_depthwise(m):
                shrunk = [shrunk[side], shrunk[side]]
            saved += self._macs(m, dims[0], dims[1]) - self._macs(m, shrunk[0], shrunk[1])
        return saved

    def remove(self, sides: list[tuple[nn.Module, int]], size: int) -> None:
        for m, side in sides:
            self.dims[m][side] -= size
            if _is_depthwise(m):
                self.dims[m][1 - side] = self.dims[m][side]


def _in_width(m: nn.Module) -> int:
    if isinstance(m, nn.modules.conv._ConvNd):
        return int(m.in_channels)
    return int(m.in_features if isinstance(m, nn.Linear) else m.input_size)  # type: ignore[arg-type]


def _out_width(m: nn.Module) -> int:
    if isinstance(m, nn.modules.conv._ConvNd):
        return int(m.out_channels)
    return int(m.out_features if isinstance(m, nn.Linear) else m.hidden_size)  # type: ignore[arg-type]


def _kept_uniform(n: int, amount: float, round_to: int) -> int:
    """Channels a group of ``n`` keeps under uniform pruning (``_AtMostPruner``'s rounding)."""
    return min(n, _round_up(int(n * (1.0 - amount)), round_to))


def _sensitivity_ratios(pruner: tp.pruner.BasePruner, model: nn.Module, example: torch.Tensor,
                        amount: float, round_to: int) -> tuple[dict[nn.Module, float], dict[str, Any]]:
    """Per-group pruning ratios that remove the MACs uniform pruning at ``amount`` would remove,
    taking channels where they cost the least training loss per MAC saved.

    A channel's loss is its first-order Taylor estimate of the loss increase, |sum w x dL/dw|
    summed over every coupled layer (Molchanov et al. 2019: comparable across layers, unlike
    the per-layer normalised ranks used within a layer); what it saves is the inference MACs
    of every layer it feeds or is fed by (``_MacModel``, at ``example``'s size).  Channels go
    greedily in blocks that keep each group's count a multiple of ``round_to``, cheapest loss
    per MAC first (a block's saving is re-counted when it comes up, as the groups around it
    shrink), until the MACs saved come closest to uniform pruning's; no group loses more than
    twice ``amount`` (at most 90 %): first-order estimates do not hold for a layer stripped
    bare.  The gradients must be in place (``prune_model`` computes them).
    """
    dg = pruner.DG
    positions = _output_positions(model, example)
    macs = _MacModel(positions)
    taylor = tp.importance.GroupTaylorImportance(group_reduction="sum", normalizer=None)
    names = {m: n for n, m in model.named_modules()}
    cap = min(0.9, 2.0 * amount)
    groups: list[tuple[nn.Module, int, list[tuple[nn.Module, int]], list[float]]] = []
    # (root, channels, [(layer, side)], ascending channel losses)
    skipped: list[nn.Module] = []
    for group in dg.get_all_groups(ignored_layers=pruner.ignored_layers,
                                   root_module_types=pruner.root_module_types):
        root = group[0].dep.target.module
        n = int(dg.get_out_channels(root))
        sides: set[tuple[nn.Module, int]] = set()
        for dep, _ in group:
            m = dep.target.module
            if m not in macs.positions:  # not in the inference graph: costs nothing there
                continue
            if dg.is_out_channel_pruning_fn(dep.handler):
                sides.add((m, 1))
            elif dg.is_in_channel_pruning_fn(dep.handler):
                sides.add((m, 0))
        if any(_is_depthwise(m) for m, _ in sides):  # one channel is one in and one out
            sides = {(m, 1) if _is_depthwise(m) else (m, side) for m, side in sides}
        scores = taylor(group)
        if scores is None or len(scores) != n:  # grouped channels: left as they are
            skipped.append(root)
            continue
        groups.append((root, n, sorted(sides, key=lambda ms: names.get(ms[0], "")),
                       scores.detach().double().sort().values.tolist()))

    before = macs.total()
    uniform = _MacModel(positions)
    for _, n, coupled, _ in groups:
        uniform.remove(coupled, n - _kept_uniform(n, amount, round_to))
    target = before - uniform.total()
    pruned = [0] * len(groups)

    def next_block(i: int) -> tuple[float, int, int, int] | None:
        """(loss per MAC, group, channels, MACs saved) of group i's next block."""
        _, n, sides, scores = groups[i]
        size = (n - pruned[i]) % round_to or round_to
        if pruned[i] + size > cap * n or n - pruned[i] - size < 1:
            return None
        saving = macs.saving(sides, size)
        if saving <= 0:
            return None
        return sum(scores[pruned[i]: pruned[i] + size]) / saving, i, size, saving

    heap = [b for i in range(len(groups)) if (b := next_block(i)) is not None]
    heapq.heapify(heap)
    saved = 0
    while heap and saved < target:
        key, i, size, _ = heapq.heappop(heap)
        fresh = next_block(i)  # its neighbours may have shrunk since it was queued
        if fresh is None:
            continue
        if heap and fresh[0] > key and fresh[0] > heap[0][0]:
            heapq.heappush(heap, fresh)
            continue
        gain = fresh[3]
        if saved + gain - target > target - saved:  # overshoots more than it closes: next one
            continue
        saved += gain
        macs.remove(groups[i][2], size)
        pruned[i] += size
        if (b := next_block(i)) is not None:
            heapq.heappush(heap, b)
    ratios = {root: p / n for (root, n, _, _), p in zip(groups, pruned, strict=True)}
    ratios.update({root: 0.0 for root in skipped})
    info = {"macs_before": before, "macs_target": before - target, "macs_planned": before - saved,
            "group_ratios": {names.get(root, "?"): round(r, 3) for root, r in ratios.items()}}
    return ratios, info


def _trace_forward(model: nn.Module, example: torch.Tensor) -> Any:
    """Forward with the top-level module in training mode but every submodule as it is (eval),
    so DBNet returns its threshold branch too (see the module docstring)."""
    was = model.training
    model.training = True
    try:
        return model(example)
    finally:
        model.training = was


def _eval_forward(model: nn.Module, example: torch.Tensor) -> Any:
    return model(example)


def count_macs_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of the eval graph at ``example_input``'s size (torch-pruning's
    counter; restores the model's train/eval mode)."""
    was = model.training
    try:
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(model, example_input)
    finally:
        model.train(was)
    return int(macs), int(params)


def channel_table(model: nn.Module) -> dict[str, list[int]]:
    """{module name: [in, out]} for every Conv / ConvTranspose / Linear / LSTM (hidden size)."""
    table: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.ConvTranspose2d):
            table[name] = [int(m.in_channels), int(m.out_channels)]
        elif isinstance(m, nn.Linear):
            table[name] = [int(m.in_features), int(m.out_features)]
        elif isinstance(m, nn.LSTM):
            table[name] = [int(m.input_size), int(m.hidden_size)]
    return table


def prune_model(
    model: nn.Module,
    example_input: torch.Tensor,
    amount: float,
    importance: str = "l1",
    keep: Sequence[str] = DEFAULT_KEEP,
    round_to: int | None = 8,
    loss_fn: Callable[[nn.Module], torch.Tensor | Iterable[torch.Tensor]] | None = None,
    iterative_steps: int = 1,
    global_pruning: bool = False,
    allocation: str = "uniform",
) -> tuple[nn.Module, dict[str, Any]]:
    """Remove ``amount`` (0..1) of the channels of every prunable layer group, in place.

    ``importance``: "l1" / "l2" (group magnitude, p=1/2), "taylor" (first-order, needs
    ``loss_fn(model)`` -> a scalar loss, or an iterable of per-batch losses, on real training
    data: weight x gradient is meaningless without a real loss; see ``task_losses``), "lamp".
    ``keep``: module-name prefixes (or fnmatch patterns such as "*head*") whose outputs are
    never pruned; the output layers of heads / classifiers are always kept.  ``round_to``: kept
    channel counts are rounded up to multiples of this (8 suits SIMD and TensorRT).
    ``iterative_steps`` > 1 prunes in several smaller steps (re-ranking in between, and
    re-computing the Taylor gradients).  ``allocation``: "uniform" removes ``amount`` of every
    group's channels; "sensitivity" removes the same MACs, but more where the Taylor estimate of
    the loss per MAC saved is low and less where it is high (``_sensitivity_ratios``; needs
    ``loss_fn``, one step; ``importance`` still ranks channels within each group).
    Returns (the same model object, report) with params/MACs before and after (at
    ``example_input``'s size) and per-layer [in, out] channels.  The model comes back in the
    train/eval mode it came in.
    """
    if not 0.0 <= amount < 1.0:
        raise PruneError(f"pruning amount must be in [0, 1), got {amount}")
    if importance not in IMPORTANCES:
        raise PruneError(f"unknown pruning importance {importance!r}; known: {', '.join(IMPORTANCES)}")
    if importance == "taylor" and loss_fn is None:
        raise PruneError("importance='taylor' needs loss_fn(model) -> loss on real training data")
    if iterative_steps < 1:
        raise PruneError(f"iterative_steps must be >= 1, got {iterative_steps}")
    if allocation not in ALLOCATIONS:
        raise PruneError(f"unknown pruning allocation {allocation!r}; known: {', '.join(ALLOCATIONS)}")
    if allocation == "sensitivity" and (loss_fn is None or iterative_steps != 1 or global_pruning):
        raise PruneError("allocation='sensitivity' needs loss_fn(model) -> loss on real training "
                         "data, one step and no global_pruning")
    was_training = model.training
    model.eval()
    example_input = example_input.detach()
    before = channel_table(model)
    macs0, params0 = count_macs_params(model, example_input)
    names = [n for n, _ in model.named_modules() if n]
    report: dict[str, Any] = {
        "amount": float(amount),
        "importance": importance,
        "round_to": round_to,
        "allocation": allocation,
        "keep": list(keep),
        # entries that matched nothing (a typo, or DEFAULT_KEEP's other model's names)
        "keep_unmatched": [k for k in keep if not any(_matches(n, [k]) for n in names)],
        "params_before": params0,
        "macs_before": macs0,
        "input_shape": list(example_input.shape),
    }
    if amount == 0.0:
        report.update(params_after=params0, macs_after=macs0, channels={
            k: {"before": v, "after": v} for k, v in before.items()})
        model.train(was_training)
        return model, report

    ignored: list[nn.Module] = [m for n, m in model.named_modules() if n and _matches(n, keep)]
    ignored += _output_layers(model)
    ignored += [m for m in model.modules() if isinstance(m, nn.LSTM) and m.num_layers > 1]
    # The detector's eval graph hides the threshold branch: trace the training outputs when the
    # model has them (DBNet); other models are traced as they run at inference.
    with torch.no_grad():
        out = _trace_forward(model, example_input)
    forward_fn = _trace_forward if isinstance(out, dict) else _eval_forward

    def make_pruner(ratios: dict[nn.Module, float] | None = None) -> _AtMostPruner:
        return _AtMostPruner(
            model,
            example_input,
            importance=_importance(importance),
            pruning_ratio=float(amount),
            pruning_ratio_dict=ratios,
            iterative_steps=iterative_steps,
            ignored_layers=ignored,
            round_to=round_to,
            global_pruning=global_pruning,
            forward_fn=forward_fn,
        )

    pruner = make_pruner()
    for _ in range(iterative_steps):
        if importance == "taylor" or allocation == "sensitivity":
            assert loss_fn is not None
            _taylor_gradients(model, loss_fn)
        if allocation == "sensitivity":
            ratios, report["sensitivity"] = _sensitivity_ratios(pruner, model, example_input,
                                                                amount, round_to or 1)
            pruner = make_pruner(ratios)
        pruner.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    macs1, params1 = count_macs_params(model, example_input)
    after = channel_table(model)
    report.update(
        params_after=params1,
        macs_after=macs1,
        channels={k: {"before": before[k], "after": after.get(k, before[k])} for k in before},
    )
    model.train(was_training)
    return model, report


def _taylor_gradients(model: nn.Module, loss_fn: Callable[[nn.Module], Any]) -> None:
    """Leave in every parameter's ``.grad`` the gradient of ``loss_fn(model)`` (a loss, or an
    iterable of per-batch losses back-propagated one at a time: gradients add up, graphs do
    not).  Layers the loss does not reach (DBNet's threshold branch under an eval-mode loss)
    get zero gradients: Taylor importance then ranks them by the others.  The BatchNorm
    running statistics the trained model came with are kept: a training-mode loss would
    otherwise fold these batches into them."""
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    model.zero_grad(set_to_none=True)
    losses = loss_fn(model)
    for loss in [losses] if isinstance(losses, torch.Tensor) else losses:
        loss.backward()
    model.load_state_dict(buffers, strict=False)
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def task_batches(task: Any, batch_size: int = 8, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Augmented training batches of a training task (the ``engine.training.loop.fit`` contract:
    ``train_dataset()``, optional ``collate_fn``), the same ones on every call for one ``seed``,
    so that what they decide (Taylor ranks, BatchNorm statistics) is reproducible.

    The order comes from a seeded generator; the augmentation draws from torch's global RNG
    (engine.training.datasets.sample_rng), so each batch is drawn under a forked, seeded global
    RNG that is restored before the batch is handed out.
    """
    loader = iter(torch.utils.data.DataLoader(
        task.train_dataset(), batch_size=batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(seed), collate_fn=getattr(task, "collate_fn", None)))
    for i in itertools.count():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1_000_003 + i)
            batch = next(loader, None)
        if batch is None:
            return
        yield batch


def task_losses(task: Any, batches: int = 16, batch_size: int = 8,
                seed: int = 1) -> Callable[[nn.Module], Iterator[torch.Tensor]]:
    """``loss_fn`` for Taylor importance: the task's own training loss on ``batches`` real
    training batches, one at a time (``prune_model`` back-propagates each, so memory holds one
    batch's graph).  One batch is too noisy a gradient to rank channels by: on the flagship's
    detector (30 %, before fine-tuning, BatchNorm re-estimated, torch-pruning's rounding) hmean
    was 0.54 after one batch of 8 and 0.56-0.78 after 8-16 batches, depending on which (L1
    magnitude: 0.10); with kept counts rounded up, 16 batches give 0.76-0.89."""
    def losses(model: nn.Module) -> Iterator[torch.Tensor]:
        model.train()
        for batch in itertools.islice(task_batches(task, batch_size, seed), batches):
            yield task.compute_loss(model, batch)[0]
    return losses


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor | dict[str, Any]],
                          max_batches: int = 25) -> int:
    """Re-estimate every BatchNorm's running mean/variance on real training ``batches`` (input
    tensors, or training batches whose input is under "image", e.g. ``task_batches``).

    Why: removing a layer's input channels changes the distribution of its outputs, so the
    BatchNorm statistics that follow are stale right after pruning and the network's accuracy
    collapses more than the removed weights alone explain.  Re-estimating them (forward passes
    in train mode, no gradient, cumulative average) restores much of it before any weight moves
    (the "adaptive BN" of EagleEye, Li et al. 2020) and gives the fine-tune a better start.
    Returns the number of batches used; the model comes back in the mode it came in.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    was = model.training
    momenta = [m.momentum for m in norms]
    saved = [copy.deepcopy(m.state_dict()) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches seen
    used = 0
    model.train()
    try:
        with torch.no_grad():
            for x in batches:
                if used >= max_batches:
                    break
                model(x["image"] if isinstance(x, dict) else x)
                used += 1
    finally:
        for m, mom, state in zip(norms, momenta, saved, strict=True):
            m.momentum = mom
            if used == 0:  # no data (or it failed): keep the old statistics, not reset ones
                m.load_state_dict(state)
        model.train(was)
    return used


# ------------------------------------------------------------------------------------------
# save / load
# ------------------------------------------------------------------------------------------


def _structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        attrs = {}
        for a in _SHAPE_ATTRS:
            v = getattr(m, a, None)
            if isinstance(v, bool) or v is None:
                continue
            if isinstance(v, int | tuple) and not callable(v):
                attrs[a] = list(v) if isinstance(v, tuple) else int(v)
        if attrs:
            out[name] = attrs
    return out


def save_pruned(
    path: Path | str,
    model: nn.Module,
    build: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Atomically save a (pruned) model so that ``load_pruned`` can rebuild it.

    ``build`` = {"kind": "detector"|"recognizer", "arch": ..., "variant": backbone or sequence,
    "options": {constructor overrides, e.g. num_classes/height for the recognizer}} — plain
    data, the same names as ``engine.models.build_detector`` / ``build_recognizer`` take.
    ``extra`` (plain data: metrics, the prune report) is stored under "extra".
    """
    if build.get("kind") not in ("detector", "recognizer"):
        raise PruneError(f"build spec needs kind 'detector' or 'recognizer', got {build!r}")
    payload = {
        "format": PRUNED_FORMAT,
        "build": dict(build),
        "structure": _structure(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def _build_from_spec(build: dict[str, Any]) -> nn.Module:
    from engine.models import build_detector, build_recognizer

    options = dict(build.get("options") or {})
    if build["kind"] == "detector":
        return build_detector(build.get("arch", "dbnet"), build.get("variant", "mobilenetv3"),
                              **options)
    return build_recognizer(build.get("arch", "crnn"), build.get("variant", "bilstm"), **options)


def _shrink(model: nn.Module, structure: dict[str, dict[str, Any]],
            state: dict[str, torch.Tensor]) -> None:
    """Give every module the recorded shape attributes and empty tensors of the saved shapes."""
    modules = dict(model.named_modules())
    for name, attrs in structure.items():
        m = modules.get(name)
        if m is None:
            raise PruneError(f"pruned checkpoint names module {name!r} the model does not have")
        for a, v in attrs.items():
            setattr(m, a, tuple(v) if isinstance(v, list) else v)
    for key, tensor in state.items():
        mod_name, _, leaf = key.rpartition(".")
        m = modules.get(mod_name)
        if m is None:
            raise PruneError(f"pruned checkpoint has tensor {key!r} for a missing module")
        if leaf in m._parameters and m._parameters[leaf] is not None:
            old = m._parameters[leaf]
            if old.shape != tensor.shape:
                setattr(m, leaf, nn.Parameter(torch.empty_like(tensor),
                                              requires_grad=old.requires_grad))
        elif (buf := m._buffers.get(leaf)) is not None and buf.shape != tensor.shape:
            m._buffers[leaf] = torch.empty_like(tensor)
    for m in model.modules():
        if isinstance(m, nn.RNNBase):
            m._init_flat_weights()


def load_pruned(
    path: Path | str,
    model_factory: Callable[[dict[str, Any]], nn.Module] | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by ``save_pruned`` -> (model in eval mode, extra).

    Loads with ``weights_only=True``.  ``model_factory(build_spec)`` overrides how the unpruned
    model is constructed (default: the engine.models registry).
    """
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != PRUNED_FORMAT:
        raise PruneError(f"{path}: not a pruned-model checkpoint (format {PRUNED_FORMAT})")
    build = payload["build"]
    model = (model_factory or _build_from_spec)(build)
    _shrink(model, payload["structure"], payload["state_dict"])
    model.load_state_dict(payload["state_dict"], strict=True)
    model.eval()
    return model, dict(payload.get("extra") or {})


def renormalise(task: Any, model: Any, batch_size: int) -> tuple[dict[str, float], bool]:
    """Re-estimate the pruned model's BatchNorm statistics on training batches, and keep them
    when the validation metric says they are better -> (the metric of the kept model, kept?).

    On the flagship's detector (30 %, before fine-tuning) re-estimation lifts hmean from 0.00 to
    0.10 after L1 pruning and Taylor-pruned models reach 0.76-0.89; a barely trained network
    can instead get near-zero variances that make its outputs fragile (fp16 parity failed on
    one), so the measurement decides; a tie keeps the old statistics.  Without a validation
    split the re-estimated ones are kept: fine-tuning in train mode replaces the running
    statistics within a few dozen steps anyway.
    """
    stale = copy.deepcopy(model.state_dict())
    stale_acc = task.validate(model.eval()) if task.metric else {}
    if not recalibrate_batchnorm(model, task_batches(task, batch_size)):
        return stale_acc, False
    if not task.metric:
        return {}, True
    acc = task.validate(model.eval())
    better = (acc[task.metric] > stale_acc[task.metric]) == (getattr(task, "metric_mode", "max") == "max")
    if acc[task.metric] != stale_acc[task.metric] and better:
        return acc, True
    model.load_state_dict(stale)
    return stale_acc, False
