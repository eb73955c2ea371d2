"""Train configuration: LLM Foundry-shaped YAML -> typed dataclasses."""

from llamactl.config.load import config_from_dict, load_train_config, load_yaml_dict
from llamactl.config.schema import TrainConfig

__all__ = ["TrainConfig", "config_from_dict", "load_train_config", "load_yaml_dict"]
