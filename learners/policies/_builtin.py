"""The built-in policy kinds, registered on import (their networks import torch).

Imported on the registry's first use (``_registry._discover``) or on the first lookup of a
torch-backed name of :mod:`learners.policies`, never by ``import learners.policies``
itself: an agent running ``mlp_gaussian`` with numpy (:mod:`learners.policies._numpy`)
never loads torch.
"""

from __future__ import annotations

from learners.policies import _cnn_gaussian, _flow_matching, _mlp_gaussian, _vla_transformer
from learners.policies._registry import register, register_check, register_parts

register(_mlp_gaussian.KIND, _mlp_gaussian.build)
register_parts(_mlp_gaussian.KIND, _mlp_gaussian.parts, _mlp_gaussian.check)
register(_cnn_gaussian.KIND, _cnn_gaussian.build)
register(_flow_matching.KIND, _flow_matching.build)
register_check(_flow_matching.KIND, _flow_matching.check)
register_parts(_cnn_gaussian.KIND, _cnn_gaussian.parts, _cnn_gaussian.check)
register(_vla_transformer.KIND, _vla_transformer.build, pads_actions=True)
