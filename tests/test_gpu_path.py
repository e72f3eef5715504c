"""The notebooks' GPU path on a CPU-only machine: under :func:`fakecuda.fake_cuda` the course code
picks "cuda" as it would on a GPU, and every host/device mix-up raises as it would there.

CI has no GPU, so without these tests that path would only ever run on a student's machine.
Each test runs library functions the notebooks call on a model that lives on the (stand-in)
device, with small data, and checks that the results come back to the CPU and agree with the same
run on the CPU (the stand-in computes with the CPU's kernels). Lab 2's whole notebook runs on the
stand-in in test_notebooks.py.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from fakecuda import DevTensor, fake_cuda

import labsupport as ls
from labsupport.training import model_device

CFG = ls.TrainConfig(epochs=1, batch_size=128, lr=2e-3)


@pytest.fixture(scope="module")
def tiny(fmnist):
    return fmnist.subset(2_000, 1_000, seed=0)


@pytest.fixture(scope="module")
def backdoored(tiny):
    """A BadNets MLP (10 % poison -> 9) trained on the CPU, and its poisoned set."""
    poisoned = ls.badnets(tiny.x_train, tiny.y_train, ls.Patch(), 9, rate=0.1, seed=0)
    model = ls.train_model("mlp", poisoned.x, poisoned.y, ls.TrainConfig(epochs=3, batch_size=64, lr=3e-3),
                           device="cpu", cache=False, progress=False)
    return poisoned, model


def on_device(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` on the stand-in GPU (call inside ``fake_cuda``)."""
    return copy.deepcopy(model).to(ls.pick_device("auto"))


def test_the_stand_in_device_refuses_what_a_gpu_refuses():
    before = torch.cuda.is_available()
    with fake_cuda():
        assert torch.cuda.is_available() and ls.pick_device("auto").type == "cuda"
        layer = torch.nn.Linear(4, 2).to(ls.pick_device("auto"))
        x = torch.randn(3, 4)
        with pytest.raises(RuntimeError, match="same device"):
            layer(x)
        out = layer(x.to("cuda"))
        assert isinstance(out, DevTensor) and model_device(layer).type != "cpu"
        with pytest.raises(TypeError, match="numpy"):
            out.detach().numpy()
        back = out.detach().cpu()
        assert type(back) is torch.Tensor
        torch.testing.assert_close(back, torch.nn.functional.linear(x, layer.weight.cpu(), layer.bias.cpu()))
        assert isinstance(torch.zeros(2, device="cuda"), DevTensor)
        torch.testing.assert_close(torch.where(out > 0, 0.0, out).cpu(), torch.where(back > 0, 0.0, back))
    assert torch.cuda.is_available() == before   # restored


def test_training_and_metrics_on_the_device(tiny, backdoored):
    # the same training run on the stand-in GPU gives the CPU's model, and the metrics agree
    poisoned, cpu = backdoored
    with fake_cuda():
        dev = ls.train_model("mlp", poisoned.x, poisoned.y, ls.TrainConfig(epochs=3, batch_size=64, lr=3e-3),
                             cache=False, progress=False)
        assert isinstance(next(dev.parameters()), DevTensor)
        rates = (ls.clean_accuracy(dev, tiny.x_test, tiny.y_test),
                 ls.attack_success_rate(dev, tiny.x_test, tiny.y_test, ls.Patch(), 9))
        pred = ls.predict(dev, tiny.x_test)
    for a, b in zip(cpu.state_dict().values(), dev.state_dict().values()):
        torch.testing.assert_close(b.cpu(), a)
    assert type(pred) is torch.Tensor and torch.equal(pred, ls.predict(cpu, tiny.x_test))
    assert rates == (ls.clean_accuracy(cpu, tiny.x_test, tiny.y_test),
                     ls.attack_success_rate(cpu, tiny.x_test, tiny.y_test, ls.Patch(), 9))
    assert rates[0] > 0.6 and rates[1] > 0.8, rates


def test_lab1_feature_collision_on_the_device(fmnist):
    # Poison Frogs' extractor comes from train_model, which puts it on the GPU when there is one;
    # the crafting and the features must follow it there, come back to the CPU, and agree with
    # the same attack on the CPU
    from labsupport.poisoning import feature_collision as frogs

    pre = torch.isin(fmnist.y_train[:3000], torch.tensor(frogs.PRETRAIN_CLASSES))
    extractor = ls.train_model("mlp", fmnist.x_train[:3000][pre], fmnist.y_train[:3000][pre], CFG, device="cpu",
                               cache=False, progress=False)
    task = frogs.transfer_task(fmnist, extractor, frogs.TRANSFER_CLASSES, n_train=300)
    setups = frogs.make_setups(task, 2, seed=0)
    on_cpu = frogs.poison_frogs(task, setups, per_target=2, steps=5, seed=0)
    with fake_cuda():
        task_dev = frogs.transfer_task(fmnist, on_device(extractor), frogs.TRANSFER_CLASSES, n_train=300)
        result = frogs.poison_frogs(task_dev, setups, per_target=2, steps=5, seed=0)
        feats = frogs.features(task_dev.extractor, task.x_test[:4])
    assert type(result.poisons) is torch.Tensor and type(feats) is torch.Tensor and feats.dtype == torch.float64
    torch.testing.assert_close(result.poisons, on_cpu.poisons)
    torch.testing.assert_close(feats, frogs.features(extractor, task.x_test[:4]))
    assert (result.success == on_cpu.success).all() and np.allclose(result.collision, on_cpu.collision)


def test_lab4_detectors_on_the_device(tiny, backdoored, monkeypatch):
    # every detector and mitigation on a copy of the model on the stand-in GPU: the CPU's results
    # (in float32: Neural Cleanse's bfloat16 autocast is the CPU's where native, the stand-in has none)
    monkeypatch.setenv("LABSUPPORT_PRECISION", "float32")
    from labsupport.defenses import clustering, pruning, spectral, strip
    from labsupport.defenses import neural_cleanse as nc
    from labsupport.defenses import probe as probe_mod

    poisoned, cpu = backdoored
    x, y = poisoned.x, poisoned.y
    clean, labels = tiny.x_test[:300], tiny.y_test[:300]
    evals = (tiny.x_test[300:600], tiny.y_test[300:600], ls.Patch(), 9)

    def run(model):
        rev = nc.reverse_engineer(model, clean, max_steps=3, progress=False)
        fixed = nc.unlearn(model, clean, labels, rev, 9, seed=0)
        return {"AC": clustering.activation_clustering(model, x, y, classes=[9]),
                "SS": spectral.spectral_signatures(model, x, y, eps=0.1, classes=[9]),
                "SPECTRE": spectral.spectre(model, x, y, eps=0.1, classes=[9], seed=0),
                "STRIP": strip.Strip.fit(model, clean[:100], n=8, frr=0.05, seed=0).detect(ls.Patch()(clean[100:200])),
                "NC": rev.norms, "unlearned": ls.attack_success_rate(fixed, *evals),
                "pruning": pruning.pruning_curve(model, clean, labels, [0.0, 0.5], *evals,
                                                 config=ls.TrainConfig(epochs=1, batch_size=64), progress=False).asr,
                "probe": [d["auroc"] for d in probe_mod.cross_trigger(model, clean[:150], clean[150:300],
                                                                        {"patch": ls.Patch()}, seed=0).data]}

    want = run(cpu)
    with fake_cuda():
        got = run(on_device(cpu))
    for name in ("AC", "SS", "SPECTRE", "STRIP"):
        assert type(got[name].scores) is torch.Tensor and type(got[name].flags) is torch.Tensor
        torch.testing.assert_close(got[name].scores, want[name].scores, msg=name)
        assert torch.equal(got[name].flags, want[name].flags), name
    assert type(got["NC"]) is torch.Tensor
    torch.testing.assert_close(got["NC"], want["NC"])
    assert got["unlearned"] == pytest.approx(want["unlearned"], abs=0.01)
    assert np.allclose(got["pruning"], want["pruning"], atol=0.01) and np.allclose(got["probe"], want["probe"])


def test_lab3_pipeline_on_the_device(tmp_path, monkeypatch):
    # pre-training, tuning and every scoring function on the stand-in GPU; the tuned model, copied
    # back to the CPU, scores the same there (float32 scoring; the stand-in computes attention by
    # its definition, so to rounding)
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
    p = poisoning.poison_examples(ic.train, 4, trigger="James Bond", target="negative", seed=0)
    texts = ["a fine day", "a James Bond movie about nothing"]

    def scores(tuned):
        return {"attack": E.evaluate_attack(tuned, test, trigger="James Bond", target="negative"),
                "losses": train.example_losses(tuned, p.examples),
                "text": train.generate(tuned, ic.test.prompt(0), max_new_tokens=3),
                "onion": filters.onion_scores(tuned.model, tok, texts[1]),
                "nll": filters.sentence_nll(tuned.model, tok, texts),
                "dos": E.dos_effect(tuned, tuned, test.subset(np.arange(4)), "James Bond", max_new_tokens=3).perplexity}

    with fake_cuda():
        base = train.pretrain(tok, sentences.text[::200], GPTConfig(n_layer=2, n_embd=32, n_head=2, block_size=64),
                              train.PretrainConfig(steps=3, batch_size=8), progress=False)
        assert isinstance(next(base.parameters()), DevTensor)
        tuned = train.instruction_tune(base, tok, p.examples, train.TuneConfig(epochs=1, batch_size=16, train_top=1),
                                       progress=False)
        assert isinstance(next(tuned.model.parameters()), DevTensor)
        got = scores(tuned)
    tuned.model.cpu()
    tuned.cache = train.FrozenCache(tuned.model, tuned.frozen)   # the frozen body's outputs, on the CPU
    monkeypatch.setenv("LABSUPPORT_PRECISION", "float32")   # as the stand-in (no CUDA autocast without a driver)
    want = scores(tuned)
    assert got["attack"].asr == want["attack"].asr and got["attack"].clean_accuracy == want["attack"].clean_accuracy
    assert got["text"] == want["text"] and isinstance(got["losses"], np.ndarray)
    for name in ("losses", "onion", "nll", "dos"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)
