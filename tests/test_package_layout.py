"""The shape of the tree: what importing the inference model pulls in, that no two project
modules import each other at load time, and that Matterport's import paths still work."""
import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("mrcnn", "isic")

# Every name Matterport's users import, by the module they import it from.
MATTERPORT_NAMES = {
    "mrcnn.config": ["Config"],
    "mrcnn.model": ["MaskRCNN"],
    "mrcnn.utils": ["Dataset", "extract_bboxes", "compute_iou", "compute_overlaps", "compute_overlaps_masks",
                    "non_max_suppression", "apply_box_deltas", "box_refinement", "resize_image", "resize_mask",
                    "minimize_mask", "expand_mask", "unmold_mask", "generate_anchors",
                    "generate_pyramid_anchors", "trim_zeros", "compute_matches", "compute_ap",
                    "compute_ap_range", "compute_recall", "download_trained_weights", "norm_boxes",
                    "denorm_boxes", "resize", "COCO_MODEL_URL"],
    "mrcnn.visualize": ["display_images", "random_colors", "apply_mask", "display_instances",
                        "display_differences", "draw_rois", "draw_box", "display_top_masks", "plot_precision_recall",
                        "plot_overlaps", "draw_boxes", "display_weight_stats"],
}


def test_building_an_inference_model_imports_no_training_code_nor_albumentations():
    code = (
        "import sys\n"
        "import mrcnn.model\n"
        "from mrcnn.config import Config\n"
        "c = Config(NAME='t', NUM_CLASSES=2, IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, IMAGES_PER_GPU=1, BACKBONE='resnet18')\n"
        "mrcnn.model.MaskRCNN('inference', c, model_dir='.')\n"
        "training = ('mrcnn.engine', 'mrcnn.modeling.training_graph', 'mrcnn.modeling.targets',\n"
        "            'mrcnn.modeling.losses', 'mrcnn.data.feed', 'mrcnn.data.augment', 'mrcnn.data.image_cache',\n"
        "            'albumentations', 'imgaug')\n"
        "print(sorted(m for m in sys.modules if m.startswith(training)))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin",
                                 "HOME": str(pathlib.Path.home())})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _load_time_imports(path, known):
    """The project modules `path` imports at load time (module level, not inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in tree.body:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_no_import_circle_between_project_modules():
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    known = {_module_name(p) for p in files}
    graph = {_module_name(p): _load_time_imports(p, known) - {_module_name(p)} for p in files}
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("module", sorted(MATTERPORT_NAMES))
def test_matterport_public_names_import_from_their_old_paths(module):
    loaded = importlib.import_module(module)
    missing = [name for name in MATTERPORT_NAMES[module] if not hasattr(loaded, name)]
    assert not missing, f"{module} lacks {missing}"
