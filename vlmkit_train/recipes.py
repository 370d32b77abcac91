"""The one table of training recipes: ``vlmkit train NAME`` runs ``RECIPES[NAME]``.

Each entry names the module and attribute of a :class:`vlmkit_train.driver.Recipe` declaration;
modules are imported only when their recipe is asked for (importing one pulls in torch and its
model family). A new recipe is one module with a ``RECIPE`` and one line here.
"""

from __future__ import annotations

import importlib

from vlmkit.errors import InputError

from .driver import Recipe

__all__ = ["RECIPES", "recipe", "all_recipes"]

#: recipe name -> "module:attribute" of its declaration.
RECIPES: dict[str, str] = {
    "blip2-stage1": "vlmkit_train.stage1:RECIPE",
    "blip2-stage2": "vlmkit_train.stage2:RECIPE",
    "lm": "vlmkit_train.lm:RECIPE",
    "clip": "vlmkit_train.contrastive:RECIPE",
    "llava-stage1": "vlmkit_train.llava:RECIPE_STAGE1",
    "llava-stage2": "vlmkit_train.llava:RECIPE_STAGE2",
    "instructblip": "vlmkit_train.instruct:RECIPE",
    "clipcap": "vlmkit_train.clipcap:RECIPE",
    "coca": "vlmkit_train.coca:RECIPE",
    "simvlm": "vlmkit_train.simvlm:RECIPE",
    "blip": "vlmkit_train.blip:RECIPE",
    "vllavo": "vlmkit_train.vllavo:RECIPE",
}


def recipe(name: str) -> Recipe:
    """The declaration of recipe ``name``; an unknown name is a one-line error."""
    if name not in RECIPES:
        raise InputError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    module, _, attribute = RECIPES[name].partition(":")
    declared = getattr(importlib.import_module(module), attribute)
    if not isinstance(declared, Recipe) or declared.name != name:
        raise TypeError(f"{RECIPES[name]} is not the Recipe {name!r}")
    return declared


def all_recipes() -> list[Recipe]:
    return [recipe(name) for name in RECIPES]
