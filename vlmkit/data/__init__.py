"""Datasets as ``Example`` records: the generated shapes world, the easy-VQA package, and readers for
the standard caption, VQA and classification formats (:mod:`vlmkit.data.formats`)."""

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
    "render",
    "to_example",
    "shapes_answers",
    "ShapesDataset",
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
]
