import subprocess
import sys


def test_import_is_lean() -> None:
    code = (
        "import sys, rqcompile\n"
        "heavy = ('tvm', 'pydot', 'matplotlib', 'sklearn', 'torch_mlir')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "import torch\n"
        "assert not bad, bad\n"
        "assert not torch.cuda.is_initialized()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
