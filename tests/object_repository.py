"""The objects of the repository every object-store test lists, fingerprints and fetches: two models under
`models/`, with what the stores must skip (hidden files, __pycache__) and what they must keep (an empty version
folder, a version folder holding only a hidden file)."""

REPOSITORY = {
    "models/README.md": b"not a model",
    "models/simple/config.pbtxt": b'name: "simple"\nbackend: "python"\n',
    "models/simple/1/model.py": b"class TritonPythonModel:\n    pass\n",
    "models/simple/2/": b"",  # an empty version folder, as a console's "create folder" leaves it
    "models/simple/labels/classes.txt": b"cat\ndog\n",
    "models/simple/.hidden": b"skipped",
    "models/simple/3/.keep": b"skipped, but version folder 3 is there, as on a local disk",
    "models/simple/1/__pycache__/model.cpython-311.pyc": b"skipped",
    "models/other/config.pbtxt": b'name: "other"\n',
    "models/.trash/config.pbtxt": b"skipped",
}
