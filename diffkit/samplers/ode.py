"""The adaptive probability-flow ODE sampler: a black-box Runge-Kutta solve of the VP model's
probability-flow ODE (Song et al. 2021, "Score-Based Generative Modeling through SDEs", Sec. 4.3
and App. D.2, whose ``ode_sampler`` calls scipy's RK45 at rtol = atol = 1e-5; PNDM's "PF" baseline).

In half the log-SNR lambda = log(alpha/sigma) (DPM-Solver, Lu et al. 2022, eq. 2.4 with
d log alpha / d lambda = sigma^2, the smoothest of the usual variables) the ODE reads

    dx/dlambda = sigma^2 x - sigma eps_hat(x, t(lambda)) = alpha (x0_hat - alpha x),

with alpha^2 = sigmoid(2 lambda), sigma^2 = sigmoid(-2 lambda). It is solved by
``scipy.integrate.solve_ivp`` (``method``, ``rtol``, ``atol``) from grid[0] through every grid
time with sigma > 0 (the solver restarts at each, where the callback reports); a grid that ends
at clean data (t = -1, lambda = +inf) ends with the x0 prediction at the time before, the step
every other sampler takes there (DDIM / Euler to sigma = 0).

Each sample is its own ODE with its own step-size control, so sample i does not depend on the
batch; the samples' solvers run in lockstep, one thread each, and every network call evaluates
the whole batch (each row at its own time; rows whose solve has ended are re-evaluated at their
last point and discarded). The NFE is therefore the largest per-sample count of evaluations.
"""
from __future__ import annotations

import math
import threading
from typing import Optional

import numpy as np
import torch

from ..errors import DiffkitError, check_choice, check_range
from .common import steps

# scipy.integrate.solve_ivp's methods: explicit Runge-Kutta (RK23, RK45 = Dormand-Prince 5(4),
# DOP853) and implicit ones, whose finite-difference Jacobian costs D + 1 calls per evaluation of it
METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


class _Stop(Exception):
    """Ends a worker's solve when the batched evaluation failed."""


class _Lockstep:
    """Runs one ``solve_ivp`` per row, in threads, and answers their right-hand-side calls together:
    ``evaluate(ts, ys) -> (B, D)`` gets every row's latest (t, y) once each row has asked (or ended)."""

    def __init__(self, evaluate, y0: np.ndarray, t0: float, t1: float, method: str, rtol: float, atol: float):
        self.evaluate, self.y0, self.span = evaluate, y0, (t0, t1)
        self.method, self.rtol, self.atol = method, rtol, atol
        n = y0.shape[0]
        self.lock = threading.Lock()
        self.all_asked = threading.Event()  # every running solve waits for an answer (or none runs)
        self.answered = [threading.Event() for _ in range(n)]
        self.asking: list = []
        self.running = n
        self.answers: list = [None] * n
        self.ts, self.ys = np.full(n, t0), y0.copy()
        self.solutions: list = [None] * n
        self.errors: list = [None] * n

    def _count(self) -> None:  # under self.lock
        if len(self.asking) == self.running:
            self.all_asked.set()

    def _ask(self, i: int, t: float, y: np.ndarray) -> np.ndarray:
        with self.lock:
            self.ts[i], self.ys[i] = t, y
            self.asking.append(i)
            self._count()
        self.answered[i].wait()
        self.answered[i].clear()
        if self.answers[i] is _Stop:
            raise _Stop
        return self.answers[i]

    def _work(self, i: int) -> None:
        from scipy.integrate import solve_ivp
        try:
            self.solutions[i] = solve_ivp(lambda t, y: self._ask(i, t, y), self.span, self.y0[i],
                                          method=self.method, rtol=self.rtol, atol=self.atol)
        except _Stop:
            pass
        except Exception as err:  # noqa: BLE001 - raised again by the main thread
            self.errors[i] = err
        finally:
            with self.lock:
                self.running -= 1
                self._count()

    def run(self) -> np.ndarray:
        workers = [threading.Thread(target=self._work, args=(i,), name=f"diffkit-ode-{i}", daemon=True) for i in range(len(self.answers))]
        for w in workers:
            w.start()
        try:
            while True:
                self.all_asked.wait()
                with self.lock:
                    self.all_asked.clear()
                    if self.running == 0:
                        break
                    asking, self.asking = self.asking, []
                    ts, ys = self.ts.copy(), self.ys.copy()
                f = self.evaluate(ts, ys)  # rows whose solve has ended: at their last point, discarded
                for i in asking:
                    self.answers[i] = f[i]
                    self.answered[i].set()
        except BaseException:
            self.answers = [_Stop] * len(self.answers)
            for event in self.answered:
                event.set()
            for w in workers:
                w.join()
            raise
        for i, (sol, err) in enumerate(zip(self.solutions, self.errors)):
            if err is not None:
                raise err
            if not sol.success:
                raise DiffkitError(f"the ODE solve of sample {i} failed ({self.method}: {sol.message}); "
                                   f"loosen rtol/atol or try method='DOP853'")
        return np.stack([sol.y[:, -1] for sol in self.solutions])


def ode(denoiser, x: torch.Tensor, grid: torch.Tensor, *, rtol: float = 1e-5, atol: float = 1e-5,
        method: str = "RK45", cond: Optional[dict] = None, generator=None, callback=None,
        progress: bool = False) -> torch.Tensor:
    """The probability-flow ODE (Song et al. 2021, eq. 13; in lambda: Lu et al. 2022, eq. 2.4) from
    grid[0] to grid[-1] by ``scipy.integrate.solve_ivp(method=method, rtol=rtol, atol=atol)``,
    per sample; the grid's inner times are where the solver restarts and the callback reports
    (``{"step", "t", "s", "x", "x0", "nfe"}``: x0 predicted at t, network calls so far). The state
    is float64; the network sees x's dtype. ``generator`` is unused (the sampler is deterministic)."""
    check_range("rtol", rtol, 0.0, None, low_inclusive=False)
    check_range("atol", atol, 0.0, None, low_inclusive=False)
    check_choice("method", method, METHODS)
    cond = cond or {}
    schedule = denoiser.schedule
    times = torch.as_tensor(grid, dtype=torch.float64)
    lam = schedule.log_snr(times).tolist()
    if not math.isfinite(lam[0]):
        raise DiffkitError(f"the ODE cannot start at t={float(times[0]):g}, where alpha_bar = 0 (lambda = -inf); "
                           f"start below it")
    shape, batch = x.shape, x.shape[0]
    y = x.detach().to(device="cpu", dtype=torch.float64).reshape(batch, -1).numpy()
    calls, first_x0, span = [0], [None], [0.0, 0.0]

    def evaluate(lams: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """dx/dlambda = sigma^2 x - sigma eps_hat for every row at its own lambda."""
        lam_t = torch.from_numpy(lams)
        t = schedule.t_from_log_snr(lam_t).clamp(*span)  # round-off of the inverse map: not past the ends
        xt = torch.from_numpy(ys).reshape(shape).to(device=x.device, dtype=x.dtype)
        pred = denoiser(xt, t, **cond)
        calls[0] += 1
        if first_x0[0] is None:  # the first call of a solve: every row at its start (RK's f(t0, y0))
            first_x0[0] = pred.x0
        eps = pred.eps.detach().to(device="cpu", dtype=torch.float64).reshape(batch, -1).numpy()
        sigma = torch.sigmoid(-2.0 * lam_t).sqrt().numpy()[:, None]
        return sigma * sigma * ys - sigma * eps

    for i in steps(times, progress, "ode"):
        if math.isinf(lam[i + 1]):  # to clean data: the x0 prediction at grid[i]
            pred = denoiser(torch.from_numpy(y).reshape(shape).to(device=x.device, dtype=x.dtype), float(times[i]),
                            **cond)
            calls[0] += 1
            x0 = pred.x0
            y = x0.detach().to(device="cpu", dtype=torch.float64).reshape(batch, -1).numpy()
        else:
            first_x0[0], span[:] = None, [float(times[i + 1]), float(times[i])]
            y = _Lockstep(evaluate, y, lam[i], lam[i + 1], method, rtol, atol).run()
            x0 = first_x0[0]
        if callback is not None:
            callback({"step": i, "t": float(times[i]), "s": float(times[i + 1]),
                      "x": torch.from_numpy(y).reshape(shape).to(device=x.device, dtype=x.dtype), "x0": x0,
                      "nfe": calls[0]})
    return torch.from_numpy(y).reshape(shape).to(device=x.device, dtype=x.dtype)
