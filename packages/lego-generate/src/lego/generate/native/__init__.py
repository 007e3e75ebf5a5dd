"""The native CPU decode kernels: an optional, separate part of lego-generate, in C.

**What.** Two small C kernels (``skinny.c`` in this folder) that compute
``y = x @ W.T + b`` for an ``x`` of a few rows, reading each weight byte once, in address
order, for all rows at once: one for weights stored ``(N, K)`` as ``nn.Linear`` stores them,
one for the transposed storage GPT-2's ``Conv1D`` checkpoints load into (no weight is
copied). fp32 and bf16.

**Why.** At small batch a decode step is a chain of such skinny products and is bound by how
fast the weights stream in from memory; PyTorch's CPU kernels do not stream them at full
speed at these shapes. The measured difference is in the README's "CPU speed" section and
``benchmarks/results/generate.md``.

**Where they run.** x86-64 CPUs under Linux with AVX-512 (``avx512f``, ``avx512bw``,
``avx512vl``, ``fma``) and a C compiler with OpenMP (``$CC``, else ``cc``, ``gcc`` or
``clang``). CPUs with AVX512-BF16 multiply bf16 ``(N, K)`` weights with its dot-product
instruction. Anywhere else [`native_status()`][lego.generate.native.native_status] says why
not, and generation uses PyTorch's kernels: same tokens, nothing else changes.

**The build.** On first use the source is compiled once per machine and compiler into
[`kernel_cache_dir()`][lego.protocols.kernel_cache_dir] (``$LEGO_KERNELS_HOME``, else
``$XDG_CACHE_HOME/lego/kernels``, else ``~/.cache/lego/kernels``), verified and loaded with
``ctypes`` by [`lego.protocols.native`][lego.protocols.native], the build every brick with a
C kernel shares; a line on stderr says when that happens and when it fails.
[`lego.generate.native.build`][lego.generate.native.build] holds what is lego-generate's
own: the kernels' signatures, the CPU they need and the words of those lines.

**Who calls them.** The decode engine only, while it generates: ``generate()`` and
``stream()`` enter [`decode_linears()`][lego.generate.linears.decode_linears], which routes
each CPU ``nn.Linear`` call of up to [`MAX_ROWS`][lego.generate.native.MAX_ROWS] rows here
for the duration of the generation. You can also call
[`skinny_linear()`][lego.generate.native.skinny_linear] (the PyTorch operator
``torch.ops.lego.skinny_linear``, defined when this package is imported) or
[`prepare_skinny()`][lego.generate.native.prepare_skinny] yourself.

**Turning them off.** ``native_kernels=False`` (``generate``, ``stream``,
``GenerationConfig``). The default, None, uses them where they run and falls back silently;
``native_kernels=True`` asks for them and warns
([`NativeKernelsUnavailableWarning`][lego.generate.native.NativeKernelsUnavailableWarning],
once per reason) where they cannot run.

Reading order: ``build.py`` (what is built, and whether they run), ``kernels.py``
(checking a weight and calling a kernel), ``ops.py`` (the PyTorch operator),
``unavailable.py`` (the warning), then ``skinny.c``.
"""

from lego.generate.native.build import NativeStatus, kernel_cache_dir, native_status
from lego.generate.native.kernels import MAX_ROWS, prepare_skinny
from lego.generate.native.ops import skinny_linear
from lego.generate.native.unavailable import NativeKernelsUnavailableWarning

__all__ = [
    "MAX_ROWS",
    "NativeKernelsUnavailableWarning",
    "NativeStatus",
    "kernel_cache_dir",
    "native_status",
    "prepare_skinny",
    "skinny_linear",
]
