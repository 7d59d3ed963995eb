"""Operations: logging now; Prometheus metrics with Triton's names next."""
