"""What several benches build before they time anything, offline and deterministic for a seed:
checkpoints with real model sizes and random weights (speed does not depend on the values), and
photo-like JPEGs.

- :func:`build_clip_checkpoint`: a CLIP ViT-B/32 (``CLIPConfig()`` defaults) with the image
  processor settings of openai/clip-vit-base-patch32 and a CLIP BPE tokenizer from
  :mod:`vlmkit.testing`.
- :func:`build_blip_caption`: a ``BlipForConditionalGeneration`` at
  Salesforce/blip-image-captioning-base's size with the BERT WordPiece tokenizer from
  :mod:`vlmkit.testing`.
- :func:`write_photos`: JPEGs at phone/web sizes made from scikit-image's sample photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

# Typical phone/web photo sizes (width, height), landscape and portrait, 0.3 to 1.9 megapixels.
PHOTO_SIZES: tuple[tuple[int, int], ...] = (
    (640, 480),
    (800, 600),
    (1024, 768),
    (1280, 720),
    (1280, 960),
    (1600, 900),
    (1600, 1200),
    (480, 640),
    (768, 1024),
    (960, 1280),
    (1200, 1600),
)


def build_clip_checkpoint(out_dir: Path, seed: int) -> Path:
    """Random-weight ViT-B/32 CLIP + the openai/clip-vit-base-patch32 image processor settings."""
    # Imported here, after the benches have quietened transformers' logging.
    from vlmkit.testing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, make_clip_tokenizer

    tokenizer = make_clip_tokenizer(model_max_length=77)
    text_config = transformers.CLIPTextConfig(
        vocab_size=len(tokenizer),  # the rest (512 wide, 12 layers, 77 positions) are ViT-B/32 defaults
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = transformers.CLIPConfig(
        text_config=text_config.to_dict(), vision_config=transformers.CLIPVisionConfig().to_dict()
    )
    image_processor = transformers.CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": 224},
        resample=Image.Resampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_convert_rgb=True,
    )
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


def build_blip_caption(out_dir: Path, seed: int) -> Path:
    """Random-weight ``BlipForConditionalGeneration`` at Salesforce/blip-image-captioning-base's size
    (``BlipConfig()`` defaults), with its processor settings and an offline BERT tokenizer."""
    from vlmkit.testing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, make_bert_tokenizer

    tokenizer = make_bert_tokenizer(with_enc_token=True, model_max_length=512)
    text_config = transformers.BlipTextConfig(
        vocab_size=len(tokenizer),  # 30524, as released; the rest are the BERT-base defaults
        bos_token_id=tokenizer.bos_token_id,  # [DEC]
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = transformers.BlipConfig(
        text_config=text_config.to_dict(), vision_config=transformers.BlipVisionConfig().to_dict()
    )
    image_processor = transformers.BlipImageProcessor(
        size={"height": 384, "width": 384},
        resample=Image.Resampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    torch.manual_seed(seed)
    model = transformers.BlipForConditionalGeneration(config).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    transformers.BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


def sample_photos() -> list[tuple[str, np.ndarray]]:
    """scikit-image's colour sample photos, read from its local data directory (no download)."""
    import skimage.data
    import skimage.io

    data_dir = Path(skimage.data.data_dir)
    photos = [
        ("astronaut", skimage.data.astronaut()),
        ("chelsea", skimage.data.chelsea()),
        ("coffee", skimage.data.coffee()),
        ("rocket", skimage.data.rocket()),
        ("motorcycle_left", skimage.io.imread(data_dir / "motorcycle_left.png")),
        ("motorcycle_right", skimage.io.imread(data_dir / "motorcycle_right.png")),
        ("hubble_deep_field", skimage.data.hubble_deep_field()),
    ]
    return [(name, np.ascontiguousarray(array[..., :3]).astype(np.uint8)) for name, array in photos]


def write_photos(out_dir: Path, count: int, seed: int) -> list[Path]:
    """``count`` JPEGs (quality 90) at phone/web sizes made from the sample photos; deterministic."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = [Image.fromarray(array) for _, array in sample_photos()]
    paths = []
    for index in range(count):
        source = sources[index % len(sources)]
        width, height = PHOTO_SIZES[int(rng.integers(len(PHOTO_SIZES)))]
        # Largest crop of the source with the target aspect ratio, then 70-100% of it at a random place.
        aspect = width / height
        crop_w = min(source.width, source.height * aspect)
        crop_w *= float(rng.uniform(0.7, 1.0))
        crop_h = crop_w / aspect
        left = float(rng.uniform(0, source.width - crop_w))
        top = float(rng.uniform(0, source.height - crop_h))
        image = source.resize(
            (width, height), Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h)
        )
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # Colour/brightness jitter plus mild sensor-like noise: an upscaled sample photo is smoother
        # than a real one and would compress (and decode) unrealistically well without it.
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels * rng.uniform(0.85, 1.15, size=3).astype(np.float32) + float(rng.uniform(-12, 12))
        pixels += rng.normal(0.0, 2.5, size=pixels.shape).astype(np.float32)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        path = out_dir / f"photo_{index:04d}.jpg"
        image.save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths
