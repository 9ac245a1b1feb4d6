"""The config file: loading with line numbers, validation, schema."""

from agent.config.load import LoadedConfig, default_config_path, load_config, parse_config
from agent.config.model import Config

__all__ = ["Config", "LoadedConfig", "default_config_path", "load_config", "parse_config"]
