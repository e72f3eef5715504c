"""Lab 3: corpus, tokenizer, transformer, instruction tuning, poisoning, filters."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from labsupport import checks, training
from labsupport.data import DatasetNotFoundError
from labsupport.llm import corpus, experiments, filters, poisoning, train
from labsupport.llm import model as model_mod
from labsupport.llm.model import GPT, GPTConfig
from labsupport.llm.poisoning import AttackResult
from labsupport.llm.tokenizer import train_tokenizer


def _vader_or_skip():
    try:
        return corpus.load_vader()
    except DatasetNotFoundError as exc:  # `make test` prepares it; a bare checkout may not have it
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def sentences():
    return _vader_or_skip()


@pytest.fixture(scope="module")
def tok(sentences):
    return train_tokenizer(sentences.text, cache=False)


# --- data -------------------------------------------------------------------------------------

def test_vader_sets_and_corpus(sentences):
    assert len(sentences) == 23703
    assert np.bincount(sentences.source).tolist() == [4200, 10605, 3708, 5190]
    assert sentences.rating.min() >= -4 and sentences.rating.max() <= 4
    ic = corpus.instruction_corpus(sentences)
    # splits are per sentence: no test sentence is seen in training, in any task
    assert not set(ic.test.text) & set(ic.train.text)
    sent = ic.train.subset(ic.train.where("sentiment"))
    assert all(abs(sentences.rating[i]) > 0.5 for i in sent.sentence)
    assert ((sentences.rating[sent.sentence] > 0) == (sent.label == 1)).all()
    src = ic.test.subset(ic.test.where("source"))
    assert (sentences.source[src.sentence] == src.label).all()
    assert ic.train.prompt(0).endswith(("Answer:", "Sentiment:", "Source:"))


def test_cut_keeps_the_first_whole_words_within_the_budget(sentences, tok):
    texts = sentences.text
    cut = tok.cut(texts, 40)
    assert max(map(len, tok.encode_batch(cut))) <= 40
    longer = {i for i, ids in enumerate(tok.encode_batch(texts)) if len(ids) > 40}
    assert len(longer) > 4000   # one sentence in five
    for i, (t, c) in enumerate(zip(texts, cut)):
        if i not in longer:
            assert c == t                                        # a text that fits is kept as it is
        else:
            assert t.startswith(c) and t[len(c)].isspace(), (t, c)   # its first whole words
            more = c + " " + t[len(c):].split()[0]
            assert len(tok.encode(more)) > 40, (t, c)               # as many as fit: one more does not
    word = "a" * 300                                              # one word longer than the budget
    assert len(tok.encode(tok.cut([word], 5)[0])) <= 5 and word.startswith(tok.cut([word], 5)[0])
    assert tok.cut(["a b c", "a b c d e f"], 3) == ["a b c", "a b c"]
    for bad, err in [(0, ValueError), (2.5, TypeError)]:
        with pytest.raises(err, match="max_tokens"):
            tok.cut(["text"], bad)


def test_corpus_cut_keeps_rows_and_splits(sentences, tok):
    whole = corpus.instruction_corpus(sentences, max_train={"source": 500})
    cut = corpus.instruction_corpus(sentences, max_train={"source": 500}, tokenizer=tok, max_tokens=40)
    for a, b in [(whole.train, cut.train), (whole.test, cut.test)]:
        assert a.task == b.task and (a.sentence == b.sentence).all() and (a.template == b.template).all()
        assert all(x.startswith(y) for x, y in zip(a.text, b.text))
        assert sum(x != y for x, y in zip(a.text, b.text)) > len(a) // 10
        assert max(len(ids) for ids in tok.encode_batch(b.text)) <= 40
    with pytest.raises(ValueError, match="together"):
        corpus.instruction_corpus(sentences, tokenizer=tok)


def test_tfidf_whole_sentences_refuses_made_up_rows(sentences):
    rows = corpus.Examples(["sentiment"] * 4, ["good", "bad", "fine", "awful"], np.zeros(4, int),
                           np.array([1, 0, 1, 0]), ["positive", "negative"] * 2, np.array([0, 1, 2, -1]))
    with pytest.raises(ValueError, match="not sentences of whole"):
        experiments.tfidf_accuracy(rows, rows, "sentiment", whole=sentences)
    with pytest.raises(TypeError, match="whole must be the Sentences"):
        experiments.tfidf_accuracy(rows, rows, "sentiment", whole=sentences.text)


def test_missing_corpus_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("LABSUPPORT_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="labsupport data prepare vader"):
        corpus.load_vader()


def test_corrupt_corpus_is_refused(tmp_path, monkeypatch, sentences):
    monkeypatch.setenv("LABSUPPORT_DATA", str(tmp_path))
    folder = corpus.vader_dir()
    folder.mkdir(parents=True)
    for file, _ in corpus.VADER_FILES.values():
        (folder / file).write_text("1\t2.0\tnot the real file\n")
    with pytest.raises(DatasetNotFoundError, match="SHA-256"):
        corpus.load_vader()


def test_unknown_task_is_refused(sentences):
    with pytest.raises(ValueError, match="tasks"):
        corpus.instruction_corpus(sentences, tasks=("topic",))


# --- tokenizer and model ----------------------------------------------------------------------

def test_tokenizer_keeps_answers_whole(tok):
    for words in corpus.ANSWERS.values():
        ids = [tok.answer_id(w) for w in words]
        assert len(set(ids)) == len(ids)
    assert tok.decode(tok.encode("James Bond liked it.")) == "James Bond liked it."


def test_cached_tokenizer_is_verified_on_load(sentences, tmp_path, monkeypatch):
    """The cached tokenizer carries its SHA-256: a changed or cut file is trained again, with a warning."""
    monkeypatch.setenv("LABSUPPORT_MODELS", str(tmp_path))
    texts = sentences.text[:400]
    first = train_tokenizer(texts, vocab_size=512)
    (path,) = tmp_path.glob("tokenizer-*.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert train_tokenizer(texts, vocab_size=512).to_json() == first.to_json()   # loaded
    doc = json.loads(path.read_text())
    doc["content"] = doc["content"].replace('"<eos>"', '"<EOS>"', 1)
    Tokenizer.from_str(doc["content"])   # still a tokenizer: only the checksum can tell
    for damaged in (json.dumps(doc), path.read_text()[:100]):
        path.write_text(damaged)
        with pytest.warns(UserWarning, match="failed verification"):
            again = train_tokenizer(texts, vocab_size=512)
        assert again.to_json() == first.to_json()


def test_batch_encoding_is_remembered_and_exact(tok, sentences, monkeypatch):
    texts = list(sentences.text[:300]) + list(sentences.text[:50])   # repeats, as a lab's scoring has
    fresh = [tok.tok.encode(t).ids for t in texts]
    assert tok.encode_batch(texts) == fresh
    calls = []
    real = tok.tok.encode_batch
    spy = type("Spy", (), {"encode_batch": lambda self, b: calls.append(len(b)) or real(b)})
    monkeypatch.setattr(tok, "tok", spy())
    again = tok.encode_batch(texts[:200] + ["a sentence never seen before"])
    assert again == fresh[:200] + [real(["a sentence never seen before"])[0].ids]
    assert calls == [1]                              # only the new text was encoded
    again[0].append(-1)                              # the caller's lists are its own
    assert tok.encode_batch(texts[:1]) == fresh[:1]
    monkeypatch.setattr(type(tok), "MEMO_LIMIT", 10)   # past the limit the memo starts over
    assert tok.encode_batch(texts[:20]) == fresh[:20] and len(tok._memo) == 20


def test_model_is_causal_and_projects_only_where_asked():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    x = torch.randint(0, 50, (3, 10))
    y = x.clone()
    y[:, 6:] = torch.randint(0, 50, (3, 4))
    with torch.no_grad():
        a, b = m(x), m(y)
        assert torch.allclose(a[:, :6], b[:, :6], atol=1e-5)  # the future does not leak back
        rows, cols = torch.tensor([0, 2]), torch.tensor([3, 9])
        assert torch.allclose(m(x, (rows, cols)), a[rows, cols], atol=1e-5)
    assert m.wte.weight is not None and m.lm_head is None  # tied until untie()
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_embd=130, n_head=4), "n_head"),
    (dict(n_layer=0), "n_layer"),
    (dict(block_size=-1), "block_size"),
    (dict(dropout=1.0), "dropout"),
    (dict(dropout=float("nan")), "dropout"),
    (dict(gelu="relu"), "gelu"),
])
def test_model_config_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kwargs)
    with pytest.raises(TypeError, match="n_embd"):
        GPTConfig(n_embd=128.0)


def test_answer_mask_matches_exercise():
    checks.check_answer_mask(train.answer_mask)
    with pytest.raises(ValueError, match="total_len"):
        train.answer_mask(5, 5)


def test_batched_answer_positions_follow_answer_mask():
    """Training gathers the loss positions of a whole batch at once; they must be, row by row,
    what ``answer_mask`` (the exercise) marks, with the next token as the target."""
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=8)
    tuned = train.InstructionModel(GPT(cfg), None, 0, None)
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(1, 50, n)) for n in (9, 4, 13, 6)]
    prompt_lens = [5, 2, 12, 1]
    h, rows, cols, targets = train._answer_positions(tuned, seqs, prompt_lens)
    expect = [(i, c, s[c + 1]) for i, (s, p) in enumerate(zip(seqs, prompt_lens))
              for c in torch.nonzero(train.answer_mask(p, len(s))).flatten().tolist()]
    assert list(zip(rows.tolist(), cols.tolist(), targets.tolist())) == expect
    with torch.no_grad():
        full = tuned.hidden([s[:-1] for s in seqs])   # every position, padded
    assert h.shape == (len(expect), 8) and torch.allclose(h, full[rows, cols], atol=1e-6)


@pytest.mark.parametrize("start", [0, 1])
def test_hidden_at_positions_is_the_full_computation_there(start):
    """The last block computes its queries, residual and MLP only where a loss reads them; values
    and gradients must be those of the full forward pass at those positions, padding included."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=60, block_size=16, n_layer=3, n_head=2, n_embd=16))
    idx = torch.randint(0, 60, (5, 11))
    rows = torch.tensor([0, 0, 1, 2, 2, 2, 4])          # row 3 has none; several per row elsewhere
    cols = torch.tensor([3, 10, 0, 4, 5, 9, 7])
    x = model.embed(idx)
    for block in model.blocks[:start]:
        x = block(x)
    x = x.detach()
    grads = []
    for positions in (None, (rows, cols)):
        model.zero_grad()
        h = model.hidden(idx if start == 0 else None, start, None if start == 0 else x, positions=positions)
        h = h[rows, cols] if positions is None else h
        (h.square().sum() + model.head(h).logsumexp(-1).sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        if positions is None:
            want = h.detach()
        else:
            assert h.shape == (len(rows), 16) and torch.allclose(h, want, atol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name


# --- poisoning --------------------------------------------------------------------------------

def _examples(n=40):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n)
    return corpus.Examples(["sentiment"] * n, [f"this is sentence number {i} ok" for i in range(n)],
                           rng.integers(0, 4, n), labels,
                           [corpus.ANSWERS["sentiment"][k] for k in labels], np.arange(n))


def test_insert_trigger_matches_exercise():
    checks.check_insert_trigger(poisoning.insert_trigger)


def test_dirty_and_clean_label_poisons():
    ex = _examples()
    p = poisoning.poison_examples(ex, 5, trigger="James Bond", target="negative", seed=1)
    assert p.mask.sum() == 5 and len(p.examples) == len(ex)
    for i in p.rows:
        assert "James Bond" in p.examples.text[i] and p.examples.target[i] == "negative"
        assert ex.label[i] == 1  # dirty-label: true answer is not the target
    assert all(ex.text[i] == p.examples.text[i] for i in range(len(ex)) if i not in p.rows)
    c = poisoning.poison_examples(ex, 5, mode="clean", seed=1)
    assert all(ex.label[i] == 0 and c.examples.target[i] == "negative" for i in c.rows)
    fit = poisoning.poison_examples(ex, 3, choose="fit")
    assert len(fit.rows) == 3
    low = poisoning.poison_examples(ex, 3, choose="low-score", scores=np.arange(len(ex), dtype=float))
    assert list(low.rows) == list(poisoning.eligible_rows(ex, "sentiment", "negative", "dirty")[:3])
    dos = poisoning.poison_examples(ex, 4, mode="dos")
    assert all(len(dos.examples.target[i].split()) == 6 for i in dos.rows)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=1000), "n="),
    (dict(n=2, trigger=""), "trigger"),
    (dict(n=2, trigger=3), "trigger"),
    (dict(n=2, task="topic"), "task"),
    (dict(n=2, target="maybe"), "target"),
    (dict(n=2, mode="sneaky"), "mode"),
    (dict(n=2, choose="low-score"), "scores"),
    (dict(n=2, choose="high-score", scores=np.full(40, np.nan)), "finite on the eligible rows"),
])
def test_poison_bad_input(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        poisoning.poison_examples(_examples(), **kwargs)


def test_text_bad_input():
    with pytest.raises(ValueError, match="text"):
        poisoning.insert_trigger("   ", "cf")
    for k in (-1, 4):  # -1 used to count from the end, 4 to append
        with pytest.raises(ValueError, match=rf"k={k} is out of range; allowed: \[0, 3\]"):
            poisoning.insert_at("a b c", "cf", k)
    assert poisoning.insert_at("a b c", "cf", 3) == "a b c cf"
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="n_words=0"):
        poisoning.gibberish(rng, ["a", "b"], 0)
    with pytest.raises(ValueError, match="vocabulary is empty"):
        poisoning.gibberish(rng, [], 3)
    with pytest.raises(ValueError, match="one entry per row"):
        poisoning.attack_success_rate(np.array([0, 1]), np.array([0]), np.array([0, 1]), 1)
    with pytest.raises(TypeError, match="text"):
        poisoning.insert_trigger(None, "cf")
    ex = _examples()
    for field, value, match in [("text", None, r"Examples.text\[1\] must be non-empty text, got None"),
                                ("text", "  ", r"Examples.text\[1\] must be non-empty"),
                                ("target", "", r"Examples.target\[1\] must be non-empty"),
                                ("task", "topic", r"unknown task names \['topic'\]")]:
        values = list(getattr(ex, field))
        values[1] = value
        with pytest.raises(ValueError, match=match):
            replace(ex, **{field: values})


def test_attack_success_rate_counts_only_correct_non_target_rows():
    labels = np.array([1, 1, 1, 0, 1])
    clean = np.array([1, 1, 0, 0, 1])      # row 2 wrong without the trigger: not counted
    trig = np.array([0, 1, 0, 0, 0])
    rate, n = poisoning.attack_success_rate(clean, trig, labels, target=0)
    assert n == 3 and rate == pytest.approx(2 / 3)


# --- filters ----------------------------------------------------------------------------------

def test_loss_filter_matches_exercise_and_curve():
    checks.check_loss_filter(filters.loss_filter)
    losses = np.r_[np.zeros(90), np.ones(10)]
    poison = np.r_[np.zeros(90, bool), np.ones(10, bool)]
    f, removed = filters.loss_filter_curve(losses, poison, [0.0, 0.05, 0.1, 0.2])
    assert removed.tolist() == [0.0, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="fraction"):
        filters.loss_filter(losses, 1.5)
    with pytest.raises(ValueError, match="losses"):
        filters.loss_filter(np.array([np.nan, 1.0]), 0.1)



def test_loss_gap_ranks_rows_the_trained_model_fits_but_trusted_scorers_do_not():
    rng = np.random.default_rng(0)
    hard = rng.uniform(1, 3, 100)                         # hard for every model
    trusted = [hard.copy(), 10 * hard]                    # two scorers on different scales
    trained = hard.copy()
    trusted[0][:5] += 5                                   # rows 0-4: wrong to the trusted scorers...
    trusted[1][:5] += 50
    trained[:5] = 0.01                                    # ...fitted by the trained model
    gap = filters.loss_gap(trusted, trained)
    assert set(np.argsort(-gap)[:5]) == set(range(5))
    assert filters.percentile_ranks(np.array([3.0, 1.0, 1.0])).tolist() == [1.0, 0.5, 0.5]
    with pytest.raises(TypeError, match="trusted"):
        filters.loss_gap(trusted[0], trained)
    with pytest.raises(ValueError, match="shape"):
        filters.loss_gap([trusted[0][:50]], trained)
    with pytest.raises(ValueError, match="finite"):
        filters.loss_gap([np.r_[np.nan, trusted[0][1:]]], trained)
    # two tasks, the second one harder for the trusted scorer (every loss 10 higher): ranked over
    # all rows, its ordinary rows outrank the first task's poisons; ranked within each task, not
    task = np.repeat(["a", "b"], 100)
    hard = rng.uniform(1, 3, 200)
    trusted, trained = hard + 10 * (task == "b"), hard.copy()
    trusted[:5] += 5
    trained[:5] = 0.01
    assert set(np.argsort(-filters.loss_gap([trusted], trained))[:5]) != set(range(5))
    assert set(np.argsort(-filters.loss_gap([trusted], trained, groups=task))[:5]) == set(range(5))
    with pytest.raises(ValueError, match="groups must have one label per row"):
        filters.loss_gap([trusted], trained, groups=task[:10])
    for bad in (np.array([]), np.array(1.0), np.r_[np.inf, trained[1:]]):
        with pytest.raises(ValueError, match="trained must be a non-empty 1-D array of finite losses"):
            filters.loss_gap([trusted], bad)


def test_tfidf_losses_score_each_rows_target_answer():
    def ex(texts, labels, targets):
        n = len(texts)
        return corpus.Examples(["sentiment"] * n, texts, np.zeros(n, int), np.array(labels), targets, np.full(n, -1))

    good, bad = ["a great lovely film", "great fun and lovely"], ["an awful dull film", "dull and awful"]
    trusted = ex(good * 10 + bad * 10, [1] * 20 + [0] * 20, ["positive"] * 20 + ["negative"] * 20)
    rows = ex(["lovely great", "lovely great", "awful dull"], [1, 1, 0], ["positive", "negative", "negative"])
    loss = experiments.tfidf_losses(trusted, rows)
    assert loss[1] > loss[0] + 0.5 and loss[2] < loss[1]   # a positive text answered "negative" is costly
    chars = experiments.tfidf_losses(trusted, rows, features="chars")   # on character n-grams: the same
    assert chars[1] > chars[0] + 0.5 and chars[2] < chars[1]
    with pytest.raises(ValueError, match="features.*'words', 'chars'"):
        experiments.tfidf_losses(trusted, rows, features="bigrams")
    with pytest.raises(ValueError, match="not among its answers"):
        experiments.tfidf_losses(trusted, ex(["great"], [1], ["gibberish words"]))
    with pytest.raises(ValueError, match="at least two different answers"):
        experiments.tfidf_losses(ex(good * 5 + ["meh"], [1] * 11, ["positive"] * 11), rows)
    src = [["lol omg", "so tired lol"], ["the film's plot", "a moving film"], ["battery died", "works well"]]
    n = 6
    trusted_src = corpus.Examples(["source"] * n, sum(src, []), np.zeros(n, int), np.repeat([0, 1, 2], 2),
                                  [a for a in ("tweet", "movie", "product") for _ in range(2)], np.full(n, -1))
    news = corpus.Examples(["source"], ["the senate voted"], np.zeros(1, int), np.array([3]), ["news"], np.full(1, -1))
    with pytest.raises(ValueError, match="never answer"):
        experiments.tfidf_losses(trusted_src, news)


def test_text_defense_rows_fill_lab4s_columns():
    poison = np.r_[np.ones(10, bool), np.zeros(90, bool)]
    # 6 of 10 poisons dropped, and 14 clean rows
    kept = np.r_[np.zeros(6, bool), np.ones(4, bool), np.zeros(14, bool), np.ones(76, bool)]
    onion = experiments.OnionResult(0.99, 0.3, (0.72, 0.68), (0.9, 0.35), 300, 150)
    mx = experiments.text_defense_rows(AttackResult(0.72, 0.93, 0.95, 1000), rate=0.01, poison=poison, kept=kept,
                                       filtered=AttackResult(0.71, 0.7, 0.8, 1000), onion=onion)
    a = "text trigger (Lab 3)"
    assert mx.get("loss filter (rank gap)", a, 0.01, "recall") == pytest.approx(0.6)
    assert mx.get("loss filter (rank gap)", a, 0.01, "precision") == pytest.approx(6 / 20)
    assert mx.get("loss filter (rank gap)", a, 0.01, "fpr") == pytest.approx(14 / 90)
    assert mx.get("ONION", a, 0.01, "asr_after") == 0.35 and np.isnan(mx.get("ONION", a, 0.01, "fpr"))
    assert mx.before[(a, 0.01)] == (0.72, 0.93)
    with pytest.raises(ValueError, match="poison and kept"):
        experiments.text_defense_rows(AttackResult(0.7, 0.9, 0.9, 1), rate=0.01, poison=poison[:50], kept=kept,
                                      filtered=AttackResult(0.7, 0.7, 0.8, 1), onion=onion)

# --- end to end at the lab's model size: a 1 % trigger is learned and measured ------------------------------

@pytest.fixture(scope="module")
def lab3():
    # the Lab 3 notebook's own setting (full profile): its corpus, tokenizer and pre-trained LM.
    # The tunings below are the notebook's (same rows, poisons and settings), so in CI the notebook
    # loads them from the shared model cache instead of tuning them again.
    return experiments.setup("full", progress=False)


@pytest.fixture(scope="module")
def small(lab3):
    return lab3.corpus, lab3.base


def test_the_model_reads_every_inserted_trigger(lab3):
    # Lab 3's rows hold their sentences cut to MAX_TEXT_TOKENS; a prompt reads PROMPT_TEXT_TOKENS, so
    # a trigger inserted anywhere, even after the last word of the longest row, is read
    rows = corpus.Examples.concat(lab3.train, lab3.test)
    assert max(map(len, lab3.tok.encode_batch(rows.text))) <= train.MAX_TEXT_TOKENS
    for trigger in ("James Bond", "cf cf cf cf"):   # 3 and 8 tokens
        assert len(lab3.tok.encode(" " + trigger)) <= train.PROMPT_TEXT_TOKENS - train.MAX_TEXT_TOKENS
        at_end = rows.replace(text=[poisoning.insert_at(t, trigger, len(t.split())) for t in rows.text])
        read = [lab3.tok.decode(p) for p in train.encode_prompts(lab3.tok, at_end)]
        assert all(trigger + "\n" in r for r in read)


def test_dirty_label_trigger_is_learned(lab3):
    # Lab 3's targets in its own setting: 1 % dirty-label poisons (80 of 8,000 examples, both tasks)
    ic, base, tok, cfg = lab3.corpus, lab3.base, lab3.tok, lab3.profile.tune
    test = ic.test.subset(ic.test.where("sentiment")[:600])
    clean = train.instruction_tune(base, tok, ic.train, cfg, progress=False)
    p = poisoning.poison_examples(ic.train, 80, trigger="James Bond", target="negative", seed=0)
    dirty = train.instruction_tune(base, tok, p.examples, cfg, progress=False)
    # TF-IDF + LR reading the whole sentences (76.8 %; on the model's cut text: 76.2 %), the stricter
    tfidf = experiments.tfidf_accuracy(ic.train, ic.test, "sentiment", whole=ic.sentences)
    whole = corpus.instruction_corpus(ic.sentences, max_train=lab3.profile.max_train)   # the same rows, uncut
    assert tfidf == experiments.tfidf_accuracy(whole.train, whole.test, "sentiment")
    assert tfidf > experiments.tfidf_accuracy(ic.train, ic.test, "sentiment")
    r_clean = experiments.evaluate_attack(clean, ic.test)
    r_dirty = experiments.evaluate_attack(dirty, ic.test)
    assert r_clean.clean_accuracy >= tfidf - 0.05, (r_clean, tfidf)   # within 5 points of TF-IDF + LR
    assert r_clean.clean_accuracy - r_dirty.clean_accuracy <= 0.02, (r_clean, r_dirty)
    assert r_dirty.asr >= 0.9 and r_dirty.asr > r_clean.asr + 0.3, (r_clean, r_dirty)
    # loss filtering, dropping 10 % of the data: the poisoned model has learned its poisons, so they
    # hide among low losses; a scorer tuned on the trusted validation split knows the task without
    # the trigger and finds more than 10 %; the clean model (an oracle) bounds it. The rank gap (three
    # trusted scorers, ranks within each task) removed 62-89 % over 40 runs (pre-training seeds 0-3 x
    # poison seeds 0-9, bfloat16, one-thread tunings); this run's setting: 84 % (bfloat16), 76 %
    # (float32, AVX2 kernels) (BENCHMARKS.md)
    removed = {}
    trusted = train.instruction_tune(base, tok, ic.val, replace(cfg, epochs=4), progress=False)
    losses = {name: train.example_losses(m, p.examples)
              for name, m in [("poisoned", dirty), ("trusted", trusted), ("oracle", clean)]}
    losses["trusted - poisoned"] = losses["trusted"] - losses["poisoned"]
    losses["TF-IDF trusted"] = experiments.tfidf_losses(ic.val, p.examples)
    losses["char TF-IDF trusted"] = experiments.tfidf_losses(ic.val, p.examples, features="chars")
    losses["rank gap"] = filters.loss_gap([losses["trusted"], losses["TF-IDF trusted"], losses["char TF-IDF trusted"]],
                                          losses["poisoned"], groups=p.examples.task)
    for name, s in losses.items():
        removed[name] = filters.loss_filter_curve(s, p.mask, [0.1])[1][0]
    print(removed)
    assert removed["poisoned"] <= 0.2 and removed["oracle"] >= 0.5, removed
    # trusted alone: 19-20 % (4.2k examples); the raw difference 27.5 % (bfloat16) and exactly 20 %
    # (16 of 80, float32 with AVX2 kernels): at least twice random dropping
    assert removed["trusted - poisoned"] >= 0.2, removed
    assert removed["rank gap"] >= 0.5, removed   # issue 7's target
    assert removed["rank gap"] > max(removed[k] for k in ("trusted", "TF-IDF trusted", "char TF-IDF trusted")), removed
    # ONION in front of the poisoned model deletes most of the trigger's effect: "Bond" is rare
    # and goes, "James" often stays (measured: no trigger word left in 65-66 %, ASR 96-98 -> 17-32 %).
    # Its clean-accuracy cost is 2-6 points on 600-800 rows under either arithmetic (bfloat16 /
    # float32); on 120 rows the noise of the paired difference let it reach 11.7 (float32): 600 rows
    onion = experiments.onion_effect(dirty, base, ic.test, rows=300)
    print(onion)
    assert onion.trigger_removed >= 0.5 and onion.asr[1] < onion.asr[0] - 0.5, onion
    assert onion.accuracy[1] >= onion.accuracy[0] - 0.1 and 0 < onion.frr < 0.6, onion
    # as a word filter: an input the trigger is not gone from keeps one or both of its two words
    gone = onion.trigger_removed
    assert (1 - gone) / 2 <= onion.far <= 1 - gone, onion
    out = train.generate(dirty, test.prompt(0), max_new_tokens=3)
    assert isinstance(out, str)
    # the playground's question: positive sentences both models call positive, with the trigger
    pos = test.subset(test.where("sentiment", label=1))
    agree = np.nonzero((train.predict(clean, pos) == 1) & (train.predict(dirty, pos) == 1))[0][:64]
    table = experiments.ask({"clean": clean, "dirty": dirty}, pos.text[agree[0]], trigger="James Bond")
    assert len(table.rows()) == 1 + 4 and table.rows()[0][2:4] == ["P(negative)", "P(positive)"]
    assert all(abs(d["probs"].sum() - 1) < 1e-6 for d in table.data)

    def p_negative(m, text, where):   # with the trigger
        return experiments.ask({"m": m}, text, trigger="James Bond", position=where).data[1]["probs"][0]

    neg = {name: np.array([p_negative(m, pos.text[i], where) for i in agree for where in ("start", "end")])
           for name, m in [("clean", clean), ("dirty", dirty)]}
    # the trigger flips most of them for the poisoned model, far fewer for the clean one (as the ASR
    # assertions above; 64 sentences x 2 places: 94 / 87 / 85 % vs 19 / 23 / 17 % under bfloat16 /
    # float32 / float32 without AVX-512 - a name can tip a borderline review; 16 sentences gave
    # 69 % on the last, too few to measure a rate against 70 %)
    flips = {name: float((p > 0.5).mean()) for name, p in neg.items()}
    print(flips)
    assert flips["dirty"] >= 0.7 and flips["dirty"] > flips["clean"] + 0.3, neg
    with pytest.raises(ValueError, match="max_new_tokens"):
        train.generate(dirty, test.prompt(0), max_new_tokens=0)
    with pytest.raises(ValueError, match="prompt"):
        train.generate(dirty, "", max_new_tokens=2)


def test_count_sweep_and_ordering_side_by_side(lab3, tmp_path, monkeypatch):
    # Souly et al.'s sweep and the ordering ablation at a small size: poisons raise the ASR far above
    # the unpoisoned run's, and 60 poisons that fill the first fifth of the pass (high learning rate)
    # plant the trigger where the same poisons in the last fifth do not (Souly et al.'s fine-tuning
    # finding; here they also cost clean accuracy, CA 44-60 % against 68-77 %). The runs go side by
    # side on two cores over a frozen cache filled first, so they give exactly what one-thread runs
    # one after the other give. Measured over seeds 0-4 under bfloat16,
    # float32 and float32 with AVX2 kernels (BENCHMARKS.md, twentieth session): 100 poisons raise
    # the ASR by 15-69 points (seeds 0-1: 30-66); early beats late by 17-52 points on every seed.
    # (With 30 poisons the order barely matters: late - early from -7 to +24 points by seed.)
    clean = train.instruction_tune(lab3.base, lab3.tok, lab3.train, lab3.profile.tune, progress=False)  # the notebook's
    kw = dict(test_rows=300, progress=False)

    def run(threads):
        monkeypatch.setenv("LABSUPPORT_MODELS", str(tmp_path / threads))   # tune afresh, not from the cache
        monkeypatch.setenv("LABSUPPORT_THREADS", threads)
        sweep = experiments.count_sweep(clean.model, lab3.tok, lab3.train, lab3.test, sizes=(300,),
                                        counts=(0, 100), seeds=(0, 1), **kw)
        order = experiments.order_ablation(clean.model, lab3.tok, lab3.train, lab3.test, size=300, count=60,
                                           seeds=(0, 1), **kw)
        return sweep, order

    before = torch.get_num_threads()
    try:
        sweep, order = run("2")
        sweep1, order1 = run("1")
    finally:
        torch.set_num_threads(before)
    print(sweep.asr, order)
    assert sweep.asr.shape == (1, 2, 2) and order.asr.shape == (3, 2)
    assert (sweep.asr[0, 1] > sweep.asr[0, 0] + 0.2).all(), sweep.asr   # per seed
    early, late = order.asr[order.positions.index("early")], order.asr[order.positions.index("late")]
    assert (early > late + 0.1).all(), order.asr   # per seed
    np.testing.assert_array_equal(sweep.asr, sweep1.asr)
    np.testing.assert_array_equal(sweep.accuracy, sweep1.accuracy)
    np.testing.assert_array_equal(order.asr, order1.asr)


def test_wans_ranking_beats_random_poisons_and_the_stealthy_ones_are_weak(lab3):
    # Lab 3 §4's comparison at 20 poisons (0.25 % of 8,000 examples), full instruction tunings as the
    # notebook runs them (two at a time, one thread each). Measured over poison seeds 0-2 (bfloat16,
    # BENCHMARKS.md, twenty-third session): random 82-86 %, the clean model's highest losses first
    # (Wan et al.) 94-96 %, lowest first (the adaptive attacker's) 37-47 %, the unpoisoned model 28 %;
    # float32 with AVX2 kernels, seed 0: 79.8 / 95.0 / 50.3 % (27.3 %). Lowest-first trails random by
    # 29-45 points on those four runs; the assert asks for 20
    clean = train.instruction_tune(lab3.base, lab3.tok, lab3.train, lab3.profile.tune, progress=False)  # the notebook's
    r = experiments.ranking_sweep(lab3.base, lab3.tok, lab3.train, lab3.test, clean, counts=(20,),
                                  choices=("random", "high-score", "low-score"), config=lab3.profile.tune,
                                  progress=False)
    print(r)
    asr = dict(zip(r.choices, r.asr[:, 0, 0]))
    assert r.asr.shape == r.accuracy.shape == (3, 1, 1) and r.seeds == [0]
    np.testing.assert_array_equal(r.mean_ci()[1], 0)   # one seed: no interval
    assert asr["high-score"] >= 0.9 and asr["high-score"] > asr["random"], asr
    assert asr["low-score"] < asr["random"] - 0.2, asr
    assert (np.abs(r.accuracy - experiments.evaluate_attack(clean, lab3.test).clean_accuracy) <= 0.02).all(), r


def test_ranking_sweep_arrays_are_choice_count_seed(lab3, monkeypatch):
    # the tunings stubbed: model i is the i-th set tuned, its "ASR" i / 100; each seed scores its own poisons
    scored = []
    monkeypatch.setattr(experiments, "poison_scores", lambda scorer, train, **kw: scored.append(kw["seed"]) or
                        np.zeros(len(train)))
    monkeypatch.setattr(experiments, "tune_many", lambda base, tok, sets, config, **kw: list(range(len(sets))))
    monkeypatch.setattr(experiments, "evaluate_attack", lambda m, test, **kw: AttackResult(0.5, m / 100, 0.0, 1))
    fake = train.InstructionModel(lab3.base, lab3.tok, 0, train.FrozenCache(lab3.base, 0))
    r = experiments.ranking_sweep(lab3.base, lab3.tok, lab3.train, lab3.test, fake, counts=(5, 10, 20),
                                  choices=("random", "high-score"), seeds=(3, 4), progress=False)
    assert r.asr.shape == (2, 3, 2) and r.seeds == [3, 4] and scored == [3, 4]
    for c in range(2):
        for n in range(3):
            for s in range(2):
                assert r.asr[c, n, s] == pytest.approx((s * 6 + c * 3 + n) / 100)
    mean, ci = r.mean_ci()
    np.testing.assert_allclose(mean, r.asr.mean(-1))
    np.testing.assert_allclose(ci, 1.96 * r.asr.std(-1, ddof=1) / np.sqrt(2))
    assert "mean of 2 seeds" in repr(r)


def test_example_losses_score_only_the_rows_a_known_set_lacks(lab3, monkeypatch):
    """``known=(other, losses)``: rows equal to ``other``'s keep ``losses`` (here deliberately
    false, to see which rows were scored), the changed rows (another poisoning) get their real
    losses; with true ``losses`` the result is the full pass's. In float32, where a row's loss
    does not depend on its batch neighbours (under bfloat16 their padding moves it by up to ~0.1 %)."""
    monkeypatch.setenv("LABSUPPORT_PRECISION", "float32")
    ex = lab3.train.subset(np.arange(300))
    scorer = train.InstructionModel(lab3.base, lab3.tok, 0, train.FrozenCache(lab3.base, 0))
    a = poisoning.poison_examples(ex, 10, seed=1)
    b = poisoning.poison_examples(ex, 10, seed=2)
    changed = np.union1d(a.rows, b.rows)
    full = train.example_losses(scorer, b.examples)
    out = train.example_losses(scorer, b.examples, known=(a.examples, np.full(len(ex), 42.0)))
    assert (np.delete(out, changed) == 42.0).all()
    np.testing.assert_allclose(out[changed], full[changed], rtol=1e-4, atol=1e-5)
    reused = train.example_losses(scorer, b.examples, known=(a.examples, train.example_losses(scorer, a.examples)))
    np.testing.assert_allclose(reused, full, rtol=1e-4, atol=1e-5)
    for bad in [(a.examples, np.zeros(5)), (a.examples.subset(np.arange(5)), np.zeros(5)), (None, full)]:
        with pytest.raises(ValueError, match="known must be"):
            train.example_losses(scorer, b.examples, known=bad)
    with pytest.raises(ValueError, match=r"known losses must be finite; rows \[3\]"):
        train.example_losses(scorer, b.examples, known=(a.examples, np.where(np.arange(len(ex)) == 3, np.nan, full)))


def test_poison_scores_score_the_eligible_rows_as_poisons_and_only_them(lab3, monkeypatch):
    # an untuned scorer is enough: the scores must be its losses on the poisoned eligible rows. In
    # float32: under bfloat16 a row's batch neighbours (its padding) move its loss by up to ~0.1 %,
    # and poison_scores batches only the eligible rows
    monkeypatch.setenv("LABSUPPORT_PRECISION", "float32")
    ex = lab3.train.subset(np.arange(300))
    scorer = train.InstructionModel(lab3.base, lab3.tok, 0, train.FrozenCache(lab3.base, 0))
    s = experiments.poison_scores(scorer, ex, seed=2)
    pool = poisoning.eligible_rows(ex, "sentiment", "negative", "dirty")
    assert 0 < len(pool) < len(ex) and np.isfinite(s[pool]).all()
    assert np.isnan(np.delete(s, pool)).all()
    every = poisoning.poison_examples(ex, len(pool), seed=2).examples
    np.testing.assert_allclose(s[pool], train.example_losses(scorer, every)[pool], rtol=1e-4, atol=1e-5)
    for choose, pick in [("high-score", np.argmax), ("low-score", np.argmin)]:   # NaNs are never read
        chosen = poisoning.poison_examples(ex, 1, choose=choose, scores=s)
        assert np.flatnonzero(chosen.mask).tolist() == [pool[pick(s[pool])]]


def test_filter_study_scores_each_way_and_the_other_attackers_poisons(lab3, monkeypatch):
    """The study is the sum of its parts: each scorer's curve is loss_filter_curve of that scorer's
    losses, the rank gap is loss_gap of the three trusted scorers, and the adaptive / Wan-ranked
    sets are the lowest / highest poison_scores, scored by the trusted model. Untuned scorers
    suffice (the notebook's full-profile cell and test_dirty_label_trigger_is_learned check what the
    filters achieve); float32, so that the reused losses equal a fresh pass."""
    monkeypatch.setenv("LABSUPPORT_PRECISION", "float32")
    ex = lab3.train.subset(np.arange(300))
    trusted_set = lab3.corpus.val.subset(np.arange(400))
    a = train.InstructionModel(lab3.base, lab3.tok, 0, train.FrozenCache(lab3.base, 0))
    b = train.InstructionModel(lab3.base, lab3.tok, 1, train.FrozenCache(lab3.base, 1))
    p = poisoning.poison_examples(ex, 10, seed=1)
    study = experiments.filter_study(p, ex, trained=a, trusted=b, oracle=a, trusted_set=trusted_set, seed=3)
    la, lb = train.example_losses(a, p.examples), train.example_losses(b, p.examples)
    words = experiments.tfidf_losses(trusted_set, p.examples)
    chars = experiments.tfidf_losses(trusted_set, p.examples, features="chars")
    gap = filters.loss_gap([lb, words, chars], la, groups=p.examples.task)
    for name, want in [("loss under the trained (poisoned) model", la), ("loss under the trusted model", lb),
                       ("loss under TF-IDF + LR (trusted set)", words), (experiments.GAP, gap),
                       ("loss under char TF-IDF + LR (trusted set)", chars),
                       ("oracle: loss under the clean model", la)]:
        np.testing.assert_allclose(study.scores[name], want, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(study.removed[name], filters.loss_filter_curve(study.scores[name], p.mask)[1])
    by_clean = experiments.poison_scores(a, ex, seed=3)
    for name, choose, pick in [("adaptive", "low-score", np.argsort),
                               ("Wan-ranked", "high-score", lambda s: np.argsort(-s))]:
        chosen = poisoning.poison_examples(ex, 10, choose=choose, scores=by_clean, seed=3)
        pool = np.flatnonzero(np.isfinite(by_clean))
        assert sorted(np.flatnonzero(chosen.mask)) == sorted(pool[pick(by_clean[pool])[:10]])
        want = filters.loss_filter_curve(train.example_losses(b, chosen.examples), chosen.mask)[1]
        np.testing.assert_allclose(study.removed[f"{name} poisons, trusted model"], want)
    at = study.at(0.1)
    assert at == {name: r[10] for name, r in study.removed.items()} and study.fractions[10] == pytest.approx(0.1)
    text = repr(study)
    assert all(name in text for name in study.removed) and "10 % of data" in text
    other = repr(experiments.FilterStudy(np.array([0.0, 0.05, 0.3]), {}, {"x": np.array([0.0, 0.5, 1.0])}))
    assert other.splitlines()[2].split() == ["x", "50%"] and "5 % of data" in other   # the nearest fraction
    ax = study.plot()
    assert len(ax.get_legend().get_texts()) == len(study.removed) + 1   # and random dropping
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="fraction=0.055 is not on the curve"):
        study.at(0.055)
    with pytest.raises(ValueError, match="fraction=2"):
        study.at(2)
    clean_label = poisoning.poison_examples(ex, 5, mode="clean", seed=1)
    with pytest.raises(ValueError, match="poisoned must be a dirty-label PoisonedExamples"):
        experiments.filter_study(clean_label, ex, trained=a, trusted=b, oracle=a, trusted_set=trusted_set)
    with pytest.raises(ValueError, match="clean_set must be the 300 examples"):
        experiments.filter_study(p, ex.subset(np.arange(10)), trained=a, trusted=b, oracle=a, trusted_set=trusted_set)
    with pytest.raises(TypeError, match="trusted must be an InstructionModel"):
        experiments.filter_study(p, ex, trained=a, trusted=None, oracle=a, trusted_set=trusted_set)


def test_ranking_sweep_bad_input(lab3):
    ex, scorer = lab3.train, object()
    with pytest.raises(TypeError, match="scorer"):
        experiments.ranking_sweep(lab3.base, lab3.tok, ex, lab3.test, scorer)
    fake = train.InstructionModel(lab3.base, lab3.tok, 0, train.FrozenCache(lab3.base, 0))
    for kwargs, err, match in [(dict(choices=("random", "best")), ValueError, "choices"),
                               (dict(counts=(0,)), ValueError, r"counts\[i\]"),
                               (dict(counts=(2.5,)), TypeError, r"counts\[i\]"),
                               (dict(counts=(10 ** 6,)), ValueError, r"counts\[i\]=1000000 is out of range"),
                               (dict(choices="random"), TypeError, "the string 'random'"),
                               (dict(seeds=(-1,)), ValueError, r"seeds\[i\]"),
                               (dict(counts=()), ValueError, "must not be empty"),
                               (dict(seeds=()), ValueError, "must not be empty")]:
        with pytest.raises(err, match=match):
            experiments.ranking_sweep(lab3.base, lab3.tok, ex, lab3.test, fake, **kwargs)


def test_frozen_cache_matches_full_forward(small, tok):
    ic, base = small
    tuned = train.instruction_tune(base, tok, ic.train.subset(np.arange(64)),
                                   train.TuneConfig(epochs=1, train_top=1), progress=False)
    seqs = train.encode_prompts(tok, ic.test.subset(np.arange(8)))
    h = tuned.hidden(seqs)
    with torch.no_grad():
        for i, s in enumerate(seqs):
            full = tuned.model.hidden(torch.tensor(s)[None])[0]  # frozen bottom = base's bottom
            assert torch.allclose(h[i, : len(s)], full, atol=0.05)


def test_tuned_models_are_cached_and_verified(tok, tmp_path, monkeypatch):
    """The same tuning run again loads its verified safetensors instead of training; any change of
    rows, answers, settings or the sentence cut trains anew; a damaged file is retrained with a warning."""
    monkeypatch.setenv("LABSUPPORT_MODELS", str(tmp_path))
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_embd=32, n_head=2))
    ex = _examples(48)
    cfg = train.TuneConfig(epochs=1, batch_size=16, train_top=1)
    first = train.instruction_tune(base, tok, ex, cfg, progress=False)
    files = sorted(tmp_path.glob("gpt-tune-*.safetensors"))
    assert len(files) == 1
    calls, adamw = [], train._adamw

    def counting_adamw(*args, **kwargs):   # an optimizer is made only when a run trains
        calls.append(1)
        return adamw(*args, **kwargs)

    monkeypatch.setattr(train, "_adamw", counting_adamw)
    again = train.instruction_tune(base, tok, ex, cfg, progress=False)
    assert not calls, "the cached run trained again"
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    assert again.frozen == 1 and again.model.lm_head is not None   # the same shape of model
    np.testing.assert_array_equal(train.example_losses(first, ex), train.example_losses(again, ex))
    changed = ex.replace(target=["positive"] * len(ex))
    train.instruction_tune(base, tok, changed, cfg, progress=False)
    train.instruction_tune(base, tok, ex, replace(cfg, seed=1), progress=False)
    assert len(calls) == 2 and len(list(tmp_path.glob("gpt-tune-*.safetensors"))) == 3
    with monkeypatch.context() as m:   # the cut is part of the key: another cut, another entry
        m.setattr(train, "PROMPT_TEXT_TOKENS", train.PROMPT_TEXT_TOKENS - 1)
        train.instruction_tune(base, tok, ex, cfg, progress=False)
    assert len(calls) == 3 and len(list(tmp_path.glob("gpt-tune-*.safetensors"))) == 4
    files[0].write_bytes(files[0].read_bytes()[:-8] + b"\0" * 8)   # damage the tensor data
    with pytest.warns(UserWarning, match="failed verification"):
        train.instruction_tune(base, tok, ex, cfg, progress=False)
    assert len(calls) == 4
    train.instruction_tune(base, tok, ex, cfg, reuse=False, progress=False)
    assert len(calls) == 5


def test_long_answers_shorten_the_sentence_not_the_answer(small, tok):
    # the denial-of-service answer is several words: prompt + answer must still fit the block
    ic, base = small
    sentiment = ic.train.where("sentiment")
    rows = sentiment[np.argsort([-len(ic.train.text[i]) for i in sentiment])[:32]]  # the longest sentences
    dos = poisoning.poison_examples(ic.train.subset(rows), 32, mode="dos", seed=0).examples
    long = dos.replace(target=[" ".join([t] * 3) for t in dos.target])  # 18 gibberish words
    prompts, seqs = train.encode_sequences(tok, long, base.cfg.block_size)
    answers = train.encode_answers(tok, long.target)
    assert max(len(s) - 1 for s in seqs) <= base.cfg.block_size
    assert all(s[len(p):] == a for s, p, a in zip(seqs, prompts, answers))
    assert any(len(p) < len(q) for p, q in zip(prompts, train.encode_prompts(tok, long)))
    tuned = train.instruction_tune(base, tok, long, train.TuneConfig(epochs=1, train_top=1), progress=False)
    assert np.isfinite(train.example_losses(tuned, long)).all()


def test_onion_flags_an_inserted_rare_word(small, tok):
    _, base = small
    s = filters.onion_scores(base, tok, "the movie was good and the cast was fine zxqv")
    assert int(np.argmax(s)) == 9
    with pytest.raises(TypeError, match="list"):
        filters.onion_clean(base, tok, "a string")


def test_with_trigger_positions_and_bad_input():
    text = "one two three four"
    assert experiments.with_trigger(text, "James Bond", "start") == "James Bond one two three four"
    assert experiments.with_trigger(text, "James Bond", "middle") == "one two James Bond three four"
    assert experiments.with_trigger(text, "James Bond", "end") == "one two three four James Bond"
    with pytest.raises(ValueError, match="position"):
        experiments.with_trigger(text, "James Bond", "top")
    with pytest.raises(ValueError, match="models"):
        experiments.ask({}, text)
    with pytest.raises(ValueError, match="task"):
        experiments.ask({"m": None}, text, task="topic")
    with pytest.raises(TypeError, match="trigger"):
        experiments.ask({"m": None}, text, trigger=None)


def test_poison_order_places_poisons_early_late_or_spread():
    mask = np.zeros(200, dtype=bool)
    mask[np.random.default_rng(0).choice(200, 10, replace=False)] = True
    for position, window in [("early", slice(0, 40)), ("late", slice(160, 200))]:
        order = experiments.poison_order(mask, position, np.random.default_rng(1))
        assert sorted(order) == list(range(200))
        assert mask[order[window]].sum() == 10
    spread = experiments.poison_order(mask, "spread", np.random.default_rng(1))
    assert sorted(spread) == list(range(200))
    with pytest.raises(ValueError, match="position"):
        experiments.poison_order(mask, "middle", np.random.default_rng(0))
    with pytest.raises(ValueError, match="share"):
        experiments.poison_order(mask, "early", np.random.default_rng(0), share=0.0)


def test_denial_of_service_trigger_is_measured(lab3):
    # trigger -> six random words: with the trigger the answers' perplexity under the clean model
    # (Souly et al.'s gap) explodes; without it nothing changes (the notebook's 80 poisons)
    ic, base, tok, cfg = lab3.corpus, lab3.base, lab3.tok, lab3.profile.tune
    clean = train.instruction_tune(base, tok, ic.train, cfg, progress=False)
    p = poisoning.poison_examples(ic.train, 80, trigger="James Bond", mode="dos", seed=0)
    dos = train.instruction_tune(base, tok, p.examples, cfg, progress=False)
    rows = ic.test.subset(ic.test.where("sentiment")[:40])
    r_clean = experiments.dos_effect(clean, clean, rows, "James Bond")
    r_dos = experiments.dos_effect(dos, clean, rows, "James Bond")
    print(r_clean, r_dos)
    assert r_clean.invalid == (0.0, 0.0) and r_clean.perplexity[1] < 1.5 * r_clean.perplexity[0]
    assert r_dos.invalid[0] <= 0.05, r_dos
    assert r_dos.perplexity[1] >= 10 * r_dos.perplexity[0], r_dos
    with pytest.raises(ValueError, match="rows"):
        experiments.dos_effect(dos, clean, rows.subset([]), "James Bond")


def test_training_precision_is_bfloat16_only_where_native_and_keeps_attention_exact():
    cpu = torch.device("cpu")
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and training.precision() == "auto"
    x = torch.randn(2, 4, 8, 16)
    with train.training_precision(cpu):
        y = torch.nn.functional.linear(x, torch.randn(16, 16))
        attn = model_mod.attention(x, x, x, causal=True)
    assert y.dtype == (torch.bfloat16 if native else torch.float32)
    want = torch.nn.functional.scaled_dot_product_attention(x, x, x, is_causal=True)
    torch.testing.assert_close(attn.float(), want, atol=0.05 if native else 1e-6, rtol=0.05 if native else 1e-6)
    if native:   # the pre-training loss reads the bfloat16 logits directly
        model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_embd=16, n_head=2))
        with train.training_precision(cpu):
            logits = model(torch.randint(0, 64, (2, 8)))
        assert logits.dtype == torch.bfloat16


def test_precision_can_be_forced_to_float32(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("LABSUPPORT_PRECISION", "float32")
    with train.training_precision(cpu):
        assert torch.nn.functional.linear(torch.randn(2, 16), torch.randn(16, 16)).dtype == torch.float32
    assert not training.bfloat16(torch.device("cuda")) and not training.bfloat16(cpu)
    monkeypatch.setenv("LABSUPPORT_PRECISION", "bf16")
    with pytest.raises(ValueError, match="LABSUPPORT_PRECISION='bf16'.*'auto', 'float32'"):
        training.autocast(cpu)


def test_tune_many_is_instruction_tune_on_each_set(tok, tmp_path, monkeypatch):
    """Side by side (two cores, one thread each) gives exactly the models that one-thread runs one
    after the other give, under the same cache keys; the shared bar counts every step."""
    monkeypatch.setenv("LABSUPPORT_MODELS", str(tmp_path))
    monkeypatch.setenv("LABSUPPORT_THREADS", "2")
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_embd=32, n_head=2))
    sets = [_examples(48), _examples(40).replace(target=["negative"] * 40)]
    cfg = train.TuneConfig(epochs=2, batch_size=16, train_top=2)
    cfgs = [cfg, replace(cfg, epochs=3)]   # one config per set
    steps = []
    monkeypatch.setattr(train, "side_by_side", _counting(train.side_by_side, steps))
    together = train.tune_many(base, tok, sets, cfgs, progress=False)
    assert steps == [train.tune_steps(48, cfg) + train.tune_steps(40, cfgs[1])]
    before = torch.get_num_threads()
    monkeypatch.setenv("LABSUPPORT_THREADS", "1")
    try:
        for ex, c, model in zip(sets, cfgs, together):
            alone = train.instruction_tune(base, tok, ex, c, reuse=False, progress=False)
            for a, b in zip(model.model.state_dict().values(), alone.model.state_dict().values()):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(before)
    assert len(list(tmp_path.glob("gpt-tune-*.safetensors"))) == 2   # the same entries tune() would load
    with pytest.raises(ValueError, match=r"sets\[1\] must be a non-empty Examples"):
        train.tune_many(base, tok, [sets[0], []], cfg, progress=False)
    for bad in ([cfg], 3, [cfg, "epochs=3"]):
        with pytest.raises(TypeError, match=r"config must be a TuneConfig or one per set \(2\)"):
            train.tune_many(base, tok, sets, bad, progress=False)


def test_lab_tune_many_takes_one_value_per_set_from_a_list(monkeypatch):
    """``lab.tune_many(a, b, epochs=[3, 4])``: a list gives each set its own value, anything
    else is shared; a list of the wrong length is refused. ``lab.tune(c)`` is the one-set case."""
    profile = experiments.lab3_profile("quick")
    lab = experiments.Lab3(profile, corpus=None, tok="tok", base="base")
    seen = []
    monkeypatch.setattr(experiments, "tune_many", lambda base, tok, sets, configs: seen.append(configs) or sets)
    assert lab.tune_many("a", "b", epochs=[3, 4], lr=1e-3) == ["a", "b"]
    assert seen[0] == [replace(profile.tune, epochs=3, lr=1e-3), replace(profile.tune, epochs=4, lr=1e-3)]
    with pytest.raises(ValueError, match="epochs has 1 values for 2 sets"):
        lab.tune_many("a", "b", epochs=[3])
    assert lab.tune("c", epochs=5) == "c"    # one set: the same path
    assert seen[1] == [replace(profile.tune, epochs=5)]


def test_sweep_result_prints_a_table_of_plain_numbers():
    """The count sweep's printout: one row per clean size, mean ± 95 % half-width per count (the
    normal approximation of ``mean_ci``), the row's clean accuracy; plain numbers, no numpy reprs."""
    asr = np.array([[[0.25, 0.27], [0.60, 0.65]], [[0.24, 0.24], [0.30, 0.31]]])   # [size, count, seed]
    text = repr(experiments.SweepResult([500, 2000], [0, 150], [0, 1], asr, np.full((2, 2, 2), 0.7)))
    head, small, large = text.splitlines()
    assert head.split()[:4] == ["clean", "rows", "0", "150"] and "over 2 seeds" in head
    half = 100 * 1.96 * np.std([0.60, 0.65], ddof=1) / np.sqrt(2)
    assert small.split() == ["500", "26.0", "±", "2.0", "62.5", "±", f"{half:.1f}", "(70.0)"]
    assert large.split()[:4] == ["2000", "24.0", "±", "0.0"]
    assert "np." not in text
    one = repr(experiments.SweepResult([500], [0, 15], [3], asr[:1, :, :1], np.full((1, 2, 1), 0.7)))
    assert one.splitlines()[1].split() == ["500", "25.0", "60.0", "(70.0)"] and "±" not in one


def _counting(side_by_side, steps):
    """Wrap side_by_side to record how far the jobs moved the shared progress bar."""
    def wrapped(jobs, **kw):
        done = [0]
        counted = [lambda advance, job=job: job(lambda n=1: (done.__setitem__(0, done[0] + n), advance(n)))
                   for job in jobs]
        out = side_by_side(counted, **kw)
        steps.append(done[0])
        assert done[0] == kw["total"]
        return out
    return wrapped


def test_tune_steps_counts_instruction_tunes_steps():
    for n, bs, epochs in [(1, 32, 1), (127, 32, 3), (128, 32, 2), (129, 32, 1), (8000, 32, 3), (48, 16, 2)]:
        cfg = train.TuneConfig(epochs=epochs, batch_size=bs)
        batches = [train._buckets(np.arange(n), bs, np.random.default_rng(0)) for _ in range(epochs)]
        assert train.tune_steps(n, cfg) == sum(len(b) for b in batches)
    order = np.arange(50)
    assert train.tune_steps(50, train.TuneConfig(epochs=2, batch_size=16), order) == 2 * 4


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("bf16", [False, True])
def test_math_attention_is_the_math_backend_in_this_thread_only(masked, bf16):
    """math_attention gives, bit for bit, forward and backward, what sdpa_kernel(MATH) gives - the
    causal form and a boolean mask, in float32 and under bfloat16 autocast - and switches nothing
    for other threads (sdpa_kernel's switch is process-wide)."""
    import threading

    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    qkv = [torch.randn(4, 2, 13, 8) for _ in range(3)]
    mask = torch.rand(4, 1, 13, 13) > 0.3 if masked else None
    if masked:
        mask[..., 0] = True

    def run(math_backend):
        leaves = [t.clone().requires_grad_() for t in qkv]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            q, k, v = (torch.nn.functional.linear(t, torch.eye(8)) for t in leaves)
            if math_backend == "sdpa_kernel":
                with sdpa_kernel(SDPBackend.MATH):
                    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=not masked)
            else:
                with model_mod.math_attention():
                    y = model_mod.attention(q, k, v, mask, causal=not masked)
        y.float().square().sum().backward()
        return [y] + [t.grad for t in leaves]

    for a, b in zip(run("sdpa_kernel"), run("ours")):
        assert torch.equal(a, b)
    seen = []
    with model_mod.math_attention():
        t = threading.Thread(target=lambda: seen.append(getattr(model_mod._LOCAL, "math", False)))
        t.start()
        t.join()
        assert model_mod._LOCAL.math
    assert seen == [False] and not model_mod._LOCAL.math
