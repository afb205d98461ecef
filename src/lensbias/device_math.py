"""Host ↔ device moves for the array math that runs in torch: geometry (moments, spectra,
CKA, anisotropy, Compression Hacking spectra), the label-free alignment maps and the probe
bootstraps. One code path on every device; results come back as numpy or Python floats.

Precision: an array travels as float32 unless it already is float64 (store batches are
float16/float32, so nothing is rounded on the way; a float64 array is not narrowed), and
is widened on the device to the accumulation dtype, in which every sum, Gram matrix, solve
and decomposition runs: float64 on CPU and CUDA. MPS has no float64, so there it is
float32 (figures lose about seven digits), and symmetric eigendecompositions run on the
CPU in float64.
"""

from __future__ import annotations

import numpy as np
import torch


def resolve(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, checked (``adapter.check_device``: one clear error for
    an unknown name or CUDA where torch sees none)."""
    if isinstance(device, torch.device):
        return device
    from lensbias.models.adapter import check_device

    return check_device(str(device))


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """float64, except on MPS (no float64 there): float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def to_device(x: np.ndarray | torch.Tensor, device: torch.device, widen: bool = True
              ) -> torch.Tensor:
    """``x`` on ``device`` in the accumulation dtype (float32 on the wire unless ``x`` is
    float64 already); with ``widen=False`` in the wire's dtype (to widen only the rows
    picked from it)."""
    dtype = accumulation_dtype(device)
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype) if widen else x.to(device)
    x = np.asarray(x)
    wire = np.float64 if x.dtype == np.float64 and dtype == torch.float64 else np.float32
    host = torch.from_numpy(np.require(x, wire, requirements=["C", "W"])).to(device)
    return host.to(dtype) if widen else host


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as a float64 numpy array on the host."""
    return t.detach().to("cpu", torch.float64).numpy()


def eigvalsh(matrix: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (ascending) of the symmetric part of ``[..., n, n]``, decomposed in
    float64 (on the CPU for an MPS tensor) and returned on ``matrix``'s device and dtype."""
    return torch.linalg.eigvalsh(_symmetric64(matrix)).to(matrix.device, matrix.dtype)


def eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors (columns) of ``[..., n, n]``'s symmetric
    part, as ``eigvalsh``."""
    values, vectors = torch.linalg.eigh(_symmetric64(matrix))
    return (values.to(matrix.device, matrix.dtype), vectors.to(matrix.device, matrix.dtype))


def _symmetric64(matrix: torch.Tensor) -> torch.Tensor:
    if matrix.device.type == "mps":
        matrix = matrix.to("cpu")
    matrix = matrix.to(torch.float64)
    return (matrix + matrix.transpose(-1, -2)) / 2
