"""Triton kernels of the GPU fast path (paged decode and extend attention).

Nothing is imported here so that ``plait.engine`` stays importable without triton: import the kernel modules
directly. On a machine without CUDA they run through Triton's interpreter, which needs ``TRITON_INTERPRET=1`` in
the environment *before* a kernel module is imported (``@triton.jit`` reads it when the kernel is defined).
"""
