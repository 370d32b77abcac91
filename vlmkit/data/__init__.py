"""Datasets as lists of ``Example`` records: the generated shapes world and the easy-VQA package."""

from .easy_vqa import easy_vqa_answers, load_easy_vqa
from .formats import (
    VqaAnnotation,
    dataset_schemes,
    expand_braces,
    read_coco_captions,
    read_dataset,
    read_folder,
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
    "read_folder",
    "read_webdataset",
    "expand_braces",
    "read_dataset",
    "dataset_schemes",
]
