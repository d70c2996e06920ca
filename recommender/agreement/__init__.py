"""Inter-annotator agreement: pairwise F1 with the evaluation matcher, kappa and alpha, reports."""

from recommender.agreement.inputs import add_model_rater, load_raters
from recommender.agreement.report import AgreementReport, agreement_report

__all__ = ["AgreementReport", "add_model_rater", "agreement_report", "load_raters"]
