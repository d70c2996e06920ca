"""The LLaMA generation engine and the copy-or-tag constraint, on a tiny random LLaMA built here.

The model has float64 weights so that batching, padding and cache splits cannot flip a near-tie:
the engine must then give exactly the tokens of Hugging Face ``generate``, one prompt at a time.
"""

from __future__ import annotations

import random
import re

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from recommender.extractors.llama.constrained import CopyOrTag, constraint_for, token_table  # noqa: E402
from recommender.extractors.llama.generation import (  # noqa: E402
    Generation,
    Prompt,
    TransformersEngine,
    finish,
    plain_generate,
)
from recommender.extractors.llama.task import OutputLanguage  # noqa: E402

LABELS = ("problem", "test", "drug", "treatment")
PREFIX = "### Task:\nMark up the entities of the input text.\n\n### Input Text:"
CORPUS = [
    "She had used Cutivate cream in the past for the atopic dermatitis with good results .",
    "Blood pressure 120/80 , temperature 38.5 °C , heart rate 90 .",
    'Use <span class="problem"> to denote a medical problem . </span> <EOS>',
    "The patient denies chest pain or shortness of breath . Aspirin 81 mg daily .",
    "### Output Text: ### Input Text: ### Task: Mark up the entities of the input text .",
]
# sources with '<', half tags and non-ASCII; never a whole tag (that case has its own tests)
WORDS = ("the", "patient", "had", "pain", "in", "chest", "aspirin", "mg", "daily", "38.5", "°C", "µg")
WORDS += ("café", "naïve", "😀", "<", "<span", "</span", "a<b", "x>y", "EOS>", ".", ",", "(", ")")


def byte_level_tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def byte_fallback_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A sentencepiece-style tokenizer (``▁`` for spaces, ``<0xNN>`` byte pieces) as Llama-2's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    seed = Tokenizer(models.BPE())
    seed.pre_tokenizer = pre_tokenizers.Metaspace()
    seed.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in sorted(seed.get_vocab(), key=seed.get_vocab().get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in _merges(seed)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _merges(tok: tokenizers.Tokenizer) -> list:
    import json

    return json.loads(tok.to_str())["model"]["merges"]


def tiny_llama(vocab_size: int, seed: int = 0) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    model = transformers.LlamaForCausalLM(config).to(torch.float64).eval()
    with torch.no_grad():  # a sharper distribution than the init's: fewer near-uniform rows
        model.lm_head.weight.mul_(8.0)
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A model this small runs 20x faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> transformers.PreTrainedTokenizerFast:
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer: transformers.PreTrainedTokenizerFast) -> transformers.LlamaForCausalLM:
    return tiny_llama(len(tokenizer))


def random_source(rng: random.Random, n_max: int = 7) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, n_max)))


def kiwi_prompt(source: str, labels: tuple[str, ...] = LABELS) -> Prompt:
    return Prompt(PREFIX, f" {source} <EOS>\n### Output Text:", OutputLanguage(source, labels))


def is_markup(text: str, source: str, labels: tuple[str, ...]) -> bool:
    """``text`` is ``' ' + source with balanced tags + ' '`` (an independent check of the automaton)."""
    opening = "|".join(re.escape(f'<span class="{label}">') for label in labels) or "(?!)"
    words = [f"((?:{opening})*){re.escape(w)}((?:</span>)*)" for w in source.split(" ")]
    match = re.fullmatch(" " + " ".join(words) + " ", text)
    if match is None:
        return False
    depth = 0
    for opens, closes in zip(match.groups()[::2], match.groups()[1::2], strict=True):
        depth += opens.count("<span") - closes.count("</span>")
        if depth < 0:
            return False
    return depth == 0


def assert_same(a: list[Generation], b: list[Generation]) -> None:
    assert [g.text for g in a] == [g.text for g in b]
    assert [g.token_offsets for g in a] == [g.token_offsets for g in b]
    assert [g.stopped for g in a] == [g.stopped for g in b]
    for x, y in zip(a, b, strict=True):
        assert x.token_logprobs == pytest.approx(y.token_logprobs, abs=1e-5)


# --- the automaton -------------------------------------------------------------------------------


def test_automaton_accepts_markup_and_rejects_the_rest() -> None:
    a = CopyOrTag("She had a<b °C", ("drug", "problem"), "<EOS>")

    def accepts(s: str) -> bool:
        return a.is_final(a.advance(a.start(), s.encode()))

    assert accepts(" She had a<b °C <EOS>")
    assert accepts(' <span class="drug">She had</span> <span class="problem">a<b</span> °C <EOS>')
    assert accepts(' <span class="drug"><span class="problem">She</span></span> had a<b °C <EOS>trailing')
    assert not accepts(" She had a<b °C")  # no stop yet
    assert not accepts(' She <span class="drug">had a<b °C <EOS>')  # open span at the end
    assert not accepts(' <span class="test">She</span> had a<b °C <EOS>')  # label not allowed
    assert not accepts(" She  had a<b °C <EOS>")
    assert not accepts(' She<span class="drug"> had</span> a<b °C <EOS>')  # tag inside the space
    assert not accepts(' <span class="drug"></span>She had a<b °C <EOS>')  # empty span
    assert not a.advance(a.start(), b" She hat")
    assert a.advance(a.start(), b" She had a<b " + "°".encode()[:1])  # half a character


def test_automaton_copies_a_source_that_looks_like_a_tag() -> None:
    a = CopyOrTag('<span class="drug"> x', ("drug",), "<EOS>")  # words: '<span', 'class="drug">', 'x'

    def accepts(s: str) -> bool:
        return a.is_final(a.advance(a.start(), s.encode()))

    assert accepts(' <span class="drug"> x <EOS>')  # a plain copy
    assert accepts(' <span class="drug"><span</span> class="drug"> x <EOS>')
    assert accepts(' <span class="drug"><span class="drug"> x</span> <EOS>')
    assert not accepts(' <span class="drug"> x</span> <EOS>')  # the copy closes a span never opened
    assert not accepts(' <span class="drug"></span> x <EOS>')


def test_bad_source_spacing_is_refused() -> None:
    for bad in (" a", "a ", "a  b"):
        with pytest.raises(ValueError, match="single spaces"):
            CopyOrTag(bad, (), "<EOS>")


def test_relation_outputs_keep_the_guideline_rule_on_the_main_entity() -> None:
    """RE for "chest pain" (words 1-2): bodyloc may sit inside it, negation and temporal may not touch
    it (guideline 3.1.3)."""
    a = CopyOrTag(
        "No chest pain today",
        ("negation", "bodyloc", "temporal"),
        "<EOS>",
        entity=(1, 3),
        overlapping=("bodyloc",),
    )

    def accepts(s: str) -> bool:
        return a.is_final(a.advance(a.start(), s.encode()))

    neg, loc, tmp = (f'<span class="{x}">' for x in ("negation", "bodyloc", "temporal"))
    assert accepts(f" {neg}No</span> {loc}chest</span> pain {tmp}today</span> <EOS>")
    assert accepts(f" {loc}No chest pain today</span> <EOS>")  # bodyloc may overlap the entity
    assert accepts(f" No {loc}chest</span> pain today <EOS>")  # on its first word, not its span
    assert accepts(f" No {loc}chest pain</span> today <EOS>")  # exactly the entity: the reader drops it
    assert not accepts(f" No {loc}{tmp}chest pain</span></span> today <EOS>")
    assert not accepts(f" {neg}No chest</span> pain today <EOS>")  # negation across the entity
    assert not accepts(f" No chest {tmp}pain</span> today <EOS>")  # temporal inside it
    assert not a.advance(a.start(), f" No {tmp}".encode())  # refused as the tag opens
    plain = CopyOrTag("No chest pain today", ("negation", "bodyloc", "temporal"), "<EOS>")  # NER: no rule
    assert plain.is_final(plain.advance(plain.start(), f" No {loc}chest pain</span> today <EOS>".encode()))


# A reader of the grammars CopyOrTag.grammar writes: rules `name ::= alt | alt`, each alternative a
# double-quoted literal and at most one rule name after it.
_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"(?: (\w+))?')


def _unescape(body: str) -> str:
    return re.sub(r"\\x([0-9a-f]{2})|\\(.)", lambda m: chr(int(m[1], 16)) if m[1] else m[2], body)


def grammar_rules(grammar: str) -> dict[str, list[tuple[str, str | None]]]:
    rules = {}
    for line in grammar.splitlines():
        name, _, body = line.partition(" ::= ")
        rules[name] = [(_unescape(m[1]), m[2]) for m in _LITERAL.finditer(body)]
    return rules


def grammar_sample(grammar: str, rng: random.Random) -> str:
    """A random string of the grammar: a random alternative of each rule on the way."""
    rules, rule, out = grammar_rules(grammar), "root", []
    while rule is not None:
        literal, rule = rng.choice(rules[rule])
        out.append(literal)
    return "".join(out)


def grammar_accepts(grammar: str, text: str) -> bool:
    rules = grammar_rules(grammar)
    todo, seen = [("root", 0)], set()
    while todo:
        rule, at = todo.pop()
        for literal, then in rules[rule]:
            if text.startswith(literal, at):
                if then is None and at + len(literal) == len(text):
                    return True
                if then is not None and (then, at + len(literal)) not in seen:
                    seen.add((then, at + len(literal)))
                    todo.append((then, at + len(literal)))
    return False


def random_output(a: CopyOrTag, rng: random.Random, max_bytes: int = 400) -> bytes | None:
    """A random walk through the byte automaton to its final state (None where it ran too long)."""
    state, out = a.start(), bytearray()
    while not a.is_final(state) and len(out) < max_bytes:
        b = rng.choice([b for b in a.next_bytes(state) if a.step(state, b)])
        state = a.step(state, b)
        out.append(b)
    return bytes(out) if a.is_final(state) else None


Language = tuple[str, tuple[str, ...], tuple[int, int] | None, tuple[str, ...]]


def random_language(rng: random.Random) -> Language:
    words = random_source(rng, 6).split(" ")
    labels = tuple(rng.sample(["negation", "bodyloc", "temporal", 'q"\\'], rng.randint(1, 3)))
    if rng.random() < 0.3:
        return " ".join(words), labels, None, ()
    a = rng.randrange(len(words))
    b = rng.randint(a + 1, len(words))
    return " ".join(words), labels, (a, b), tuple(x for x in labels if rng.random() < 0.5)


def test_the_grammar_is_the_byte_automatons_language() -> None:
    """vLLM gets the language as a grammar: every random output of the automaton is in it and every
    random string of it in the automaton, outputs off by one edit are in both or in neither, and every
    rule it reaches can finish (no dead ends)."""
    rng = random.Random(11)
    checked = 0
    for _ in range(150):
        source, labels, entity, overlapping = random_language(rng)
        a = CopyOrTag(source, labels, "<EOS>", entity=entity, overlapping=overlapping)
        grammar = a.grammar()
        for _ in range(4):
            out = random_output(a, rng)
            if out is None:
                continue
            text = out.decode()
            assert grammar_accepts(grammar, text), (source, entity, text)
            for edited in (text.replace("</span>", "", 1), text.replace(" ", "  ", 1), text[:-1]):
                in_automaton = a.is_final(a.advance(a.start(), edited.encode())) and edited.endswith("<EOS>")
                assert grammar_accepts(grammar, edited) == in_automaton, (source, entity, edited)
            checked += 1
        for _ in range(4):
            text = grammar_sample(grammar, rng)
            assert a.is_final(a.advance(a.start(), text.encode())), (source, entity, text)
    assert checked > 400


@pytest.mark.parametrize("build", [byte_level_tokenizer, byte_fallback_tokenizer])
def test_token_table_spells_what_the_tokenizer_encodes(build) -> None:
    tok = build()
    table = token_table(tok)
    for text in ("Aspirin 81 mg daily", "temperature 38.5 °C µg 😀 naïve <EOS>"):
        ids = tok(" " + text, add_special_tokens=False).input_ids
        assert b"".join(table.piece(i) for i in ids).decode().strip() == text
    assert table.piece(tok.eos_token_id) == b"" and tok.eos_token_id not in table.ids


@pytest.mark.parametrize("build", [byte_level_tokenizer, byte_fallback_tokenizer])
def test_allowed_tokens_are_exactly_those_the_automaton_accepts(build) -> None:
    tok = build()
    table = token_table(tok)
    rng = random.Random(3)
    for _ in range(6):
        c = constraint_for(OutputLanguage(random_source(rng), LABELS[:2]), "<EOS>", table)
        state = c.start()
        for _ in range(12):
            allowed = set(c.allowed(state).tolist())
            brute = {i for i in table.ids if c.advance(state, i)}
            assert allowed == brute
            state = c.advance(state, rng.choice(sorted(allowed)))
            if c.automaton.is_final(state):
                break


def test_finish_cuts_at_a_stop_string_split_across_tokens(tokenizer) -> None:
    table = token_table(tokenizer)
    ids = tokenizer(" a<b <EOS> more", add_special_tokens=False).input_ids
    assert len(tokenizer(" <EOS>", add_special_tokens=False).input_ids) > 1
    g = finish(table, b"<EOS>", ids, [0.0] * len(ids))
    assert g.text == " a<b " and g.stopped
    assert g.token_offsets[0] == 0 and g.token_offsets == sorted(g.token_offsets)
    assert all(o <= len(g.text) for o in g.token_offsets)
    cut = finish(table, b"<EOS>", ids[:2], [0.0, 0.0])
    assert not cut.stopped and " a<b <EOS> more".startswith(cut.text)


def test_offsets_point_at_each_token_even_inside_a_character(tokenizer) -> None:
    table = token_table(tokenizer)
    text = " 38.5 °C 😀 café"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    g = finish(table, b"<EOS>", ids, [0.0] * len(ids))
    assert g.text == text
    for t, o in zip(ids, g.token_offsets, strict=True):
        piece = table.piece(t)
        assert text.encode()[len(text[:o].encode()) :].startswith(piece) or piece[0] & 0xC0 == 0x80


# --- constrained generation ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_constrained_output_always_copies_the_source(tokenizer, seed: int) -> None:
    model = tiny_llama(len(tokenizer), seed=seed)
    rng = random.Random(seed)
    prompts = [
        kiwi_prompt(random_source(rng), tuple(rng.sample(LABELS, rng.randint(0, 4)))) for _ in range(16)
    ]
    prompts.append(kiwi_prompt("plain words only"))
    gens = TransformersEngine(model, tokenizer, max_new_tokens=400, batch_size=8).generate(prompts)
    for p, g in zip(prompts, gens, strict=True):
        assert g.stopped
        assert g.text.startswith(" ") and g.text.endswith(" ")
        assert is_markup(g.text, p.language.source, p.language.labels), g.text
        assert len(g.token_logprobs) == len(g.token_offsets) and all(x <= 0 for x in g.token_logprobs)
    assert any('<span class="' in g.text for g in gens)  # the random model does insert tags


def test_plain_generate_constrained_copies_too(tokenizer, model) -> None:
    prompts = [kiwi_prompt("temperature 38.5 °C < 40"), kiwi_prompt("naïve 😀 a<b", ("drug",))]
    for p, g in zip(prompts, plain_generate(model, tokenizer, prompts, max_new_tokens=300), strict=True):
        assert g.stopped and is_markup(g.text, p.language.source, p.language.labels), g.text


# --- the engine is plain greedy decoding -----------------------------------------------------------


@pytest.fixture(scope="module")
def prompts() -> list[Prompt]:
    rng = random.Random(7)
    out = [kiwi_prompt(random_source(rng, 6)) for _ in range(4)]
    out.append(Prompt(PREFIX, " the patient had pain <EOS>\n### Output Text:"))  # free
    out.append(Prompt("", "aspirin daily", OutputLanguage("aspirin daily", ("drug",))))  # no prefix
    x = OutputLanguage("x", ("drug",))
    out.append(Prompt("### Task:", "\n### Input Text: x <EOS>\n### Output Text:", x))
    return out


@pytest.fixture(scope="module")
def reference(tokenizer, model, prompts) -> dict[bool, list[Generation]]:
    return {
        c: plain_generate(model, tokenizer, prompts, max_new_tokens=40, constrained=c) for c in (True, False)
    }


@pytest.mark.parametrize("constrained", [True, False])
@pytest.mark.parametrize("prefix_cache", [True, False])
@pytest.mark.parametrize("draft_tokens", [0, 8])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_engine_equals_plain_generate(
    tokenizer,
    model,
    prompts,
    reference,
    constrained: bool,
    prefix_cache: bool,
    draft_tokens: int,
    batch_size: int,
) -> None:
    engine = TransformersEngine(
        model,
        tokenizer,
        max_new_tokens=40,
        batch_size=batch_size,
        prefix_cache=prefix_cache,
        draft_tokens=draft_tokens,
        constrained=constrained,
    )
    assert_same(engine.generate(prompts), reference[constrained])
    assert_same(engine.generate(prompts[::-1]), reference[constrained][::-1])  # the prefix cache is reused


def test_speculation_saves_forward_passes(tokenizer, model, prompts) -> None:
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        counts = {}
        for draft in (0, 8):
            calls.clear()
            TransformersEngine(
                model, tokenizer, max_new_tokens=40, batch_size=1, draft_tokens=draft
            ).generate(prompts[:4])
            counts[draft] = len(calls)
    finally:
        hook.remove()
    assert counts[8] < counts[0]


def test_stop_string_across_tokens_in_free_generation(tokenizer, model, prompts) -> None:
    free = Prompt(prompts[4].prefix, prompts[4].text)
    table = token_table(tokenizer)
    ids = tokenizer(free.prefix + free.text).input_ids
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=30)
    pieces = [table.piece(t) for t in out[0, len(ids) :].tolist()]
    k = next(k for k in range(5, 29) if pieces[k][-1:].isascii() and pieces[k + 1][:1].isascii())
    stop = (pieces[k][-1:] + pieces[k + 1][:1]).decode()  # the end of one token and the start of the next
    data = b"".join(pieces)
    want = data[: data.find(stop.encode())].decode(errors="replace")
    got = plain_generate(model, tokenizer, [free], max_new_tokens=30, stop=stop)[0]
    assert got.text == want and got.stopped
    for draft in (0, 8):
        engine = TransformersEngine(model, tokenizer, max_new_tokens=30, stop=stop, draft_tokens=draft)
        assert_same(engine.generate([free, free]), [got, got])


@pytest.mark.parametrize("cap", [1, 5])
def test_max_new_tokens_cuts(tokenizer, model, prompts, cap: int) -> None:
    for constrained in (True, False):
        ref = plain_generate(model, tokenizer, prompts[:3], max_new_tokens=cap, constrained=constrained)
        assert all(not g.stopped and len(g.token_logprobs) == cap for g in ref)
        engine = TransformersEngine(
            model, tokenizer, max_new_tokens=cap, batch_size=3, constrained=constrained
        )
        assert_same(engine.generate(prompts[:3]), ref)


def test_eos_token_stops_a_row(tokenizer, prompts) -> None:
    model = tiny_llama(len(tokenizer), seed=5)
    free = [Prompt(PREFIX, " the patient had pain <EOS>\n### Output Text:"), prompts[0]]
    ids = torch.tensor([tokenizer(free[0].prefix + free[0].text).input_ids])
    with torch.inference_mode():
        out = model.generate(
            ids, do_sample=False, max_new_tokens=12, return_dict_in_generate=True, output_logits=True
        )
    eos = tokenizer.eos_token_id
    gaps = sorted(float(step[0].max() - step[0, eos]) for step in out.logits)
    head = torch.nn.Linear(32, len(tokenizer), bias=True, dtype=torch.float64)
    with torch.no_grad():  # an eos bias that wins at one of the 12 steps: that row ends there
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[eos] = (gaps[2] + gaps[3]) / 2
    model.lm_head = head
    ref = plain_generate(model, tokenizer, free, max_new_tokens=12, constrained=False)
    assert ref[0].stopped and len(ref[0].token_offsets) < 12
    for draft in (0, 8):
        engine = TransformersEngine(
            model, tokenizer, max_new_tokens=12, batch_size=2, draft_tokens=draft, constrained=False
        )
        assert_same(engine.generate(free), ref)


def test_peft_lora_model(tokenizer, prompts) -> None:
    peft = pytest.importorskip("peft")
    base = tiny_llama(len(tokenizer), seed=2)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(base, config).eval()
    for constrained in (True, False):
        ref = plain_generate(model, tokenizer, prompts[:5], max_new_tokens=25, constrained=constrained)
        engine = TransformersEngine(
            model, tokenizer, max_new_tokens=25, batch_size=3, constrained=constrained
        )
        assert_same(engine.generate(prompts[:5]), ref)


def test_byte_fallback_tokenizer_engine() -> None:
    tok = byte_fallback_tokenizer()
    model = tiny_llama(len(tok), seed=4)
    sources = ["temperature 38.5 °C < 40", "naïve 😀 µg"]
    prompts = [kiwi_prompt(s, ("drug",)) for s in sources]
    ref = plain_generate(model, tok, prompts, max_new_tokens=200)
    assert_same(TransformersEngine(model, tok, max_new_tokens=200, batch_size=2).generate(prompts), ref)
    for p, g in zip(prompts, ref, strict=True):
        assert g.stopped and is_markup(g.text, p.language.source, p.language.labels), g.text


def test_between_steps_runs_before_every_forward_pass(tokenizer, model, prompts, reference) -> None:
    """The background worker's pause point: one call before each forward pass, output unchanged."""
    steps: list[int] = []
    seen: list[int] = []  # how many steps had run when each forward pass started
    hook = model.register_forward_hook(lambda *_: seen.append(len(steps)))
    try:
        engine = TransformersEngine(model, tokenizer, max_new_tokens=40, batch_size=3, prefix_cache=False)
        out = engine.generate(prompts, between_steps=lambda: steps.append(1))
    finally:
        hook.remove()
    assert_same(out, reference[True])
    assert seen == list(range(1, len(seen) + 1)), "a step call before each forward pass, one each"
