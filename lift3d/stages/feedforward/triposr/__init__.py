"""TripoSR (VAST-AI-Research/TripoSR, MIT) in lift3d's own code: one image → a triplane field in seconds.

Modules: ``config`` (the fields of the official ``config.yaml``, full and tiny sizes), ``transformer`` (the 1D
transformer with cross-attention), ``network`` (image tokenizer, triplane tokens, upsampler, NeRF MLP),
``weights`` (the official layout on disk, safe loading, key names across transformers releases), ``synthetic``
(seeded weights for any layout), ``model`` (the :class:`TripoSR` stage).
"""

from lift3d.stages.feedforward.triposr.config import TripoSRConfig, read_config_yaml, to_config_yaml
from lift3d.stages.feedforward.triposr.model import TripoSR
from lift3d.stages.feedforward.triposr.network import TripoSRNetwork

__all__ = ["TripoSR", "TripoSRConfig", "TripoSRNetwork", "read_config_yaml", "to_config_yaml"]
