"""Structure checks of an exported ONNX file: the ONNX checker and strict shape inference."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from runtime.errors import OmamaError


def check_onnx(path: str | os.PathLike) -> None:
    """ONNX checker (full check) and strict shape inference; OmamaError naming the file."""
    import onnx

    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # onnx raises ValidationError and friends
        raise OmamaError(f"{path.name} fails the ONNX checker: {exc}") from exc
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx.shape_inference.infer_shapes_path(str(path), tmp, check_type=True, strict_mode=True)
    except Exception as exc:
        raise OmamaError(f"{path.name} fails ONNX shape inference: {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
