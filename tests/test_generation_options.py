"""Decoding is one typed value, GenerationOptions, that every generative task takes as ``options=``."""

from __future__ import annotations

import pytest

import vlmkit
from vlmkit import GenerationOptions
from vlmkit.errors import InputError
from vlmkit.models.base import DEFAULT_NEW_TOKENS, decoding


def test_unset_fields_take_the_tasks_defaults():
    assert DEFAULT_NEW_TOKENS == {"caption": 30, "ask": 10, "generate": 30, "chat": 256}
    answer = decoding(None, "ask", length_penalty=-1.0)
    assert answer.max_new_tokens == 10 and answer.length_penalty == -1.0
    assert decoding(GenerationOptions(num_beams=3), "caption").max_new_tokens == 30
    # What the caller sets wins over the task's and the family's defaults.
    mine = decoding(GenerationOptions(max_new_tokens=4, length_penalty=0.5), "ask", length_penalty=-1.0)
    assert (mine.max_new_tokens, mine.length_penalty) == (4, 0.5)


def test_to_hf():
    assert GenerationOptions(max_new_tokens=5).to_hf() == {"max_new_tokens": 5, "do_sample": False, "num_beams": 1}
    beams = decoding(GenerationOptions(num_beams=3), "ask", length_penalty=-1.0).to_hf()
    assert beams == {"max_new_tokens": 10, "do_sample": False, "num_beams": 3, "length_penalty": -1.0}
    sampled = GenerationOptions(max_new_tokens=5, num_beams=3, do_sample=True, top_p=0.9, temperature=0.7).to_hf()
    assert sampled == {"max_new_tokens": 5, "do_sample": True, "top_p": 0.9, "temperature": 0.7, "num_beams": 1}


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"max_new_tokens": "5"}, "max_new_tokens: wrong type str"),
        ({"num_beams": True}, "num_beams: wrong type bool"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"temperature": 0}, "temperature must be > 0"),
        ({"do_sample": 1}, "do_sample: wrong type int"),
    ],
)
def test_bad_values_are_input_errors(fields, words):
    with pytest.raises(InputError) as info:
        GenerationOptions(**fields)
    assert words in str(info.value)


def test_a_model_refuses_options_of_another_type(photos):
    model = vlmkit.load("default")
    assert model.caption([photos["cat"]], options=GenerationOptions(max_new_tokens=3)) == model.caption([photos["cat"]])
    with pytest.raises(InputError, match="caption: options must be a vlmkit.GenerationOptions, got dict"):
        model.caption([photos["cat"]], options={"max_new_tokens": 3})
