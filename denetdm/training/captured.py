"""Captured training steps (`captured=true`, CUDA only): a step (forward, backward, optimiser) replayed as one
CUDA graph.

A step of the small models here is launch-bound on a GPU: a few hundred kernel launches and their Python, for
arithmetic that takes microseconds. A CUDA graph records the step's kernels once and replays them with one
launch. The graph reads its batch from static buffers and writes its losses to static outputs (copied out after
each replay, so the loop still sums them on the device and reads them once per epoch). A batch of another
shape (the last partial batch, where the schedule keeps it) and the first WARMUP steps run eagerly. The
optimiser runs in capturable mode (its step counts live on the device), which computes Adam's bias corrections
in float32 on the device instead of float64 on the host: runs with captured=true differ from plain ones in the
last bits, and are deterministic among themselves on the same device. A step that cannot be captured (a host
synchronisation inside a method's update) falls back to eager steps with one warning.

On by default on CUDA (`captured=auto`; docs/stacking-gpu.md). A step takes the indices of its batch, so where it
gathers the batch itself (no host-side augmentation) the graph replays the gather too.
"""

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from denetdm.training.loop import Fit

log = logging.getLogger(__name__)

WARMUP = 3  # eager steps before the capture (lazy initialisation, cuBLAS workspaces; PyTorch's recipe)


def make_capturable(optimizers: Sequence[torch.optim.Optimizer | None]) -> None:
    """Put optimisers in capturable mode before their first step (their step counts are created on the device)."""
    for opt in optimizers:
        if opt is None:
            continue
        for group in opt.param_groups:
            if "capturable" in group:
                group["capturable"] = True
        if "capturable" in opt.defaults:
            opt.defaults["capturable"] = True
        for p, state in opt.state.items():  # a resumed optimiser's step counts, from the host to the device
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].to(p.device, torch.float32)


def captured_step(update: Callable[[list], dict], fits: Sequence["Fit"], optimizers: Sequence) -> Callable:
    """`update(batches)` (one (x, y, idx) per member) on the members' index batches as one CUDA graph. The graph
    gathers the batches itself from the (K, B) indices it is given, unless they are augmented: augmentation draws
    from the host generators, outside the graph."""
    make_capturable(optimizers)  # after the restore, which brings the checkpoint's settings back
    if all(f.augment is None or f.method.views == 0 for f in fits):  # one (K, B) index copy per replayed step
        splits = [f.data.train for f in fits]
        graph = CapturedStep(lambda idx: update([s.batch(i) for s, i in zip(splits, idx, strict=True)]))
        return lambda idxs: graph(torch.stack(list(idxs)))
    graph = CapturedStep(lambda *flat: update([flat[i : i + 3] for i in range(0, len(flat), 3)]))
    return lambda idxs: graph(*(t for f, i in zip(fits, idxs, strict=True) for t in f.batch(i)))


class CapturedStep:
    """`step(*tensors) -> dict of losses` for one input shape as a CUDA graph; other shapes run eagerly."""

    def __init__(self, step: Callable[..., dict[str, torch.Tensor]]) -> None:
        self.step, self.calls, self.failed = step, 0, False
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[torch.Tensor, ...] = ()
        self.out: dict[str, torch.Tensor] = {}

    def __call__(self, *tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.graph is not None and _shapes(tensors) == _shapes(self.static):
            for buf, t in zip(self.static, tensors, strict=True):
                buf.copy_(t)
            self.graph.replay()
            return {k: v.clone() for k, v in self.out.items()}
        if self.failed or self.graph is not None or self.calls < WARMUP:
            self.calls += 1
            return self._eager(tensors)
        return self._capture(tensors)

    def _eager(self, tensors: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        if self.calls > WARMUP or self.failed:
            return self.step(*tensors)
        side = torch.cuda.Stream()  # warm-up steps on a side stream, as PyTorch's capture recipe does
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self.step(*tensors)
        torch.cuda.current_stream().wait_stream(side)
        return out

    def _capture(self, tensors: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """Record this step (its kernels do not run while recorded), then replay it for this batch."""
        self.static = tuple(t.clone() for t in tensors)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.out = self.step(*self.static)
        except RuntimeError as e:  # a host synchronisation or another op a graph cannot hold
            log.warning("captured=true: this step cannot be captured (%s); training on with eager steps", e)
            self.failed, self.static = True, ()
            torch.cuda.synchronize()
            return self.step(*tensors)
        self.graph = graph
        graph.replay()
        return {k: v.clone() for k, v in self.out.items()}


def _shapes(tensors: Sequence[torch.Tensor]) -> list[tuple]:
    return [(tuple(t.shape), t.dtype, t.stride()) for t in tensors]
