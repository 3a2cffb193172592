"""The `vamc` backend: the vendor compiler's build (build.py) and the card's runner (runner.py)."""
