"""x86 micro-kernels: AVX2, AVX-512 VNNI/VPOPCNTDQ instruction paths as TE/TIR builders."""
