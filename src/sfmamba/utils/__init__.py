from ._config import kernel_backend, set_kernel_backend, use_triton

__all__ = ["kernel_backend", "set_kernel_backend", "use_triton"]
