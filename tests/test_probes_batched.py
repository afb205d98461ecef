"""The batched probe solver (probes.batched): one stack of many problems reaches what each
reaches alone and what scikit-learn reaches, warm starts change only the path, and the
step machinery hands every computation its own probes."""

import numpy as np
import pytest

from lensbias.probes.batched import Problem, fit_steps, run, together
from lensbias.probes.fast import fit_batch
from lensbias.probes.reference import SklearnProbe


def planted(n, d, k, seed, shift=0.0):
    """k classes with means planted in 8 dimensions, anisotropic noise and an offset."""
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=np.r_[0.5, np.full(k - 1, 0.5 / (k - 1))])
    means = rng.normal(size=(k, 8)) @ np.linalg.qr(rng.normal(size=(d, 8)))[0].T
    X = means[y] * 1.2 + rng.normal(size=(n, d)) * np.exp(rng.normal(0, 0.5, d)) + 2.0 + shift
    return X.astype(np.float32), y


def objective(probe, X, y):
    """Mean cross-entropy + ||W||²/(2Cn) in standardised coordinates (float64)."""
    Z = (X.astype(np.float64) - probe.mean_) / probe.scale_
    s = Z @ probe.coef_std_.T.astype(np.float64) + probe.intercept_std_
    if s.shape[1] == 1:
        s = np.concatenate([np.zeros_like(s), s], axis=1)
    s -= s.max(axis=1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    t = np.searchsorted(probe.classes_, y)
    return float(-logp[np.arange(len(y)), t].mean()
                 + (probe.coef_std_.astype(np.float64) ** 2).sum() / (2 * probe.C * len(y)))


PROBLEMS = [(900, 2, 1.0, 0), (1400, 5, 0.1, 1), (600, 3, 10.0, 2), (1200, 7, 1.0, 3),
            (300, 2, 0.1, 4)]


def test_a_stack_reaches_what_each_problem_reaches_alone():
    """Padding (rows, classes), binary beside multiclass, different C: the stacked solve
    stops at each problem's own optimum (objective within 1e-5, predictions ≥ 99.5%)."""
    data = [planted(n, 24, k, seed) for n, k, _, seed in PROBLEMS]
    problems = [Problem(X, y, C) for (X, y), (_, _, C, _) in zip(data, PROBLEMS)]
    stacked = fit_batch(problems)
    alone = [fit_batch([p])[0] for p in problems]
    for p, s, a in zip(problems, stacked, alone):
        assert np.array_equal(s.classes_, np.unique(p.y))
        assert s.coef_.shape == ((1 if len(s.classes_) == 2 else len(s.classes_)), 24)
        assert abs(objective(s, p.X, p.y) - objective(a, p.X, p.y)) < 1e-5
        assert np.mean(s.predict(p.X) == a.predict(p.X)) >= 0.995
        assert 0 < s.n_iter_ < 500


def test_it_agrees_with_scikit_learn():
    """Same objective as StandardScaler + LogisticRegression: held-out accuracy within 0.5
    points, objective at sklearn's optimum within 1e-4, raw-space logits close."""
    for n, k, C, seed in PROBLEMS:
        X, y = planted(2 * n, 24, k, seed)
        tr = np.arange(len(y)) % 4 != 0
        ours = fit_batch([Problem(X[tr], y[tr], C)])[0]
        ref = SklearnProbe(C=C, max_iter=2000).fit(X[tr], y[tr])
        assert abs(ours.score(X[~tr], y[~tr]) - ref.score(X[~tr], y[~tr])) <= 0.005
        ref.mean_, ref.scale_ = ours.mean_, ours.scale_          # read ref in our coordinates
        ref.coef_std_ = ref.coef_ * ours.scale_
        ref.intercept_std_ = ref.intercept_ + ref.coef_ @ ours.mean_
        ref.C = C
        assert objective(ours, X[tr], y[tr]) <= objective(ref, X[tr], y[tr]) + 1e-4


def test_a_warm_start_changes_the_path_not_the_answer():
    """Started from a related probe (the same concept on shifted features, as at the next
    hook), the solver stops at the same optimum in fewer iterations; an init over other
    classes is ignored."""
    X, y = planted(2000, 32, 6, 7)
    X2 = X + np.random.default_rng(1).normal(0, 0.3, X.shape).astype(np.float32)
    cold = fit_batch([Problem(X2, y, 1.0)])[0]
    start = fit_batch([Problem(X, y, 1.0)])[0]
    warm = fit_batch([Problem(X2, y, 1.0, start)])[0]
    assert abs(objective(warm, X2, y) - objective(cold, X2, y)) < 1e-4
    assert np.mean(warm.predict(X2) == cold.predict(X2)) >= 0.995
    assert warm.n_iter_ < cold.n_iter_
    other = fit_batch([Problem(X, np.minimum(y, 2), 1.0)])[0]       # 3 classes, not 6
    ignored = fit_batch([Problem(X2, y, 1.0, other)])[0]
    assert ignored.n_iter_ == cold.n_iter_
    assert np.array_equal(ignored.coef_std_, cold.coef_std_)


def test_per_problem_tolerance_and_cap():
    """A looser tolerance stops earlier; max_iter caps every problem of a stack."""
    X, y = planted(1500, 24, 5, 3)
    tight, loose = fit_batch([Problem(X, y, 10.0), Problem(X, y, 10.0, tol=1e-2)])
    assert loose.n_iter_ < tight.n_iter_
    assert loose.tol == 1e-2 and tight.tol == 1e-4
    capped = fit_batch([Problem(X, y, 10.0), Problem(X[:500], y[:500], 1.0)], max_iter=3)
    assert [p.n_iter_ for p in capped] == [3, 3]


def test_together_hands_each_computation_its_own_probes():
    """Steps of several computations share one round; each gets back exactly the probes of
    the problems it asked for, and a computation with nothing to fit returns at once."""
    X, y = planted(400, 16, 3, 5)
    rounds = []

    def solve(problems):
        rounds.append(len(problems))
        return fit_batch(problems)

    def two_rounds(C):
        first = yield [Problem(X, y, C), Problem(X[:200], y[:200], C)]
        (second,) = yield [Problem(X, y, C, first[0])]
        return [p.C for p in first] + [second.C]

    out = run(together([two_rounds(0.1), fit_steps([]), two_rounds(10.0),
                        fit_steps([Problem(X, y, 1.0)])]), solve)
    assert out[0] == [0.1, 0.1, 0.1] and out[2] == [10.0, 10.0, 10.0]
    assert out[1] == [] and [p.C for p in out[3]] == [1.0]
    assert rounds == [5, 2]


@pytest.mark.parametrize("bad, message", [(dict(C=0.0), "C is 0.0"),
                                          (dict(y=np.zeros(50, int)), "at least two classes")])
def test_bad_problems_are_clear_errors(bad, message):
    from lensbias.errors import LensbiasError

    X, y = planted(50, 8, 2, 0)
    with pytest.raises(LensbiasError, match=message):
        fit_batch([Problem(**{"X": X, "y": y, "C": 1.0, **bad})])


def _two_loop(g, pairs, gamma):
    """The textbook L-BFGS two-loop recursion (Nocedal & Wright alg. 7.4), float64, for one
    problem; ``pairs`` oldest first."""
    q, alphas = g.copy(), []
    for s, y in reversed(pairs):
        a = (s @ q) / (s @ y)
        alphas.append(a)
        q -= a * y
    r = gamma * q
    for (s, y), a in zip(pairs, reversed(alphas)):
        r += s * (a - (y @ r) / (s @ y))
    return r


@pytest.mark.parametrize("filled, slot", [(0, 0), (3, 3), (6, 2), (6, 0)])
def test_compact_inverse_hessian_equals_the_two_loop_recursion(filled, slot):
    import torch

    from lensbias.probes import batched

    rng = np.random.default_rng(filled + slot)
    k, h, m = 3, 6, 40
    old = batched.HISTORY
    batched.HISTORY = h
    try:
        S = np.zeros((k, h, m))
        Y = np.zeros((k, h, m))
        valid = np.zeros((k, h), bool)
        order = [(slot - filled + i) % h for i in range(filled)]     # oldest first
        for p in range(k):
            A = rng.normal(size=(m, m))
            A = A @ A.T / m + np.eye(m)                               # a convex quadratic
            for j in order:
                if p == 1 and j == order[0]:
                    continue                                          # a skipped pair
                S[p, j] = rng.normal(size=m)
                Y[p, j] = A @ S[p, j]
                valid[p, j] = True
        g = rng.normal(size=(k, m))
        gamma = rng.uniform(0.5, 2.0, size=k)
        got = batched._inverse_hessian_times(
            torch.tensor(g, dtype=torch.float64), torch.tensor(S), torch.tensor(Y),
            torch.tensor(valid), torch.tensor(gamma), slot, filled, torch.float64).numpy()
    finally:
        batched.HISTORY = old
    for p in range(k):
        pairs = [(S[p, j], Y[p, j]) for j in order if valid[p, j]]
        want = _two_loop(g[p], pairs, gamma[p])
        assert np.allclose(got[p], want, rtol=1e-9, atol=1e-9), p
    if filled:
        assert not np.allclose(got[0], gamma[0] * g[0])               # the pairs mattered


def test_problems_on_one_array_share_one_decomposition(monkeypatch):
    """The C grid's problems (one array, several C) decompose one covariance, and reach
    what separate copies of the array reach."""
    from lensbias.probes import batched

    X, y = planted(900, 24, 4, seed=3)
    sizes = []
    eigh = batched._eigh

    def spy(cov):
        sizes.append(cov.shape[0])
        return eigh(cov)

    monkeypatch.setattr(batched, "_eigh", spy)
    shared = fit_batch([Problem(X, y, c) for c in (0.1, 1.0, 10.0)])
    assert sizes == [1]
    apart = fit_batch([Problem(X.copy(), y, c) for c in (0.1, 1.0, 10.0)])
    assert sizes == [1, 3]
    for a, b in zip(shared, apart):
        assert np.allclose(a.coef_, b.coef_, atol=1e-6) and a.n_iter_ == b.n_iter_


def test_a_float32_decomposition_changes_the_path_not_the_answer(monkeypatch):
    from lensbias.probes import batched

    import torch

    X, y = planted(1500, 64, 3, seed=4)
    dtypes = []
    eigh = torch.linalg.eigh

    def spy(a):
        dtypes.append(a.dtype)
        return eigh(a)

    monkeypatch.setattr(torch.linalg, "eigh", spy)
    monkeypatch.setattr(batched, "EIGH_FLOAT32_FROM", 10**9)
    exact = fit_batch([Problem(X, y, 1.0)], tol=1e-6)[0]
    monkeypatch.setattr(batched, "EIGH_FLOAT32_FROM", 1)
    single = fit_batch([Problem(X, y, 1.0)], tol=1e-6)[0]
    assert dtypes == [torch.float64, torch.float32]
    assert np.abs(exact.coef_ - single.coef_).max() <= 1e-3 * np.abs(exact.coef_).max()
    assert (exact.predict(X) == single.predict(X)).mean() >= 0.999


@pytest.mark.parametrize("k", [2, 6])
def test_the_preconditioners_curvature_changes_the_path_not_the_answer(monkeypatch, k):
    """The q of s = q·λ + l2 (one per binary, one per multi-class problem) only changes how
    the solver gets there: every q stops at the same objective (within 1e-5), and q is
    used by the kind of problem it names. (At tolerance 1e-6, so that 'the same' is tight.)"""
    from lensbias.probes import batched

    X, y = planted(1500, 32, k, seed=11)
    answers = {}
    for q in (0.0625, 0.25, 1.0, 4.0):
        name = "CURVATURE_BINARY" if k == 2 else "CURVATURE_MULTI"
        monkeypatch.setattr(batched, name, q)
        answers[q] = fit_batch([Problem(X, y, 1.0)], tol=1e-6)[0]
    values = [objective(p, X, y) for p in answers.values()]
    assert max(values) - min(values) < 1e-7
    assert len({p.n_iter_ for p in answers.values()}) > 1     # the path did change
    other = "CURVATURE_MULTI" if k == 2 else "CURVATURE_BINARY"
    monkeypatch.setattr(batched, other, 100.0)                # the other kind's q: unused
    assert fit_batch([Problem(X, y, 1.0)], tol=1e-6)[0].n_iter_ == answers[4.0].n_iter_


def test_log_loss_is_scikit_learns():
    """LinearProbe.log_loss is sklearn's log_loss of the same model's probabilities
    (binary and multiclass), and refuses a label the probe never saw."""
    from sklearn.metrics import log_loss

    from lensbias.errors import LensbiasError
    for k, seed in ((2, 0), (5, 1)):
        X, y = planted(800, 24, k, seed)
        ref = SklearnProbe(C=1.0, max_iter=2000).fit(X[:600], y[:600])
        logits = X[600:] @ ref.coef_.T + ref.intercept_
        if logits.shape[1] == 1:
            logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        want = log_loss(y[600:], prob, labels=ref.classes_)
        assert ref.log_loss(X[600:], y[600:]) == pytest.approx(want, rel=1e-5)
    with pytest.raises(LensbiasError, match="not one of the probe's classes"):
        ref.log_loss(X[:3], np.array([0, 1, 99]))


def test_c_is_chosen_by_held_out_log_loss_the_same_with_either_solver():
    """select_steps picks C by the one-standard-error rule on held-out log-loss (the
    smallest C within one SE of the best; computed here from exact sklearn fits), and the
    batched solver and one sklearn fit per probe pick the same C on every problem."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    from lensbias.probes.pair import ProbeConfig, fit_selected, grid_split
    picked = []
    # noise-free small problems want a weak penalty (C = 10, 1); noisy ones a strong one
    for n, k, noise, seed in [(300, 2, 0, 4), (400, 3, 0, 2), (200, 2, 0, 7), (600, 3, 0, 2),
                              (2000, 12, 2.0, 5), (1600, 4, 2.0, 6), (1400, 5, 2.0, 1)]:
        X, y = planted(n, 24, k, seed, shift=0.5)
        X += np.random.default_rng(seed).normal(size=X.shape).astype(np.float32) * noise
        docs = np.arange(n) // 25
        chosen = {}
        for solver in ("lbfgs", "sklearn"):
            cfg = ProbeConfig(solver=solver, n_bootstrap=0)
            chosen[solver] = fit_selected(X, y, docs, cfg)[1]
        val = grid_split(y, docs, cfg)
        scaler = StandardScaler().fit(X[~val])
        losses = []
        for c in sorted(cfg.C_grid):
            m = LogisticRegression(C=c, tol=1e-8, max_iter=20000).fit(
                scaler.transform(X[~val]), y[~val])
            p = m.predict_proba(scaler.transform(X[val]))
            losses.append(-np.log(p[np.arange(len(p)), np.searchsorted(m.classes_, y[val])]))
            assert losses[-1].mean() == pytest.approx(log_loss(y[val], p, labels=m.classes_),
                                                      rel=1e-4, abs=1e-6)
        means = [v.mean() for v in losses]
        best = int(np.argmin(means))
        margin = losses[best].std(ddof=1) / np.sqrt(len(losses[best]))
        want = next(c for c, v in zip(sorted(cfg.C_grid), means) if v <= means[best] + margin)
        assert chosen["lbfgs"] == chosen["sklearn"] == want
        picked.append(chosen["lbfgs"])
    assert set(picked) == {0.1, 1.0, 10.0}   # the grid is really chosen from
