"""Probes, stage 2a: many logistic-regression probes solved as one batched problem.

``solve_batch`` (and ``probes.fast.fit_batch``, which wraps its results as ``LinearProbe``
objects) fits a list of independent probes (each its own rows, labels, C and,
optionally, a warm start) and returns one fitted probe per problem, each with
the objective, standardisation and stopping rule of ``LinearProbe.fit`` (which is a batch
of one). Problems of one width are stacked along a batch axis, padded in rows (weight 0)
and in classes (logit −∞), and solved by an L-BFGS whose every quantity carries that axis:
one batched matrix product per evaluation serves every problem. Each problem keeps its
own history, step length and stopping test; a converged problem is frozen and, once enough
have, dropped from the stack. Written by hand: scikit-learn fits one problem at a time, and
torch's ``LBFGS`` treats its parameters as one problem (one step length, one stopping test).

Per problem, in standardised features Z (``(X − mean) / scale``, as ``LinearProbe``):

- objective: mean cross-entropy + l2/2·||W||², l2 = 1/(C·n), intercept unpenalised; one
  logit for two classes (class 0 is a fixed zero logit), one per class above that;
- preconditioning: the solver's variable V gives W = (V / √s)·Eᵀ, with E, λ the
  eigenvectors and eigenvalues of Σ = ZᵀZ/n (one decomposition per distinct row array in
  a stack: the C grid's problems, which sort together, share theirs) and s = q·λ + l2, with
  q = ``CURVATURE_BINARY`` (1/4: the logistic loss's curvature at zero) for one logit and
  ``CURVATURE_MULTI`` for several. In V the penalty is diagonal
  (l2/2·Σᵢ ||V·,ᵢ||²/sᵢ); each evaluation maps V to W (a C × D × D product) and the
  gradient back, so the rows Z are never rotated (an N × D × D product per problem);
- L-BFGS (history 20) with a backtracking Armijo line search; it stops when the largest
  entry of the gradient in standardised coordinates (W and b: scikit-learn's criterion)
  is ≤ the problem's tolerance, when the step or the change in loss falls below 1e-9, or
  after ``max_iter`` iterations;
- a warm start (``Problem.init``: a fitted probe over the same classes, e.g. the same
  concept at the previous hook or on the other half of the data) is mapped into this
  problem's standardised, preconditioned coordinates; the objective is strictly convex, so
  it changes how many iterations are needed, not where the solver stops (up to ``tol``).

Shapes: ``K`` problems, ``N`` rows (the largest), ``D`` features, ``L`` logits (the largest
number of classes, plus one reference column that is 0 for binary problems and −∞ else).
Matrix products run in float32; losses are summed in float64, and spectra decomposed in
float64 below ``EIGH_FLOAT32_FROM`` features, in float32 from there.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int

from lensbias.errors import LensbiasError

HISTORY = 20
"""L-BFGS curvature pairs kept per problem."""
ARMIJO = 1e-4
"""Sufficient-decrease constant of the line search."""
MAX_TRIALS = 30
"""Halvings of the step before a problem's line search gives up (it then stops)."""
TOL_CHANGE = 1e-9
"""A problem stops when its step or its loss change falls below this."""
BATCH_BYTES = 256 * 2**20
"""Budget for one stack of standardised rows (K·N·D float32 values, two copies)."""
WASTE = 1.15
"""A stack's padded work (K·N·L) may exceed the sum of its problems' own by this factor. On
a CPU the solve is bound by its matrix products, so stacking saves little there (measured:
padded stacks were slower, docs/performance.md); on a GPU it replaces many small kernels
by one."""


CURVATURE_BINARY = 0.25
"""q of the preconditioner s = q·λ + l2 for a binary problem (one logit): the curvature of
the logistic loss at zero, p(1 − p) at p = 1/2."""
CURVATURE_MULTI = 1.0
"""q for a problem with several logits. Measured, not derived: on the default diff's 618
probes (docs/performance.md) q = 1 needed 24-45% fewer iterations than 1/4 on every group of
multi-class problems (3 to 26 classes; 1/16, 1/8, 1/2, 2 and 4 were also tried), while binary
problems needed 11-22% more, so each keeps its own. The objective is strictly convex: q changes
the path, not where the solver stops (up to ``tol``)."""


EIGH_FLOAT32_FROM = 512
"""Widths from which the preconditioner's eigendecomposition runs in float32: about half
the time of float64 from d = 512 up (d = 2048: 0.97 s against 2.53 s on one CPU thread), and at
d ≥ 1024 the per-probe decompositions are most of the probe stage (docs/performance.md)."""


@dataclass
class Problem:
    """One probe to fit: rows ``X`` [n, d], labels ``y`` [n], inverse penalty ``C``."""

    X: Float[np.ndarray, "n d"]
    y: Int[np.ndarray, " n"]
    C: float
    init: object | None = None
    """A fitted ``LinearProbe`` whose classes equal this problem's, to start from (its
    raw-space read-out); None: start from zero."""
    tol: float | None = None
    """This problem's gradient tolerance; None: ``fit_batch``'s."""


Steps = Generator[list[Problem], list[Any], Any]
"""A computation that needs probes fitted: it yields a list of problems, is sent the
fitted probes (same order), and so on, and finally returns its result. Steps of many
computations run ``together`` share each round's batch."""


def fit_steps(problems: list[Problem]) -> Steps:
    """The steps of fitting ``problems`` once (returns the fitted probes)."""
    if not problems:
        return []
    return (yield problems)


def together(steps: list[Steps]) -> Steps:
    """Run ``steps`` side by side: each round yields every pending problem at once; returns
    each computation's result, in order."""
    out: list[Any] = [None] * len(steps)
    asked: dict[int, list[Problem]] = {}

    def advance(i: int, sent: list[Any] | None) -> None:
        try:
            asked[i] = next(steps[i]) if sent is None else steps[i].send(sent)
        except StopIteration as stop:
            out[i] = stop.value

    for i in range(len(steps)):
        advance(i, None)
    while asked:
        waiting, asked_now = list(asked), dict(asked)
        asked.clear()
        got = yield [p for i in waiting for p in asked_now[i]]
        at = 0
        for i in waiting:
            advance(i, got[at:at + len(asked_now[i])])
            at += len(asked_now[i])
    return out


def run(steps: Steps, solve) -> Any:
    """Drive ``steps`` to the end, fitting each round's problems with ``solve(problems)``."""
    try:
        problems = next(steps)
        while True:
            problems = steps.send(solve(problems))
    except StopIteration as stop:
        return stop.value


def solve_batch(problems: list[Problem], *, max_iter: int = 500, tol: float = 1e-4,
                device: str = "cpu") -> list[dict[str, Any]]:
    """Solve every problem; per problem (in the order given) a dict of ``classes``, ``mean``,
    ``scale``, ``coef_std``, ``intercept_std`` (standardised coordinates), ``n_iter`` and
    ``tol``. ``probes.fast.fit_batch`` turns them into ``LinearProbe`` objects."""
    from lensbias.models.adapter import check_device

    dev = check_device(str(device))
    prepared = [_prepare(p) for p in problems]
    out: list[dict[str, Any]] = [{} for _ in problems]
    for prep, p in zip(prepared, problems):
        prep["tol"] = float(tol if p.tol is None else p.tol)
    for chunk in _chunks(prepared):
        for index, (weight, bias, n_iter) in zip(chunk, _solve([prepared[i] for i in chunk],
                                                               max_iter, dev)):
            prep = prepared[index]
            out[index] = {"classes": prep["classes"], "mean": prep["mean"],
                          "scale": prep["scale"], "coef_std": weight, "intercept_std": bias,
                          "n_iter": n_iter, "tol": prep["tol"]}
    return out


def _prepare(p: Problem) -> dict:
    """Host-side checks and standardisation (numpy float32, as ``LinearProbe`` always did)."""
    X = np.asarray(p.X, dtype=np.float32)
    y = np.asarray(p.y)
    if X.ndim != 2 or len(X) != len(y):
        raise LensbiasError(f"LinearProbe.fit needs X [n, d] and y [n]; got X {X.shape}, "
                            f"y {y.shape}")
    if p.C <= 0:
        raise LensbiasError(f"LinearProbe C is {p.C}; it must be > 0")
    classes, target = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise LensbiasError(f"LinearProbe.fit needs at least two classes; y holds only "
                            f"{classes.tolist()}")
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale = np.where(scale > 1e-6 * max(float(scale.max()), 1e-30), scale, 1.0
                     ).astype(np.float32)
    n_out = 1 if len(classes) == 2 else len(classes)
    init = None
    if p.init is not None and np.array_equal(getattr(p.init, "classes_", None), classes) \
            and p.init.coef_.shape[1] == X.shape[1]:
        coef = np.asarray(p.init.coef_, np.float64)            # raw space
        init = (coef * scale, np.asarray(p.init.intercept_, np.float64) + coef @ mean)
    return {"X": X, "target": target.reshape(-1), "classes": classes, "mean": mean,
            "scale": scale, "n_out": n_out, "l2": 1.0 / (p.C * len(y)), "init": init}


def _chunks(prepared: list[dict]) -> list[list[int]]:
    """Problems grouped into stacks: one width per stack, similar numbers of logits and
    rows (padded work ≤ ``WASTE`` × own work), within the memory budget."""
    order = sorted(range(len(prepared)), key=lambda i: (prepared[i]["X"].shape[1],
                                                        prepared[i]["n_out"],
                                                        -len(prepared[i]["X"])))
    chunks: list[list[int]] = []
    for i in order:
        n, d = prepared[i]["X"].shape
        if chunks:
            cur = chunks[-1] + [i]
            rows = max(len(prepared[j]["X"]) for j in cur)
            logits = max(prepared[j]["n_out"] for j in cur) + 1
            own = sum(len(prepared[j]["X"]) * (prepared[j]["n_out"] + 1) for j in cur)
            same_width = prepared[chunks[-1][0]]["X"].shape[1] == d
            if same_width and len(cur) * rows * logits <= WASTE * own \
                    and 2 * len(cur) * rows * d * 4 <= BATCH_BYTES:
                chunks[-1] = cur
                continue
        chunks.append([i])
    return chunks


def _solve(prepared: list[dict], max_iter: int, dev: torch.device
           ) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Batched preconditioned L-BFGS over one stack; per problem (W, b, iterations) with W
    and b in standardised coordinates (numpy)."""
    K = len(prepared)
    D = prepared[0]["X"].shape[1]
    N = max(len(p["X"]) for p in prepared)
    C_max = max(p["n_out"] for p in prepared)
    L = C_max + 1                                   # logits + the reference column
    f64 = torch.float64 if dev.type != "mps" else torch.float32
    Z = torch.zeros(K, N, D, device=dev)
    row_w = torch.zeros(K, N, dtype=f64, device=dev)
    target = torch.zeros(K, N, dtype=torch.long, device=dev)
    mask = torch.full((K, L), float("-inf"), device=dev)
    l2 = torch.tensor([p["l2"] for p in prepared], dtype=f64, device=dev)
    tol = torch.tensor([p["tol"] for p in prepared], device=dev)
    for k, p in enumerate(prepared):
        n = len(p["X"])
        Z[k, :n] = (torch.from_numpy(p["X"]).to(dev) - torch.from_numpy(p["mean"]).to(dev)) \
            / torch.from_numpy(p["scale"]).to(dev)
        row_w[k, :n] = 1.0 / n
        t = torch.from_numpy(p["target"].astype(np.int64)).to(dev)
        if p["n_out"] == 1:                          # class 1: column 0; class 0: reference
            target[k, :n] = torch.where(t == 1, 0, C_max)
            mask[k, 0] = 0.0
            mask[k, C_max] = 0.0
        else:
            target[k, :n] = t
            mask[k, :p["n_out"]] = 0.0
    # preconditioner: Σ = ZᵀZ/n per problem (pad rows are zero), one batched eigh, shared
    # by the problems fitted on the same rows (the C grid: one array, several C)
    first: dict[int, int] = {}
    owner = [first.setdefault(id(p["X"]), k) for k, p in enumerate(prepared)]
    uniq = sorted(set(owner))
    n_rows = torch.tensor([len(prepared[k]["X"]) for k in uniq], dtype=f64, device=dev)
    Zu = Z[uniq] if len(uniq) < K else Z
    cov = torch.bmm(Zu.transpose(1, 2), Zu).to(f64) / n_rows[:, None, None]
    del Zu
    eigval, eigvec = _eigh(cov)
    if len(uniq) < K:
        at = torch.tensor([uniq.index(o) for o in owner], device=dev)
        eigval, eigvec = eigval[at], eigvec[at]
    q = torch.tensor([CURVATURE_BINARY if p["n_out"] == 1 else CURVATURE_MULTI
                      for p in prepared], dtype=f64, device=dev)
    s = eigval.clamp(min=0)[:, None, :] * q[:, None, None] + l2[:, None, None]   # [K, 1, D]
    root = torch.sqrt(s).to(torch.float32)
    V = torch.zeros(K, C_max, D, device=dev)
    b = torch.zeros(K, C_max, device=dev)
    for k, p in enumerate(prepared):
        if p["init"] is not None:                                    # W = (V/√s)·Eᵀ
            w_std, b_std = p["init"]
            V[k, :p["n_out"]] = ((torch.from_numpy(w_std).to(dev, f64) @ eigvec[k])
                                 * torch.sqrt(s[k])).to(torch.float32)
            b[k, :p["n_out"]] = torch.from_numpy(b_std).to(dev, torch.float32)
    col = (mask[:, :C_max] == 0).to(torch.float32)                  # real logit columns
    state = {"Z": Z, "row_w": row_w, "target": target, "mask": mask, "l2": l2,
             "root": root, "col": col, "E": eigvec.to(torch.float32), "tol": tol}
    del Z

    def evaluate(sel: torch.Tensor | None, V_: torch.Tensor, b_: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss [k] (float64) and gradients of V_ [k, C, D] and b_ [k, C] for the live
        problems ``sel`` (None: all of them)."""
        pick = (lambda a: a) if sel is None else (lambda a: a[sel])  # noqa: E731
        Zi, w, tgt, root_ = pick(state["Z"]), pick(state["row_w"]), pick(state["target"]), \
            pick(state["root"])
        k = len(Zi)
        U = V_ / root_                                               # W in the eigenbasis
        E = pick(state["E"])
        W = torch.bmm(U, E.transpose(1, 2))      # W = U·Eᵀ: the rows Z stay unrotated
        mask_ = pick(state["mask"])
        logits = torch.baddbmm((b_ + mask_[:, :C_max])[:, None, :], Zi, W.transpose(1, 2))
        # classes × rows, so the softmax runs over the short class axis with the rows
        # contiguous (over a last axis of a few classes it costs as much as a product)
        lt = torch.empty(k, L, N, device=dev)
        lt[:, :C_max] = logits.transpose(1, 2)
        lt[:, C_max] = mask_[:, C_max, None]                         # the reference column
        logp = torch.log_softmax(lt, dim=1)
        loss = -(logp.gather(1, tgt[:, None, :])[:, 0].to(f64) * w).sum(1) \
            + 0.5 * pick(state["l2"]) * U.to(f64).pow(2).sum((1, 2))
        G = logp.exp_()
        G.scatter_add_(1, tgt[:, None, :], -torch.ones(k, 1, N, device=dev))
        G = G[:, :C_max] * w.to(G.dtype)[:, None, :]                 # [k, C, N]
        gU = torch.bmm(torch.bmm(G, Zi), E) + pick(state["l2"])[:, None, None].to(U.dtype) * U
        c = pick(state["col"])
        return loss, gU / root_ * c[:, :, None], G.sum(2) * c

    def flat(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.cat([a.reshape(len(a), -1), c], dim=1)

    def unflat(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return t[:, :C_max * D].reshape(len(t), C_max, D), t[:, C_max * D:]

    def gmax(g: torch.Tensor) -> torch.Tensor:
        """Largest gradient entry in standardised coordinates (W, b), per live problem."""
        gV, gb = unflat(g)
        gW = torch.bmm(gV * state["root"], state["E"].transpose(1, 2))
        return torch.maximum(gW.abs().amax((1, 2)), gb.abs().amax(1))

    loss, gV, gb = evaluate(None, V, b)
    theta, grad = flat(V, b), flat(gV, gb)
    final_theta = theta.clone()
    m = theta.shape[1]
    S = torch.zeros(K, HISTORY, m, device=dev)       # curvature pairs, slot order
    Y = torch.zeros(K, HISTORY, m, device=dev)
    valid = torch.zeros(K, HISTORY, dtype=torch.bool, device=dev)
    gamma = torch.ones(K, device=dev)
    n_iter = torch.zeros(K, dtype=torch.long, device=dev)
    final_iter = torch.zeros(K, dtype=torch.long, device=dev)
    live = torch.arange(K, device=dev)               # original index of each live problem
    active = gmax(grad) > state["tol"]
    slot = 0
    for _ in range(max_iter + 1):
        if not bool(active.all()):                   # drop finished problems from the stack
            final_theta[live] = theta
            final_iter[live] = n_iter
            keep = torch.nonzero(active)[:, 0]
            if len(keep) == 0:
                break
            live = live[keep]
            for key in state:
                state[key] = state[key][keep]
            theta, grad, loss, gamma, n_iter = (theta[keep], grad[keep], loss[keep],
                                                gamma[keep], n_iter[keep])
            S, Y, valid = S[keep], Y[keep], valid[keep]
            active = active[keep]
        if int(n_iter.max()) >= max_iter:
            final_theta[live] = theta
            final_iter[live] = n_iter
            break
        filled = min(int(n_iter.max()), HISTORY)
        direction = -_inverse_hessian_times(grad, S, Y, valid, gamma, slot, filled, f64)
        slope = (grad * direction).sum(1)
        bad = slope >= 0                             # not a descent direction: steepest
        if bool(bad.any()):
            direction[bad] = -grad[bad]
            slope = (grad * direction).sum(1)
        step = torch.where(n_iter == 0, torch.clamp(1.0 / grad.abs().sum(1), max=1.0),
                           torch.ones_like(slope))
        new_loss, new_grad = loss.clone(), grad.clone()
        pending = torch.ones(len(live), dtype=torch.bool, device=dev)
        for _trial in range(MAX_TRIALS):
            at = None if bool(pending.all()) else torch.nonzero(pending)[:, 0]
            pick = (lambda a: a) if at is None else (lambda a: a[at])  # noqa: E731
            cand = pick(theta) + pick(step)[:, None] * pick(direction)
            lc, gVc, gbc = evaluate(at, *unflat(cand))
            ok = lc <= pick(loss) + ARMIJO * (pick(step) * pick(slope)).to(f64)
            rows = torch.nonzero(pending)[:, 0] if at is None else at
            new_loss[rows[ok]] = lc[ok]
            new_grad[rows[ok]] = flat(gVc, gbc)[ok]
            pending[rows[ok]] = False
            step[rows[~ok]] *= 0.5
            if not bool(pending.any()):
                break
        failed = pending                             # no sufficient decrease: stop here
        step = torch.where(failed, torch.zeros_like(step), step)
        s_vec = step[:, None] * direction
        y_vec = new_grad - grad
        sy = (s_vec * y_vec).sum(1)
        good = (sy > 1e-10) & ~failed
        S[:, slot] = torch.where(good[:, None], s_vec, torch.zeros_like(s_vec))
        Y[:, slot] = torch.where(good[:, None], y_vec, torch.zeros_like(y_vec))
        valid[:, slot] = good
        gamma = torch.where(good, sy / (y_vec * y_vec).sum(1).clamp(min=1e-30), gamma)
        slot = (slot + 1) % HISTORY
        change = (loss - new_loss).abs()
        theta = theta + s_vec
        loss, grad = new_loss, new_grad
        n_iter = n_iter + (~failed).long()
        active = ~(failed | (gmax(grad) <= state["tol"]) | (s_vec.abs().amax(1) <= TOL_CHANGE)
                   | (change <= TOL_CHANGE))
    V, b = unflat(final_theta)
    W = torch.bmm(V.to(f64) / torch.sqrt(s), eigvec.transpose(1, 2))  # W = (V/√s)·Eᵀ
    out = []
    for k, p in enumerate(prepared):
        n_out = p["n_out"]
        out.append((W[k, :n_out].to(torch.float32).cpu().numpy().copy(),
                    b[k, :n_out].to(torch.float32).cpu().numpy().copy(), int(final_iter[k])))
    return out


def _inverse_hessian_times(g: Float[torch.Tensor, "k m"], S: Float[torch.Tensor, "k h m"],
                           Y: Float[torch.Tensor, "k h m"], valid: torch.Tensor,
                           gamma: Float[torch.Tensor, " k"], slot: int, filled: int,
                           f64: torch.dtype) -> Float[torch.Tensor, "k m"]:
    """H·g for every problem, H the L-BFGS inverse-Hessian estimate of its curvature pairs
    (rows of ``S``, ``Y`` in slot order, ``slot`` the next to be written, so the oldest once
    all are filled; pairs not ``valid`` are zero and left out). The compact form (Byrd,
    Nocedal & Schnabel 1994; Nocedal & Wright eq. 7.24), H = γI + [S γY]·M·[Sᵀ; γYᵀ],
    equals the two-loop recursion but needs a handful of batched products instead of four
    small operations per pair. The pairs stay in slot order; only the h × h matrices and
    the h-vectors are put in time order."""
    if filled == 0:
        return gamma[:, None] * g
    h = S.shape[1]
    # oldest first; slots not yet written are zero and invalid, so where they sit is moot
    order = torch.tensor([(slot + i) % h for i in range(h)], device=g.device)
    ok = valid[:, order]
    SY = torch.bmm(S, Y.transpose(1, 2)).to(f64)[:, order][:, :, order]   # sᵢ·yⱼ
    YY = torch.bmm(Y, Y.transpose(1, 2)).to(f64)[:, order][:, :, order]
    p1 = torch.bmm(S, g[:, :, None]).to(f64)[:, order]                    # Sᵀg [k, h, 1]
    p2 = torch.bmm(Y, g[:, :, None]).to(f64)[:, order]                    # Yᵀg
    R = torch.triu(SY) + torch.diag_embed((~ok).to(f64))                  # empty: unit pivots
    diag = torch.diagonal(SY, dim1=1, dim2=2)[:, :, None]
    gam = gamma.to(f64)[:, None, None]
    u = torch.linalg.solve_triangular(R, p1, upper=True)                  # R⁻¹Sᵀg
    top = torch.linalg.solve_triangular(R.transpose(1, 2), diag * u + gam * torch.bmm(YY, u)
                                        - gam * p2, upper=False)
    back = torch.empty_like(order)
    back[order] = torch.arange(h, device=g.device)                        # time → slot order
    return gamma[:, None] * g + torch.bmm(top[:, back].transpose(1, 2).to(g.dtype), S)[:, 0] \
        - torch.bmm((gam * u)[:, back].transpose(1, 2).to(g.dtype), Y)[:, 0]


def _eigh(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched symmetric eigendecomposition (on the CPU for MPS, which has no float64); in
    float32 from ``EIGH_FLOAT32_FROM`` features up (the preconditioner need not be exact:
    it changes the path, not the optimum)."""
    if cov.device.type == "mps":
        val, vec = torch.linalg.eigh(cov.cpu().double())
        return val.to(cov.device, torch.float32), vec.to(cov.device, torch.float32)
    if cov.shape[-1] >= EIGH_FLOAT32_FROM:
        val, vec = torch.linalg.eigh(cov.to(torch.float32))
        return val.to(cov.dtype), vec.to(cov.dtype)
    return torch.linalg.eigh(cov)
