"""Re-runs the experiments of the papers compopt implements and checks their
claims. Run ``python -m benchmarks.reproduce --help``."""
