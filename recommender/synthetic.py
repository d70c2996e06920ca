"""A generated synthetic corpus in the Kiwi schema: the team's own invented text, no patient data.

The seed a first model trains on where no annotated notes can be had (no ``../shared``, no internet).
Notes are drawn from sentence templates and vocabularies that cover all 20 span types and the
``hasAttr`` pairs of the schema, in the section layout of transcribed clinical notes. Deterministic:
the same ``seed`` gives the same notes on every machine, so a model's data fingerprint is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from recommender.document import Document

PROBLEMS = (
    "hypertension", "type 2 diabetes mellitus", "shortness of breath", "headache", "nausea", "cough",
    "fever", "pneumonia", "atrial fibrillation", "congestive heart failure", "asthma", "COPD", "anemia",
    "urinary tract infection", "migraine", "osteoarthritis", "depression", "anxiety", "fatigue",
    "dizziness", "rash", "hyperlipidemia", "chronic kidney disease", "hypothyroidism", "GERD", "syncope",
    "palpitations", "wheezing", "vomiting", "diarrhea", "constipation", "cellulitis", "sinusitis",
    "insomnia", "weight loss", "seizures", "stroke", "deep vein thrombosis", "obesity", "chills",
    "coronary artery disease", "sleep apnea", "gout", "dysuria", "hematuria", "bronchitis",
    "a urinary tract infection", "an ankle sprain", "otitis media", "acute renal failure",
)  # fmt: skip
# Problems named by where they are: "{loc} pain" or "pain in the {loc}", the location nested inside.
LOCATED = ("pain", "swelling", "tenderness", "numbness", "weakness", "a laceration", "a fracture", "edema")
BODYLOCS = (
    "left knee", "right shoulder", "lower back", "chest", "abdomen", "right lower quadrant",
    "left ankle", "neck", "both legs", "left arm", "right hip", "epigastric region", "throat",
    "left ear", "right wrist", "left foot", "right eye", "upper back", "left flank", "scalp",
)  # fmt: skip
SEVERITY = ("mild", "moderate", "severe", "marked", "slight", "significant", "acute", "minimal")
COURSE = (
    "worsening", "improving", "resolved", "stable", "intermittent", "progressive", "persistent",
    "recurrent", "unchanged", "gradually improving", "chronic", "new",
)  # fmt: skip
TEMPORAL = (
    "for 3 days", "since yesterday", "two weeks ago", "in 2019", "on 04/12", "last month",
    "this morning", "yesterday", "for the past year", "3 years ago", "on admission", "at the last visit",
    "since March", "for 2 months", "last night", "in 2015",
)  # fmt: skip
UNCERTAIN = ("possible", "probable", "likely", "suspected", "questionable", "presumed")
CONDITION = (
    "with exertion", "at night", "when lying flat", "after meals", "with walking", "on standing",
    "with deep breaths", "with movement", "in cold weather", "when climbing stairs",
)  # fmt: skip
SUBJECT = ("Her mother", "His father", "His brother", "Her sister", "His grandmother", "Her father")
TESTS = {
    "Blood pressure": ("142/88", "118/76", "160/95", "130/80"),
    "Heart rate": ("92", "72", "110", "58"),
    "Temperature": ("98.6", "101.2", "99.1", "100.4 F"),
    "Oxygen saturation": ("96%", "91% on room air", "99%", "88%"),
    "Hemoglobin": ("10.2 g/dL", "13.5", "8.9", "11.8 g/dL"),
    "White blood cell count": ("12.4", "6.8", "15.2", "3.1"),
    "Potassium": ("3.1 mmol/L", "4.2", "5.6", "3.8"),
    "Sodium": ("134", "140 mmol/L", "128", "138"),
    "Creatinine": ("1.8 mg/dL", "0.9", "2.4", "1.1"),
    "Glucose": ("245 mg/dL", "98", "310", "150"),
    "Hemoglobin A1c": ("7.1%", "9.4%", "6.2%", "8.0%"),
    "TSH": ("6.2", "0.3", "2.1 mIU/L", "4.8"),
    "Troponin": ("0.02 ng/mL", "negative", "0.45", "undetectable"),
    "INR": ("2.4", "1.1", "3.6", "1.9"),
    "LDL cholesterol": ("162 mg/dL", "98", "130", "75"),
}
IMAGING = (
    "chest x-ray", "ECG", "CT of the abdomen", "MRI of the brain", "ultrasound of the abdomen",
    "echocardiogram", "urinalysis", "CT head", "x-ray of the left knee", "colonoscopy", "stress test",
    "blood cultures", "EKG", "MRI of the lumbar spine", "mammogram", "physical examination",
)  # fmt: skip
FINDINGS = ("normal", "unremarkable", "negative", "abnormal", "within normal limits", "positive", "elevated")
RANGES = ("3.5-5.0", "4.0-11.0", "12.0-16.0", "0.6-1.2", "70-110", "0.4-4.0", "135-145")
DRUGS = (
    "lisinopril", "metformin", "atorvastatin", "amlodipine", "metoprolol", "aspirin", "ibuprofen",
    "acetaminophen", "omeprazole", "levothyroxine", "albuterol", "prednisone", "amoxicillin",
    "azithromycin", "furosemide", "warfarin", "insulin glargine", "gabapentin", "sertraline",
    "hydrochlorothiazide", "ceftriaxone", "morphine", "ondansetron", "tramadol", "cephalexin",
    "montelukast", "losartan", "simvastatin", "clopidogrel", "pantoprazole", "Tylenol", "Lasix",
    "Coumadin", "Zoloft", "Lipitor", "Norvasc", "antibiotics", "vitamin D", "nitroglycerin", "heparin",
)  # fmt: skip
STRENGTH = (
    "10 mg",
    "500 mg",
    "20 mg",
    "81 mg",
    "25 mcg",
    "1 g",
    "40 mg",
    "250 mg",
    "5 mg",
    "0.5 mg",
    "100 mg",
)
DOSAGE = ("1 tablet", "2 tablets", "2 puffs", "one capsule", "10 units", "1 tab", "two tablets", "low-dose")
FORM = ("tablet", "capsule", "inhaler", "cream", "solution", "suspension", "patch", "tablets")
ROUTE = ("by mouth", "orally", "p.o.", "IV", "intravenously", "subcutaneously", "topically", "IM")
FREQUENCY = (
    "daily", "once daily", "twice a day", "b.i.d.", "t.i.d.", "every 6 hours as needed", "at bedtime",
    "q.d.", "every morning", "three times a day", "as needed", "every 8 hours", "weekly",
)  # fmt: skip
DURATION = ("for 7 days", "for 10 days", "for 2 weeks", "for 3 months", "for 5 days", "for 1 month")
TREATMENTS = (
    "physical therapy", "an appendectomy", "knee replacement", "cardiac catheterization", "a splint",
    "oxygen therapy", "cholecystectomy", "wound care", "chemotherapy", "radiation therapy",
    "coronary artery bypass grafting", "a cast", "sutures", "hemodialysis", "CPAP", "cataract surgery",
    "ice and elevation", "a tonsillectomy", "hernia repair", "IV fluids", "a hysterectomy", "surgery",
)  # fmt: skip
FILLER = (
    "The patient is alert and oriented.",
    "She was seen in the clinic.",
    "He lives with his wife.",
    "The patient works as a teacher.",
    "All questions were answered.",
    "Lungs are clear to auscultation.",
    "Heart has a regular rhythm.",
    "The patient agrees with the plan.",
    "She will return to the clinic.",
    "He does not smoke.",
)


class _Note:
    """Text written piece by piece; annotated pieces become spans, located as they are written."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.text = ""
        self.spans: list[tuple[str, int, int]] = []
        self.rels: list[tuple[int, int]] = []

    def t(self, text: str) -> None:
        self.text += text

    def s(self, label: str, text: str) -> int:
        self.spans.append((label, len(self.text), len(self.text) + len(text)))
        self.text += text
        return len(self.spans) - 1

    def inner(self, label: str, outer: int, phrase: str) -> int:
        """A modifier nested inside the span ``outer`` (a body location inside a problem)."""
        _, b, e = self.spans[outer]
        at = self.text.index(phrase, b, e)
        self.spans.append((label, at, at + len(phrase)))
        return len(self.spans) - 1

    def end(self) -> None:
        """A full stop, unless the sentence already ends with one ("b.i.d.")."""
        if not self.text.endswith("."):
            self.text += "."

    def rel(self, head: int, tail: int) -> None:
        self.rels.append((head, tail))

    def pick(self, options: tuple[str, ...] | list[str]) -> str:
        return self.rng.choice(options)

    def maybe(self, p: float = 0.5) -> bool:
        return self.rng.random() < p

    def problem(self, cap: bool = False) -> int:
        """A problem, sometimes located ("{loc} pain", "swelling of the {loc}") with the location nested."""
        if self.maybe(0.35):
            kind, loc = self.pick(LOCATED), self.pick(BODYLOCS)
            phrase = (
                f"{loc} {kind}" if kind in ("pain", "swelling") and self.maybe() else f"{kind} in the {loc}"
            )
            p = self.s("problem", _cap(phrase) if cap else phrase)
            self.rel(p, self.inner("bodyloc", p, loc))
            return p
        word = self.pick(PROBLEMS)
        return self.s("problem", _cap(word) if cap else word)

    def drug_line(self) -> None:
        d = self.s("drug", _cap(self.pick(DRUGS)))
        for label, vocab, p in (
            ("strength", STRENGTH, 0.8),
            ("form", FORM, 0.3),
            ("dosage", DOSAGE, 0.25),
            ("route", ROUTE, 0.5),
            ("frequency", FREQUENCY, 0.8),
            ("duration", DURATION, 0.2),
        ):
            if self.maybe(p):
                self.t(" ")
                self.rel(d, self.s(label, self.pick(vocab)))
        self.end()


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _hpi(n: _Note) -> None:
    age, who = n.rng.randint(19, 92), n.pick(("man", "woman", "male", "female"))
    n.t(f"The patient is a {age}-year-old {who} with ")
    n.problem()
    if n.maybe(0.4):
        n.t(" and ")
        n.problem()
    n.end()


def _complaint(n: _Note) -> None:
    n.t(n.pick(("He complains of ", "She reports ", "The patient presents with ", "She has had ")))
    sev = n.s("severity", n.pick(SEVERITY)) if n.maybe(0.5) else None
    if sev is not None:
        n.t(" ")
    p = n.problem()
    if sev is not None:
        n.rel(p, sev)
    if n.maybe(0.4):
        n.t(", ")
        n.rel(p, n.s("course", n.pick(COURSE)))
        n.t(",")
    if n.maybe(0.4):
        n.t(" ")
        n.rel(p, n.s("condition", n.pick(CONDITION)))
    if n.maybe(0.6):
        n.t(" ")
        n.rel(p, n.s("temporal", n.pick(TEMPORAL)))
    n.end()


def _negated(n: _Note) -> None:
    style = n.rng.randrange(4)
    if style == 0:
        n.t(n.pick(("He ", "She ", "The patient ")))
        neg = n.s("negation", "denies")
        n.t(" ")
    elif style == 1:
        neg = n.s("negation", n.pick(("No", "Negative for", "No evidence of")))
        n.t(" ")
    elif style == 2:
        neg = n.s("negation", "Denies")
        n.t(" ")
    else:
        n.t("There is ")
        neg = n.s("negation", "no")
        n.t(" ")
    heads = [n.problem()]
    for _ in range(n.rng.randrange(3)):
        n.t(", " if n.maybe() else " or ")
        heads.append(n.problem())
    for h in heads:
        n.rel(h, neg)
    n.end()


def _family(n: _Note) -> None:
    sub = n.s("subject", n.pick(SUBJECT))
    n.t(n.pick((" has ", " had ", " has a history of ", " died of ")))
    n.rel(n.problem(), sub)
    n.end()


def _uncertain(n: _Note) -> None:
    if n.maybe():
        n.t(n.pick(("Assessment: ", "Impression: ", "")))
        u = n.s("uncertain", _cap(n.pick(UNCERTAIN)) if not n.text.endswith(": ") else n.pick(UNCERTAIN))
        n.t(" ")
        n.rel(n.problem(), u)
    else:
        n.t("This is most consistent with ")
        u = n.s("uncertain", n.pick(UNCERTAIN))
        n.t(" ")
        n.rel(n.problem(), u)
    n.end()


def _lab(n: _Note) -> None:
    name = n.pick(list(TESTS))
    t = n.s("test", name)
    n.t(n.pick((" was ", " is ", " of ", " ")))
    n.rel(t, n.s("labvalue", n.pick(TESTS[name])))
    if n.maybe(0.2):
        n.t(" (normal ")
        n.rel(t, n.s("reference_range", n.pick(RANGES)))
        n.t(")")
    if n.maybe(0.3):
        n.t(" ")
        n.rel(t, n.s("temporal", n.pick(TEMPORAL)))
    n.end()


def _vitals(n: _Note) -> None:
    n.t("VITAL SIGNS: ")
    names = n.rng.sample(["Blood pressure", "Heart rate", "Temperature", "Oxygen saturation"], 3)
    for i, name in enumerate(names):
        t = n.s("test", name)
        n.t(" ")
        n.rel(t, n.s("labvalue", n.pick(TESTS[name])))
        n.t(", " if i < len(names) - 1 else ".")


def _imaging(n: _Note) -> None:
    name = n.pick(IMAGING)
    if n.maybe(0.2):
        t = n.s("test", _cap(name))
        n.t(" was ")
        n.rel(t, n.s("negation", "not performed"))
    else:
        t = n.s("test", _cap(name))
        if n.maybe(0.3):
            n.t(" ")
            n.rel(t, n.s("temporal", n.pick(("today", "yesterday", "on admission", "on 03/14"))))
        n.t(n.pick((" was ", " showed ", " is ")))
        n.rel(t, n.s("labvalue", n.pick(FINDINGS)))
    n.end()


def _meds(n: _Note) -> None:
    for i in range(n.rng.randint(1, 4)):
        if i:
            n.t(" ")
        n.drug_line()


def _drug_sentence(n: _Note) -> None:
    style = n.rng.randrange(4)
    if style == 0:
        n.t(n.pick(("Start ", "Continue ", "We will start ", "Prescribed ")))
        d = n.s("drug", n.pick(DRUGS))
        n.t(" ")
        n.rel(d, n.s("strength", n.pick(STRENGTH)))
        n.t(" ")
        n.rel(d, n.s("frequency", n.pick(FREQUENCY)))
        if n.maybe():
            n.t(" ")
            n.rel(d, n.s("duration", n.pick(DURATION)))
    elif style == 1:
        n.t(n.pick(("He takes ", "She takes ", "She uses ")))
        d = n.s("drug", n.pick(DRUGS))
        n.t(" ")
        n.rel(d, n.s("dosage", n.pick(DOSAGE)))
        n.t(" ")
        n.rel(d, n.s("route", n.pick(ROUTE)))
        n.t(" ")
        n.rel(d, n.s("frequency", n.pick(FREQUENCY)))
    elif style == 2:
        n.t(n.pick(("He is ", "She is ", "The patient is ")))
        neg = n.s("negation", "not")
        n.t(" taking ")
        n.rel(n.s("drug", n.pick(DRUGS)), neg)
    else:
        n.t(n.pick(("She was started on ", "He was given ", "Received ")))
        d = n.s("drug", n.pick(DRUGS))
        n.t(" ")
        n.rel(d, n.s("temporal", n.pick(TEMPORAL)))
    n.end()


def _treatment(n: _Note) -> None:
    if n.maybe(0.25):
        n.t(n.pick(("She ", "He ", "The patient ")))
        neg = n.s("negation", "declined")
        n.t(" ")
        n.rel(n.s("treatment", n.pick(TREATMENTS)), neg)
    else:
        n.t(n.pick(("She underwent ", "He had ", "Status post ", "The patient received ")))
        tr = n.s("treatment", n.pick(TREATMENTS))
        if n.maybe(0.6):
            n.t(" ")
            n.rel(tr, n.s("temporal", n.pick(TEMPORAL)))
    n.end()


def _plan(n: _Note) -> None:
    n.t(n.pick(("Recommend ", "Will continue ", "Refer for ", "Plan for ")))
    tr = n.s("treatment", n.pick(TREATMENTS))
    if n.maybe(0.4):
        n.t(" ")
        n.rel(tr, n.s("temporal", n.pick(("tomorrow", "next week", "in 2 weeks", "at the next visit"))))
    n.end()


Section = tuple[str, tuple[Callable[[_Note], None], ...], tuple[int, int]]
SECTIONS: tuple[Section, ...] = (
    ("CHIEF COMPLAINT", (_complaint,), (1, 1)),
    ("HISTORY OF PRESENT ILLNESS", (_hpi, _complaint, _negated, _lab, _drug_sentence), (2, 5)),
    ("PAST MEDICAL HISTORY", (_hpi, _treatment, _negated), (1, 2)),
    ("FAMILY HISTORY", (_family, _negated), (1, 2)),
    ("MEDICATIONS", (_meds,), (1, 1)),
    ("PHYSICAL EXAMINATION", (_vitals, _complaint, _negated, _imaging), (1, 3)),
    ("LABORATORY DATA", (_lab, _imaging), (1, 4)),
    ("ASSESSMENT AND PLAN", (_uncertain, _drug_sentence, _plan, _treatment, _imaging), (2, 4)),
)


def note(rng: random.Random, doc_id: str) -> Document:
    """One synthetic note: a random subset of sections (in order), each a few template sentences."""
    n = _Note(rng)
    for title, templates, (lo, hi) in SECTIONS:
        if title != "MEDICATIONS" and n.maybe(0.25):
            continue
        if n.text:
            n.t("\n")
        n.t(f"{title}: " if n.maybe(0.8) else f"{_cap(title.lower())}: ")
        for k in range(rng.randint(lo, hi)):
            if k:
                n.t(" ")
            rng.choice(templates)(n)
            if n.maybe(0.1):
                n.t(" " + n.pick(FILLER))
    doc = Document(id=doc_id, text=n.text)
    made = [doc.add_span(label, b, e) for label, b, e in n.spans]
    for h, t in n.rels:
        doc.add_relation(made[h], made[t])
    return doc.validate()


def generate(n_notes: int = 300, seed: int = 0) -> list[Document]:
    """``n_notes`` synthetic notes, ids ``synthetic_0001``..., the same for the same ``seed``."""
    rng = random.Random(seed)
    return [note(rng, f"synthetic_{i:04d}") for i in range(1, n_notes + 1)]
