"""OmegaConf resolvers the config tree uses (registered on import)."""

from __future__ import annotations

from omegaconf import OmegaConf

# ${len:${data.attributes}}: the CVAE's condition size follows the attributes chosen for the data
OmegaConf.register_new_resolver("len", lambda items: len(items), replace=True)
