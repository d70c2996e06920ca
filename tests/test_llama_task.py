"""The Kiwi instruction task: prompts character for character, training text, reading model output."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from recommender.document import Document
from recommender.errors import ModelError
from recommender.extractors.llama import task
from recommender.markup_language import (
    EMPTY_SPAN,
    REPEATED_SPAN,
    UNALIGNED_SPAN,
    UNBALANCED_TAG,
    UNKNOWN_TAG,
    MarkedSpan,
)
from recommender.schema import load_schema
from recommender.text import segment

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "kiwi_instruction_format.md"
TEXT = "She had used Cutivate cream in the past for the atopic dermatitis with good results."
KIWI_TARGET = (
    'She had used <span class="drug">Cutivate</span> cream in the past for '
    '<span class="problem">the atopic dermatitis</span> with good results . <EOS>'
)


def reference_prompts() -> dict[str, str]:
    """The prompts as the reference file states them: the NER and test blocks verbatim, the other RE
    prompts built from its guide-line definitions the way it says they are built."""
    if not REFERENCE.is_file():
        pytest.skip(f"reference file not found: {REFERENCE}")
    ref = REFERENCE.read_text(encoding="utf-8")
    blocks = re.findall(r"```\n(.*?)```", ref, re.DOTALL)
    ner = next(b for b in blocks if "Entity Definitions" in b).removesuffix("\n")
    re_test = next(b for b in blocks if "modifier entities" in b).removesuffix("\n")
    out = {"ner": ner, "test": re_test}
    guides = ref.split("Guide lines for the other main types:")[1].split("Each guide line")[0]
    bullets = re.findall(r"^- (\w+): (.*?)(?=^- |\Z)", guides, re.DOTALL | re.MULTILINE)
    defined = {  # "negation (as above)" refers to a definition given earlier
        n: d for _, body in bullets for n, d in re.findall(r'(\w+) "([^"]+)"', " ".join(body.split()))
    }
    for kind, body in bullets:
        pairs = re.findall(r'(\w+) (?:"([^"]+)"|\(as above\))', " ".join(body.split()))
        lines = [f'Use <span class="{n}"> to denote {d or defined[n]}.' for n, d in pairs]
        guide = re_test.split("### Entity Markup Guide:\n")[1].split("\n\n")[0]
        out[kind] = re_test.replace(guide, "\n".join(lines))
    return out


def test_templates_equal_the_reference_character_for_character() -> None:
    expected = reference_prompts()
    templates = task.Templates.packaged()
    schema = load_schema()
    assert set(expected) == {"ner", *schema.entity_names}
    for kind, text in expected.items():
        assert templates.texts[kind] == text, kind
        if kind != "ner":  # the guide names the schema's modifiers of that type, in schema order
            assert re.findall(r'class="(\w+)"', text.split("Guide:")[1]) == list(schema.allowed[kind])


@pytest.fixture
def kiwi_doc() -> Document:
    doc = Document("kiwi", TEXT + "\nNo fever. BP 120/80 today.")
    doc.add_span("drug", TEXT.index("Cutivate"), TEXT.index(" cream"))
    problem = doc.add_span("problem", TEXT.index("the atopic"), TEXT.index(" with"))
    loc = doc.add_span("bodyloc", TEXT.index("atopic"), TEXT.index("atopic") + 6)  # invented modifier
    doc.add_relation(problem, loc)
    fever = doc.add_span("problem", doc.text.index("fever"), doc.text.index("fever") + 5)
    doc.add_relation(fever, doc.add_span("negation", doc.text.index("No"), doc.text.index("No") + 2))
    bp = doc.add_span("test", doc.text.index("BP"), doc.text.index("BP") + 2)
    value = doc.add_span("labvalue", doc.text.index("120/80"), doc.text.index("120/80") + 6)
    doc.add_relation(bp, value)
    doc.add_relation(bp, doc.add_span("temporal", doc.text.index("today"), doc.text.index("today") + 5))
    return segment(doc.validate())


def test_training_text_is_prompt_space_target(kiwi_doc: Document) -> None:
    expected = reference_prompts()
    examples = task.training_examples([kiwi_doc], task.Templates.packaged())
    kinds = [e.kind for e in examples]
    # one NER example per sentence, then one RE example per main entity of that sentence
    assert kinds == ["ner", "drug", "problem", "ner", "problem", "ner", "test"]
    ner = examples[0]
    assert ner.target == KIWI_TARGET
    plain = "She had used Cutivate cream in the past for the atopic dermatitis with good results ."
    assert ner.prompt == expected["ner"].replace("{}", plain)
    assert ner.text == ner.prompt + " " + KIWI_TARGET
    assert ner.text.endswith("### Input Text: " + plain + " <EOS>\n### Output Text: " + KIWI_TARGET)
    problem = examples[2]
    marked = plain.replace("the atopic dermatitis", '<span class="problem">the atopic dermatitis</span>')
    assert problem.prompt == expected["problem"].replace("{}", marked)
    assert problem.target == plain.replace("atopic", '<span class="bodyloc">atopic</span>') + " <EOS>"
    assert examples[1].target == plain + " <EOS>"  # a drug without modifiers: the plain sentence
    assert examples[3].target == 'No <span class="problem">fever</span> . <EOS>'
    assert examples[4].target == '<span class="negation">No</span> fever . <EOS>'
    test = examples[6]
    assert test.prompt == expected["test"].replace("{}", '<span class="test">BP</span> 120/80 today .')
    assert test.target == (
        'BP <span class="labvalue">120/80</span> <span class="temporal">today</span> . <EOS>'
    )


def test_split_prompt_shares_one_prefix_per_kind() -> None:
    templates = task.Templates.packaged()
    for kind in templates.texts:
        a, rest_a = templates.split(kind, "first input")
        b, rest_b = templates.split(kind, "{} another")
        assert a == b and a.endswith("### Input Text:")
        assert a + rest_a == templates.prompt(kind, "first input")
        assert rest_b == " {} another <EOS>\n### Output Text:"


def test_templates_are_copied_into_the_model_folder(tmp_path: Path) -> None:
    templates = task.Templates.packaged()
    templates.save(tmp_path)
    assert task.Templates.read(tmp_path / task.PROMPTS_DIR) == templates
    (tmp_path / task.PROMPTS_DIR / "v1" / "re_drug.txt").write_text("no slot\n", encoding="utf-8")
    with pytest.raises(ModelError, match=r"exactly one \[\{\}\]"):
        task.Templates.read(tmp_path / task.PROMPTS_DIR)
    (tmp_path / task.PROMPTS_DIR / "v1" / "re_drug.txt").unlink()
    with pytest.raises(ModelError, match=r"re_drug.txt"):
        task.Templates.read(tmp_path / task.PROMPTS_DIR)


def test_units_of_prediction(kiwi_doc: Document) -> None:
    units = task.ner_units([kiwi_doc])
    assert [u.source for u in units] == [
        "She had used Cutivate cream in the past for the atopic dermatitis with good results .",
        "No fever .",
        "BP 120/80 today .",
    ]
    assert all(u.input == u.source and u.kind == "ner" for u in units)
    entities = kiwi_doc.entities()
    inside_token = kiwi_doc.add_span("drug", TEXT.index("Cutivate"), TEXT.index("Cutivate") + 4)
    across = kiwi_doc.add_span("problem", TEXT.index("results"), kiwi_doc.text.index("fever") + 5)
    re_units, lost = task.re_units(0, kiwi_doc, [*entities, inside_token, across])
    assert lost == 2
    assert [u.entity for u in re_units] == entities
    test = re_units[-1]
    assert test.input == '<span class="test">BP</span> 120/80 today .'
    assert test.source == "BP 120/80 today ."
    assert test.labels == load_schema().allowed["test"]
    assert test.entity_words == (0, 1) and test.overlapping == ()  # no test modifier may overlap
    problem = next(u for u in re_units if u.entity.label == "problem" and "dermatitis" in u.input)
    words = problem.source.split(" ")
    a, b = problem.entity_words
    assert " ".join(words[a:b]) == "the atopic dermatitis"
    assert problem.overlapping == ("bodyloc", "severity", "course")
    expected = task.OutputLanguage(problem.source, problem.labels, (a, b), problem.overlapping)
    assert problem.language == expected


# --- reading generations -------------------------------------------------------------------------
P = "She had used"
REST = "cream in the past for the atopic dermatitis with good results ."
D = '<span class="drug">Cutivate</span>'
NER = ("problem", "treatment", "test", "drug")
MALFORMED = [
    # (generation, allowed classes, expected (label, text) spans, expected drops)
    (f"{P} {D} {REST}", NER, [("drug", "Cutivate")], {}),
    (f"{P}{D}{REST}", NER, [("drug", "Cutivate")], {}),  # spaces lost
    (f"{P}   {D}\n\n {REST}  ", NER, [("drug", "Cutivate")], {}),  # spaces added
    (f"{P} <SPAN CLASS='Drug'>Cutivate</SPAN> {REST}", NER, [("drug", "Cutivate")], {}),  # case, quotes
    (f"{P} < span class = drug >Cutivate</ span > {REST}", NER, [("drug", "Cutivate")], {}),  # tag spacing
    (f'{P} <span class="tumour">Cutivate</span> cream', NER, [], {UNKNOWN_TAG: 1}),  # unknown class
    (f"{P} <span>Cutivate</span> cream", NER, [], {UNKNOWN_TAG: 1}),  # no class
    (f"{P} Cutivate</span> cream", NER, [], {UNBALANCED_TAG: 1}),  # close without open
    (f'{P} <span class="drug">Cutivate cream', NER, [], {UNBALANCED_TAG: 1}),  # never closed
    (f"{P} {D}</span> cream", NER, [("drug", "Cutivate")], {UNBALANCED_TAG: 1}),  # one close too many
    (f'<span class="drug"></span>{P} Cutivate', NER, [], {EMPTY_SPAN: 1}),  # empty
    (f'{P} <span class="drug">  </span> Cutivate', NER, [], {EMPTY_SPAN: 1}),  # whitespace only
    (f'{P.upper()} <span class="drug">CUTIVATE</span> CREAM', NER, [("drug", "Cutivate")], {}),  # casing
    (f'{P} <span class="drug">Cutivat</span> cream', NER, [("drug", "Cutivate")], {}),  # misspelt
    (f'{P} <span class="drug">Cuti</span>vate cream', NER, [("drug", "Cutivate")], {}),  # split token
    (f'{P} <span class="drug">Lipitor</span> cream', NER, [], {UNALIGNED_SPAN: 1}),  # invented word
    (
        f'{P} <span class="drug">Cuti</span><span class="drug">vate</span> cream',
        NER,
        [("drug", "Cutivate")],
        {REPEATED_SPAN: 1},
    ),  # one token tagged twice
    (f'<span class="drug">{D}</span> cream', NER, [("drug", "Cutivate")], {REPEATED_SPAN: 1}),  # nested twice
    (
        f'She {D} for <span class="problem">atopic dermatitis</span>',
        NER,
        [("drug", "Cutivate"), ("problem", "atopic dermatitis")],
        {},
    ),  # dropped words
    (
        f'{P} <span class="drug">Cutivate &amp; cream</span>',
        NER,
        [("drug", "Cutivate cream")],
        {},
    ),  # HTML escape, invented character
    (f"### Output Text: {P} {D} <EOS> cream", NER, [("drug", "Cutivate")], {}),  # echoed header, EOS
    (
        f'{P} Cutivate cream for <span class="problem">the <span class="bodyloc">atopic</span> '
        "dermatitis</span>",
        ("bodyloc",),
        [("bodyloc", "atopic")],
        {UNKNOWN_TAG: 1},
    ),  # RE output keeping the main entity's tag
    (
        'lorem ipsum <span class="drug">dolor sit amet</span> consectetur',
        NER,
        [],
        {UNALIGNED_SPAN: 1},
    ),  # nothing of the sentence
    (
        f'{P} {D} cream in the past for <span class="problem">the atopic dermatitis</span> with good '
        f'results . {P} {D} cream in the past for <span class="problem">the atopic dermatitis</span> '
        "with good results .",
        NER,
        [("drug", "Cutivate"), ("problem", "the atopic dermatitis")],
        {UNALIGNED_SPAN: 2},
    ),  # the whole sentence twice: the copy has no place in the note
    (
        '<span class="drug">' * 5 + "Cutivate" + "</span>" * 3,
        NER,
        [("drug", "Cutivate")],
        {REPEATED_SPAN: 2, UNBALANCED_TAG: 2},
    ),
    ("\x00\ufffd\ud800 <<<>>> &#xZZZ; </span><span class=", NER, [], {UNBALANCED_TAG: 1}),
    ("", NER, [], {}),
]


@pytest.mark.parametrize(("output", "allowed", "expected", "drops"), MALFORMED)
def test_malformed_generations(
    kiwi_doc: Document,
    output: str,
    allowed: tuple[str, ...],
    expected: list[tuple[str, str]],
    drops: dict[str, int],
) -> None:
    sentence = kiwi_doc.sentences[0]
    unit = task.Unit(0, sentence, "ner", "", "", allowed)
    read = task.read_output(unit, kiwi_doc, output)
    assert sorted((s.label, kiwi_doc.text[s.begin : s.end]) for s in read.spans) == sorted(expected)
    assert dict(read.drops) == drops
    starts, ends = {t.begin for t in kiwi_doc.tokens}, {t.end for t in kiwi_doc.tokens}
    for s in read.spans:  # whole tokens of the sentence only
        assert sentence.begin <= s.begin < s.end <= sentence.end and s.begin in starts and s.end in ends
        assert output[s.markup_begin : s.markup_end].lower().startswith("<")


def test_table_is_large_enough() -> None:
    assert len(MALFORMED) >= 20


def test_span_score_reads_the_tokens_of_the_span() -> None:
    text = ' She <span class="drug">X</span> ok'
    span = MarkedSpan("drug", 0, 1, text.index("<span"), text.index(" ok"))
    offsets = [0, 4, 5, 24, 25, 32]  # " She", " ", '<span class="drug">', "X", "</span>", " ok"
    logprobs = [-9.0, -9.0, math.log(0.5), math.log(0.5), math.log(0.5), -9.0]
    # the space token before the tag is not part of it; the tag, the text and the closing tag are
    assert task.span_score(span, logprobs, offsets) == pytest.approx(0.5)
    assert task.span_score(span, [], []) == 0.0


def test_uncertainty_is_least_confidence() -> None:
    assert task.uncertainty([]) is None
    assert task.uncertainty([0.0, 0.0]) == 0.0
    assert task.uncertainty([math.log(0.25), math.log(1.0)]) == pytest.approx(0.5)
