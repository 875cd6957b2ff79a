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
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch.func import functional_call, stack_module_state, vmap

from denetdm.errors import ConfigError, DenetdmError
from denetdm.methods.base import Method
from denetdm.training.engine import Fit, StageResult, Trainer, add_losses, head_metrics, keyed
from denetdm.training.fingerprint import setting

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
    stages = (config.get("stage") or {}).get("stages") or ["stage2"]
    fp = setting(config, [s for s in stages if s != "eval"] or ["stage2"])
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
    """Members stepped one after another on their own modules and optimisers: a plain run's arithmetic, bit for
    bit, for any method and any per-member setting (on a CPU, where vmap gains nothing, this is the default)."""

    def __init__(self, fits: Sequence[Fit]) -> None:
        self.steps = [f.step for f in fits]

    def update(self, idxs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """One step of every member on the batch at its own indices; losses per member, (K,)."""
        outs = [step(idx) for step, idx in zip(self.steps, idxs, strict=True)]
        return {key: torch.stack([o[key] for o in outs]) for key in outs[0]}

    def push(self) -> None:
        """Nothing to copy: the members are their own modules."""

    def evaluate_all(self, datas: Sequence, stage: str) -> None:
        """None: each member's trainer evaluates it, as in a plain run."""


class OwnSettings:
    """Each member's own learning rate and weight decay around an optimiser stepping with lr 1 and no decay: the
    decay is added to the gradient (Adam, SGD) or applied to the weights (AdamW), and each member moves lr_k
    times the unit step (Adam's, AdamW's and SGD's steps are linear in the learning rate)."""

    KINDS = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)

    def __init__(self, members: Sequence[Method]) -> None:
        groups = [m.optimizer.param_groups[0] for m in members]
        device = next(members[0].parameters()).device  # on the device already: no host copy in a captured step
        self.lr = torch.tensor([g["lr"] for g in groups], dtype=torch.float64, device=device)
        self.wd = torch.tensor([g["weight_decay"] for g in groups], dtype=torch.float64, device=device)
        opt = members[0].optimizer
        self.decoupled = bool(opt.defaults.get("decoupled_weight_decay", isinstance(opt, torch.optim.AdamW)))

    @staticmethod
    def needed(members: Sequence[Method]) -> bool:
        """Whether the members' learning rates or weight decays differ (else the optimiser's own arithmetic)."""
        groups = [m.optimizer.param_groups[0] for m in members if m.optimizer is not None]
        return len({(g["lr"], g["weight_decay"]) for g in groups}) > 1

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
        if not type(members[0]).stackable() or any(o is None for o in opts):
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


def _stepper(trainers: Sequence[Trainer], fits: Sequence[Fit], vectorize: bool):
    """How the members step together: vmapped as one Stack where they can be, else in turn."""
    members = [f.method for f in fits]
    if not (vectorize and Stack.fits(members)):
        if vectorize:
            log.info(
                "%s: these members cannot be vmapped (method or optimiser settings); they step in turn", fits[0].stage
            )
        return Lockstep(fits)
    stack = Stack(members)
    on_gpu = bool(stack.params) and next(iter(stack.params.values())).is_cuda
    captured = trainers[0].captured and members[0].capturable and on_gpu
    return Vmapped(stack, fits, bool(captured))


def fit_stacked(trainers: Sequence[Trainer], fits: Sequence[Fit], vectorize: bool) -> list[StageResult | DenetdmError]:
    """Train one phase of every member together, each recorded and checkpointed by its own trainer; each member's
    result, or the error that stopped it (a pruned trial, a non-finite loss: the others train on without it)."""
    out: list[StageResult | DenetdmError | None] = [None] * len(fits)
    live = list(range(len(fits)))
    stack = _stepper(trainers, fits, vectorize)
    for epoch in fits[0].epochs():
        t0 = time.time()
        for k in live:
            fits[k].method.train()
        sums: dict[str, torch.Tensor] = {}
        n = 0
        orders = (trainers[k].epoch_indices(fits[k], epoch) for k in live)
        for idxs in zip(*orders, strict=True):
            add_losses(sums, stack.update(idxs))
            n += 1
        stack.push()
        evals = stack.evaluate_all([fits[k].data for k in live], fits[0].stage)
        for j, k in enumerate(live):
            try:
                train = trainers[k].train_means(fits[k], epoch, {key: v[j] for key, v in sums.items()}, n)
                trainers[k].end_epoch(fits[k], epoch, train, t0, evals[j] if evals else None)
            except DenetdmError as e:
                out[k] = e
        if any(out[k] is not None for k in live):
            live = [k for k in live if out[k] is None]
            for k in live:  # the members left, stacked anew from their own modules (pushed above)
                fits[k].method.train()
            if live:
                stack = _stepper([trainers[k] for k in live], [fits[k] for k in live], vectorize)
        if not live:
            break
    for k in live:
        out[k] = trainers[k].recorder.finish(fits[k])
    return out


def fit_together(trainers: Sequence[Trainer], fits: Sequence[Fit], vectorize: bool) -> list[StageResult | DenetdmError]:
    """One phase of runs begun together: stacked where they have the same epochs and batches left (a kill can
    leave members apart), else one after another; each run's result, or the error that stopped it."""
    shape = {
        (f.state["epoch"], f.schedule.epochs, len(f.data.train), f.schedule.batch_size, f.schedule.drop_last)
        for f in fits
    }
    if len(fits) > 1 and len(shape) == 1:
        return fit_stacked(trainers, fits, vectorize)
    out: list[StageResult | DenetdmError] = []
    for trainer, fit in zip(trainers, fits, strict=True):
        try:
            out.append(trainer.fit_from(fit))
        except DenetdmError as e:
            out.append(e)
    return out


class Vmapped:
    """A Stack stepped on the members' index batches, each member's batch fetched (and augmented) as its plain run
    would; with captured steps (CUDA) one graph for all members, which gathers unaugmented batches itself."""

    def __init__(self, stack: "Stack", fits: Sequence[Fit], captured: bool) -> None:
        self.stack = stack
        fetch = lambda idxs: [f.batch(i) for f, i in zip(fits, idxs, strict=True)]  # noqa: E731
        self.step: Callable = lambda idxs: stack.update(fetch(idxs))
        if not captured:
            return
        from denetdm.training.captured import CapturedStep, make_capturable

        make_capturable([stack.optimizer])
        if all(f.augment is None for f in fits):  # one (K, B) index copy per replayed step
            splits = [f.data.train for f in fits]
            graph = CapturedStep(lambda idx: stack.update([s.batch(i) for s, i in zip(splits, idx, strict=True)]))
            self.step = lambda idxs: graph(torch.stack(list(idxs)))
        else:  # augmentation draws from the host generators: outside the graph
            graph = CapturedStep(lambda *flat: stack.update([flat[i : i + 3] for i in range(0, len(flat), 3)]))
            self.step = lambda idxs: graph(*(t for batch in fetch(idxs) for t in batch))

    def update(self, idxs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """One step of every member on the batch at its indices; losses per member, (K,)."""
        return self.step(idxs)

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
