"""YAML + ``key=value`` overrides -> :class:`TrainConfig`, strictly.

Flow (one way): read YAML with OmegaConf -> merge dot-list overrides -> resolve ``${...}``
interpolation (``${variables.x}``, as LLM Foundry YAMLs use) -> plain dict -> typed dataclasses.
Unknown keys name the closest valid key; wrong types name the dotted path.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from llamactl.config.schema import TrainConfig, check_duration
from llamactl.errors import ConfigError

_DURATION_FIELDS = {"max_duration", "eval_interval", "save_interval", "log_interval", "t_warmup", "t_max",
                    "console_log_interval"}


def load_yaml_dict(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML file, apply ``key=value`` overrides, resolve interpolation; return a plain dict."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML with --yaml")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not OmegaConf.is_dict(cfg):
        raise ConfigError(f"{path} must hold a mapping of config keys at the top level")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optimizer.lr=1e-4)")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""  # "1e-4" -> float, "[q_proj]" -> list
            OmegaConf.update(cfg, key.strip(), parsed, merge=True, force_add=True)
        except Exception as e:
            raise ConfigError(f"cannot apply override {item!r}: {e}") from e
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{path}: cannot resolve interpolation: {msg}") from e
    return data  # type: ignore[return-value]


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """The typed train config for a YAML file plus overrides."""
    return build(TrainConfig, load_yaml_dict(path, overrides), "")


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    return build(TrainConfig, data, "")


# ---------------------------------------------------------------------------- typed conversion
def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def build(cls: type, data: Any, path: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, checking keys and types recursively."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {_join(path, close[0])!r}?" if close else \
                f"; valid keys here: {', '.join(sorted(fields))}"
            raise ConfigError(f"unknown config key {_join(path, str(key))!r}{hint}")
        kwargs[key] = _convert(hints[key], value, _join(path, key))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path or 'config'}: {e}") from e


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, path: str) -> Any:
    leaf = path.rsplit(".", 1)[-1]
    if leaf in _DURATION_FIELDS and value is not None:
        try:
            return check_duration(value, path, allow_dur=leaf != "max_duration")
        except ValueError as e:
            raise ConfigError(str(e)) from e
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(repr(c) for c in choices)}{hint}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)  # YAML reads 6e-4 (no dot) as a string
                except ValueError:
                    pass
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    return value
