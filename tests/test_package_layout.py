"""The shape of the tree: what importing the inference model pulls in, that no two project
modules import each other at load time, and that Matterport's import paths still work."""
import ast
import importlib
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("mrcnn", "isic")

# Every name Matterport's users import, by the module they import it from.
MATTERPORT_NAMES = {
    "mrcnn.config": ["Config"],
    "mrcnn.model": ["MaskRCNN", "BatchNorm", "batch_slice", "apply_box_deltas_graph", "clip_boxes_graph",
                    "norm_boxes_graph", "denorm_boxes_graph", "log2_graph", "trim_zeros_graph", "identity_block",
                    "conv_block", "resnet_graph", "ProposalLayer", "PyramidROIAlign", "DetectionLayer",
                    "refine_detections_graph", "detection_targets_graph", "DetectionTargetLayer",
                    "build_rpn_targets", "build_rpn_model", "fpn_classifier_graph", "build_fpn_mask_graph",
                    "smooth_l1_loss", "rpn_class_loss_graph", "rpn_bbox_loss_graph", "mrcnn_class_loss_graph",
                    "mrcnn_bbox_loss_graph", "mrcnn_mask_loss_graph", "load_image_gt", "compose_image_meta",
                    "parse_image_meta", "parse_image_meta_graph", "mold_image", "unmold_image",
                    "compute_backbone_shapes"],
    "mrcnn.utils": ["Dataset", "extract_bboxes", "compute_iou", "compute_overlaps", "compute_overlaps_masks",
                    "non_max_suppression", "apply_box_deltas", "box_refinement", "resize_image", "resize_mask",
                    "minimize_mask", "expand_mask", "unmold_mask", "generate_anchors",
                    "generate_pyramid_anchors", "trim_zeros", "compute_matches", "compute_ap",
                    "compute_ap_range", "compute_recall", "download_trained_weights", "norm_boxes",
                    "denorm_boxes", "resize", "COCO_MODEL_URL", "batch_slice", "box_refinement_graph"],
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


def test_matterport_names_are_the_stage_modules_own_objects():
    import mrcnn.model
    import mrcnn.utils
    for name, module in mrcnn.model.MATTERPORT_NAMES.items():
        assert getattr(mrcnn.model, name) is getattr(importlib.import_module(module), name)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        mrcnn.model.not_a_name
    boxes = np.array([[0, 0, 10, 10], [5, 5, 25, 15]], np.float32)
    targets = np.array([[1, 2, 11, 14], [4, 5, 30, 20]], np.float32)
    graph = mrcnn.utils.box_refinement_graph(boxes, targets).numpy()
    np.testing.assert_allclose(graph, mrcnn.utils.box_refinement(boxes, targets), rtol=1e-6, atol=1e-6)
    assert np.abs(graph).sum() > 0

