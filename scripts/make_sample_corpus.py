"""Build corpora/sample/ (brat) from hand-written synthetic notes; with ``--synthetic DIR``, write the
generated synthetic corpus (``recommender.synthetic``, the offline seed of a first model) there to read.

The notes are the team's own invented text; annotations are written here as phrases and located in
the text, so the offsets are always right. Run again after editing: `python scripts/make_sample_corpus.py`.
Each annotation is (label, phrase, occurrence) and each relation (head index, tail index).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recommender.corpora import SYNTHETIC_NOTES
from recommender.document import Document
from recommender.formats import brat
from recommender.synthetic import generate

NOTES: list[tuple[str, str, list[tuple[str, str, int]], list[tuple[int, int]]]] = [
    (
        "sample_01_chest_pain",
        "CHIEF COMPLAINT: Chest pain.\n"
        "HISTORY: A 58-year-old man with hypertension presents with intermittent chest pain radiating to "
        "the left arm for 2 days. He denies shortness of breath. No fever.\n"
        "MEDICATIONS: Lisinopril 10 mg tablet by mouth once daily. Aspirin 81 mg daily.\n"
        "TESTS: ECG showed normal sinus rhythm. Troponin was 0.02 ng/mL on 03/14.\n"
        "PLAN: Stress test tomorrow. Continue aspirin.",
        [
            ("problem", "Chest pain", 0),  # 0
            ("problem", "hypertension", 0),  # 1
            ("problem", "chest pain", 0),  # 2
            ("course", "intermittent", 0),  # 3
            ("bodyloc", "chest", 0),  # 4
            ("temporal", "for 2 days", 0),  # 5
            ("negation", "denies", 0),  # 6
            ("problem", "shortness of breath", 0),  # 7
            ("negation", "No", 0),  # 8
            ("problem", "fever", 0),  # 9
            ("drug", "Lisinopril", 0),  # 10
            ("strength", "10 mg", 0),  # 11
            ("form", "tablet", 0),  # 12
            ("route", "by mouth", 0),  # 13
            ("frequency", "once daily", 0),  # 14
            ("drug", "Aspirin", 0),  # 15
            ("strength", "81 mg", 0),  # 16
            ("frequency", "daily", 1),  # 17
            ("test", "ECG", 0),  # 18
            ("labvalue", "normal sinus rhythm", 0),  # 19
            ("test", "Troponin", 0),  # 20
            ("labvalue", "0.02 ng/mL", 0),  # 21
            ("temporal", "03/14", 0),  # 22
            ("test", "Stress test", 0),  # 23
            ("temporal", "tomorrow", 0),  # 24
            ("drug", "aspirin", 0),  # 25
            ("bodyloc", "left arm", 0),  # 26
        ],
        [
            (2, 3),
            (2, 4),
            (2, 5),
            (2, 26),
            (7, 6),
            (9, 8),
            (10, 11),
            (10, 12),
            (10, 13),
            (10, 14),
            (15, 16),
            (15, 17),
            (18, 19),
            (20, 21),
            (20, 22),
            (23, 24),
        ],
    ),
    (
        "sample_02_diabetes_followup",
        "Follow-up visit for type 2 diabetes mellitus.\n"
        "Her blood sugars have improved since starting metformin 500 mg twice a day with meals. "
        "Hemoglobin A1c today is 7.1%, down from 8.4% in June. Mild numbness in both feet persists. "
        "She had a cataract surgery last year. No history of retinopathy. "
        "Her mother has coronary artery disease.\n"
        "Assessment: Diabetes, improving. Possible early peripheral neuropathy.\n"
        "Plan: Continue metformin for 3 months, monofilament exam at next visit.",
        [
            ("problem", "type 2 diabetes mellitus", 0),  # 0
            ("test", "blood sugars", 0),  # 1
            ("labvalue", "improved", 0),  # 2
            ("drug", "metformin", 0),  # 3
            ("strength", "500 mg", 0),  # 4
            ("frequency", "twice a day", 0),  # 5
            ("test", "Hemoglobin A1c", 0),  # 6
            ("temporal", "today", 0),  # 7
            ("labvalue", "7.1%", 0),  # 8
            ("problem", "numbness in both feet", 0),  # 9
            ("severity", "Mild", 0),  # 10
            ("bodyloc", "both feet", 0),  # 11
            ("course", "persists", 0),  # 12
            ("treatment", "a cataract surgery", 0),  # 13
            ("temporal", "last year", 0),  # 14
            ("negation", "No history of", 0),  # 15
            ("problem", "retinopathy", 0),  # 16
            ("subject", "Her mother", 0),  # 17
            ("problem", "coronary artery disease", 0),  # 18
            ("problem", "Diabetes", 0),  # 19
            ("course", "improving", 0),  # 20
            ("uncertain", "Possible", 0),  # 21
            ("problem", "early peripheral neuropathy", 0),  # 22
            ("drug", "metformin", 1),  # 23
            ("duration", "for 3 months", 0),  # 24
            ("test", "monofilament exam", 0),  # 25
            ("temporal", "at next visit", 0),  # 26
        ],
        [
            (1, 2),
            (3, 4),
            (3, 5),
            (6, 7),
            (6, 8),
            (9, 10),
            (9, 11),
            (9, 12),
            (13, 14),
            (16, 15),
            (18, 17),
            (19, 20),
            (22, 21),
            (23, 24),
            (25, 26),
        ],
    ),
    (
        "sample_03_emergency",
        "ED NOTE 😷\n"
        "Patient fell from a ladder and reports severe pain in the right wrist. "
        "X-ray of the right wrist shows a distal radius fracture. "
        "Given morphine 4 mg IV once in the ED. Splint applied. "
        "If the pain worsens at night, take ibuprofen 400 mg orally every 6 hours as needed for 5 days. "
        "Denies head injury. CT head was not performed.",
        [
            ("problem", "pain in the right wrist", 0),  # 0
            ("severity", "severe", 0),  # 1
            ("bodyloc", "right wrist", 0),  # 2
            ("test", "X-ray of the right wrist", 0),  # 3
            ("problem", "a distal radius fracture", 0),  # 4
            ("drug", "morphine", 0),  # 5
            ("strength", "4 mg", 0),  # 6
            ("route", "IV", 0),  # 7
            ("frequency", "once", 0),  # 8
            ("treatment", "Splint", 0),  # 9
            ("condition", "at night", 0),  # 10
            ("problem", "the pain", 0),  # 11
            ("course", "worsens", 0),  # 12
            ("drug", "ibuprofen", 0),  # 13
            ("strength", "400 mg", 0),  # 14
            ("route", "orally", 0),  # 15
            ("frequency", "every 6 hours as needed", 0),  # 16
            ("duration", "for 5 days", 0),  # 17
            ("negation", "Denies", 0),  # 18
            ("problem", "head injury", 0),  # 19
            ("test", "CT head", 0),  # 20
            ("negation", "not performed", 0),  # 21
            ("bodyloc", "distal radius", 0),  # 22
        ],
        [
            (0, 1),
            (0, 2),
            (5, 6),
            (5, 7),
            (5, 8),
            (11, 10),
            (11, 12),
            (13, 14),
            (13, 15),
            (13, 16),
            (13, 17),
            (19, 18),
            (20, 21),
            (4, 22),
        ],
    ),
    (
        "sample_04_discharge",
        "DISCHARGE SUMMARY\n"
        "Diagnosis: Community-acquired pneumonia of the left lower lobe.\n"
        "Hospital course: Chest x-ray on admission showed a left lower lobe infiltrate. White blood cell "
        "count was 15.2 (normal 4.0-11.0). She was treated with IV ceftriaxone 1 g daily and oxygen "
        "therapy. Her cough gradually resolved. Blood cultures were negative.\n"
        "Discharge medications: Azithromycin 250 mg tablets, 2 tablets on day 1, then 1 tablet daily "
        "for 4 days.",
        [
            ("problem", "Community-acquired pneumonia of the left lower lobe", 0),  # 0
            ("bodyloc", "left lower lobe", 0),  # 1
            ("test", "Chest x-ray", 0),  # 2
            ("temporal", "on admission", 0),  # 3
            ("problem", "a left lower lobe infiltrate", 0),  # 4
            ("bodyloc", "left lower lobe", 1),  # 5
            ("test", "White blood cell count", 0),  # 6
            ("labvalue", "15.2", 0),  # 7
            ("reference_range", "4.0-11.0", 0),  # 8
            ("route", "IV", 0),  # 9
            ("drug", "ceftriaxone", 0),  # 10
            ("strength", "1 g", 0),  # 11
            ("frequency", "daily", 0),  # 12
            ("treatment", "oxygen therapy", 0),  # 13
            ("problem", "Her cough", 0),  # 14
            ("course", "gradually resolved", 0),  # 15
            ("test", "Blood cultures", 0),  # 16
            ("labvalue", "negative", 0),  # 17
            ("drug", "Azithromycin", 0),  # 18
            ("strength", "250 mg", 0),  # 19
            ("form", "tablets", 0),  # 20
            ("dosage", "2 tablets", 0),  # 21
            ("frequency", "daily", 1),  # 22
            ("duration", "for 4 days", 0),  # 23
        ],
        [
            (0, 1),
            (4, 5),
            (2, 3),
            (6, 7),
            (6, 8),
            (10, 9),
            (10, 11),
            (10, 12),
            (14, 15),
            (16, 17),
            (18, 19),
            (18, 20),
            (18, 21),
            (18, 22),
            (18, 23),
        ],
    ),
]


def build(name: str, text: str, spans: list[tuple[str, str, int]], rels: list[tuple[int, int]]) -> Document:
    doc = Document(id=name, text=text)
    made = []
    for label, phrase, nth in spans:
        start = -1
        for _ in range(nth + 1):
            start = text.index(phrase, start + 1)
        made.append(doc.add_span(label, start, start + len(phrase)))
    for h, t in rels:
        doc.add_relation(made[h], made[t])
    return doc.validate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synthetic", type=Path, help="write the generated corpus as brat here instead")
    ap.add_argument("--notes", type=int, default=SYNTHETIC_NOTES, help="generated notes")
    args = ap.parse_args()
    if args.synthetic is not None:
        brat.write(generate(args.notes), args.synthetic)
        return
    out = Path(__file__).resolve().parents[1] / "corpora" / "sample"
    docs = [build(*note) for note in NOTES]
    brat.write(docs, out)


if __name__ == "__main__":
    main()
