"""The STAND-IN for the vendor compiler vamc (not installable here), shared by the tests that build vamc engines.

A small script, put first on PATH as `vamc` by the `standin` fixture (conftest.py). It checks that the YAML it
receives honours the contract of docs/vamc-build-config.md, records how it was called, and writes
three small placeholder files where vamc would put the engine. It builds nothing real.
"""

STANDIN = '''#!{python}
"""STAND-IN for the vendor compiler, used by tests: checks the contract, builds nothing real.

Env: STANDIN_VAMC_RECORD (JSON-lines file of calls), STANDIN_VAMC_SOURCE (the build config the YAML came from),
STANDIN_VAMC_FAIL=1 (write mod.so, then exit 3), STANDIN_VAMC_SKIP=FILE (exit 0 without writing FILE),
STANDIN_VAMC_NO_VERSION=1 (`--version` fails).
"""
import copy, json, os, sys
from pathlib import Path
import yaml

env = os.environ
with open(env["STANDIN_VAMC_RECORD"], "a") as rec:
    rec.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
if sys.argv[1:] == ["--version"]:
    if env.get("STANDIN_VAMC_NO_VERSION"):
        print("unknown option --version")
        sys.exit(2)
    print("vamc STAND-IN 0.0 (tests)")
    print("second line")
    sys.exit(0)

def violation(msg):
    print("contract violation: " + msg)
    sys.exit(9)

if len(sys.argv) != 3 or sys.argv[1] not in ("compile", "build"):
    violation("expected `vamc compile|build CONFIG.yaml`, got %r" % sys.argv[1:])
path = Path(sys.argv[2])
if not path.is_absolute() or not path.is_file():
    violation("config path not absolute or missing: %s" % path)
text = path.read_text()
doc = yaml.safe_load(text)
with open(env["STANDIN_VAMC_RECORD"], "a") as rec:
    rec.write(json.dumps({{"yaml": text}}) + "\\n")
if "pipeline" in doc:
    violation("the pipeline section reached vamc")
ckpt = Path(doc["frontend"]["checkpoint"])
if not ckpt.is_absolute() or not ckpt.is_file():
    violation("frontend.checkpoint not an absolute existing file: %s" % ckpt)
if doc["backend"]["dtype"] == "int8":
    data = Path(doc["dataset"]["path"])
    if not data.is_absolute() or not data.is_dir():
        violation("dataset.path not an absolute folder: %s" % data)
    files = [p for p in data.rglob("*") if p.is_file()]
    suffix = doc["dataset"]["sampler"]["suffix"]
    if any(not p.name.endswith(suffix) for p in files):
        violation("dataset.path holds files other than *%s" % suffix)
    if len(files) != doc["dataset"]["sampler"]["get_data_num"]:
        violation("get_data_num %s but %d files" % (doc["dataset"]["sampler"]["get_data_num"], len(files)))
# every key but the five the pipeline points at its own artifacts must be as written in the source config
source = yaml.safe_load(Path(env["STANDIN_VAMC_SOURCE"]).read_text())
source.pop("pipeline", None)
expected = copy.deepcopy(source)
expected["name"] = doc["name"]
expected["frontend"]["checkpoint"] = doc["frontend"]["checkpoint"]
expected["workspace"]["path"] = doc["workspace"]["path"]
if doc["backend"]["dtype"] == "int8":
    expected["dataset"]["path"] = doc["dataset"]["path"]
    expected["dataset"]["sampler"]["get_data_num"] = doc["dataset"]["sampler"]["get_data_num"]
if doc != expected:
    violation("keys changed on the way: %r != %r" % (doc, expected))

print("STAND-IN vamc: contract checked, writing placeholder files")
print("stderr line from the stand-in", file=sys.stderr)
dest = Path(doc["workspace"]["path"]) / doc["name"]
dest.mkdir(parents=True, exist_ok=True)
if env.get("STANDIN_VAMC_FAIL"):
    (dest / "mod.so").write_bytes(b"half")
    print("STAND-IN vamc: failing on purpose")
    sys.exit(3)
for name in ("mod.so", "mod.json", "mod.params"):
    if env.get("STANDIN_VAMC_SKIP") != name:
        (dest / name).write_bytes(("STAND-IN placeholder " + name + "\\n").encode())
'''
