"""Optimisers with PyTorch's update rules and defaults: SGD and Adam.

They update ``Parameter.data`` in place from ``Parameter.grad`` (float32
throughout, scratch buffers reused between steps) and follow the formulas of
``torch.optim.SGD`` and ``torch.optim.Adam`` (single-tensor CPU path,
``maximize=False``, ``amsgrad=False``), operation by operation, so one step
matches PyTorch to float32 rounding.  ``state_dict()`` has PyTorch's layout:
``{'state': {index: {...}}, 'param_groups': [{..., 'params': [indices]}]}``.

When the parameters are packed (:meth:`convcore.nn.Module.pack_parameters`,
done by :func:`convcore.models.build`), the state buffers are packed the same
way and a step updates the whole model in one call instead of one per
parameter; the arithmetic is the same element by element, so the results
are identical.  On the host that call is one compiled pass over the
buffers (``_core.adam_step`` / ``_core.sgd_step``) that performs numpy's
float32 operations in numpy's order, so it is bitwise equal to the numpy
formulation (``HostBackend.adam_step_numpy``), which it replaced: Adam's
dozen numpy passes over the tutorial model's 33 thousand parameters took
about 50 microseconds, the compiled pass 15.

Parameters on the GPU (``model.to('cuda')`` before creating the optimiser)
keep their state buffers on the GPU too, and a step is one fused kernel
that performs the same float32 operations in the same order, so it is
bitwise equal to the host update.  ``state_dict()`` always returns host
(numpy) arrays, and ``load_state_dict`` copies them to wherever the
parameters are.
"""

from __future__ import annotations

import math

import numpy as np

from ._backend import backend_of
from ._parameter import Parameter

__all__ = ["Adam", "OneCycleLR", "Optimizer", "SGD"]

_F32 = np.float32


def _host_copy(value):
    """A host copy of a state entry (a device array -> numpy)."""
    return backend_of(value).host_copy(value)


class Optimizer:
    """Base class: one group of parameters, hyper-parameters in ``defaults``."""

    def __init__(self, params, defaults: dict):
        self.params: list[Parameter] = list(params)
        if not self.params:
            raise ValueError("params: the optimiser got an empty parameter list")
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"params[{i}]: expected a convcore.nn.Parameter, got {type(p).__name__}"
                )
        self.defaults = dict(defaults)
        self.state: dict[int, dict] = {}
        pack = self.params[0].pack
        self._pack = pack if pack is not None and pack.intact(self.params) else None
        self._flat: dict[str, np.ndarray] = {}  # packed state buffers, by name
        self._packed_seen = None  # what _packed last found in place
        self._tmp: dict[int, np.ndarray] = {}
        self._device = self._where()

    def _where(self) -> str:
        d = self.params[0].data
        return backend_of(d).device_of(d)

    def _check_device(self) -> None:
        """The parameters must still be where they were when the optimiser
        was created: its state lives beside them."""
        now = self._where()
        if now != self._device:
            raise RuntimeError(
                f"step: the parameters moved from {self._device} to {now} after this "
                f"{type(self).__name__} was created; create the optimiser after model.to(...)"
            )

    @property
    def lr(self) -> float:
        return self.defaults["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.defaults["lr"] = float(value)

    def zero_grad(self) -> None:
        if self._pack is not None and self._pack.intact(self.params):
            backend_of(self._pack.grad).zero_(self._pack.grad)
            return
        for p in self.params:
            backend_of(p.grad).zero_(p.grad)

    # -- buffers -------------------------------------------------------------
    def _flat_buffer(self, name: str) -> np.ndarray:
        buf = self._flat.get(name)
        if buf is None:
            buf = self._flat[name] = self._pack.zeros_like()
        return buf

    def _buffer(self, i: int, name: str) -> np.ndarray:
        """A zero state buffer for parameter i (a view of the packed buffer
        ``name`` when the parameters are packed)."""
        if self._pack is not None:
            return self._pack.view(self._flat_buffer(name), i)
        data = self.params[i].data
        return backend_of(data).zeros(data.shape, like=data)

    def _scratch(self, i: int) -> np.ndarray | None:
        """Scratch for parameter i's update (i < 0: the packed one); None
        where the backend needs none (on the GPU an update is one kernel)."""
        if not backend_of(self.params[0].data).needs_scratch:
            return None
        if i < 0:
            return self._flat_buffer("_tmp")
        if self._pack is not None:
            return self._pack.view(self._flat_buffer("_tmp"), i)
        buf = self._tmp.get(i)
        if buf is None:
            buf = self._tmp[i] = np.empty_like(self.params[i].data)
        return buf

    def _packed(self, names: tuple[str, ...]) -> bool:
        """Whether this step can run once on the packed buffers: packing
        intact, every parameter trainable, and every state entry either
        absent or a view of the packed buffer with one common step count."""
        if self._pack is None or not self._pack.intact(self.params):
            return False
        if not all(p.requires_grad for p in self.params):
            return False
        if not self.state:
            return True
        if len(self.state) != len(self.params):
            return False
        steps = {s.get("step") for s in self.state.values()}
        if len(steps) != 1:
            return False
        # The entries the last full check found, if each is still in place
        # (identity checks: a few microseconds less every step).
        seen = self._packed_seen
        state, flats = self.state, self._flat
        if (
            seen is not None
            and seen[0] == names
            and all(flats.get(name) is f for name, f in zip(names, seen[1]))
            and all(state.get(i) is s and s.get(name) is v for i, s, name, v in seen[2])
        ):
            return True
        shapes = self._pack.shapes
        entries = []
        for name in names:
            flat = self._flat.get(name)
            if flat is None:
                return False
            host = type(flat) is np.ndarray
            for i, s in state.items():
                v = s.get(name)
                if v is None:
                    return False
                entries.append((i, s, name, v))
                # The host's is_view, inlined (a few microseconds per step).
                if host and type(v) is np.ndarray and v.base is flat and v.shape == shapes[i]:
                    continue
                if not self._pack.is_view(v, flat, i):
                    return False
        self._packed_seen = (names, tuple(flats.get(name) for name in names), entries)
        return True

    # -- state ---------------------------------------------------------------
    def state_dict(self) -> dict:
        """A deep copy of the state, in PyTorch's layout (numpy arrays, also
        for parameters on the GPU)."""
        group = dict(self.defaults, params=list(range(len(self.params))))
        state = {i: {k: _host_copy(v) for k, v in s.items()} for i, s in self.state.items()}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict` output (hyper-parameters included).

        Raises:
            ValueError: the number of parameters or a buffer's shape differs.
        """
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(
                f"load_state_dict: expected one group of {len(self.params)} parameters, got "
                f"{[len(g['params']) for g in groups]}"
            )
        new_state: dict[int, dict] = {}
        for key, entry in state_dict["state"].items():
            i = int(key)
            p = self.params[i]
            s = {}
            for name, value in entry.items():
                if name == "step":
                    s[name] = int(value)
                elif value is None:
                    s[name] = None
                else:
                    arr = np.asarray(value)
                    if arr.shape != p.data.shape:
                        raise ValueError(
                            f"load_state_dict: state[{i}][{name!r}] has shape {arr.shape}, "
                            f"expected {p.data.shape}"
                        )
                    s[name] = self._buffer(i, name)
                    backend_of(s[name]).copy_from_host(s[name], arr)
            new_state[i] = s
        defaults = {k: v for k, v in groups[0].items() if k != "params"}
        if "betas" in defaults:
            defaults["betas"] = tuple(defaults["betas"])
        self.defaults.update(defaults)
        self.state = new_state

    def step(self) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD``::

    g = grad + weight_decay * p
    buf = g (first step), else momentum * buf + (1 - dampening) * g
    g = g + momentum * buf if nesterov else buf      (when momentum != 0)
    p = p - lr * g
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ):
        if lr < 0:
            raise ValueError(f"lr: invalid learning rate {lr}")
        if momentum < 0:
            raise ValueError(f"momentum: invalid value {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay: invalid value {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov: requires a momentum and zero dampening")
        super().__init__(
            params,
            dict(
                lr=float(lr),
                momentum=float(momentum),
                dampening=float(dampening),
                weight_decay=float(weight_decay),
                nesterov=bool(nesterov),
            ),
        )

    def step(self) -> None:
        self._check_device()
        momentum = self.defaults["momentum"]
        if self._packed(("momentum_buffer",) if momentum != 0 else ()):
            if momentum != 0 and not self.state:
                for i in range(len(self.params)):
                    self.state[i] = {"momentum_buffer": self._buffer(i, "momentum_buffer")}
                buf, first = self._flat["momentum_buffer"], True
            else:
                buf, first = self._flat.get("momentum_buffer"), False
            self._update(self._pack.data, self._pack.grad, buf, first, self._scratch(-1))
            return
        for i, p in enumerate(self.params):
            if not p.requires_grad:
                continue
            buf, first = None, False
            if momentum != 0:
                state = self.state.setdefault(i, {})
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = self._buffer(i, "momentum_buffer")
                    first = True
            self._update(p.data, p.grad, buf, first, self._scratch(i))

    def _update(self, p, g, buf, first: bool, tmp) -> None:
        d = self.defaults
        lr, momentum, dampening = d["lr"], d["momentum"], d["dampening"]
        wd, nesterov = d["weight_decay"], d["nesterov"]
        backend_of(p).sgd_step(
            p,
            g,
            buf if momentum != 0 else None,
            momentum=_F32(momentum),
            one_minus_dampening=_F32(1 - dampening),
            wd=_F32(wd),
            neg_lr=_F32(-lr),
            nesterov=nesterov and momentum != 0,
            first=first,
            tmp=tmp,
        )


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (L2 weight decay added to the gradient)::

    g = grad + weight_decay * p
    m = m + (1 - beta1) * (g - m)            (torch's lerp)
    v = beta2 * v + (1 - beta2) * g * g
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        if lr < 0:
            raise ValueError(f"lr: invalid learning rate {lr}")
        if eps < 0:
            raise ValueError(f"eps: invalid value {eps}")
        b1, b2 = (float(b) for b in betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas: each must be in [0, 1), got {tuple(betas)}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay: invalid value {weight_decay}")
        super().__init__(
            params,
            dict(lr=float(lr), betas=(b1, b2), eps=float(eps), weight_decay=float(weight_decay)),
        )

    def _new_state(self, i: int) -> dict:
        return {
            "step": 0,
            "exp_avg": self._buffer(i, "exp_avg"),
            "exp_avg_sq": self._buffer(i, "exp_avg_sq"),
        }

    def step(self) -> None:
        self._check_device()
        if self._packed(("exp_avg", "exp_avg_sq")):
            if not self.state:
                self.state = {i: self._new_state(i) for i in range(len(self.params))}
            t = 0
            for s in self.state.values():
                s["step"] += 1
                t = s["step"]
            self._update(
                self._pack.data,
                self._pack.grad,
                self._flat["exp_avg"],
                self._flat["exp_avg_sq"],
                t,
                self._scratch(-1),
            )
            return
        for i, p in enumerate(self.params):
            if not p.requires_grad:
                continue
            state = self.state.get(i)
            if state is None:
                state = self.state[i] = self._new_state(i)
            state["step"] += 1
            self._update(
                p.data,
                p.grad,
                state["exp_avg"],
                state["exp_avg_sq"],
                state["step"],
                self._scratch(i),
            )

    def _update(self, p, g, m, v, t: int, tmp) -> None:
        d = self.defaults
        lr, (beta1, beta2), eps, wd = d["lr"], d["betas"], d["eps"], d["weight_decay"]
        step_size = lr / (1 - beta1**t)
        bias_correction2_sqrt = math.sqrt(1 - beta2**t)
        # The same float32 constants on every backend: the host runs
        # torch's single-tensor update op by op, the GPU in one kernel.
        backend_of(p).adam_step(
            p,
            g,
            m,
            v,
            one_minus_beta1=_F32(1 - beta1),
            beta2=_F32(beta2),
            one_minus_beta2=_F32(1 - beta2),
            bc2_sqrt=_F32(bias_correction2_sqrt),
            eps=_F32(eps),
            neg_step=_F32(-step_size),
            wd=_F32(wd),
            tmp=tmp,
        )


class OneCycleLR:
    """The one-cycle learning-rate policy, as ``torch.optim.lr_scheduler.OneCycleLR``
    with ``cycle_momentum=False`` and ``three_phase=False``.

    The rate rises from ``max_lr / div_factor`` to ``max_lr`` over the first
    ``pct_start`` of ``total_steps``, then falls to
    ``max_lr / (div_factor * final_div_factor)`` at the last step, each phase
    along a half cosine (``anneal_strategy='cos'``) or a line (``'linear'``).
    Creating it sets the optimiser's rate for the first step; call
    :meth:`step` after each ``optimizer.step()``, as in PyTorch.  The rates
    are computed in float64 with PyTorch's formulas, so they are equal to
    PyTorch's.

    Args:
        optimizer: a :class:`Optimizer` (its ``lr`` is overwritten).
        max_lr: the peak rate.
        total_steps: the number of optimiser steps of the whole run.
        pct_start: fraction of the steps spent rising.
        anneal_strategy: ``'cos'`` or ``'linear'``.
        div_factor: ``max_lr / initial rate``.
        final_div_factor: ``initial rate / final rate``.
        last_step: the index of the last step taken (-1: none), to resume.

    Raises:
        ValueError: ``total_steps`` < 1, ``pct_start`` outside [0, 1], a
            non-positive rate or factor, or an unknown ``anneal_strategy``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float,
        total_steps: int,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        last_step: int = -1,
    ):
        if int(total_steps) < 1:
            raise ValueError(f"total_steps: expected an integer >= 1, got {total_steps}")
        if not 0 <= pct_start <= 1:
            raise ValueError(f"pct_start: expected a number in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"anneal_strategy: expected 'cos' or 'linear', got {anneal_strategy!r}"
            )
        for name, v in (("max_lr", max_lr), ("div_factor", div_factor)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name}: expected a positive number, got {v}")
        if not (math.isfinite(final_div_factor) and final_div_factor > 0):
            raise ValueError(
                f"final_div_factor: expected a positive number, got {final_div_factor}"
            )
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.anneal_strategy = anneal_strategy
        initial = max_lr / div_factor
        self._phases = (
            (float(pct_start * self.total_steps) - 1, initial, float(max_lr)),
            (float(self.total_steps) - 1, float(max_lr), initial / final_div_factor),
        )
        self.last_step = int(last_step)
        self.step()

    def lr_at(self, step: int) -> float:
        """The rate of step ``step`` (0-based)."""
        if not 0 <= step < self.total_steps:
            raise ValueError(f"step: {step} is outside the schedule's {self.total_steps} steps")
        start = 0.0
        for k, (end, lo, hi) in enumerate(self._phases):
            if step <= end or k == len(self._phases) - 1:
                pct = (step - start) / (end - start)
                if self.anneal_strategy == "cos":
                    return hi + (lo - hi) / 2.0 * (math.cos(math.pi * pct) + 1)
                return (hi - lo) * pct + lo
            start = end
        raise AssertionError("unreachable")

    def step(self) -> None:
        """Move to the next step and set the optimiser's rate for it."""
        self.last_step += 1
        if self.last_step < self.total_steps:
            self.optimizer.lr = self.lr_at(self.last_step)

    def get_last_lr(self) -> list[float]:
        """The rate set for the current step (a list, as in PyTorch)."""
        return [self.optimizer.lr]

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        if int(state["total_steps"]) != self.total_steps:
            raise ValueError(
                f"load_state_dict: the schedule had {state['total_steps']} steps, "
                f"this one has {self.total_steps}"
            )
        self.last_step = int(state["last_step"]) - 1
        self.step()
