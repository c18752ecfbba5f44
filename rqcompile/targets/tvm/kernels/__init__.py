"""TE computes of every kernel (integer, attention, epilogues), and the kernel table."""
