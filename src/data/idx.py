"""Reader and writer for the IDX format used by MNIST and FashionMNIST (plain or gzipped)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from src.base.errors import DataError

# type code (third magic byte) -> big-endian numpy dtype, from the format's definition
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(2)
        fh.seek(0)
        if head == _GZIP_MAGIC:  # decide by content, not by the file name
            try:
                return gzip.decompress(fh.read())
            except (OSError, EOFError) as exc:
                raise DataError(f"{path}: corrupt gzip stream ({exc}); re-download the file") from exc
        return fh.read()


def read_idx(path: str | Path) -> torch.Tensor:
    """Read one IDX file (gzipped or not) into a tensor of its stored type and shape."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file not found: {path}")
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (magic number must start with two zero bytes)")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX type code 0x{code:02X}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX payload is {len(raw) - header} bytes but dims {tuple(dims)} need "
            f"{expected}; the file is truncated or corrupt, re-download it"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def write_idx(path: str | Path, data: np.ndarray | torch.Tensor, compress: bool | None = None) -> Path:
    """Write an array in the IDX format; gzip when `compress` or when the name ends in .gz."""
    path = Path(path)
    array = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"dtype {array.dtype} has no IDX type code")
    big = array.astype(native.newbyteorder(">"))
    payload = bytes([0, 0, codes[native], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += big.tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path
