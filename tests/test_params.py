"""Typed method parameters: coercion, validation, suggestions and canonical JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from cachebench.errors import UsageError
from cachebench.params import NoParams, canonical_json, describe_params, param, parse_params
from cachebench.registry import build_method, method_class, method_names, method_track


@dataclass(frozen=True)
class BudgetParams:
    ratio: float = param(0.5, "fraction of the cache removed", low=0.0, high=0.99)
    window: int = param(32, "recent tokens kept", low=1)
    per_head: bool = param(False, "budget per KV head")
    scope: Literal["layer", "model"] = param("layer", "where the budget applies")
    tokens: int | None = param(None, "absolute budget instead of a ratio", low=1)

    def __post_init__(self) -> None:
        if self.tokens is not None and self.ratio != 0.5:
            raise ValueError("give either ratio or tokens, not both")


def test_values_are_coerced_to_declared_types():
    parsed = parse_params(BudgetParams, ["ratio=0.25", "window=8", "per_head=true", "scope=model", "tokens=none"],
                          "m")
    assert parsed == BudgetParams(ratio=0.25, window=8, per_head=True, scope="model", tokens=None)
    assert parse_params(BudgetParams, ["tokens=128"], "m").tokens == 128


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("ratio=half", "--param ratio=half: expected float"),
        ("ratio=1.5", "--param ratio=1.5: must be <= 0.99"),
        ("window=0", "--param window=0: must be >= 1"),
        ("window=2.5", "expected int"),
        ("per_head=maybe", "expected bool"),
        ("scope=global", "must be one of layer, model"),
        ("windw=4", "unknown parameter of 'm' 'windw'; did you mean 'window'"),
        ("window", "expected name=value"),
    ],
)
def test_bad_values_are_usage_errors(assignment, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        parse_params(BudgetParams, [assignment], "m")


def test_cross_field_validation_and_duplicates():
    with pytest.raises(UsageError, match="give either ratio or tokens"):
        parse_params(BudgetParams, ["ratio=0.3", "tokens=64"], "m")
    with pytest.raises(UsageError, match="given twice"):
        parse_params(BudgetParams, ["window=4", "window=5"], "m")
    with pytest.raises(UsageError, match="takes no parameters"):
        parse_params(NoParams, ["x=1"], "full")


def test_canonical_json_is_stable_and_describes_fields():
    a = parse_params(BudgetParams, ["window=8", "ratio=0.25"], "m")
    b = parse_params(BudgetParams, ["ratio=0.25", "window=8"], "m")
    assert canonical_json(a) == canonical_json(b)
    assert canonical_json(a).startswith('{"per_head":false,"ratio":0.25')
    info = {p.name: p for p in describe_params(BudgetParams)}
    assert info["ratio"].constraint == ">= 0.0, <= 0.99" and info["scope"].type_name == "layer|model"


def test_registry_resolves_only_implemented_methods():
    from cachebench.method_manifest import METHODS

    # every baselines module is in the manifest (none is found only by importing it) and nothing else is a method
    assert method_names() == sorted(METHODS)
    for name in method_names():  # every entry imports, names itself, and builds with default parameters
        assert method_class(name).name == name
        assert method_class(name).track == method_track(name)
        build_method(name, [])
    assert canonical_json(build_method("full", []).params) == "{}"
    with pytest.raises(UsageError, match="did you mean 'full'"):
        build_method("ful", [])


def test_a_baselines_module_the_manifest_does_not_know_is_still_found(monkeypatch):
    """A new method file works before the manifest is regenerated: the registry imports the module (slowly, with a
    warning naming the command) instead of missing it."""
    from cachebench import method_manifest, registry

    monkeypatch.setattr(method_manifest, "METHODS", {n: s for n, s in method_manifest.METHODS.items() if n != "snapkv"})
    monkeypatch.setattr(method_manifest, "MODULES", method_manifest.MODULES - {"cachebench.baselines.kv.snapkv"})
    monkeypatch.setattr(registry, "_UNLISTED", None)
    with pytest.warns(UserWarning, match=r"kv\.snapkv is not in .*python -m cachebench\.method_manifest --write"):
        assert "snapkv" in method_names()
    snapkv = method_class("snapkv")
    assert snapkv.__name__ == "SnapKV" and method_track("snapkv") == "kv"  # pyramidkv's import of it is not a second
    assert build_method("snapkv", ["ratio=0.25"]).params.ratio == 0.25
    assert registry.infrastructure_params("snapkv") == frozenset()

    class Impostor(snapkv):
        pass

    with pytest.raises(UsageError, match="a built-in method"):
        registry.register_method(Impostor)
