"""Evaluation: metrics as library functions and benchmark runs with pinned protocols.

Metrics: VQAv2 accuracy and exact match, captioning metrics through pycocoevalcap, retrieval recall
with optional ITC-then-ITM re-ranking, zero-shot top-k. Runs: :func:`evaluate` with an
:class:`EvalConfig`; ``vlmkit eval`` on the command line. Side by side: :func:`compare` and its
HTML/Markdown reports; ``vlmkit compare``.
"""

from .captions import CAPTION_METRICS, CaptionScores, caption_scores, java_available
from .classification import IMAGENET_TEMPLATES, TopKScores, topk_accuracy
from .comparison import COMPARE_TASKS, CompareReport, compare, render_html, render_markdown
from .export import EXPORT_FORMATS, export_results, result_records
from .predictions import PredictionsFile
from .rerank import RerankedScores, rerank, rerank_with_itm
from .retrieval import RetrievalScores, retrieval_scores
from .runner import (
    EVAL_TASKS,
    MODEL_TASK,
    EvalConfig,
    EvalResult,
    dataset_identity,
    evaluate,
    published_references,
)
from .vqa import VqaScores, exact_match_accuracy, normalize_answer, vqa_accuracy, vqa_question_accuracy

__all__ = [
    "RerankedScores", "rerank", "rerank_with_itm", "RetrievalScores", "retrieval_scores",
    "CAPTION_METRICS", "CaptionScores", "caption_scores", "java_available",
    "exact_match_accuracy", "normalize_answer", "vqa_accuracy", "vqa_question_accuracy", "VqaScores",
    "TopKScores", "topk_accuracy", "IMAGENET_TEMPLATES",
    "EXPORT_FORMATS", "export_results", "result_records", "PredictionsFile",
    "COMPARE_TASKS", "CompareReport", "compare", "render_html", "render_markdown",
    "EVAL_TASKS", "MODEL_TASK", "EvalConfig", "EvalResult", "evaluate", "dataset_identity", "published_references",
]
