"""tvm.s_tir schedules: integer kernels and float code."""
