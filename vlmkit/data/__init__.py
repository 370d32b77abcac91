"""Datasets as ``Example`` records: the generated shapes world and its cross-domain classes
(:mod:`vlmkit.data.domains`), the easy-VQA package, and readers for
the standard caption, VQA and classification formats (:mod:`vlmkit.data.formats`), and LLaVA's
conversation JSON (:mod:`vlmkit.data.conversations`)."""

from .conversations import (
    BRIEF_INSTRUCTIONS,
    IMAGE_PLACEHOLDER,
    Conversation,
    Turn,
    parse_conversations,
    read_conversations,
    stage1_records,
    stage2_records,
    write_conversations,
)
from .domains import CLASSES as DOMAIN_CLASSES
from .domains import (
    DOMAINS,
    iter_domain_splits,
    make_domain_example,
    make_domain_split,
    read_domains,
    write_domain_folder,
)
from .domains import render as render_domain
from .easy_vqa import easy_vqa_answers, load_easy_vqa
from .formats import (
    VqaAnnotation,
    dataset_schemes,
    expand_braces,
    read_coco_captions,
    read_dataset,
    read_folder,
    read_gqa,
    read_gqa_annotations,
    read_image_classes,
    read_vqa,
    read_vqa_annotations,
    read_webdataset,
)
from .records import Example
from .shapes import (
    HELD_OUT,
    Scene,
    SceneObject,
    ShapesDataset,
    make_scene,
    make_scenes,
    make_split,
    make_web_split,
    render,
    shapes_answers,
    to_example,
)

__all__ = [
    "Example",
    "Scene",
    "SceneObject",
    "HELD_OUT",
    "make_scene",
    "make_scenes",
    "make_split",
    "make_web_split",
    "render",
    "to_example",
    "shapes_answers",
    "ShapesDataset",
    "DOMAINS",
    "DOMAIN_CLASSES",
    "render_domain",
    "make_domain_example",
    "make_domain_split",
    "iter_domain_splits",
    "read_domains",
    "write_domain_folder",
    "load_easy_vqa",
    "easy_vqa_answers",
    "read_coco_captions",
    "read_vqa",
    "read_vqa_annotations",
    "VqaAnnotation",
    "read_gqa",
    "read_gqa_annotations",
    "read_folder",
    "read_image_classes",
    "read_webdataset",
    "expand_braces",
    "read_dataset",
    "dataset_schemes",
    "IMAGE_PLACEHOLDER",
    "BRIEF_INSTRUCTIONS",
    "Turn",
    "Conversation",
    "parse_conversations",
    "read_conversations",
    "write_conversations",
    "stage1_records",
    "stage2_records",
]
