"""Readers for common dataset formats, streamed as ``Example`` records.

Every reader returns an iterator: examples are built one at a time as the consumer asks for them.
JSON annotation files are parsed once with :mod:`json` (they are small next to the images), but no
image is opened by the reader. Files on disk are yielded as :class:`pathlib.Path` objects; images
inside tar shards are yielded as PIL images opened lazily over the member's bytes (only the header
is parsed; pixels are decoded on first use, e.g. ``.convert("RGB")``).

Each reader checks the format and raises :class:`~vlmkit.errors.InputError` naming the file and what
is wrong (missing key, wrong type, missing image file, unsafe tar member, ...). Problems visible in
the annotation files are reported when the reader is called, before anything is yielded; problems
that need the images (a missing image file, a sample without an image) are reported when the
example concerned is reached.

- :func:`read_coco_captions`: COCO caption JSON (also NoCaps, and the image-info files of the test
  sets, which have no captions), or the Karpathy-split JSON (COCO, Flickr8k, Flickr30k).
- :func:`read_vqa` and :func:`read_vqa_annotations`: VQAv2 (and OK-VQA) questions and annotations.
- :func:`read_gqa` and :func:`read_gqa_annotations`: GQA question files.
- :func:`read_folder`: a folder of images with same-named ``.txt`` caption files.
- :func:`read_image_classes`: a classification folder, one subfolder per class (ImageNet-style).
- :func:`read_webdataset`: WebDataset ``.tar`` shards.
- :func:`read_dataset`: one string spec for all of the above and the built-in sets.

One module per format family (``coco``, ``vqa``, ``gqa``, ``folders``, ``webdataset``), and ``spec``
for :func:`read_dataset`; import the readers from here (or from :mod:`vlmkit.data`).

Where to get the files (nothing is downloaded by vlmkit):

- **COCO Karpathy split**: ``caption_datasets.zip`` from Andrej Karpathy's "Deep Visual-Semantic
  Alignments for Generating Image Descriptions" project page (Stanford) holds ``dataset_coco.json``,
  ``dataset_flickr8k.json`` and ``dataset_flickr30k.json``. The COCO images are "2014 Train images" and
  "2014 Val images" from the Download page of cocodataset.org; unpack both under one folder so that
  the ``filepath`` field (``train2014``/``val2014``) resolves, and pass that folder as ``image_dir``.
  The plain COCO caption JSON (``captions_train2014.json``) is in "2014 Train/Val annotations" there.
  Karpathy's "train" split is usually taken together with "restval": ``split=("train", "restval")``.
- **VQAv2**: the Download page of visualqa.org ("Balanced Real Images"): the questions
  (``v2_OpenEnded_mscoco_train2014_questions.json``, ...) and annotations
  (``v2_mscoco_train2014_annotations.json``, ...); the images are COCO 2014 train/val (and COCO 2015
  test for test-dev/test, which has no annotations). The default ``image_name`` matches the COCO
  file names (``COCO_train2014_000000000009.jpg``); ``subset`` comes from ``data_subtype`` in the
  questions file.
- **Flickr30K**: the images from the "Flickr30k" dataset page of the University of Illinois
  (Denotation Graph project; access by request form), and the captions and splits from Karpathy's
  ``dataset_flickr30k.json`` above: ``read_coco_captions("dataset_flickr30k.json", "flickr30k-images",
  split="test")``.
- **NoCaps**: the validation captions (``nocaps_val_4500_captions.json``, COCO caption format) and the
  test image list (``nocaps_test_image_info.json``, no captions: results go to the evaluation server)
  from the Download section of nocaps.org. The images are Open Images validation/test images; the
  ``file_name`` of each entry is the name to store them under in ``image_dir``. Read with
  :func:`read_coco_captions` (``coco:`` spec); the extra image keys (``open_images_id``, ``height``,
  ...) are ignored. COCO's own ``image_info_test2014.json`` reads the same way.
- **OK-VQA**: the questions (``OpenEnded_mscoco_val2014_questions.json``) and annotations
  (``mscoco_val2014_annotations.json``) from okvqa.allenai.org, in the VQAv2 layout over COCO 2014
  images, so :func:`read_vqa` (``vqa:`` spec) reads them as they are.
- **GQA**: from the Download page of cs.stanford.edu/people/dorarad/gqa, the questions archive (use
  the ``*_balanced_questions.json`` files, e.g. ``testdev_balanced_questions.json``; the "all"
  files are far larger) and the images archive, whose ``images/`` folder is the ``image_dir``.
- **ImageNet** (zero-shot classification): the ILSVRC2012 validation images from image-net.org (after
  registration), sorted into one folder per WordNet id (``val/n01440764/*.JPEG``); the Kaggle copy's
  ``LOC_synset_mapping.txt`` is a ready ``class_names`` file, and without one the names come from
  the ImageNet-1k class descriptions vlmkit ships (timm's).
"""

from .coco import read_coco_captions
from .folders import IMAGE_EXTENSIONS, read_folder, read_image_classes
from .gqa import read_gqa, read_gqa_annotations
from .spec import dataset_schemes, read_dataset
from .vqa import VQA_IMAGE_NAME, VqaAnnotation, read_vqa, read_vqa_annotations
from .webdataset import WDS_IMAGE_EXTENSIONS, expand_braces, read_webdataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "WDS_IMAGE_EXTENSIONS",
    "VQA_IMAGE_NAME",
    "VqaAnnotation",
    "read_coco_captions",
    "read_vqa",
    "read_vqa_annotations",
    "read_gqa",
    "read_gqa_annotations",
    "read_folder",
    "read_image_classes",
    "read_webdataset",
    "expand_braces",
    "read_dataset",
    "dataset_schemes",
]
