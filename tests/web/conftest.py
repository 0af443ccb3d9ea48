"""The control plane's fixtures (config with users and policies, a running gateway) for the console's tests."""

from tests.control.conftest import api_keys, config, config_path, gw

__all__ = ["api_keys", "config", "config_path", "gw"]
