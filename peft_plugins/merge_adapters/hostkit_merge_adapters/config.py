"""Options of the MergeAdapterWeights pass."""

from __future__ import annotations

import attrs

from hostkit import one_of, option


@attrs.frozen
class MergeAdapterWeightsConfig:
    """Options of ``type = "MergeAdapterWeights"``.

    Olive's pass has no options; ours adds the dtype of the written model and
    the shard size, both with defaults that keep Olive's behaviour for a float
    base (a float32 merge).
    """

    torch_dtype: str = option("float32", help="dtype of the merged weights written to disk (the merge itself runs in float32)",
                              validator=one_of("float32", "float16", "bfloat16"))
    max_shard_size: str = option("5GB", help="largest safetensors shard save_pretrained writes (e.g. \"2GB\")")
