"""Evaluation metrics as library functions (retrieval recall, ITC-then-ITM re-ranking, VQA answer accuracy)."""

from .rerank import RerankedScores, rerank, rerank_with_itm
from .retrieval import RetrievalScores, retrieval_scores
from .vqa import exact_match_accuracy, normalize_answer

__all__ = ["RerankedScores", "rerank", "rerank_with_itm", "RetrievalScores", "retrieval_scores", "exact_match_accuracy", "normalize_answer"]
