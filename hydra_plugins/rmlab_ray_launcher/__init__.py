"""A Hydra launcher on current Ray 2.x (``hydra/launcher=rmlab_ray``): each sweep job is one Ray task.

The upstream hydra-ray-launcher pins cloudpickle<3, which cannot be installed beside joblib 1.6; this plugin needs only
``ray`` (``pip install rmlab[ray]``). See ``ray_launcher`` for the behaviour and ``config`` for the keys.
"""

from hydra_plugins.rmlab_ray_launcher import config as _config  # noqa: F401  (registers the config)
