"""Optimisers with PyTorch's update rules and defaults: SGD and Adam.

They update ``Parameter.data`` in place from ``Parameter.grad`` (float32
throughout, scratch buffers reused between steps) and follow the formulas of
``torch.optim.SGD`` and ``torch.optim.Adam`` (single-tensor CPU path,
``maximize=False``, ``amsgrad=False``), operation by operation, so one step
matches PyTorch to float32 rounding.  ``state_dict()`` has PyTorch's layout:
``{'state': {index: {...}}, 'param_groups': [{..., 'params': [indices]}]}``.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from .nn import Parameter

__all__ = ["Adam", "Optimizer", "SGD"]

_F32 = np.float32


class Optimizer:
    """Base class: one group of parameters, hyper-parameters in ``defaults``."""

    _state_keys: tuple[str, ...] = ()

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
        self._tmp: dict[int, np.ndarray] = {}

    @property
    def lr(self) -> float:
        return self.defaults["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.defaults["lr"] = float(value)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad.fill(0)

    def _scratch(self, i: int, p: Parameter) -> np.ndarray:
        buf = self._tmp.get(i)
        if buf is None:
            buf = self._tmp[i] = np.empty_like(p.data)
        return buf

    def state_dict(self) -> dict:
        """A deep copy of the state, in PyTorch's layout."""
        group = dict(self.defaults, params=list(range(len(self.params))))
        return {"state": copy.deepcopy(self.state), "param_groups": [group]}

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
                    arr = np.array(value, dtype=_F32, order="C", copy=True)
                    if arr.shape != p.data.shape:
                        raise ValueError(
                            f"load_state_dict: state[{i}][{name!r}] has shape {arr.shape}, "
                            f"expected {p.data.shape}"
                        )
                    s[name] = arr
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
        d = self.defaults
        lr, momentum, dampening = d["lr"], d["momentum"], d["dampening"]
        wd, nesterov = d["weight_decay"], d["nesterov"]
        for i, p in enumerate(self.params):
            if not p.requires_grad:
                continue
            g = p.grad
            if wd != 0:
                g = g + p.data * _F32(wd)
            if momentum != 0:
                state = self.state.setdefault(i, {})
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = np.array(g, dtype=_F32, copy=True)
                else:
                    buf *= _F32(momentum)
                    tmp = self._scratch(i, p)
                    np.multiply(g, _F32(1 - dampening), out=tmp)
                    buf += tmp
                if nesterov:
                    g = g + buf * _F32(momentum)
                else:
                    g = buf
            tmp = self._scratch(i, p)
            np.multiply(g, _F32(-lr), out=tmp)
            p.data += tmp


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

    def step(self) -> None:
        d = self.defaults
        lr, (beta1, beta2), eps, wd = d["lr"], d["betas"], d["eps"], d["weight_decay"]
        for i, p in enumerate(self.params):
            if not p.requires_grad:
                continue
            state = self.state.get(i)
            if state is None:
                state = self.state[i] = {
                    "step": 0,
                    "exp_avg": np.zeros_like(p.data),
                    "exp_avg_sq": np.zeros_like(p.data),
                }
            state["step"] += 1
            t = state["step"]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            g = p.grad
            if wd != 0:
                g = g + p.data * _F32(wd)
            tmp = self._scratch(i, p)
            # m.lerp_(g, 1 - beta1)
            np.subtract(g, m, out=tmp)
            tmp *= _F32(1 - beta1)
            m += tmp
            # v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            v *= _F32(beta2)
            np.multiply(g, _F32(1 - beta2), out=tmp)
            tmp *= g
            v += tmp
            step_size = lr / (1 - beta1**t)
            bias_correction2_sqrt = math.sqrt(1 - beta2**t)
            # denom = v.sqrt() / bias_correction2_sqrt + eps
            np.sqrt(v, out=tmp)
            tmp /= _F32(bias_correction2_sqrt)
            tmp += _F32(eps)
            # p.addcdiv_(m, denom, value=-step_size)
            np.divide(m, tmp, out=tmp)
            tmp *= _F32(-step_size)
            p.data += tmp
