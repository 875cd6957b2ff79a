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
import os
import time
from collections.abc import Mapping, Sequence

import torch
from torch.func import functional_call, stack_module_state, vmap

from denetdm.engine import Fit, StageResult, Trainer, add_losses, head_metrics, keyed
from denetdm.fingerprint import setting
from denetdm.methods.base import Method

log = logging.getLogger(__name__)

# What members of one stack may differ in (everything else of their fingerprints must be equal)
STACKED_APART = ("stage2.poe_weight", "stage2.dist_weight", "stage2.temperature", "stage1.lr", "stage2.lr",
                 "stage1.weight_decay", "stage2.weight_decay")  # fmt: skip


def stack_key(config: Mapping) -> str:
    """Runs with equal keys can train as one stack: their configs differ at most in the seeds and STACKED_APART."""
    stages = (config.get("stage") or {}).get("stages") or ["stage2"]
    fp = setting(config, [s for s in stages if s != "eval"] or ["stage2"])
    for dotted in STACKED_APART:
        parent, leaf = dotted.split(".")
        if isinstance(fp.get(parent), dict):
            fp[parent].pop(leaf, None)
    phases = (fp.get("method") or {}).get("phases") or {}
    for node in (n for n in phases.values() if isinstance(n, dict)):  # the phases read them from stage2
        for dotted in STACKED_APART:
            node.pop(dotted.split(".")[1], None)
    fp["stage"] = config.get("stage")
    return json.dumps(fp, sort_keys=True, default=str)


class Lockstep:
    """Members stepped one after another on their own modules and optimisers: a plain run's arithmetic, bit for
    bit, for any method and any per-member setting (on a CPU, where vmap gains nothing, this is the default).
    `steps`: the members' step functions (their updates, or captured steps)."""

    def __init__(self, members: Sequence[Method], steps: Sequence | None = None, gathers: bool = False) -> None:
        self.members = list(members)
        self.steps = list(steps) if steps is not None else [m.update for m in self.members]
        self.gathers = gathers  # the steps take (idx,) and gather their batches (captured steps)

    def update(self, batches: Sequence[tuple]) -> dict[str, torch.Tensor]:
        """One step of every member on its own batch (x, y, idx), or (idx,) where they gather; losses, (K,)."""
        outs = [step(*batch) for step, batch in zip(self.steps, batches, strict=True)]
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

    gathers = False  # it takes the members' batches (x, y, idx)

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
            for k, (d, split) in enumerate(zip(datas, splits, strict=True)):
                mine = {head: torch.cat([q[k] for q in p]) for head, p in preds.items()}
                out[k] |= keyed(stage, name, head_metrics(mine, split, d.num_classes, d.num_biases))
        return out

    @torch.no_grad()
    def push(self) -> None:
        """Copy the stack into each member's own parameters, buffers and optimiser state."""
        pairs = [(t, self.params[name][k]) for k, m in enumerate(self.members) for name, t in m.named_parameters()]
        pairs += [(t, self.buffers[name][k]) for k, m in enumerate(self.members) for name, t in m.named_buffers()
                  if name in self.buffers]  # fmt: skip
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


def fit_stacked(trainers: Sequence[Trainer], fits: Sequence[Fit], vectorize: bool) -> list[StageResult]:
    """Train one phase of every member together, each recorded and checkpointed by its own trainer."""
    members = [f.method for f in fits]
    if vectorize and not Stack.fits(members):
        log.info("%s: these members cannot be vmapped (method or optimiser settings); they step in turn", fits[0].stage)
    gathers = all(f.gathers for f in fits)  # captured unaugmented steps: batches gathered inside the graphs
    if vectorize and Stack.fits(members):
        stack = Stack(members)
        if trainers[0].captured and stack.params and _on_gpu(stack):
            stack = _CapturedStack(stack, [f.data.train for f in fits] if gathers else None)
    else:
        stack = Lockstep(members, [f.step for f in fits], gathers)
    for epoch in fits[0].epochs():
        t0 = time.time()
        for f in fits:
            f.method.train()
        sums: dict[str, torch.Tensor] = {}
        n = 0
        orders = (t.step_args(f, epoch, stack.gathers) for t, f in zip(trainers, fits, strict=True))
        for batches in zip(*orders, strict=True):
            add_losses(sums, stack.update(batches))
            n += 1
        stack.push()
        evals = stack.evaluate_all([f.data for f in fits], fits[0].stage)
        for k, (t, f) in enumerate(zip(trainers, fits, strict=True)):
            train = t.train_means(f.stage, epoch, {key: v[k] for key, v in sums.items()}, n)
            t.end_epoch(f, epoch, train, t0, evals[k] if evals else None)
    return [t.finish(f) for t, f in zip(trainers, fits, strict=True)]


def _on_gpu(stack: "Stack") -> bool:
    return next(iter(stack.params.values())).is_cuda


class _CapturedStack:
    """A vmapped Stack whose step is one CUDA graph (captured=true)."""

    def __init__(self, stack: "Stack", splits: Sequence | None = None) -> None:
        from denetdm.captured import CapturedStep, make_capturable

        make_capturable([stack.optimizer])
        self.stack = stack
        self.gathers = splits is not None  # members' training splits: their batches gathered inside the graph
        if splits is not None:  # one (K, B) index copy per replayed step
            self.step = CapturedStep(lambda idx: stack.update([s.batch(i) for s, i in zip(splits, idx)]))
        else:
            self.step = CapturedStep(lambda *flat: stack.update([flat[i : i + 3] for i in range(0, len(flat), 3)]))

    def update(self, batches: Sequence[tuple]) -> dict[str, torch.Tensor]:
        """The stack's step, replayed, on the members' batches (x, y, idx) or (idx,)."""
        if self.gathers:
            return self.step(torch.stack([idx for (idx,) in batches]))
        return self.step(*(t for batch in batches for t in batch))

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
    out = torch.empty_strided((len(parts), *first.shape), (first.numel(), *first.stride()), dtype=first.dtype,
                              device=first.device)  # fmt: skip
    for k, part in enumerate(parts):
        out[k].copy_(part)
    return out


def train_stack(cfgs: Sequence, run_dirs: Sequence, vectorize: bool | None = None) -> list[dict]:
    """Train runs that share a stack key as one stack, each into its own run directory; their results. Runs
    already finished are read back; a stack whose members cannot step together trains them one by one.
    `vectorize`: vmap the members (None: on CUDA, where it pays; on a CPU they step one after another)."""
    from contextlib import ExitStack

    from denetdm.atomic import run_lock
    from denetdm.pipeline import _finished, plan, prepare_run, setup

    plans = [plan(cfg, d) for cfg, d in zip(cfgs, run_dirs, strict=True)]
    results: list[dict | None] = [_finished(p) for p in plans]
    todo = [i for i, r in enumerate(results) if r is None]
    with ExitStack() as held:
        runners, times, optimizers = {}, {}, {}
        for i in todo:
            optimizers[i] = prepare_run(plans[i], cfgs[i])
            held.enter_context(run_lock(plans[i].run_dir))
        t0 = time.time()
        shared = _load_all([plans[i] for i in todo])
        t_data = time.time() - t0
        for i in todo:
            runners[i], _ = setup(plans[i], cfgs[i], optimizers[i], None, data=shared[_data_key(plans[i])])
            times[i] = t_data if i == todo[0] else 0.0  # the parallel loading, counted once
            held.enter_context(runners[i].trainer.logger)
            _note(plans[i].run_dir, [plans[j].run_dir for j in todo], todo.index(i))
        live = [runners[i] for i in todo]
        if not live:
            phase_results = []
        elif len({tuple(r.trained()) for r in live}) == 1 and all(
            r.trained()[:1] == list(r.p.phases)[:1] and "eval" not in r.p.stages for r in live
        ):  # the same phases from the first: in lockstep
            _train_phases(live, live[0].p.device.type == "cuda" if vectorize is None else vectorize)
            phase_results = [r.collect() for r in live]
        else:  # a later stage from a checkpoint, or an evaluation: each the plain way
            phase_results = [r.run() for r in live]
        for i, res in zip(todo, phase_results, strict=True):
            results[i] = _conclude(runners[i], res, times[i])
    return results


def _data_key(p) -> str:
    return json.dumps(p.config["dataset"], sort_keys=True, default=str)


def _load_all(plans: list) -> dict:
    """Each distinct dataset of the members, loaded (or generated) in parallel threads: generation is torch and
    numpy work that releases the GIL, so 16 Colored MNIST seeds are made at once, not one after another."""
    from concurrent.futures import ThreadPoolExecutor

    from denetdm.pipeline import _load_data

    distinct = {}
    for p in plans:
        distinct.setdefault(_data_key(p), p)
    with ThreadPoolExecutor(max(1, min(len(distinct), os.cpu_count() or 1))) as pool:
        return dict(zip(distinct, pool.map(_load_data, distinct.values()), strict=True))


def _train_phases(runners: list, vectorize: bool) -> None:
    previous = [None] * len(runners)
    for phase in runners[0].trained() if runners else []:
        methods = [r.build(phase, prev) for r, prev in zip(runners, previous, strict=True)]
        fits = [r.begin(phase, m) for r, m in zip(runners, methods, strict=True)]
        # in lockstep only where every member has the same epochs and batches left (a kill can leave them apart)
        shape = {(f.state["epoch"], f.schedule.epochs, len(f.data.train), f.schedule.batch_size, f.schedule.drop_last)
                 for f in fits}  # fmt: skip
        together = len(fits) > 1 and len(shape) == 1
        trainers = [r.trainer for r in runners]
        done = fit_stacked(trainers, fits, vectorize) if together else [t.fit_from(f) for t, f in zip(trainers, fits)]
        for r, res in zip(runners, done, strict=True):
            r.record(phase, res)
        previous = methods


def _conclude(runner, phase_results: dict, t_data: float) -> dict:
    from denetdm.pipeline import conclude
    from denetdm.report import summary_table

    results = conclude(runner, phase_results, t_data)
    print(summary_table(results))
    return results


def _note(run_dir, members: list, k: int) -> None:
    """stack.json: the stack a run trained in (its members' run directories and its place)."""
    from denetdm.tracking import write_json

    write_json(run_dir / "stack.json", {"members": [str(m) for m in members], "member": k})
