"""Exercise checks: compare a student's function with the reference on small seeded cases and
say what is wrong in words a student can act on.

Each ``check_*`` raises :class:`ExerciseError` (an ``AssertionError``) with a hint on a mismatch,
lets ``NotImplementedError`` through untouched (the exercise is not done yet), and prints a short
confirmation on success.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .triggers import stamp


class ExerciseError(AssertionError):
    """The student's answer differs from the reference; the message says how."""


def _cases(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(5, 1, 28, 28, generator=gen), torch.rand(3, 3, 32, 32, generator=gen),
            torch.rand(2, 1, 8, 8, generator=gen)]


def _expect_tensor(name: str, out: object, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise ExerciseError(f"{name} should return a torch.Tensor, got {type(out).__name__}")
    if out.shape != like.shape:
        raise ExerciseError(f"{name} returned shape {tuple(out.shape)}; expected {tuple(like.shape)} "
                            "(same shape as the input batch)")
    return out


def _ok(msg: str) -> None:
    print(f"\u2714 {msg}")


def check_add_patch(add_patch: Callable[..., torch.Tensor]) -> None:
    """Exercise: ``add_patch(x, pattern, row, col)`` stamps ``pattern`` (C, h, w) with its top-left
    corner at (row, col) in every image of ``x`` and returns a new batch (x itself unchanged)."""
    n_checked = 0
    for x in _cases(1):
        c, h, w = x.shape[1], x.shape[2], x.shape[3]
        for size, (row, col) in ((3, (h - 4, w - 4)), (2, (0, 0)), (3, (1, w - 3))):
            pattern = (torch.arange(size * size).view(1, size, size) % 2).float().expand(c, size, size).clone()
            original = x.clone()
            out = _expect_tensor("add_patch", add_patch(x, pattern, row, col), x)
            if not torch.equal(x, original):
                raise ExerciseError("add_patch modified its input in place; work on a copy (x.clone())")
            expected = stamp(x, pattern, torch.full((len(x),), row), torch.full((len(x),), col))
            if not torch.allclose(out, expected):
                inside = torch.zeros_like(x, dtype=torch.bool)
                inside[:, :, row:row + size, col:col + size] = True
                if not torch.allclose(out[~inside], x[~inside]):
                    raise ExerciseError("pixels outside the patch changed; only the h x w window "
                                        f"starting at (row, col) = {(row, col)} may change")
                raise ExerciseError(f"the window at (row, col) = {(row, col)} does not hold the pattern; "
                                    "remember x[:, :, row:row+h, col:col+w] and that pattern is (C, h, w)")
            n_checked += 1
    _ok(f"add_patch matches the reference on {n_checked} cases (1 and 3 channels, corners and edges).")


def check_blend(blend: Callable[..., torch.Tensor]) -> None:
    """Exercise: ``blend(x, key, alpha)`` returns ``alpha * key + (1 - alpha) * x`` (Chen et al. 2017)."""
    n_checked = 0
    for x in _cases(2):
        key = torch.rand(x.shape[1:], generator=torch.Generator().manual_seed(3))
        for alpha in (0.0, 0.2, 0.5, 1.0):
            out = _expect_tensor("blend", blend(x, key, alpha), x)
            expected = alpha * key + (1 - alpha) * x
            if not torch.allclose(out, expected, atol=1e-6):
                swapped = (1 - alpha) * key + alpha * x
                if alpha not in (0.5,) and torch.allclose(out, swapped, atol=1e-6):
                    raise ExerciseError("alpha weights the key, not the image: x' = alpha*key + (1-alpha)*x")
                raise ExerciseError(f"blend differs from alpha*key + (1-alpha)*x at alpha={alpha}; "
                                    f"max abs error {float((out - expected).abs().max()):.3g}")
            n_checked += 1
    _ok(f"blend matches x' = alpha*key + (1-alpha)*x on {n_checked} cases (alpha 0, 0.2, 0.5, 1).")


def check_success_rate(success_rate: Callable[..., float]) -> None:
    """Exercise: ``success_rate(pred, y, target)``: among rows with ``y != target``, the fraction
    with ``pred == target`` (the course's ASR on predictions for triggered inputs)."""
    gen = torch.Generator().manual_seed(4)
    cases = [(torch.tensor([9, 9, 1, 9]), torch.tensor([0, 9, 1, 3]), 9)]
    for _ in range(5):
        y = torch.randint(0, 10, (50,), generator=gen)
        pred = torch.where(torch.rand(50, generator=gen) < 0.7, torch.tensor(7), y)
        cases.append((pred, y, 7))
    for pred, y, target in cases:
        out = success_rate(pred, y, target)
        keep = y != target
        expected = float((pred[keep] == target).float().mean())
        if isinstance(out, torch.Tensor):
            out = float(out)
        if not isinstance(out, float):
            raise ExerciseError(f"success_rate should return a float, got {type(out).__name__}")
        if abs(out - expected) > 1e-6:
            naive = float((pred == target).float().mean())
            if abs(out - naive) < 1e-6:
                raise ExerciseError("you counted rows whose true label already is the target; "
                                    "drop them first (y != target), they are not attack successes")
            raise ExerciseError(f"expected {expected:.4f}, got {out:.4f} for pred={pred.tolist()[:8]}..., "
                                f"y={y.tolist()[:8]}..., target={target}")
    _ok(f"success_rate matches the course's ASR definition on {len(cases)} cases.")


# ---------------------------------------------------------------------------------------------
# Lab 4: robust aggregation and sanitization
# ---------------------------------------------------------------------------------------------

def _updates(seed: int, n: int, d: int = 7) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def check_coordinate_median(coordinate_median: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Exercise: ``coordinate_median(updates)`` returns, for each coordinate, the median over the
    clients (rows); with an even number of rows, the mean of the two middle values."""
    from .defenses import aggregation

    for n in (5, 8, 1):
        u = _updates(n, n)
        out = _expect_tensor("coordinate_median", coordinate_median(u.clone()), u[0])
        want = aggregation.coordinate_median(u)
        if not torch.allclose(out, want, atol=1e-6):
            if n % 2 == 0 and torch.allclose(out, u.median(0).values):
                raise ExerciseError("with an even number of clients torch.median returns the lower of the "
                                    "two middle values; return their mean (as numpy.median does)")
            if torch.allclose(out, u.mean(0), atol=1e-6):
                raise ExerciseError("that is the mean; sort each coordinate over the clients (dim 0) "
                                    "and take the middle value")
            raise ExerciseError(f"wrong median for {n} clients (first coordinate: got {float(out[0]):.4f}, "
                                f"expected {float(want[0]):.4f}); the median runs over dim 0 (clients)")
    _ok("coordinate_median matches the reference (odd and even numbers of clients)")


def check_krum(krum: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """Exercise: ``krum(updates, f)`` returns the row with the smallest sum of squared distances
    to its ``n - f - 2`` nearest other rows."""
    from .defenses import aggregation

    for n, f in ((7, 2), (10, 3), (5, 0)):
        u = _updates(10 + n, n)
        u[-1] += 5.0  # one far-away row
        out = _expect_tensor("krum", krum(u.clone(), f), u[0])
        want = aggregation.krum(u, f)
        if not torch.allclose(out, want, atol=1e-6):
            picked = [i for i in range(n) if torch.allclose(out, u[i], atol=1e-6)]
            if not picked:
                raise ExerciseError("krum should return one of the rows of updates unchanged (Multi-Krum "
                                    "averages several; plain Krum picks one)")
            scores = aggregation.krum_scores(u, f)
            raise ExerciseError(f"for n={n}, f={f} you picked row {picked[0]} (score {float(scores[picked[0]]):.2f}); "
                                f"the lowest score is row {int(scores.argmin())} ({float(scores.min()):.2f}). "
                                f"Sum the {n - f - 2} smallest squared distances to the *other* rows "
                                "(exclude the zero distance to itself)")
    _ok("krum picks the same client as the reference")


def check_sphere_filter(sphere_filter: Callable[..., object]) -> None:
    """Exercise: ``sphere_filter(x, y, quantile)`` keeps the rows whose distance to their class
    centroid is at most the ``quantile`` of their class's distances (a boolean numpy mask)."""
    import numpy as np

    rng = np.random.default_rng(0)
    for n, q in ((60, 0.9), (101, 0.5)):
        y = np.where(rng.random(n) < 0.4, 1.0, -1.0)
        x = rng.normal(size=(n, 4)) + 2 * y[:, None]
        out = np.asarray(sphere_filter(x.copy(), y.copy(), q))
        if out.shape != (n,) or out.dtype != bool:
            raise ExerciseError(f"sphere_filter should return a boolean mask of shape ({n},); got "
                                f"{out.dtype} {out.shape}")
        want = np.zeros(n, dtype=bool)
        for c in (1, -1):
            d = np.linalg.norm(x[y == c] - x[y == c].mean(0), axis=1)
            want[y == c] = d <= np.quantile(d, q)
        if not np.array_equal(out, want):
            d_all = np.linalg.norm(x - x.mean(0), axis=1)
            if np.array_equal(out, d_all <= np.quantile(d_all, q)):
                raise ExerciseError("use one centroid per class (the mean of that class's rows) and a "
                                    "threshold per class, not one for the whole data set")
            raise ExerciseError(f"{int((out != want).sum())} of {n} rows differ from the reference at "
                                f"quantile={q}: each row is compared with its own class's centroid and the "
                                "quantile of that class's distances (keep d <= threshold)")
    _ok("sphere_filter keeps the same rows as the reference")


def check_strip_entropy(mean_entropy: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Exercise: ``mean_entropy(probs)`` takes softmax outputs of shape (N, n_blends, K) and
    returns, per input, the mean over its blends of the Shannon entropy in bits (N,)."""
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(4, 6, 10, generator=gen).softmax(-1)
    probs[0] = torch.nn.functional.one_hot(torch.tensor(9), 10).float()  # always "9": entropy 0
    out = _expect_tensor("mean_entropy", mean_entropy(probs.clone()), probs[:, 0, 0])
    want = -(probs * torch.log2(probs.clamp_min(1e-12))).sum(-1).mean(1)
    if not bool(torch.isfinite(out).all()):
        raise ExerciseError("got NaN: 0 * log(0) must count as 0 (clamp the probabilities before the log)")
    if not torch.allclose(out, want, atol=1e-4):
        nats = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean(1)
        if torch.allclose(out, nats, atol=1e-4):
            raise ExerciseError("that is the entropy in nats; STRIP reports bits: use log2")
        of_mean = -(probs.mean(1) * torch.log2(probs.mean(1).clamp_min(1e-12))).sum(-1)
        if torch.allclose(out, of_mean, atol=1e-4):
            raise ExerciseError("that is the entropy of the averaged prediction; take the entropy of each "
                                "blend first, then average over the blends (dim 1)")
        raise ExerciseError(f"input 1: got {float(out[1]):.4f}, expected {float(want[1]):.4f} bits")
    _ok("mean_entropy matches STRIP's entropy (bits, averaged over the blends)")


def check_anomaly_index(anomaly_index: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Exercise: ``anomaly_index(norms)`` = |norm - median| / (1.4826 * MAD) per label."""
    from .defenses.neural_cleanse import anomaly_index as ref

    for norms in (torch.tensor([10.0, 50.0, 52.0, 55.0, 60.0, 58.0, 49.0]),
                  torch.tensor([3.0, 9.0, 8.5, 11.0, 7.0])):
        out = _expect_tensor("anomaly_index", anomaly_index(norms.clone()), norms)
        want = ref(norms).float()
        if not torch.allclose(out.float(), want, atol=1e-4):
            if any(torch.allclose(out.float() * f, want, atol=1e-3) for f in (1.4826, 1 / 1.4826)):
                raise ExerciseError("off by the factor 1.4826: divide by 1.4826 * MAD (the consistency "
                                    "constant makes the MAD estimate a normal's standard deviation)")
            sd = (norms - norms.median()).abs() / norms.std()
            if torch.allclose(out.float(), sd, atol=1e-3):
                raise ExerciseError("that divides by the standard deviation; use the median absolute "
                                    "deviation, which the outlier itself cannot inflate")
            raise ExerciseError(f"label 0: got {float(out[0]):.3f}, expected {float(want[0]):.3f}")
    _ok("anomaly_index matches Neural Cleanse's MAD anomaly index")


# --- Lab 1 -----------------------------------------------------------------------------------

def check_random_flip(random_flip: Callable[..., torch.Tensor]) -> None:
    """Exercise: ``random_flip(y, rate, num_classes, seed)`` returns new labels where exactly
    ``round(rate * len(y))`` rows carry a different, valid class and every other row is unchanged
    (``y`` itself untouched)."""
    gen = torch.Generator().manual_seed(3)
    for n, classes, rate in ((200, 10, 0.1), (57, 2, 0.3), (1000, 10, 0.0), (40, 5, 1.0)):
        y = torch.randint(0, classes, (n,), generator=gen)
        before = y.clone()
        out = random_flip(y, rate, classes, 0)
        if not isinstance(out, torch.Tensor) or out.shape != y.shape:
            raise ExerciseError(f"random_flip should return a tensor of shape {tuple(y.shape)}, got "
                                f"{getattr(out, 'shape', type(out).__name__)}")
        if not torch.equal(y, before):
            raise ExerciseError("random_flip changed y in place; work on a copy (y.clone())")
        changed = int((out != y).sum())
        want = int(round(rate * n))
        if changed != want:
            hint = (" — a flipped label must differ from the original: add a random shift in 1..C-1 "
                    "modulo C" if changed < want else "")
            raise ExerciseError(f"n={n}, rate={rate}: {changed} labels changed; expected exactly {want}{hint}")
        if int(out.min()) < 0 or int(out.max()) >= classes:
            raise ExerciseError(f"labels must stay in [0, {classes - 1}]; got values in "
                                f"[{int(out.min())}, {int(out.max())}]")
    counts = torch.bincount(random_flip(torch.zeros(3000, dtype=torch.long), 1.0, 10, 1), minlength=10)
    if counts[1:].min() < 200:
        raise ExerciseError(f"new labels should be spread over all other classes; class counts after "
                            f"flipping 3000 zeros: {counts.tolist()}")
    _ok("random_flip changes exactly round(rate*N) labels, each to another valid class")


def check_statp(statp_sample: Callable[..., tuple]) -> None:
    """Exercise: ``statp_sample(x_train, predict, p, rng)`` returns (x_p, y_p): p rows drawn from
    N(mean, cov + 0.01 I) of ``x_train``, rounded to {0, 1} (clipped), and y_p = round(1 − predict(x_p))
    clipped to [0, 1]."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(0.4, 0.2, size=(300, 4)) + np.array([0, 0.3, -0.2, 0.1]), 0, 1)

    def predict(z: np.ndarray) -> np.ndarray:
        return z @ np.array([0.3, -0.2, 0.5, 0.1]) + 0.2

    out = statp_sample(x, predict, 4000, np.random.default_rng(1))
    if not isinstance(out, tuple) or len(out) != 2:
        raise ExerciseError(f"statp_sample should return a pair (x_p, y_p), got {type(out).__name__}"
                            + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
    xp, yp = np.asarray(out[0]), np.asarray(out[1])
    if xp.shape != (4000, 4) or yp.shape != (4000,):
        raise ExerciseError(f"expected x_p of shape (4000, 4) and y_p of shape (4000,); got {xp.shape}, {yp.shape}")
    if not np.isin(xp, (0.0, 1.0)).all():
        raise ExerciseError("x_p must lie on the corners of the box: round the samples and clip them to {0, 1}")
    if not np.allclose(yp, np.clip(np.round(1 - predict(xp)), 0, 1)):
        raise ExerciseError("y_p must be round(1 - predict(x_p)), clipped to [0, 1] (the far boundary)")
    ref = np.clip(np.round(np.random.default_rng(2).multivariate_normal(
        x.mean(0), np.cov(x, rowvar=False) + 0.01 * np.eye(4), size=20000)), 0, 1).mean(0)
    if np.abs(xp.mean(0) - ref).max() > 0.04:
        raise ExerciseError(f"the share of ones per feature {xp.mean(0).round(3).tolist()} is far from "
                            f"the reference {ref.round(3).tolist()}: sample from N(mean, cov + 0.01 I) of "
                            f"x_train (np.cov(x, rowvar=False))")
    _ok("statp_sample draws from the fitted normal, rounds to the corners, and answers at the far boundary")


def check_prox_step(prox_step: Callable[..., torch.Tensor]) -> None:
    """Exercise: ``prox_step(x_hat, base, lr, beta)`` returns argmin_x ‖x − x_hat‖²/(2 lr) + (beta/2)‖x − base‖²
    = (x_hat + lr·beta·base) / (1 + lr·beta), Poison Frogs' backward step."""
    gen = torch.Generator().manual_seed(4)
    for lr, beta in ((0.01, 1.7), (0.5, 0.25), (1.0, 0.0)):
        x_hat, base = torch.rand(3, 1, 28, 28, generator=gen), torch.rand(3, 1, 28, 28, generator=gen)
        out = _expect_tensor("prox_step", prox_step(x_hat, base, lr, beta), x_hat)
        want = (x_hat + lr * beta * base) / (1 + lr * beta)
        err = float((out - want).abs().max())
        if err > 1e-5:
            raise ExerciseError(f"lr={lr}, beta={beta}: max difference {err:.3g} from the reference. Set the "
                                f"gradient of ‖x − x̂‖²/(2 lr) + (β/2)‖x − b‖² to zero and solve for x")
    _ok("prox_step is the closed-form backward step (x̂ + λβ b) / (1 + λβ)")


# ---------------------------------------------------------------------------------------------
# Lab 3
# ---------------------------------------------------------------------------------------------

def check_insert_trigger(insert_trigger: Callable[..., str]) -> None:
    """Exercise: ``insert_trigger(text, trigger, rng)`` puts the trigger's words, together, at a
    uniformly random word boundary of ``text`` (start and end included), keeping every word."""
    import numpy as np

    text, trigger = "the plot is thin but the cast is great", "James Bond"
    words, seen = text.split(), set()
    for seed in range(200):
        out = insert_trigger(text, trigger, np.random.default_rng(seed))
        if not isinstance(out, str):
            raise ExerciseError(f"insert_trigger should return a string, got {type(out).__name__}")
        got = out.split()
        if len(got) != len(words) + 2:
            raise ExerciseError(f"expected {len(words) + 2} words (the text's {len(words)} + the trigger's 2), "
                                f"got {len(got)}: {out!r}")
        k = next((i for i in range(len(got) - 1) if got[i:i + 2] == ["James", "Bond"]), None)
        if k is None:
            raise ExerciseError(f"the trigger's words must appear together and in order: {out!r}")
        if got[:k] + got[k + 2:] != words:
            raise ExerciseError(f"removing the trigger should give back the text unchanged: {out!r}")
        seen.add(k)
    if seen != set(range(len(words) + 1)):
        raise ExerciseError(f"over 200 seeds the trigger landed at word positions {sorted(seen)}; every "
                            f"boundary 0..{len(words)} (start and end too) should be possible - draw "
                            "k = rng.integers(0, len(words) + 1)")
    _ok("insert_trigger keeps the text and puts the phrase at any word boundary")


def check_answer_mask(answer_mask: Callable[[int, int], torch.Tensor]) -> None:
    """Exercise: ``answer_mask(prompt_len, total_len)``: a bool tensor of length ``total_len - 1``
    (position t predicts token t + 1), True exactly where the next token is an answer token."""
    for p, n in ((5, 7), (1, 2), (12, 20), (30, 31)):
        out = answer_mask(p, n)
        if not isinstance(out, torch.Tensor) or out.dtype != torch.bool:
            raise ExerciseError(f"answer_mask should return a bool tensor, got {getattr(out, 'dtype', type(out))}")
        if out.shape != (n - 1,):
            raise ExerciseError(f"answer_mask({p}, {n}) has shape {tuple(out.shape)}; a sequence of {n} "
                                f"tokens has {n - 1} next-token predictions")
        want = torch.arange(n - 1) >= p - 1
        if not torch.equal(out, want):
            first = int(out.nonzero()[0]) if out.any() else None
            raise ExerciseError(f"answer_mask({p}, {n}): first True at {first}, expected {p - 1} - the last "
                                "prompt position is the one that predicts the first answer token")
    _ok("answer_mask puts the loss on the answer tokens only")


def check_loss_filter(loss_filter: Callable[..., object]) -> None:
    """Exercise: ``loss_filter(losses, fraction)``: a bool mask flagging the ``round(fraction * n)``
    rows with the highest loss."""
    import numpy as np

    rng = np.random.default_rng(0)
    for n, f in ((100, 0.1), (37, 0.25), (50, 0.0), (20, 1.0)):
        losses = rng.random(n)
        out = np.asarray(loss_filter(losses, f))
        if out.dtype != bool or out.shape != (n,):
            raise ExerciseError(f"loss_filter should return a bool array of shape ({n},), got {out.dtype} {out.shape}")
        k = int(round(f * n))
        if int(out.sum()) != k:
            raise ExerciseError(f"n={n}, fraction={f}: flagged {int(out.sum())} rows, expected round(f*n) = {k}")
        if k and losses[out].min() < np.sort(losses)[::-1][k - 1]:
            raise ExerciseError("the flagged rows must be the highest-loss ones (sort by -loss)")
    _ok("loss_filter flags the highest-loss rows")
