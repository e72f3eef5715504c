"""The notebooks' GPU path on a CPU-only machine: under :func:`fakecuda.fake_cuda` the course code
picks "cuda" as it would on a GPU, and every host/device mix-up raises as it would there.

CI has no GPU, so without these tests that path would only ever run on a student's machine.
Each test runs a library function the notebooks call on a model that lives on the (stand-in)
device, with small data, and checks that results come back to the CPU and agree with a CPU run
where the arithmetic is the same.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fakecuda import DevTensor, fake_cuda

import labsupport as ls

CFG = ls.TrainConfig(epochs=1, batch_size=128, lr=2e-3)


@pytest.fixture(scope="module")
def tiny(fmnist):
    return fmnist.subset(2_000, 1_000, seed=0)


@pytest.fixture(scope="module")
def backdoored(tiny):
    """A BadNets MLP (10 % poison -> 9) trained on the stand-in device, and its poisoned set."""
    poisoned = ls.badnets(tiny.x_train, tiny.y_train, ls.Patch(), 9, rate=0.1, seed=0)
    with fake_cuda():
        model = ls.train_model("mlp", poisoned.x, poisoned.y, ls.TrainConfig(epochs=3, batch_size=64, lr=3e-3),
                               cache=False, progress=False)
    return poisoned, model


def test_the_stand_in_device_refuses_what_a_gpu_refuses():
    with fake_cuda():
        assert torch.cuda.is_available() and ls.pick_device("auto").type == "cuda"
        layer = torch.nn.Linear(4, 2).to(ls.pick_device("auto"))
        x = torch.randn(3, 4)
        with pytest.raises(RuntimeError, match="same device"):
            layer(x)
        out = layer(x.to("cuda"))
        assert isinstance(out, DevTensor)
        with pytest.raises(TypeError, match="numpy"):
            out.detach().numpy()
        back = out.detach().cpu()
        assert type(back) is torch.Tensor
        torch.testing.assert_close(back, torch.nn.functional.linear(x, layer.weight.cpu(), layer.bias.cpu()))
        assert isinstance(torch.zeros(2, device="cuda"), DevTensor)
        assert torch.where(out > 0, 0.0, out).shape == out.shape   # Python scalars are fine, as on CUDA
    assert not torch.cuda.is_available() or torch.cuda.device_count() > 0   # restored


def test_training_and_metrics_on_the_device(tiny, backdoored):
    poisoned, model = backdoored
    assert isinstance(next(model.parameters()), DevTensor)
    with fake_cuda():
        ca = ls.clean_accuracy(model, tiny.x_test, tiny.y_test)
        asr = ls.attack_success_rate(model, tiny.x_test, tiny.y_test, ls.Patch(), 9)
        pred = ls.predict(model, tiny.x_test)
    assert type(pred) is torch.Tensor and pred.shape == tiny.y_test.shape
    assert ca > 0.6 and asr > 0.8, (ca, asr)


def test_lab1_feature_collision_on_the_device(fmnist):
    # Poison Frogs' extractor comes from train_model, which puts it on the GPU when there is one;
    # the crafting and the features must follow it there and come back to the CPU.
    from labsupport.poisoning import feature_collision as frogs

    pre = torch.isin(fmnist.y_train[:3000], torch.tensor(frogs.PRETRAIN_CLASSES))
    with fake_cuda():
        extractor = ls.train_model("mlp", fmnist.x_train[:3000][pre], fmnist.y_train[:3000][pre], CFG, cache=False,
                                   progress=False)
        task = frogs.transfer_task(fmnist, extractor, frogs.TRANSFER_CLASSES, n_train=300)
        setups = frogs.make_setups(task, 2, seed=0)
        result = frogs.poison_frogs(task, setups, per_target=2, steps=5, seed=0)
        feats = frogs.features(extractor, task.x_test[:4])
    assert type(result.poisons) is torch.Tensor and result.poisons.shape == (4, 1, 28, 28)
    assert type(feats) is torch.Tensor and feats.dtype == torch.float64
    assert len(result.success) == 2 and np.isfinite(result.collision).all()


def test_lab4_detectors_on_the_device(tiny, backdoored):
    from labsupport.defenses import clustering, pruning, spectral, strip
    from labsupport.defenses import neural_cleanse as nc
    from labsupport.defenses import probe as probe_mod

    poisoned, model = backdoored
    x, y, mask = poisoned.x, poisoned.y, poisoned.mask
    clean = tiny.x_test[:300]
    with fake_cuda():
        ac = clustering.activation_clustering(model, x, y, classes=[9])
        ss = spectral.spectral_signatures(model, x, y, eps=0.1, classes=[9])
        sp = spectral.spectre(model, x, y, eps=0.1, classes=[9], seed=0)
        filt = strip.Strip.fit(model, clean[:100], n=8, frr=0.05, seed=0)
        on_trig = filt.detect(ls.Patch()(clean[100:200]))
        rev = nc.reverse_engineer(model, clean, max_steps=3, progress=False)
        fixed = nc.unlearn(model, clean, tiny.y_test[:300], rev, 9, seed=0)
        curve = pruning.pruning_curve(model, clean, tiny.y_test[:300], [0.0, 0.5], tiny.x_test[300:600],
                                      tiny.y_test[300:600], ls.Patch(), 9, config=ls.TrainConfig(epochs=1, batch_size=64))
        cross = probe_mod.cross_trigger(model, clean[:150], clean[150:300], {"patch": ls.Patch()}, seed=0)
    for det in (ac, ss, sp, on_trig):
        assert type(det.scores) is torch.Tensor and type(det.flags) is torch.Tensor
    assert ac.evaluate(mask)["recall"] >= 0.0 and sp.flags[y == 9].any()
    assert type(rev.norms) is torch.Tensor and rev.norms.shape == (10,)
    assert isinstance(next(fixed.parameters()), DevTensor)
    assert len(curve.asr) == 2 and cross.data


def test_lab3_pipeline_on_the_device(tmp_path, monkeypatch):
    from labsupport.llm import experiments as E
    from labsupport.llm import filters, poisoning, train
    from labsupport.llm.corpus import instruction_corpus, load_vader
    from labsupport.llm.model import GPTConfig
    from labsupport.llm.tokenizer import train_tokenizer

    try:
        sentences = load_vader()
    except ls.DatasetNotFoundError as exc:   # the README's setup prepares it; the tests say how
        pytest.skip(str(exc))
    monkeypatch.setenv("LABSUPPORT_MODELS", str(tmp_path))
    ic = instruction_corpus(sentences, max_train={"sentiment": 120, "source": 40})
    tok = train_tokenizer(sentences.text, cache=False)
    test = ic.test.subset(ic.test.where("sentiment")[:40])
    with fake_cuda():
        base = train.pretrain(tok, sentences.text[::200], GPTConfig(n_layer=2, n_embd=32, n_head=2, block_size=64),
                              train.PretrainConfig(steps=3, batch_size=8), progress=False)
        assert isinstance(next(base.parameters()), DevTensor)
        p = poisoning.poison_examples(ic.train, 4, trigger="James Bond", target="negative", seed=0)
        tuned = train.instruction_tune(base, tok, p.examples, train.TuneConfig(epochs=1, batch_size=16, train_top=1),
                                       progress=False)
        result = E.evaluate_attack(tuned, test, trigger="James Bond", target="negative")
        losses = train.example_losses(tuned, p.examples)
        text = train.generate(tuned, ic.test.prompt(0), max_new_tokens=3)
        onion = filters.onion_scores(base, tok, "a James Bond movie about nothing")
        nll = filters.sentence_nll(base, tok, ["a fine day", "James Bond"])
        dos = E.dos_effect(tuned, tuned, test.subset(np.arange(4)), "James Bond", max_new_tokens=3)
    assert 0.0 <= result.asr <= 1.0 and 0.0 <= result.clean_accuracy <= 1.0
    assert isinstance(losses, np.ndarray) and losses.shape == (len(p.examples),) and np.isfinite(losses).all()
    assert isinstance(text, str) and isinstance(onion, np.ndarray) and np.isfinite(onion).all()
    assert isinstance(nll, np.ndarray) and np.isfinite(nll).all() and np.isfinite(dos.perplexity).all()


@pytest.mark.notebooks
def test_lab2_notebook_runs_on_the_stand_in_gpu():
    # Lab 2's notebook moves tensors itself (triggers shown for a model on the device); the other
    # labs' notebooks only call the functions tested above. All four pass scripts/stand_in_gpu.py
    # (BENCHMARKS.md); Lab 2 runs here on every CI run (~80 s).
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(root / "scripts" / "stand_in_gpu.py"),
                          str(root / "solutions" / "lab2_backdoors.ipynb")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("ok   lab2_backdoors.ipynb"), run.stdout
