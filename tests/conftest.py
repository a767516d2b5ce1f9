import sys
from pathlib import Path

# test helpers (parity_kit, tiny_models) live beside the tests
sys.path.insert(0, str(Path(__file__).parent))
