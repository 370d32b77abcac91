"""Evaluation metrics as library functions (retrieval recall, VQA answer accuracy)."""

from .retrieval import RetrievalScores, retrieval_scores
from .vqa import exact_match_accuracy, normalize_answer

__all__ = ["RetrievalScores", "retrieval_scores", "exact_match_accuracy", "normalize_answer"]
