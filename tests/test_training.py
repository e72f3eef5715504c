import pytest
import torch

import labsupport as ls
from labsupport import training


@pytest.fixture(scope="module")
def digits():
    return ls.load_dataset("digits")


def test_models_forward_and_features():
    for name, shape in (("mlp", (1, 28, 28)), ("cnn", (1, 28, 28)), ("cnn", (3, 32, 32)), ("resnet18", (3, 32, 32))):
        model = ls.build_model(name, shape, 10).eval()
        x = torch.rand(2, *shape)
        assert model(x).shape == (2, 10)
        assert model.features(x).ndim == 2


def test_mlp_is_the_course_reference():
    sizes = [p.shape for p in ls.MLP().parameters()]
    assert sizes == [(256, 784), (256,), (128, 256), (128,), (10, 128), (10,)]


def test_fit_learns_digits(digits):
    torch.manual_seed(0)
    model = ls.MLP((1, 8, 8))
    history = ls.fit(model, digits.x_train, digits.y_train, ls.TrainConfig(epochs=15, batch_size=32), progress=False)
    assert history[-1] < history[0] / 5
    assert ls.clean_accuracy(model, digits.x_test, digits.y_test) > 0.93


def test_training_is_deterministic(digits):
    cfg = ls.TrainConfig(epochs=2, seed=5)
    a = ls.train_model("mlp", digits.x_train, digits.y_train, cfg, cache=False, progress=False)
    b = ls.train_model("mlp", digits.x_train, digits.y_train, cfg, cache=False, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_cache_reuses_trained_model(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("LABSUPPORT_MODELS", str(tmp_path))
    cfg = ls.TrainConfig(epochs=2)
    first = ls.train_model("mlp", digits.x_train, digits.y_train, cfg, progress=False)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    calls = []
    monkeypatch.setattr(training, "fit", lambda *a, **k: calls.append(1))
    again = ls.train_model("mlp", digits.x_train, digits.y_train, cfg, progress=False)
    assert calls == [] and all(torch.equal(p, q) for p, q in zip(first.parameters(), again.parameters()))
    # any change of config or data is a different key
    ls.train_model("mlp", digits.x_train, digits.y_train, cfg.replace(lr=2e-3), progress=False)
    y2 = digits.y_train.clone()
    y2[0] = (y2[0] + 1) % 10
    ls.train_model("mlp", digits.x_train, y2, cfg, progress=False)
    assert calls == [1, 1]


def test_crop_flip_keeps_shape_and_content():
    x = torch.rand(16, 3, 32, 32)
    out = training.crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert not torch.equal(out, x)


def test_pick_device_auto():
    assert ls.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert ls.pick_device("cpu") == torch.device("cpu")


def test_configure_threads_respects_env(monkeypatch):
    monkeypatch.setenv("LABSUPPORT_THREADS", "1")
    assert ls.configure_threads() == 1
    monkeypatch.delenv("LABSUPPORT_THREADS")
    import os
    assert ls.configure_threads() == (os.cpu_count() or 1)


_FAULTS = """
import resource, sys, torch
if sys.argv[1] == "labsupport":
    from labsupport.training import configure_threads
    configure_threads()
for _ in range(16):                   # the heap settles: small blocks fragment it for the first few
    torch.ones(8 * 2**20)             # 32 MiB: over glibc's largest default mapping threshold
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(8 * 2**20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def test_keep_freed_memory_reuses_large_blocks_instead_of_faulting_them_in_again():
    """After configure_threads, once the heap has settled, ten more 32 MiB tensors one after the
    other reuse the same freed block: not one of them page-faults in (8,192 pages each), where
    plain torch with glibc's default malloc maps each one afresh. (While the heap settles, the
    first one to six tensors of a process may still fault in: the small blocks allocated between
    them leave the freed block a few bytes short for the next aligned one.)"""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if not training.glibc():
        pytest.skip("keep_freed_memory acts on glibc only")
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[always]" in thp.read_text():
        pytest.skip("transparent huge pages for every mapping: page faults do not count 4 KiB pages")
    env = {k: v for k, v in os.environ.items() if k != "LABSUPPORT_MALLOC"}
    kept, system = (int(subprocess.run([sys.executable, "-c", _FAULTS, who], env=env, capture_output=True,
                                       text=True, check=True).stdout) for who in ("labsupport", "torch"))
    pages = 8 * 2**20 * 4 // 4096
    assert system >= 9 * pages, system
    assert kept < pages, kept


def test_keep_freed_memory_system_mode_and_unknown_modes(monkeypatch):
    monkeypatch.setattr(training, "_MALLOC_KEPT", False)
    monkeypatch.setattr(training.ctypes, "CDLL", lambda *a: pytest.fail("mallopt called in system mode"))
    monkeypatch.setenv("LABSUPPORT_MALLOC", "system")
    assert training.keep_freed_memory() is False
    monkeypatch.setenv("LABSUPPORT_MALLOC", "jemalloc")
    with pytest.raises(ValueError, match="LABSUPPORT_MALLOC='jemalloc'.*'keep', 'system'"):
        training.keep_freed_memory()


def test_gpu_profile_path_resnet18_with_augmentation_runs_on_cpu():
    """The gpu profile's ResNet18 + crop-flip path, on a few CIFAR-shaped images."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 3, 32, 32, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    cfg = ls.get_profile("gpu").cnn.replace(epochs=1, batch_size=8)
    model = ls.train_model("resnet18", x, y, cfg, device="cpu", cache=False, progress=False)
    assert ls.predict(model, x).shape == (16,)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mlp_manual_step_matches_autograd(smoothing):
    torch.manual_seed(0)
    model = ls.MLP()
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=smoothing)
    loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    manual_loss = model.manual_step(x, y, smoothing)
    assert float(manual_loss) == pytest.approx(loss.item(), rel=1e-5)
    for p, g in zip(model.parameters(), expected):
        assert torch.allclose(p.grad, g, atol=1e-6, rtol=1e-4)


def test_lean_adamw_matches_torch_adamw():
    torch.manual_seed(0)
    a, b = ls.MLP(), ls.MLP()
    b.load_state_dict(a.state_dict())
    ours = training.LeanAdamW(list(a.parameters()), 1e-3, 1e-2)
    ref = torch.optim.AdamW(b.parameters(), lr=1e-3, weight_decay=1e-2, fused=True)
    for _ in range(5):
        x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_fit_restores_ieee_subnormals(digits):
    ls.fit(ls.MLP((1, 8, 8)), digits.x_train[:64], digits.y_train[:64], ls.TrainConfig(epochs=1), progress=False)
    tiny = torch.tensor(1e-40)  # a float32 subnormal
    assert float(tiny) != 0.0 and float(tiny * 1.0) != 0.0


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _probe_job(barrier, seen, value):
    """A side_by_side job that records its thread and intra-op thread count, and waits at
    ``barrier`` (if any) for the other job: proof that the two run at the same time."""
    def job(advance):
        import threading
        seen.append((threading.get_ident(), torch.get_num_threads()))
        if barrier is not None:
            barrier.wait(timeout=20)
        advance(2)
        return value
    return job


def test_side_by_side_splits_the_cores_between_jobs(monkeypatch, restore_threads):
    import threading
    monkeypatch.setenv("LABSUPPORT_THREADS", "2")
    ls.configure_threads()
    seen = []
    barrier = threading.Barrier(2)   # times out (BrokenBarrierError) if the jobs ran one after the other
    out = training.side_by_side([_probe_job(barrier, seen, v) for v in "ab"], device=torch.device("cpu"),
                                total=4, desc="t", progress=False)
    assert out == ["a", "b"]
    assert len({t for t, _ in seen}) == 2 and all(n == 1 for _, n in seen)   # two threads, a core each
    assert torch.get_num_threads() == 2 and training._PINNED is None          # restored afterwards


def test_side_by_side_runs_up_to_twice_the_cores_at_once(monkeypatch, restore_threads):
    """Three jobs on two cores all run at once, one intra-op thread each (no third job left alone
    at the end); five run two at a time."""
    import threading
    import time
    monkeypatch.setenv("LABSUPPORT_THREADS", "2")
    ls.configure_threads()
    seen = []
    barrier = threading.Barrier(3)   # times out if any of the three waited for another to finish
    out = training.side_by_side([_probe_job(barrier, seen, v) for v in "abc"], device=torch.device("cpu"),
                                total=6, desc="t", progress=False)
    assert out == ["a", "b", "c"] and len({t for t, _ in seen}) == 3 and all(n == 1 for _, n in seen)
    seen.clear()
    running, most, lock = [0], [0], threading.Lock()

    def counted(job):
        def run(advance):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1
            return job(advance)
        return run
    out = training.side_by_side([counted(_probe_job(None, seen, v)) for v in "abcde"], device=torch.device("cpu"),
                                total=10, desc="t", progress=False)
    assert out == list("abcde") and most[0] == 2 and all(n == 1 for _, n in seen)
    assert torch.get_num_threads() == 2 and training._PINNED is None


@pytest.mark.parametrize("threads, device", [("1", "cpu"), ("2", "cuda")])
def test_side_by_side_runs_one_after_the_other_on_one_core_or_a_gpu(monkeypatch, restore_threads, threads, device):
    import threading
    monkeypatch.setenv("LABSUPPORT_THREADS", threads)
    ls.configure_threads()
    seen = []
    out = training.side_by_side([_probe_job(None, seen, v) for v in "abc"], device=torch.device(device),
                                total=6, desc="t", progress=False)
    assert out == ["a", "b", "c"] and {t for t, _ in seen} == {threading.get_ident()}
    assert all(n == int(threads) for _, n in seen)


def test_side_by_side_raises_a_jobs_error_and_restores_threads(monkeypatch, restore_threads):
    monkeypatch.setenv("LABSUPPORT_THREADS", "2")
    ls.configure_threads()

    import time
    steps = []

    def long(advance):   # would run ~100 s: stopped at its next step once the other job fails
        for _ in range(100_000):
            time.sleep(0.001)
            advance(1)
            steps.append(1)

    def bad(advance):
        time.sleep(0.2)
        raise ValueError("job failed")

    start = time.perf_counter()
    with pytest.raises(ValueError, match="job failed"):
        training.side_by_side([long, bad], device=torch.device("cpu"), total=2, desc="t", progress=False)
    assert time.perf_counter() - start < 10 and len(steps) < 10_000
    assert torch.get_num_threads() == 2 and training._PINNED is None
