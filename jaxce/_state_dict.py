"""torch state-dict entries as the NNX module's parameters: checked, copied and cast.

Duck-typed on torch tensors (``detach``, ``cpu``, ``numpy``), so nothing here imports torch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def host(value, name: str) -> np.ndarray:
    """A state dict entry as a floating numpy array (torch's bfloat16 through float32, exactly)."""
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach()
        why = (
            "it is on the meta device and holds no data"
            if getattr(value, "is_meta", False)
            else "it is sparse: pass value.to_dense()"
            if str(getattr(value, "layout", "torch.strided")) != "torch.strided"
            else "it is quantized: pass value.dequantize()"
            if getattr(value, "is_quantized", False)
            else None
        )
        if why:
            raise ValueError(f"state dict entry {name!r} cannot be loaded: {why}.")
        value = value.cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        try:
            value = value.numpy()
        except TypeError:  # dtypes numpy lacks (float8, ...)
            raise TypeError(
                f"state dict entry {name!r} has dtype {value.dtype}, which cannot be loaded; "
                f"cast it first, e.g. value.float()."
            ) from None
    try:  # a copy: torch's .numpy() shares the tensor's memory, which torch may change later
        array = np.array(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"state dict entry {name!r} is not an array: {err}") from None
    if not jnp.issubdtype(array.dtype, jnp.floating) or array.dtype.itemsize < 2:
        raise TypeError(
            f"state dict entry {name!r} must be a floating array; got {type(value).__name__} "
            f"of dtype {array.dtype}. Pass the module's own state_dict() entries."
        )
    return array


def fitted(values: np.ndarray, dtype, key: str) -> jax.Array:
    """``values`` cast to a parameter's ``dtype``; a finite value it cannot hold is an error."""
    with np.errstate(over="ignore"):
        array = jnp.asarray(values, dtype)
    lost = np.isfinite(values) & ~np.isfinite(np.asarray(array, np.float64))
    if lost.any():
        i = tuple(int(j[0]) for j in np.nonzero(lost))
        raise ValueError(
            f"state dict entry {key!r} holds {values[i]} at {i}, beyond the range of this "
            f"module's {jnp.dtype(dtype).name} parameters. Load it into a module made with a "
            f"wider param_dtype, or rescale it."
        )
    return array
