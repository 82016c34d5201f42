"""Which OpenBLAS libraries this machine can load: tests that need one skip without it.

Loading is the test, not `ctypes.util.find_library`: the linker's cache can still list
Debian's library when its file is gone (or hidden, as the no-apt fresh-clone check does).
"""

from __future__ import annotations

import ctypes

from mlx_mixlora.cpu.blas import OPENBLAS_SONAME, WHEEL_PREFIX, wheel_library


def installed_blas() -> dict[str, tuple[str, str] | str]:
    """name -> (library, symbol prefix) for each OpenBLAS installed here, else why it is absent."""
    found: dict[str, tuple[str, str] | str] = {}
    wheel = wheel_library()
    found["scipy-openblas"] = (
        (str(wheel), WHEEL_PREFIX) if wheel else "the scipy-openblas32 wheel is not installed"
    )
    try:
        ctypes.CDLL(OPENBLAS_SONAME)
        found["system"] = (OPENBLAS_SONAME, "")
    except OSError:
        found["system"] = f"{OPENBLAS_SONAME} (system OpenBLAS) is not installed"
    return found


INSTALLED = installed_blas()
HAVE_SYSTEM = isinstance(INSTALLED["system"], tuple)
