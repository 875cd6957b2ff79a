"""Many runs as one: members that differ only in seeds, stage-2 loss weights or learning rates train together.

Members step in lockstep, each with its own data order, data, run directory, checkpoints, metrics and selection:
each member's Trainer evaluates, records and checkpoints it exactly as in a plain run. How a step is taken:
- vmapped (`Stack`, the default on CUDA): the members' parameters and buffers stacked along a new first axis
  (torch.func.stack_module_state), every step one vmap over `functional_call` of `Method.loss`, one backward pass
  of the summed losses (each member's gradient is its own loss's) and one optimiser step over the stacked tensors
  (Adam, AdamW and SGD work element by element, so each member keeps its own moments). On a GPU this turns K
  launch-bound steps into one. The batched kernels sum in another order than a plain run's: ulp-sized
  differences, which Adam can grow (docs/stacking-gpu.md). Members need a method whose step is `loss` plus the
  optimiser's step, and equal optimiser settings but for their learning rates and weight decays (`OwnSettings`); after
  every epoch the stack is copied back into the members' own modules. With captured steps (CUDA) a stack's step
  is one CUDA graph that gathers every member's batch from the (K, B) indices it is given.
- in turn (`Lockstep`, the default on a CPU, where vmap gains nothing): each member's own `update`, one after
  another; a plain run's numbers bit for bit, for any method and setting.
"""

import inspect
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch.func import functional_call, stack_module_state, vmap

from denetdm.errors import ConfigError
from denetdm.fingerprint import setting
from denetdm.methods.base import Method
from denetdm.training.captured import captured_step
from denetdm.training.evaluation import head_metrics, keyed

if TYPE_CHECKING:
    from denetdm.training.loop import Fit, Trainer

log = logging.getLogger(__name__)

OWN_SETTINGS = ("lr", "weight_decay")  # every phase's optimiser settings may differ per member (OwnSettings)


def stack_key(config: Mapping) -> str:
    """Runs with equal keys can train as one stack: their configs differ at most in the seeds, the optimiser
    settings of their phases' schedules, and what each phase's Method declares in `stack_apart`."""
    from denetdm.training.phases import phase_class, resolve

    try:
        config = {**config, "method": resolve(config.get("method") or {})}
    except ConfigError:  # a run alone, whose plan says what is wrong
        return json.dumps(config, sort_keys=True, default=str)
    names = [name for name, node in (config["method"].get("phases") or {}).items() if node is not None]
    stages = [s for s in (config.get("stage") or {}).get("stages") or names if s != "eval"]
    fp = setting(config, stages or names)  # the phases a run trains (stage=eval: as a full run)
    for name, node in ((fp.get("method") or {}).get("phases") or {}).items():
        if not isinstance(node, dict):
            continue
        for key in phase_class(name, node).stack_apart:
            node.pop(key, None)
        for key in OWN_SETTINGS:
            (fp.get(node.get("schedule")) or {}).pop(key, None)
    fp["stage"] = config.get("stage")
    return json.dumps(fp, sort_keys=True, default=str)


class Lockstep:
    """Members stepped in turn, each over its own epoch, on their own modules and optimisers: a plain run's
    arithmetic, bit for bit, for any method and any per-member setting, and epochs of different lengths (JTT's
    upsampled error sets); on a CPU, where vmap gains nothing, this is the default."""

    def __init__(self, fits: Sequence["Fit"], captured: bool) -> None:
        self.fits, self.steps = fits, [_own_step(f, captured) for f in fits]
        self.groups = [[k] for k in range(len(fits))]  # the members that step together: one at a time

    def update(self, idxs: Sequence[torch.Tensor], group: Sequence[int]) -> dict[str, torch.Tensor]:
        """One step of the `group`'s members on the batches at their indices; losses per member."""
        outs = [self.steps[k](idx) for k, idx in zip(group, idxs, strict=True)]
        return {key: torch.stack([o[key] for o in outs]) for key in outs[0]}

    def set_lr(self, factor: float, group: Sequence[int]) -> None:
        """The `group`'s learning rates at `factor` times their own."""
        set_lr([self.fits[k].method.optimizer for k in group], factor)

    def push(self) -> None:
        """Nothing to copy: the members are their own modules."""

    def evaluate_all(self, datas: Sequence, stage: str) -> None:
        """None: each member's trainer evaluates it, as in a plain run."""


def set_lr(optimizers: Sequence[torch.optim.Optimizer | None], factor: float) -> None:
    """Each parameter group's learning rate at `factor` times the one it was built with (kept as `initial_lr`, as
    torch's schedulers keep it: saved with the optimiser's state, so a resumed run scales the same base)."""
    for opt in optimizers:
        for group in opt.param_groups if opt is not None else ():
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor


def _own_step(fit: "Fit", captured: bool) -> Callable[[torch.Tensor], dict]:
    """A member's own update on the batch at some indices, captured as a CUDA graph where asked for."""
    method = fit.method
    if not captured:
        return lambda idx: method.update(*fit.batch(idx))
    step = captured_step(lambda batches: method.update(*batches[0]), [fit], [method.optimizer])
    return lambda idx: step([idx])


class OwnSettings:
    """Each member's own learning rate and weight decay around an optimiser stepping with lr 1 and no decay: the
    decay is added to the gradient (Adam, SGD) or applied to the weights (AdamW), and each member moves lr_k
    times the unit step (Adam's, AdamW's and SGD's steps are linear in the learning rate)."""

    KINDS = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)

    def __init__(self, members: Sequence[Method]) -> None:
        groups = [m.optimizer.param_groups[0] for m in members]
        device = next(members[0].parameters()).device  # on the device already: no host copy in a captured step
        lrs = [g.get("initial_lr", g["lr"]) for g in groups]  # a scheduled member's own lr, unscaled
        self.lr = torch.tensor(lrs, dtype=torch.float64, device=device)
        self.base_lr = self.lr  # what a learning-rate schedule scales
        self.wd = torch.tensor([g["weight_decay"] for g in groups], dtype=torch.float64, device=device)
        opt = members[0].optimizer
        self.decoupled = bool(opt.defaults.get("decoupled_weight_decay", isinstance(opt, torch.optim.AdamW)))

    @staticmethod
    def needed(members: Sequence[Method]) -> bool:
        """Whether the members' learning rates or weight decays differ (else the optimiser's own arithmetic)."""
        groups = [m.optimizer.param_groups[0] for m in members if m.optimizer is not None]
        return len({(g.get("initial_lr", g["lr"]), g["weight_decay"]) for g in groups}) > 1

    @torch.no_grad()
    def step(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> None:
        """One step of `optimizer` (lr 1, no decay), scaled and decayed member by member."""
        shape = lambda p: (len(self.lr),) + (1,) * (p.dim() - 1)  # noqa: E731
        if not self.decoupled:
            for p in params:
                if p.grad is not None:
                    p.grad.add_(p * self.wd.to(p).view(shape(p)))
        before = [p.clone() for p in params]
        optimizer.step()
        for p, old in zip(params, before, strict=True):
            lr, wd = self.lr.to(p).view(shape(p)), self.wd.to(p).view(shape(p))
            base = old * (1 - lr * wd) if self.decoupled else old
            p.copy_(base + lr * (p - old))


class Stack:
    """The members' methods of one phase as stacked tensors, stepped together."""

    def __init__(self, members: Sequence[Method]) -> None:
        self.members = list(members)
        self.template = members[0]  # its structure is called with the stacked tensors swapped in
        self.params, self.buffers = stack_module_state(self.members)
        names = {id(p): n for n, p in members[0].named_parameters()}
        opt = members[0].optimizer
        # the stacked tensors in the order of the first member's optimiser (its checkpoints index state by it)
        self.trainable = [self.params[names[id(p)]] for p in opt.param_groups[0]["params"]]
        # members with their own learning rates or weight decays
        self.own = OwnSettings(members) if OwnSettings.needed(members) else None
        settings = {**opt.defaults, "lr": 1.0, "weight_decay": 0.0} if self.own else opt.defaults
        accepted = inspect.signature(type(opt).__init__).parameters  # AdamW keeps a default it does not take
        self.optimizer = type(opt)(self.trainable, **{k: v for k, v in settings.items() if k in accepted})
        self._pull_optimizer_state()
        # every member's Method.forward at once: (x, y, idx) -> losses, (x) -> logits by head
        self._call = vmap(self._member, randomness="different")

    @staticmethod
    def fits(members: Sequence[Method]) -> bool:
        """Whether members can be vmapped: a step is loss + optimiser step, with equal optimiser settings but for
        the learning rate and weight decay (Adam, AdamW, SGD)."""
        opts = [m.optimizer for m in members]
        if not type(members[0]).stackable or any(o is None for o in opts):
            return False
        same = [{k: v for k, v in o.defaults.items() if k not in ("lr", "weight_decay")} for o in opts]
        if OwnSettings.needed(members) and not isinstance(opts[0], OwnSettings.KINDS):
            return False
        return all(type(o) is type(opts[0]) and s == same[0] for o, s in zip(opts, same, strict=True))

    def _member(self, params, buffers, *args) -> dict[str, torch.Tensor]:
        return functional_call(self.template, (params, buffers), args, strict=True)

    def update(self, batches: Sequence[tuple]) -> dict[str, torch.Tensor]:
        """One step of every member on its own batch (x, y, idx); losses per member, (K,)."""
        x, y, idx = (_stack_like(parts) for parts in zip(*batches, strict=True))
        losses = self._call(self.params, self.buffers, x, y, idx)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].sum().backward()
        if self.own:
            self.own.step(self.optimizer, self.trainable)
        else:
            self.optimizer.step()
        return {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def evaluate_all(self, datas: Sequence, stage: str, batch_size: int = 4096) -> list[dict[str, float]]:
        """`evaluate_all` of every member in one vmapped pass per batch (members' splits of equal sizes)."""
        self.template.eval()
        out: list[dict[str, float]] = [{} for _ in datas]
        for name in datas[0].splits():
            splits = [d.splits()[name] for d in datas]
            preds: dict[str, list[torch.Tensor]] = {}
            for start in range(0, len(splits[0]), batch_size):
                x = _stack_like([s.x[start : start + batch_size] for s in splits])
                for head, logits in self._call(self.params, self.buffers, x).items():
                    preds.setdefault(head, []).append(logits.argmax(-1))
            y, b = torch.stack([s.y for s in splits]), torch.stack([s.b for s in splits])
            every = {head: torch.cat(p, 1) for head, p in preds.items()}  # (K, N) each
            for k, mine in enumerate(head_metrics(every, y, b, datas[0].num_classes, datas[0].num_biases)):
                out[k] |= keyed(stage, name, mine)
        return out

    @torch.no_grad()
    def push(self) -> None:
        """Copy the stack into each member's own parameters, buffers and optimiser state."""
        pairs = [(t, self.params[name][k]) for k, m in enumerate(self.members) for name, t in m.named_parameters()]
        pairs += [
            (t, self.buffers[name][k])
            for k, m in enumerate(self.members)
            for name, t in m.named_buffers()
            if name in self.buffers
        ]
        if pairs:  # a few launches for all members, not one per tensor
            torch._foreach_copy_(*map(list, zip(*pairs, strict=True)))
        for k, member in enumerate(self.members):
            opt = member.optimizer
            for p, stacked in zip(opt.param_groups[0]["params"], self.trainable, strict=True):
                state = self.optimizer.state.get(stacked)
                if state:
                    opt.state[p] = {key: _member_part(v, k, len(self.members)) for key, v in state.items()}

    @torch.no_grad()
    def _pull_optimizer_state(self) -> None:
        """Resumed members bring their optimiser state (all at the same epoch, so the same step count)."""
        opts = [m.optimizer for m in self.members]
        for i, stacked in enumerate(self.trainable):
            states = [o.state.get(o.param_groups[0]["params"][i]) for o in opts]
            if all(states):
                self.optimizer.state[stacked] = {
                    key: torch.stack([s[key] for s in states]) if states[0][key].dim() else states[0][key].clone()
                    for key in states[0]
                }


def _member_part(value: object, k: int, size: int) -> object:
    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == size:
        return value[k].clone()
    return value.clone() if isinstance(value, torch.Tensor) else value


class Vmapped:
    """A Stack stepped on the members' index batches, each member's batch fetched (and augmented) as its plain run
    would; with captured steps (CUDA) one graph for all members."""

    def __init__(self, stack: "Stack", fits: Sequence["Fit"], captured: bool) -> None:
        self.stack, self.groups = stack, [list(range(len(fits)))]  # every member in each step
        if captured:
            self.step = captured_step(stack.update, fits, [stack.optimizer])
        else:
            self.step = lambda idxs: stack.update([f.batch(i) for f, i in zip(fits, idxs, strict=True)])

    def update(self, idxs: Sequence[torch.Tensor], group: Sequence[int]) -> dict[str, torch.Tensor]:
        """One step of every member (`group`: all of them) on the batch at its indices; losses per member, (K,)."""
        return self.step(idxs)

    def set_lr(self, factor: float, group: Sequence[int]) -> None:
        """Every member's learning rate at `factor` times its own."""
        if self.stack.own:
            self.stack.own.lr = self.stack.own.base_lr * factor
        else:
            set_lr([self.stack.optimizer], factor)

    def push(self) -> None:
        """The stack's push."""
        self.stack.push()

    def evaluate_all(self, datas: Sequence, stage: str) -> list[dict[str, float]]:
        """The stack's batched evaluation."""
        return self.stack.evaluate_all(datas, stage)


def _stack_like(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """torch.stack, keeping each part's own layout in its slice (channels-last images stay channels-last)."""
    first = parts[0]
    if first.is_contiguous():
        return torch.stack(parts)
    out = torch.empty_strided(
        (len(parts), *first.shape), (first.numel(), *first.stride()), dtype=first.dtype, device=first.device
    )
    for k, part in enumerate(parts):
        out[k].copy_(part)
    return out


def stepper(trainers: Sequence["Trainer"], fits: Sequence["Fit"], vectorize: bool) -> Lockstep | Vmapped:
    """How the members step together: vmapped as one Stack where asked for and they can be, else in turn; captured
    as CUDA graphs where the run asks for it and the method declares it can be (`Method.capturable`)."""
    members = [f.method for f in fits]
    on_gpu = any(p.is_cuda for p in members[0].parameters())
    captured = trainers[0].captured and type(members[0]).capturable and on_gpu
    captured = captured and all(m.optimizer is not None for m in members)
    if captured and fits[0].schedule.lr_schedule.varies:  # a graph replays the learning rate it recorded
        log.info("%s: a learning-rate schedule: steps are not captured as CUDA graphs", fits[0].stage)
        captured = False
    if vectorize and len(fits) > 1 and Stack.fits(members):  # a plain run steps its own module
        return Vmapped(Stack(members), fits, captured)
    if vectorize and len(fits) > 1:
        log.info("%s: these members cannot be vmapped (method or optimiser settings); they step in turn", fits[0].stage)
    return Lockstep(fits, captured)
